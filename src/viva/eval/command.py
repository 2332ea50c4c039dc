"""`viva eval`: score a model, a baseline or another system's outputs on the world bench (see cli.py)."""

from __future__ import annotations

from pathlib import Path

from viva.errors import VivaUserError


REPORT_PNG_MAX_HEIGHT = 16000  # CSS px: the tables, charts and the first cases of a long report

def _editor(args):
    """The editor the arguments ask for (loading the model last, after every cheap check)."""
    from .editors import OutputsEditor, PipelineEditor, as_editor

    model_only = [f"--{n.replace('_', '-')}" for n in ("steps", "guidance", "video_guidance")
                  if getattr(args, n) is not None]
    if model_only and (args.baseline or args.outputs):
        raise VivaUserError(f"{', '.join(model_only)} only apply to a model; drop them with --baseline / --outputs")
    if args.baseline:
        return as_editor(args.baseline)
    if args.outputs:
        return OutputsEditor(args.outputs)

    from viva.pipeline import VivaPipeline, check_model_folder, default_model_path

    model = args.model if args.model is not None else default_model_path()
    if model is None:
        raise VivaUserError(
            "no --model given and no bundled model; pass --model DIR, --baseline identity|ground_truth or --outputs DIR"
        )
    check_model_folder(model)
    import torch

    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise VivaUserError(f"unknown --device {args.device!r}; use e.g. cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VivaUserError(f"--device {args.device}: no CUDA GPU is available here; use --device cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pipe = VivaPipeline.from_pretrained(model, device=device, precision=args.precision)
    return PipelineEditor(pipe, model, args.steps, args.guidance, args.video_guidance)


def run_eval_command(args) -> int:
    from .bench import export_bench, load_bench
    from .report import markdown_table
    from .runner import REPORT_NAME, RESULTS_NAME, TABLE_NAME, evaluate

    # 1. Checks that need nothing loaded.
    for name, low in (("cases", 1), ("seed", 0), ("batch_size", 1), ("threads", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise VivaUserError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise VivaUserError(f"--steps must be from 1 to 1000, got {args.steps}")
    if args.with_targets and not args.export_bench:
        raise VivaUserError("--with-targets goes with --export-bench DIR")
    if args.report_png:
        _check_report_png(args)
    bench = load_bench(args.bench, args.cases, args.categories)

    # 2. Export the bench's inputs for another system.
    if args.export_bench:
        folder = export_bench(bench, args.export_bench, targets=args.with_targets, overwrite=args.overwrite,
                              progress=not args.no_progress)
        extra = "; ground-truth targets in targets/ (a valid --outputs folder)" if args.with_targets else ""
        print(f"wrote {len(bench)} cases of bench {bench.name} v{bench.version} to {folder} (manifest.jsonl){extra}")
        return 0

    # 3. Evaluate.
    editor = _editor(args)
    out = Path(args.out) if args.out else Path("eval") / editor.name
    results = evaluate(editor, bench, out, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress,
                       previews=not args.no_previews, save_outputs=args.save_outputs, overwrite=args.overwrite)
    print(markdown_table(results), end="")
    print(f"wrote {out / RESULTS_NAME}, {out / TABLE_NAME} and {out / REPORT_NAME}")
    if args.report_png:
        from viva.browser import screenshot

        shot = screenshot(out / REPORT_NAME, args.report_png, max_height=REPORT_PNG_MAX_HEIGHT)
        broken = f"; {len(shot['broken_images'])} image(s) did not load" if shot["broken_images"] else ""
        part = "" if shot["shot_height"] == shot["height"] else f", its top {shot['shot_height']} px"
        print(f"rendered the report to {args.report_png} ({shot['width']}x{shot['height']} px page{part}){broken}")
    return 0


def _check_report_png(args) -> None:
    """--report-png PATH: a .png in an existing folder, and a browser to render with (checked before the run)."""
    from viva.browser import NO_CHROMIUM, find_chromium

    path = Path(args.report_png)
    if args.export_bench:
        raise VivaUserError("--report-png renders an eval report; drop it with --export-bench")
    if path.suffix.lower() != ".png":
        raise VivaUserError(f"--report-png {path}: give a file name ending in .png")
    if not path.parent.is_dir():
        raise VivaUserError(f"--report-png {path}: folder {path.parent} does not exist; create it first")
    if find_chromium() is None:
        raise VivaUserError(f"--report-png: {NO_CHROMIUM}")


# viva judge ---------------------------------------------------------------------------------------------


def judge_table(summary: dict) -> str:
    """A Markdown table of `viva.rewards.judge.summarize`'s output: a row per category and one overall."""
    from viva.rewards.judge import REFERENCE_CRITERIA

    names = ("instruction", "preservation", "quality", "subject")
    lines = ["| category | n | " + " | ".join(names) + " | average | errors |", "|---|" + "---:|" * (len(names) + 3)]
    rows = list(summary["by_category"].items()) + [("**overall**", summary["overall"])]
    for category, block in rows:
        cells = [f"{block[c]:.2f}" if c in block else "–" for c in (*REFERENCE_CRITERIA, "average")]
        lines.append(f"| {category} | {block['count']} | " + " | ".join(cells) + f" | {block['errors']} |")
    return "\n".join(lines) + "\n"


def run_judge_command(args) -> int:
    import json

    from viva.io.atomic import atomic_write_bytes
    from viva.rewards.judge import JudgeConfig, judge_manifest, summarize

    for name, low in (("frames", 1), ("max_side", 16), ("retries", 0), ("workers", 1)):
        if getattr(args, name) < low:
            raise VivaUserError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    manifest = Path(args.manifest)
    out = Path(args.out) if args.out else manifest.with_name(f"{manifest.stem}.judged.jsonl")
    if out.suffix != ".jsonl":
        raise VivaUserError(f"--out {out}: the results file is JSONL; give a name ending in .jsonl")
    if not out.parent.is_dir():
        raise VivaUserError(f"--out {out}: folder {out.parent} does not exist; create it first")
    config = JudgeConfig(base_url=args.url, model=args.model, api_key_env=args.key_env, num_frames=args.frames,
                         max_side=args.max_side, timeout=args.timeout, retries=args.retries)
    config.api_key()  # a missing key variable is an error before any request
    records = judge_manifest(manifest, out, config, outputs_dir=args.outputs, workers=args.workers,
                             skip_errors=args.skip_errors, progress=not args.no_progress)
    summary = {"judge": config.fingerprint(), "manifest": str(manifest), "results": str(out), **summarize(records)}
    summary_path = out.with_name(f"{out.stem}.summary.json")
    atomic_write_bytes(summary_path, (json.dumps(summary, indent=2) + "\n").encode())
    print(judge_table(summary), end="")
    print(f"wrote {out} and {summary_path}")
    return 0
