"""`viva ablate`: the paper's Table 2 ladder at mini scale, trained with equal SFT compute and scored by the
world-bench runner, written next to the paper's numbers.

    viva ablate --budget 96000 --out runs/ablate            # 96k SFT samples per rung (default configs)

The ladder (each rung adds one component to the one before):

    vanilla    text-only instructor, plain flow loss (editor.mask_weight=0), videos only (data.image_prob=0)
    vlm        + the VLM instructor (model.instructor_kind=vlm)
    masked     + the masked loss (the SFT config's editor.mask_weight, 2.0 by default)
    image_mix  + the image-data mix (the SFT config's data.image_prob, 0.6 by default)
    grpo       + Edit-GRPO: `--grpo-steps` of `viva train grpo` from image_mix's model

Equal compute: every SFT rung sees the same number of training samples, `--budget` (its steps are
budget // train.batch_size of the resolved SFT config); the grpo rung is image_mix's SFT (the same budget)
plus the Edit-GRPO post-training stage, as in the paper, and its extra cost is listed in the table.

Output folder OUT: <rung>/train/ (the training run; <rung>/train/model/ its model), <rung>/eval/ (the eval
runner's folder), ablation.json and ablation.md (written atomically). Everything resumes: a rung whose model
exists is not trained again, training runs continue from their checkpoints and evaluation from its cases.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from viva.errors import VivaUserError
from viva.io.atomic import atomic_write_bytes

from .bench import world_bench

ABLATION_JSON = "ablation.json"
ABLATION_TABLE = "ablation.md"
TABLE_CATEGORIES = ("add", "replace", "remove")


@dataclass(frozen=True)
class Rung:
    """One configuration of the ladder: SFT overrides, or (grpo_from) Edit-GRPO from another rung's model."""

    name: str
    label: str
    sft: tuple[str, ...] = ()
    grpo_from: str | None = None


LADDER: tuple[Rung, ...] = (
    Rung("vanilla", "vanilla (text-only condition)",
         ("model.instructor_kind=text", "editor.mask_weight=0", "data.image_prob=0")),
    Rung("vlm", "+ VLM instructor", ("model.instructor_kind=vlm", "editor.mask_weight=0", "data.image_prob=0")),
    Rung("masked", "+ masked loss", ("model.instructor_kind=vlm", "data.image_prob=0")),
    Rung("image_mix", "+ image-data mix", ("model.instructor_kind=vlm",)),
    Rung("grpo", "+ Edit-GRPO (full)", grpo_from="image_mix"),
)

# PAPER.md, Table 2: VLM-judge average (0-10) on VIE-Bench, per category.
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "vanilla": {"add": 4.57, "replace": 4.02, "remove": 2.62},
    "vlm": {"add": 6.86, "replace": 6.50, "remove": 7.65},
    "masked": {"add": 8.14, "replace": 6.51, "remove": 8.26},
    "image_mix": {"add": 7.91, "replace": 8.82, "remove": 9.17},
    "grpo": {"add": 8.86, "replace": 8.86, "remove": 9.44},
}


