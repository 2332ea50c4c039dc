"""What the runner scores: anything that turns bench cases into edited clips.

An editor has `name`, `info()` (a JSON-friendly dict: what it is and its settings; part of the run's
identity, so a resumed run must match it) and `edit(cases, seeds) -> list of uint8 [T,H,W,3]`, one clip
per case at the case's size. Provided:

- `IdentityEditor`: returns the source (the "follows nothing, preserves everything" baseline).
- `GroundTruthEditor`: returns the ground-truth target (the ceiling; checks bench and metrics).
- `PipelineEditor`: a `VivaPipeline`, batched through `edit_batch`, one fixed seed per case.
- `OutputsEditor`: clips another system wrote, one per case id (layout below).
- `FunctionEditor`: any `fn(case, seed) -> frames`.

Outputs folder layout (`viva eval --outputs DIR`): for each case id (e.g. "add-0003") one of
DIR/<id>.mp4 (or .mov .mkv .webm .avi .gif), DIR/<id>.png (or .jpg .jpeg .webp: a 1-frame result) or a
folder DIR/<id>/ of numbered frames (PNG/JPEG, lossless with PNG). Each result is read with `viva.io`
and fitted to the case's size with `viva.io.fit_to_model` (T frames spread evenly over the clip, scaled so
the short side covers and center-cropped, padded with its last frame when short). `viva eval
--export-bench DIR` writes the inputs (sources, references, manifest.jsonl) for another system.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from viva.errors import VivaUserError

from .bench import BenchCase


def conform(frames, case: BenchCase, fps: float = 8.0) -> np.ndarray:
    """An editor's result as uint8 [T,H,W,3] of the case's size (fitted with `viva.io.fit_to_model`)."""
    from viva.io import fit_to_model
    from viva.pipeline import to_uint8_frames

    frames = to_uint8_frames(frames, name=f"output of {case.id}")
    T, H, W = case.source.shape[:3]
    if frames.shape[:3] != (T, H, W):
        frames, _ = fit_to_model(frames, fps, H, W, T)
    return np.ascontiguousarray(frames)


class IdentityEditor:
    """Returns each case's source unchanged."""

    name = "identity"

    def info(self) -> dict:
        return {"kind": "baseline", "name": self.name}

    def edit(self, cases: Sequence[BenchCase], seeds: Sequence[int]) -> list[np.ndarray]:
        return [np.array(c.source) for c in cases]


class GroundTruthEditor:
    """Returns each case's ground-truth target (every world-bench case has one)."""

    name = "ground_truth"

    def info(self) -> dict:
        return {"kind": "baseline", "name": self.name}

    def edit(self, cases: Sequence[BenchCase], seeds: Sequence[int]) -> list[np.ndarray]:
        missing = [c.id for c in cases if c.target is None]
        if missing:
            raise VivaUserError(f"case {missing[0]} has no ground-truth target; the ground_truth baseline needs one")
        return [np.array(c.target) for c in cases]


class FunctionEditor:
    """Wraps `fn(case, seed) -> frames` (uint8 or float-in-[0,1] [T,H,W,3], any size: fitted)."""

    def __init__(self, fn: Callable[[BenchCase, int], np.ndarray], name: str | None = None):
        self.fn = fn
        fn_name = getattr(fn, "__name__", "")
        self.name = name or (fn_name if fn_name.isidentifier() else "function")

    def info(self) -> dict:
        return {"kind": "function", "name": self.name}

    def edit(self, cases: Sequence[BenchCase], seeds: Sequence[int]) -> list[np.ndarray]:
        return [conform(self.fn(c, s), c) for c, s in zip(cases, seeds)]


