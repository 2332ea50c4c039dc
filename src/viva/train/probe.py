"""The grounding probe: do an instructor's tokens know WHICH sprite an instruction means, and where it is?

    viva train probe --instructor runs/instructor/instructor [--num-train 2000 --num-test 1000]

Examples are world pairs whose instruction refers to its target sprite WITHOUT naming its color (by
shape, size or position: "remove the star", "make the leftmost one bigger"; `probe_examples`), so the text
alone cannot tell the target's color. The instructor is frozen; each example's instruction tokens
([CLS], the words, [SEP]: the "visually grounded instruction tokens", not the image tokens) are
mean-pooled (`extract_features`; the mean over every token is reported too), and a LINEAR probe (multinomial logistic
regression with a small L2 penalty, full-batch L-BFGS on standardised features; `fit_linear_probe`) is
fitted on `num_train` examples to recover

- the referred sprite's color (8 classes), and
- the 3x3 cell of its centre in the first frame (9 classes),

and scored on `num_test` held-out examples (another seed). The text-only instructor (the same MiniLM
reading the instruction alone) is the baseline: it cannot see the frame, so it only beats chance where
the words give a hint (e.g. "the leftmost one" -> a left cell). A grounded instructor should be far above
it (issue target: >= 95% for both).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data.generate import DataConfig, make_pair
from ..data.pair import EditPair
from .world_data import COLOR_NAMES, REGION_NAMES, WorldDataConfig, cell_index, ignore_stop_signals, to_unit

__all__ = [
    "PROBE_CATEGORIES",
    "probe_example",
    "probe_examples",
    "extract_features",
    "probe_predict",
    "fit_linear_probe",
    "grounding_probe",
    "probe_report",
    "run_probe_command",
]

# Categories whose instruction refers to a sprite of the source.
PROBE_CATEGORIES: tuple[str, ...] = ("remove", "replace", "color", "size", "ref_replace")
PROBE_TARGET = 0.95


def probe_example(pair: EditPair) -> dict | None:
    """The probe example of a pair, or None when its first referring expression names a color (or it has
    none). {"instruction", "frame" uint8 [H,W,3], "reference", "color" (0..7), "cell" (0..8), "kind"}."""
    refs = pair.meta.get("refs") or []
    if not refs:
        return None
    ref = refs[0]
    if "color" in ref["kind"].split("+"):
        return None
    sprite = pair.source_scene.sprite(int(ref["target"]))
    return {
        "instruction": pair.instruction,
        "frame": torch.from_numpy(np.ascontiguousarray(pair.source[0])),
        "reference": None if pair.reference is None else torch.from_numpy(np.ascontiguousarray(pair.reference)),
        "color": COLOR_NAMES.index(sprite.color),
        "cell": cell_index(*sprite.position(0.0)),
        "kind": ref["kind"],
    }


class _Candidates(Dataset):
    def __init__(self, seed: int, config: DataConfig):
        self.seed, self.config = seed, config

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> dict | None:
        return probe_example(make_pair(self.seed, index, None, self.config))


def probe_data_config(data: WorldDataConfig | None = None) -> DataConfig:
    """The training data's clip settings, restricted to categories that refer to a source sprite."""
    base = (data or WorldDataConfig()).data_config()
    return DataConfig(
        height=base.height,
        width=base.width,
        num_frames=base.num_frames,
        image_fraction=base.image_fraction,
        categories=PROBE_CATEGORIES,
        split=base.split,
        min_sprites=base.min_sprites,
        max_sprites=base.max_sprites,
    )


def probe_examples(seed: int, count: int, config: DataConfig | None = None, workers: int = 0, chunk: int = 64) -> list[dict]:
    """The first `count` probe examples of seed `seed` (pairs 0, 1, 2, ... of `config`, keeping those whose
    target is referred to without its color). Deterministic whatever `workers`."""
    config = config or probe_data_config()
    out: list[dict] = []
    start = 0
    while len(out) < count:
        need = count - len(out)
        size = max(chunk, int(need * 1.6) + 8)
        loader = DataLoader(
            _Candidates(seed, config),
            batch_sampler=[list(range(start + i, min(start + i + chunk, start + size))) for i in range(0, size, chunk)],
            num_workers=workers,
            collate_fn=list,
            worker_init_fn=ignore_stop_signals,
        )
        for batch in loader:
            out.extend(x for x in batch if x is not None)
        start += size
    return out[:count]