def select_rungs(names: str | None) -> tuple[Rung, ...]:
    """None -> the whole ladder; "a,b" -> those rungs (with the rung a grpo rung starts from), in ladder order."""
    if names is None:
        return LADDER
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    known = {r.name: r for r in LADDER}
    unknown = sorted(wanted - set(known))
    if unknown or not wanted:
        raise VivaUserError(f"unknown rung(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    for name in list(wanted):
        if known[name].grpo_from:
            wanted.add(known[name].grpo_from)
    return tuple(r for r in LADDER if r.name in wanted)


def _train(run_class, config, out: Path, progress: bool) -> Path:
    if not (out / "model").is_dir():  # model folders are swapped in whole (io.atomic.replace_dir)
        code = run_class(config, out, progress=progress).run()
        if code != 0:
            raise VivaUserError(f"training {out} stopped (exit {code}); run `viva ablate` again to resume")
    return out / "model"


def run_ablation(
    out: str | os.PathLike,
    budget: int,
    *,
    sft_config: str | os.PathLike | None = None,
    grpo_config: str | os.PathLike | None = None,
    sft_overrides: list[str] = (),
    grpo_overrides: list[str] = (),
    grpo_steps: int = 300,
    rungs: str | None = None,
    cases: int = 50,
    categories: str | None = None,
    eval_steps: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Train and evaluate every selected rung into `out`; return (and write) the ablation results.

    sft_config, grpo_config: YAML files (None: the built-in defaults, as in configs/); *_overrides: KEY=VALUE
    for every rung's SFT / the Edit-GRPO run. rungs: "vanilla,vlm,..." (default all). cases, categories: the
    world bench to score on. eval_steps: denoising steps of the evaluation (default: each model's)."""
    from viva.pipeline import VivaPipeline
    from viva.train.config import load_config
    from viva.train.grpo import GRPOConfig, GRPOTrainingRun
    from viva.train.grpo import grpo_overrides as init_overrides
    from viva.train.sft import SFTConfig, SFTTrainingRun

    from .editors import PipelineEditor
    from .runner import evaluate

    # 1. Every check and every config first: a typo fails before hours of training.
    chosen = select_rungs(rungs)
    for name, value, low in (("budget", budget, 1), ("grpo-steps", grpo_steps, 1), ("cases", cases, 1)):
        if value < low:
            raise VivaUserError(f"--{name} must be at least {low}, got {value}")
    bench = world_bench(cases=cases, categories=categories)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VivaUserError(f"cannot write the ablation to {out}: it is a file; give a folder")
    plans = {}
    for rung in chosen:
        if rung.grpo_from is None:
            config = load_config(SFTConfig, sft_config, [*rung.sft, *sft_overrides])
            steps = max(1, budget // config.train.batch_size)
            config = load_config(SFTConfig, sft_config, [*rung.sft, *sft_overrides, f"train.steps={steps}"])
            plans[rung.name] = (SFTTrainingRun, config, {"sft_samples": steps * config.train.batch_size,
                                                         "sft_steps": steps, "grpo_steps": 0})
        else:
            start = out / rung.grpo_from / "train" / "model"
            config = load_config(GRPOConfig, grpo_config, [*init_overrides(str(start), None), *grpo_overrides,
                                                           f"train.steps={grpo_steps}"])
            plans[rung.name] = (GRPOTrainingRun, config, {**plans[rung.grpo_from][2], "grpo_steps": grpo_steps})
    out.mkdir(parents=True, exist_ok=True)

    # 2. Train and evaluate, rung by rung (a grpo rung after the rung it starts from: ladder order).
    rows = []
    for rung in chosen:
        run_class, config, compute = plans[rung.name]
        model = _train(run_class, config, out / rung.name / "train", progress)
        pipe = VivaPipeline.from_pretrained(model)
        results = evaluate(PipelineEditor(pipe, model, eval_steps), bench, out / rung.name / "eval", seed=seed,
                           progress=progress)
        rows.append({
            "rung": rung.name,
            "label": rung.label,
            **compute,
            "pass": {c: results["categories"][c]["passed"] for c in results["categories"]},
            "overall_pass": results["overall"]["passed"],
            "overall_clause": results["overall"]["clause_score"],
            "paper_vlm_average": PAPER_TABLE2[rung.name],
        })
    ablation = {"budget_samples": budget, "bench": bench.spec(), "seed": seed, "rows": rows,
                "paper": "PAPER.md Table 2 (VLM-judge average, 0-10, VIE-Bench)"}
    atomic_write_bytes(out / ABLATION_JSON, (json.dumps(ablation, indent=2) + "\n").encode())
    atomic_write_bytes(out / ABLATION_TABLE, ablation_table(ablation).encode())
    return ablation


def ablation_table(ablation: dict) -> str:
    """Markdown: per rung its compute, the world-bench pass rate on add / replace / remove and overall, and
    the paper's VLM-judge average on the same categories beside it."""
    cats = TABLE_CATEGORIES
    head = (["configuration", "SFT samples", "GRPO steps"] + [f"pass {c}" for c in cats] + ["pass all", "clause all"]
            + [f"paper {c}" for c in cats])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in ablation["rows"]:
        passes = [f"{row['pass'][c]:.1%}" if row["pass"].get(c) is not None else "–" for c in cats]
        paper = [f"{row['paper_vlm_average'][c]:.2f}" for c in cats]
        cells = [row["label"], str(row["sft_samples"]), str(row["grpo_steps"]), *passes,
                 f"{row['overall_pass']:.1%}", f"{row['overall_clause']:.3f}", *paper]
        lines.append("| " + " | ".join(cells) + " |")
    return (f"# Ablation (mini scale, {ablation['budget_samples']} SFT samples per rung)\n\n" + "\n".join(lines)
            + "\n\npass: world-bench verifier pass rate (docs/metrics.md); paper: VLM-judge average (0-10) of "
            "PAPER.md Table 2, for comparing the ordering of the rungs, not the numbers.\n")