class PipelineEditor:
    """A `VivaPipeline`: the cases of a chunk in one `edit_batch` call (each with its own seed, so a
    case's result does not depend on its batch); steps / guidance None = the model's defaults."""

    def __init__(self, pipe, model_path: str | os.PathLike | None = None, steps: int | None = None,
                 guidance_scale: float | None = None, video_guidance_scale: float | None = None):
        self.pipe = pipe
        self.model_path = None if model_path is None else str(model_path)
        defaults = pipe.defaults()
        self.steps = int(defaults["num_inference_steps"] if steps is None else steps)
        self.guidance_scale = float(defaults["guidance_scale"] if guidance_scale is None else guidance_scale)
        self.video_guidance_scale = float(
            defaults["video_guidance_scale"] if video_guidance_scale is None else video_guidance_scale
        )
        self.name = Path(self.model_path).name if self.model_path else "pipeline"

    def info(self) -> dict:
        return {
            "kind": "model",
            "name": self.name,
            "model": None if self.model_path is None else str(Path(self.model_path).resolve()),
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "video_guidance_scale": self.video_guidance_scale,
            "precision": getattr(self.pipe, "precision", "float32"),
        }

    def edit(self, cases: Sequence[BenchCase], seeds: Sequence[int]) -> list[np.ndarray]:
        results = self.pipe.edit_batch(
            [c.source for c in cases],
            [c.instruction for c in cases],
            [c.reference for c in cases],
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            video_guidance_scale=self.video_guidance_scale,
            seed=[int(s) for s in seeds],
        )
        return [conform(r.frames, c, r.fps) for r, c in zip(results, cases)]


def _output_suffixes() -> tuple[str, ...]:
    from viva.io import IMAGE_FORMATS, VIDEO_FORMATS

    return (*VIDEO_FORMATS, *IMAGE_FORMATS)


class OutputsEditor:
    """Results written by another system into `folder`, one per case id (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            what = "is a file, not a folder" if self.folder.exists() else "does not exist"
            raise VivaUserError(
                f"--outputs folder {self.folder} {what}; pass the folder holding one result per case id "
                "(e.g. add-0000.mp4; see viva eval --export-bench)"
            )
        self.name = self.folder.resolve().name

    def info(self) -> dict:
        return {"kind": "outputs", "name": self.name, "outputs": str(self.folder.resolve())}

    def path_of(self, case_id: str) -> Path | None:
        """The result file (or frame folder) of a case, or None."""
        folder = self.folder / case_id
        if folder.is_dir():
            return folder
        for suffix in _output_suffixes():
            for name in (case_id + suffix, case_id + suffix.upper()):
                if (self.folder / name).is_file():
                    return self.folder / name
        return None

    def check(self, ids: Sequence[str]) -> None:
        """VivaUserError naming the missing results, if any case has none."""
        missing = [i for i in ids if self.path_of(i) is None]
        if missing:
            raise VivaUserError(
                f"--outputs folder {self.folder} has no result for {len(missing)} of {len(ids)} cases (first: "
                f"{missing[0]}); write one file per case id, e.g. {missing[0]}.mp4 or a folder {missing[0]}/ of frames"
            )

    def edit(self, cases: Sequence[BenchCase], seeds: Sequence[int]) -> list[np.ndarray]:
        from viva.io import read_video

        out = []
        for case in cases:
            path = self.path_of(case.id)
            if path is None:
                self.check([case.id])
            frames, info = read_video(path)
            out.append(conform(frames, case, info.fps))
        return out


def as_editor(editor) -> object:
    """An editor object from an editor, a VivaPipeline, a baseline name or a function `fn(case, seed)`."""
    if hasattr(editor, "edit") and hasattr(editor, "info"):
        return editor
    if isinstance(editor, str):
        baselines = {"identity": IdentityEditor, "ground_truth": GroundTruthEditor}
        if editor not in baselines:
            raise VivaUserError(f"unknown baseline {editor!r}; choose from {', '.join(baselines)}")
        return baselines[editor]()
    if hasattr(editor, "edit_batch"):
        return PipelineEditor(editor)
    if callable(editor):
        return FunctionEditor(editor)
    raise TypeError(f"cannot evaluate {type(editor).__name__}: give an editor, a VivaPipeline or fn(case, seed)")