def instruction_token_mask(instructor, mask: torch.Tensor, references=None, with_images: bool = True) -> torch.Tensor:
    """bool [B,L]: the [CLS], instruction and [SEP] tokens of an instructor's output (not the image or
    reference tokens). MiniVLMInstructor lays items out as [CLS] [image] [reference?] [words] [SEP]; a
    text-only instructor has no image tokens."""
    n_img = int(getattr(instructor.config, "image_tokens", 0)) if with_images and hasattr(instructor, "vision") else 0
    if n_img == 0:
        return mask
    has_ref = torch.tensor([r is not None for r in (references or [None] * mask.shape[0])], device=mask.device)
    start = 1 + n_img + n_img * has_ref.long()
    pos = torch.arange(mask.shape[1], device=mask.device)
    return mask & ((pos[None] >= start[:, None]) | (pos[None] == 0))


def _mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].float()
    return (tokens.float() * m).sum(1) / m.sum(1).clamp_min(1.0)


@torch.no_grad()
def extract_features(
    instructor, examples: Sequence[dict], device: torch.device | str = "cpu", batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Fixed poolings of the instructor's output for each example, float32 [N, D] on the CPU:
    "text" = mean over the [CLS] + instruction + [SEP] tokens (the grounded instruction tokens),
    "all" = mean over every real token (image and reference tokens included). The instructor reads
    (instruction, first frame, reference) as in the editor; a text-only instructor ignores the images."""
    device = torch.device(device)
    was_training = instructor.training
    instructor.eval()
    feats: dict[str, list[torch.Tensor]] = {"text": [], "all": []}
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        frames = to_unit(torch.stack([e["frame"] for e in chunk]).to(device))
        refs = [None if e["reference"] is None else to_unit(e["reference"].to(device)) for e in chunk]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = instructor([e["instruction"] for e in chunk], frames, refs)
        feats["all"].append(_mean(out.tokens, out.mask).cpu())
        feats["text"].append(_mean(out.tokens, instruction_token_mask(instructor, out.mask, refs)).cpu())
    instructor.train(was_training)
    return {k: torch.cat(v) for k, v in feats.items()}


def fit_linear_probe(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-3, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on standardised features: (weight [D,C], bias [C], mean, std).
    Full-batch L-BFGS in float64; l2 penalises the squared weights (mean cross-entropy + l2 * |W|^2)."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9, history_size=20)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach(), mean, std


def probe_predict(probe, x: torch.Tensor) -> torch.Tensor:
    """Class indices [N] of features x [N, D] under a fitted probe."""
    weight, bias, mean, std = probe
    return (((x.double() - mean) / std) @ weight + bias).argmax(-1)


def probe_accuracy(probe, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((probe_predict(probe, x) == y).double().mean())


def grounding_probe(
    instructor,
    train: Sequence[dict],
    test: Sequence[dict],
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    l2: float = 1e-3,
    max_iter: int = 200,
) -> dict:
    """Held-out accuracy of linear probes for the referred sprite's color and 3x3 cell from the frozen
    `instructor`'s instruction tokens (mean-pooled; "all_tokens": from the mean of every token). Also
    reports the majority-class rate of the test set and, per kind of reference ("shape", "left",
    "biggest", ...), the instruction-token probes' accuracy ("by_kind": {kind: {"n", "color", "cell"}})."""
    f_train = extract_features(instructor, train, device, batch_size)
    f_test = extract_features(instructor, test, device, batch_size)
    result: dict = {"num_train": len(train), "num_test": len(test), "pooling": "text"}
    kinds = [e["kind"] for e in test]
    by_kind: dict[str, dict] = {k: {"n": kinds.count(k)} for k in sorted(set(kinds))}
    for pooling in ("text", "all"):
        into = result if pooling == "text" else result.setdefault("all_tokens", {})
        for name, classes in (("color", len(COLOR_NAMES)), ("cell", len(REGION_NAMES))):
            y_train = torch.tensor([e[name] for e in train], dtype=torch.long)
            y_test = torch.tensor([e[name] for e in test], dtype=torch.long)
            probe = fit_linear_probe(f_train[pooling], y_train, classes, l2=l2, max_iter=max_iter)
            correct = probe_predict(probe, f_test[pooling]) == y_test
            into[name] = float(correct.double().mean())
            into[f"{name}_train"] = probe_accuracy(probe, f_train[pooling], y_train)
            if pooling == "text":
                result[f"{name}_majority"] = float(torch.bincount(y_test, minlength=classes).max()) / max(1, len(test))
                for kind, row in by_kind.items():
                    row[name] = float(correct[[k == kind for k in kinds]].double().mean())
    result["by_kind"] = by_kind
    return result


def probe_report(
    instructor,
    data: WorldDataConfig | None = None,
    num_train: int = 2000,
    num_test: int = 1000,
    seed: int = 2_000_003,
    batch_size: int = 128,
    l2: float = 1e-3,
    max_iter: int = 200,
    baseline: bool = True,
    language_model_path: str | None = None,
    device: torch.device | str = "cpu",
    workers: int = 0,
) -> dict:
    """`grounding_probe` of `instructor` and (baseline) of the text-only instructor on the same examples:
    train examples from `seed`, held-out test examples from `seed + 1`."""
    config = probe_data_config(data)
    train = probe_examples(seed, num_train, config, workers)
    test = probe_examples(seed + 1, num_test, config, workers)
    report = {"seed": seed, "target": PROBE_TARGET, "instructor": grounding_probe(instructor, train, test, device, batch_size, l2, max_iter)}
    inst = report["instructor"]
    report["meets_target"] = bool(inst["color"] >= PROBE_TARGET and inst["cell"] >= PROBE_TARGET)
    kinds: dict[str, int] = {}
    for e in test:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    report["test_reference_kinds"] = dict(sorted(kinds.items()))
    if baseline:
        from ..models.instructor import TextOnlyInstructor, TextOnlyInstructorConfig

        text_only = TextOnlyInstructor(TextOnlyInstructorConfig(language_model_path=language_model_path))
        text_only.language_model.float()
        text_only.to(device)
        report["text_only"] = grounding_probe(text_only, train, test, device, batch_size, l2, max_iter)
    return report


def run_probe_command(args) -> int:
    """`viva train probe` (see the module docstring)."""
    from ..errors import VivaUserError
    from ..models.instructor import MiniVLMInstructor
    from .world_data import auto_workers

    if args.num_train < 10 or args.num_test < 1:
        raise VivaUserError("--num-train must be at least 10 and --num-test at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise VivaUserError("--device cuda: no CUDA GPU is visible here; use --device cpu (or auto)")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    instructor = MiniVLMInstructor.from_pretrained(args.instructor)
    instructor.language_model.float()
    instructor.to(device)
    report = probe_report(
        instructor,
        num_train=args.num_train,
        num_test=args.num_test,
        seed=args.seed,
        baseline=not args.no_baseline,
        language_model_path=instructor.config.language_model_path,
        device=device,
        workers=auto_workers(args.workers),
    )
    rows = [("instructor", report["instructor"])] + ([("text-only", report["text_only"])] if "text_only" in report else [])
    print(f"grounding probe: {report['instructor']['num_train']} train / {report['instructor']['num_test']} held-out examples "
          f"(targets referred to without their color)")
    print(f"{'':12} {'color':>7} {'cell':>7}")
    for name, r in rows:
        print(f"{name:12} {r['color']:7.3f} {r['cell']:7.3f}")
    r = report["instructor"]
    print(f"{'majority':12} {r['color_majority']:7.3f} {r['cell_majority']:7.3f}")
    print("instructor, by kind of reference:")
    for kind, row in r["by_kind"].items():
        print(f"  {kind:10} {row['color']:7.3f} {row['cell']:7.3f}   (n={row['n']})")
    if args.json:
        from pathlib import Path

        from .harness import write_json

        write_json(Path(args.json), report)
        print(f"wrote {args.json}")
    return 0

