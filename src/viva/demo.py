"""`viva demo`: edit every bundled sample clip with a model (the bundled default model unless told
otherwise), write each edited video, a side-by-side preview PNG of all of them, and say how each edit
scores on the world verifier (the samples carry their ground truth).

    OUT/<sample>.mp4     the edited clip (the model's size and length, the source's frame rate)
    OUT/preview.png      per sample: its instruction and verdict, then a row of source frames (with the
                         reference image at the end) above a row of edited frames
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import VivaUserError
from .samples import Sample, load_samples

PREVIEW_SCALE = 2  # preview cells: 64 px frames shown at 128 px


@dataclass
class DemoEdit:
    """One edited sample. frames / source: uint8 [T,H,W,3]; reference: uint8 [H,W,3] or None; passed /
    score: the world verifier's verdict and mean clause score (None without ground truth)."""

    sample: Sample
    frames: np.ndarray
    source: np.ndarray
    reference: np.ndarray | None
    seconds: float
    passed: bool | None
    score: float | None


def demo_preview(edits: list[DemoEdit], scale: int = PREVIEW_SCALE) -> np.ndarray:
    """uint8 [H',W',3]: per edit a text block (name, verdict, instruction), then the source frames (+ the
    reference) in one row and the edited frames in the row below, every cell upscaled `scale` times."""
    from .data.preview import BACKGROUND, fit_image, grid_image, stack_images, text_block, upscale

    blocks = []
    for edit in edits:
        T, H, W = edit.frames.shape[:3]
        source_row = [upscale(edit.source[t], scale) for t in range(T)]
        edited_row = [upscale(edit.frames[t], scale) for t in range(T)]
        if edit.reference is not None:
            source_row.append(fit_image(edit.reference, H * scale, W * scale))
            edited_row.append(np.full((H * scale, W * scale, 3), BACKGROUND, dtype=np.uint8))
        grid = grid_image([source_row, edited_row], H * scale, W * scale)
        verdict = "" if edit.passed is None else f"  verifier: {'pass' if edit.passed else 'fail'} ({edit.score:.2f})"
        rows = "top: source" + (" + reference" if edit.reference is not None else "") + ", bottom: edited"
        label = f"[{edit.sample.name}]{verdict}  ({rows})"
        blocks += [text_block(label, edit.sample.instruction, grid.shape[1]), grid]
    return stack_images(blocks)


def run_demo(
    out: str | os.PathLike,
    model: str | os.PathLike | None = None,
    samples: list[Sample] | None = None,
    steps: int | None = None,
    seed: int = 0,
    precision: str = "float32",
    device=None,
    progress: bool = False,
) -> list[DemoEdit]:
    """Edit `samples` (default: the bundled ones) with the model folder `model` (default: the bundled
    model), writing OUT/<name>.mp4 for each and OUT/preview.png (each file atomically). Returns the edits."""
    from .io import write_image, write_video
    from .pipeline import VivaPipeline, check_model_folder, default_model_path, load_reference_input, load_video_input

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VivaUserError(f"--out {out} is a file; give a folder for the demo's outputs")
    if model is None:
        model = default_model_path()
        if model is None:
            raise VivaUserError("no bundled model in this installation; pass --model DIR (a trained model folder)")
    check_model_folder(model)
    samples = load_samples() if samples is None else samples
    if not samples:
        raise VivaUserError("no sample clips found (viva/assets/samples/); reinstall viva or run scripts/make_samples.py")
    pipe = VivaPipeline.from_pretrained(model, device=device, precision=precision)
    cfg = pipe.editor.config
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VivaUserError(f"cannot create --out {out}: {e.strerror or e}") from None

    edits = []
    for sample in samples:
        frames, fps, _ = load_video_input(sample.video, cfg.height, cfg.width, cfg.num_frames)
        reference = None
        if sample.reference is not None:
            reference, _ = load_reference_input(sample.reference, cfg.height, cfg.width)
        start = time.perf_counter()
        result = pipe(
            frames, sample.instruction, reference_image=reference, num_inference_steps=steps, seed=seed,
            source_fps=fps, progress=progress,
        )
        seconds = time.perf_counter() - start
        verdict = sample.verify(result.frames) if result.frames.shape == result.source.shape else None
        write_video(out / f"{sample.name}.mp4", result.frames, fps=result.fps)
        edits.append(
            DemoEdit(
                sample, result.frames, result.source, result.reference, seconds,
                None if verdict is None else bool(verdict.passed), None if verdict is None else float(verdict.score),
            )
        )
    write_image(out / "preview.png", demo_preview(edits))
    return edits


def cmd_demo(args, device) -> int:
    """The `viva demo` command (arguments checked by viva.cli): run the demo on `device` and print one line
    per edit and where the files are."""
    model = args.model
    start = time.perf_counter()
    edits = run_demo(args.out, model, steps=args.steps, seed=args.seed, precision=args.precision,
                     device=device, progress=not args.no_progress)
    from .pipeline import default_model_path

    print(f"model: {model if model is not None else f'the bundled default model ({default_model_path()})'}")
    for edit in edits:
        verdict = "" if edit.passed is None else f"  verifier {'PASS' if edit.passed else 'fail'} {edit.score:.2f}"
        print(f"{edit.sample.name:>20}: {edit.seconds:5.2f} s{verdict}  \"{edit.sample.instruction}\"")
    out = Path(args.out)
    print(f"wrote {len(edits)} edited clips ({', '.join(f'{e.sample.name}.mp4' for e in edits)}) to {out}/")
    print(f"wrote {out / 'preview.png'} (side by side: source above edited, per sample)")
    print(f"demo took {time.perf_counter() - start:.1f} s")
    return 0
