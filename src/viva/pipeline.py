"""`VivaPipeline`: load an editor from a model folder and edit videos with it.

    pipe = VivaPipeline.from_pretrained("runs/mini/model")
    result = pipe("clip.mp4", "turn the red circle blue", reference_image=None, seed=0)
    result.frames      # uint8 [T,H,W,3] at the model's size; result.notes: what was done to the input
    pipe.save_pretrained("exported/model")

Inputs are fitted to the model (`EditorConfig.height/width/num_frames`) with `viva.io.fit_to_model`: N
frames spread evenly over the clip (or the first N at `fps`), scaled so the short side covers, center
cropped, short clips padded with their last frame. A 1-frame input (an image) is edited as a 1-frame
clip, as the model was trained on images. Each change is reported in `notes` as one readable line.

A model folder (HF-style, one subfolder per component, safetensors only):

    MODEL/model_index.json   {"_class_name": "VivaPipeline", "vae": "MiniVAE", "instructor": ..., "editor": {...}}
    MODEL/vae/               config.json + model.safetensors
    MODEL/instructor/        config.json + model.safetensors
    MODEL/refiner/           config.json + model.safetensors
    MODEL/denoiser/          config.json + model.safetensors

Component classes are looked up in a fixed registry (never imported by name from the file), so loading a
folder cannot run arbitrary code.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from viva.errors import VivaUserError
from viva.io.atomic import replace_dir

if TYPE_CHECKING:  # torch is imported lazily: `viva edit` reports a bad argument before paying for it
    import torch

INDEX_NAME = "model_index.json"
COMPONENTS = ("vae", "instructor", "refiner", "denoiser")


def component_registry() -> dict[str, type]:
    """Class name -> class for every component a model folder may name."""
    from viva.models.dit import MiniDiT
    from viva.models.instructor import MiniVLMInstructor, TextOnlyInstructor
    from viva.models.refiner import MiniTokenRefiner
    from viva.models.vae import MiniVAE
    from viva.models.backbones.hunyuan import HunyuanDenoiser, HunyuanRefiner, HunyuanVAE
    from viva.models.backbones.vlm import VLMInstructor
    from viva.models.backbones.wan import MaskedTokens, T5Instructor, WanDenoiser, WanVAE

    classes = (MiniVAE, MiniVLMInstructor, TextOnlyInstructor, MiniTokenRefiner, MiniDiT)
    # full-scale adapters (viva.models.backbones)
    classes += (WanVAE, T5Instructor, MaskedTokens, WanDenoiser, VLMInstructor, HunyuanVAE, HunyuanRefiner,
                HunyuanDenoiser)
    return {cls.__name__: cls for cls in classes}


def save_editor(editor, directory: str | os.PathLike, dtype=None) -> Path:
    """Write `editor` (a VivaEditor) as a model folder, atomically (temp folder, then rename). dtype: store
    the weights in this torch dtype (e.g. torch.float16 for a small bundled model); None: as they are."""
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise VivaUserError(f"cannot save model to {target}: it is a file; give a folder path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        index = {"_class_name": "VivaPipeline", "editor": editor.config.to_dict()}
        for name in COMPONENTS:
            module = getattr(editor, name)
            # (full-scale backbones save their weights as loaded: they take no dtype)
            module.save_pretrained(tmp / name, **({} if dtype is None else {"dtype": dtype}))
            index[name] = type(module).__name__
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_model_folder(directory: str | os.PathLike) -> dict:
    """Cheap checks of a model folder (no torch, nothing built): it exists, has a readable index and every
    component's config.json + model.safetensors. Returns the index; VivaUserError names what is wrong."""
    folder = Path(directory)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise VivaUserError(f"model folder {folder} {what}; pass a folder written by viva (with {INDEX_NAME})")
    index_path = folder / INDEX_NAME
    if not index_path.is_file():
        raise VivaUserError(
            f"model folder {folder} has no {INDEX_NAME}; pass a folder written by viva (e.g. a run's model/ folder)"
        )
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VivaUserError(f"{index_path} is not valid JSON ({e}); re-export the model") from None
    if not isinstance(index, dict):
        raise VivaUserError(f"{index_path} is not a model index (a JSON object); re-export the model")
    for name in COMPONENTS:
        for file_name in ("config.json", "model.safetensors"):
            if not (folder / name / file_name).is_file():
                raise VivaUserError(
                    f"model folder {folder} is incomplete: {name}/{file_name} is missing; "
                    "pass a complete folder written by viva (save_pretrained / training)"
                )
    return index


def load_editor(directory: str | os.PathLike, device=None):
    """Build a VivaEditor from a model folder written by `save_editor` (eval mode)."""
    from viva.models.editor import EditorConfig, VivaEditor

    folder = Path(directory)
    index = check_model_folder(folder)  # fail before building anything (MiniLM takes a second)
    index_path = folder / INDEX_NAME
    registry = component_registry()
    parts = {}
    for name in COMPONENTS:
        class_name = index.get(name)
        if class_name not in registry:
            raise VivaUserError(
                f"{index_path} names {class_name!r} for {name}; known components: {', '.join(sorted(registry))}"
            )
        parts[name] = registry[class_name].from_pretrained(folder / name)
    _check_compatible(folder, parts)
    editor = VivaEditor(config=EditorConfig.from_dict(index.get("editor", {})), **parts)
    if device is not None:
        editor.to(device)
    return editor.eval()


def _check_compatible(folder: Path, parts: dict) -> None:
    """Raise a VivaUserError when the components of a model folder cannot work together (a folder
    assembled from different models), instead of a shape error in the middle of an edit."""
    vae, instructor, refiner, denoiser = (parts[name] for name in COMPONENTS)
    checks = [
        ("VAE latent channels", getattr(vae, "latent_channels", None), "denoiser latent channels",
         getattr(getattr(denoiser, "config", None), "latent_channels", None)),
        ("instructor width", getattr(instructor, "hidden_size", None), "refiner input width",
         getattr(getattr(refiner, "config", None), "in_dim", None)),
        ("refiner width", getattr(getattr(refiner, "config", None), "hidden_size", None), "denoiser condition width",
         getattr(getattr(denoiser, "config", None), "cond_dim", None)),
    ]
    for name_a, a, name_b, b in checks:
        if a is not None and b is not None and a != b:
            raise VivaUserError(
                f"model folder {folder} mixes incompatible components ({name_a} {a} != {name_b} {b}); "
                "export the model again with save_editor"
            )


# ---------------------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------------------

# Used when neither the call nor the model's EditorConfig says otherwise (EditorConfig.default_*).
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE_SCALE = 3.0  # instruction (text) scale
DEFAULT_VIDEO_GUIDANCE_SCALE = 1.5  # source-video scale
DEFAULT_SOURCE_FPS = 8.0  # frame rate assumed for arrays (the mini world's rate)
BUNDLED_MODEL = Path(__file__).parent / "assets" / "model"  # where a bundled default model would live
PRECISIONS = ("float32", "bfloat16")


def parse_device(name: str):
    """The torch.device a user named (--device), or a one-line VivaUserError: unknown name, or CUDA asked
    for where none is visible."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise VivaUserError(f"unknown --device {name!r} ({' '.join(str(e).split())}); use e.g. cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VivaUserError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return device


def default_model_path() -> Path | None:
    """The model folder `viva edit` uses without --model: the bundled one, or None when none ships."""
    return BUNDLED_MODEL if (BUNDLED_MODEL / INDEX_NAME).is_file() else None


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------

PREVIEW_BACKGROUND = (24, 24, 28)
PREVIEW_GAP = 4  # pixels around and between preview cells
PREVIEW_MIN_CELL = 128  # preview cells are upscaled (nearest) to at least this many pixels on the short side


@dataclass
class EditResult:
    """One edit. frames: uint8 [T,H,W,3] (the model's size); source: the fitted input uint8 [T,H,W,3];
    reference: the fitted reference uint8 [H,W,3] or None; notes: what was done to the inputs, one
    readable line each; fps: the frame rate to write `frames` at (the input's, or what keeps its
    duration after sampling, or the `fps` asked for)."""

    frames: np.ndarray
    source: np.ndarray
    reference: np.ndarray | None
    instruction: str
    notes: list[str] = field(default_factory=list)
    fps: float = DEFAULT_SOURCE_FPS
    seed: int = 0
    num_inference_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    video_guidance_scale: float = DEFAULT_VIDEO_GUIDANCE_SCALE
    seconds: float = 0.0

    def preview(self, scale: int | None = None) -> np.ndarray:
        """A PNG-ready grid uint8 [H',W',3]: one row per frame, columns source | result (| reference, in the
        first row only). Cells are upscaled by `scale` (default: the smallest integer making the short side
        >= 128 px) with PREVIEW_GAP pixels of background around them:
        W' = cols * W * scale + (cols + 1) * GAP, H' = T * H * scale + (T + 1) * GAP."""
        T, H, W = self.frames.shape[:3]
        if scale is None:
            scale = max(1, math.ceil(PREVIEW_MIN_CELL / min(H, W)))
        cols = 3 if self.reference is not None else 2
        gap, ch, cw = PREVIEW_GAP, H * scale, W * scale
        grid = np.empty((T * ch + (T + 1) * gap, cols * cw + (cols + 1) * gap, 3), dtype=np.uint8)
        grid[:] = PREVIEW_BACKGROUND

        def put(row: int, col: int, image: np.ndarray) -> None:
            top, left = gap + row * (ch + gap), gap + col * (cw + gap)
            grid[top : top + ch, left : left + cw] = image.repeat(scale, axis=0).repeat(scale, axis=1)

        for t in range(T):
            put(t, 0, self.source[min(t, len(self.source) - 1)])
            put(t, 1, self.frames[t])
        if self.reference is not None:
            put(0, 2, self.reference)
        return grid


# ---------------------------------------------------------------------------------------------------------
# Input conversion (uint8 channels-last arrays in, notes out)
# ---------------------------------------------------------------------------------------------------------


def _is_tensor(value: Any) -> bool:
    """isinstance(value, torch.Tensor) without importing torch when nothing could be a tensor yet."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _float_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 1.0)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"{name}: float pixels must be in [0, 1] (got {lo:.3g}..{hi:.3g}); "
            "for the model's [-1, 1] range pass (x + 1) / 2"
        )
    return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def to_uint8_frames(video: Any, name: str = "video") -> np.ndarray:
    """An in-memory clip -> uint8 [T,H,W,3]. Accepts numpy arrays or torch tensors, channels last, shaped
    [T,H,W,3] or [H,W,3] (an image), either uint8 or float in [0, 1]."""
    if _is_tensor(video):
        video = video.detach().cpu()
        video = video.float().numpy() if video.is_floating_point() else video.numpy()
    if not isinstance(video, np.ndarray):
        raise TypeError(f"{name} must be a path, a numpy array or a torch tensor, got {type(video).__name__}")
    if video.ndim == 3:
        video = video[None]
    if video.ndim != 4 or video.shape[-1] != 3 or 0 in video.shape:
        raise ValueError(f"{name} must be [T,H,W,3] or [H,W,3] (channels last), got shape {tuple(video.shape)}")
    if np.issubdtype(video.dtype, np.floating):
        return _float_to_uint8(video, name)
    if video.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got {video.dtype}")
    return np.ascontiguousarray(video)


def to_uint8_image(image: Any, name: str = "reference_image") -> np.ndarray:
    """An in-memory image -> uint8 [H,W,3]: numpy/torch [H,W,3] or [H,W,4] (alpha flattened onto white),
    uint8 or float in [0, 1]."""
    if _is_tensor(image):
        image = image.detach().cpu()
        image = image.float().numpy() if image.is_floating_point() else image.numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a path, a numpy array or a torch tensor, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[-1] not in (3, 4) or 0 in image.shape:
        raise ValueError(f"{name} must be [H,W,3] or [H,W,4] (channels last), got shape {tuple(image.shape)}")
    if np.issubdtype(image.dtype, np.floating):
        image = _float_to_uint8(image, name)
    elif image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got {image.dtype}")
    if image.shape[-1] == 4:  # composite onto white, as read_image does for files
        alpha = image[..., 3:].astype(np.float32) / 255.0
        image = (image[..., :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(image)


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def load_video_input(
    video: Any,
    height: int,
    width: int,
    num_frames: int,
    fps: float | None = None,
    source_fps: float = DEFAULT_SOURCE_FPS,
) -> tuple[np.ndarray, float, list[str]]:
    """Fit a clip to the model: (uint8 [N,height,width,3], output fps, notes).

    `video`: a path (video file, frame folder or image; anything `viva.io.read_video` reads) or an array /
    tensor (see `to_uint8_frames`; its frame rate is `source_fps`). N = num_frames, or 1 for a 1-frame
    input (an image). `fps`: sample the first N frames at this rate (and write the result at it); None
    spreads N frames evenly over the whole clip and keeps its duration (output fps = rate * N / total).
    Large files are never decoded whole: only the selected frames are converted.
    """
    from viva.io import fit_to_model, probe_video, read_video
    from viva.io.limits import check_fps

    check_fps("fps", fps)
    check_fps("source_fps", source_fps)
    notes: list[str] = []
    if _is_path(video):
        info = probe_video(video)
        total, rate = info.num_frames, info.fps
        n = 1 if total == 1 else num_frames
        if fps is not None and n > 1:
            frames, _ = read_video(video, num_frames=n, fps=fps)
            if abs(fps - rate) > 1e-6 or len(frames) < total:
                notes.append(f"sampled {len(frames)} of {total} frames at {fps:g} fps (source {rate:g} fps)")
            out_fps = fps
        elif total > n:
            frames, _ = read_video(video, num_frames=n)
            notes.append(f"sampled {n} of {total} frames evenly")
            out_fps = rate * n / total
        else:
            frames, _ = read_video(video)
            out_fps = rate
    else:
        frames = to_uint8_frames(video)
        total, rate = len(frames), source_fps
        n = 1 if total == 1 else num_frames
        if fps is not None and n > 1:
            from viva.io import sample_frames

            frames = sample_frames(frames, rate, n, fps)
            if abs(fps - rate) > 1e-6 or len(frames) < total:
                notes.append(f"sampled {len(frames)} of {total} frames at {fps:g} fps (source {rate:g} fps)")
            out_fps = fps
        else:
            out_fps = rate * n / total if total > n else rate
    if n == 1 and total == 1 and num_frames > 1:
        notes.append("single image: edited as a 1-frame clip")
    # Space (and padding of short clips); time was sampled above, so fit_to_model only resizes / pads.
    frames, fit_notes = fit_to_model(frames, out_fps, height, width, n)
    return frames, float(out_fps), notes + fit_notes


def load_reference_input(image: Any, height: int, width: int) -> tuple[np.ndarray, list[str]]:
    """A reference image (path or array, see `to_uint8_image`) -> (uint8 [height,width,3], notes)."""
    from viva.io import read_image, resize_center_crop

    if _is_path(image):
        path = Path(image)
        if path.is_dir():
            raise VivaUserError(f"reference image {path} is a folder; give an image file (PNG, JPEG or WebP)")
        array = read_image(path)
    else:
        array = to_uint8_image(image)
    notes = []
    src_h, src_w = array.shape[:2]
    if (src_h, src_w) != (height, width):
        array = resize_center_crop(array[None], height, width)[0]
        cropped = abs(src_w / src_h - width / height) > 1e-6
        notes.append(f"reference resized {src_w}x{src_h} -> {width}x{height}" + (" (center crop)" if cropped else ""))
    return array, notes


def check_instruction(instruction: Any) -> str:
    """The instruction, stripped; VivaUserError when it is not a string or says nothing."""
    if not isinstance(instruction, str):
        raise VivaUserError(f"the instruction must be text, got {type(instruction).__name__}")
    text = " ".join(instruction.split())
    if not text:
        raise VivaUserError('the instruction is empty; say what to change, e.g. -i "make the red circle blue"')
    return text


def _check_settings(steps: Any, guidance_scale: Any, video_guidance_scale: Any, seeds: Sequence[Any]) -> None:
    if isinstance(steps, bool) or not isinstance(steps, Integral) or not 1 <= steps <= 1000:
        raise VivaUserError(f"num_inference_steps must be a whole number from 1 to 1000, got {steps!r}")
    for name, value in (("guidance_scale", guidance_scale), ("video_guidance_scale", video_guidance_scale)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not 0 <= value <= 100:
            raise VivaUserError(f"{name} must be a number from 0 to 100, got {value!r}")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed < 2**63:
            raise VivaUserError(f"seed must be a whole number >= 0, got {seed!r}")


# ---------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------


class VivaPipeline:
    """Edits videos with a `VivaEditor`: fit the inputs, encode the condition once, integrate the ODE
    with two-scale classifier-free guidance (the three guidance passes batched into one denoiser call per
    step), decode, return uint8 frames.

    precision: "float32" (default) or "bfloat16" (CPU/GPU autocast: matmuls in bf16, residuals float32).
    Sampling defaults (steps, both guidance scales) come from the model's EditorConfig.default_*.
    Results are deterministic for a seed: the initial noise of each item comes from
    torch.Generator().manual_seed(seed) on the CPU, so an item edited alone or inside a batch starts from
    the same noise.
    """

    def __init__(self, editor, precision: str = "float32"):
        if precision not in PRECISIONS:
            raise VivaUserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.editor = editor.eval()
        self.precision = precision

    # -- folders ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: torch.device | str | None = None, precision: str = "float32"
    ) -> "VivaPipeline":
        """Load a model folder written by `save_pretrained` / `save_editor`."""
        return cls(load_editor(directory, device=device), precision=precision)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the editor as a model folder (atomically)."""
        return save_editor(self.editor, directory)

    def enable_model_cpu_offload(self, device: torch.device | str = "cuda") -> "VivaPipeline":
        """Run the refiner and denoiser on `device` and keep the VAE and instructor in CPU memory, moving each
        there only while it encodes or decodes (as diffusers' method of that name): the accelerator never
        holds the frozen encoders during sampling. Outputs are the same as without offload."""
        self.editor.place(device, offload_frozen=True)
        return self

    # -- settings -----------------------------------------------------------------------------------
    @property
    def config(self):
        return self.editor.config

    @property
    def device(self) -> torch.device:
        return self.editor.device

    def defaults(self) -> dict[str, float | int]:
        """The sampling settings used when a call gives none (from the model's EditorConfig)."""
        cfg = self.config
        return {
            "num_inference_steps": int(getattr(cfg, "default_steps", DEFAULT_STEPS)),
            "guidance_scale": float(getattr(cfg, "default_guidance_scale", DEFAULT_GUIDANCE_SCALE)),
            "video_guidance_scale": float(getattr(cfg, "default_video_guidance_scale", DEFAULT_VIDEO_GUIDANCE_SCALE)),
        }

    def _autocast(self):
        import torch

        if self.precision == "bfloat16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _instruction_notes(self, instruction: str) -> list[str]:
        """A note when the instructor will cut the instruction short."""
        instructor = self.editor.instructor
        tokenizer = getattr(instructor, "tokenizer", None)
        limit = getattr(getattr(instructor, "config", None), "max_text_tokens", None)
        if tokenizer is None or not limit:
            return []
        count = len(tokenizer(instruction, add_special_tokens=False)["input_ids"])
        if count <= limit:
            return []
        return [f"instruction truncated to its first {limit} of {count} word pieces"]

    def prepare(
        self,
        video: Any,
        instruction: str,
        reference_image: Any = None,
        fps: float | None = None,
        source_fps: float = DEFAULT_SOURCE_FPS,
    ) -> tuple[np.ndarray, str, np.ndarray | None, float, list[str]]:
        """Validate and fit one item: (source uint8 [T,H,W,3], instruction, reference uint8 [H,W,3] or None,
        output fps, notes). Raises VivaUserError for bad inputs before any model work."""
        text = check_instruction(instruction)
        cfg = self.config
        frames, out_fps, notes = load_video_input(video, cfg.height, cfg.width, cfg.num_frames, fps, source_fps)
        reference = None
        if reference_image is not None:
            reference, ref_notes = load_reference_input(reference_image, cfg.height, cfg.width)
            notes += ref_notes
        return frames, text, reference, out_fps, notes + self._instruction_notes(text)

    # -- editing ------------------------------------------------------------------------------------
    def __call__(
        self,
        video: Any,
        instruction: str,
        reference_image: Any = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        video_guidance_scale: float | None = None,
        seed: int = 0,
        fps: float | None = None,
        source_fps: float = DEFAULT_SOURCE_FPS,
        progress: bool = False,
        callback: Callable[[int, int], None] | None = None,
    ) -> EditResult:
        """Edit one clip.

        video: a path (any format viva.io reads: video file, frame folder, image) or uint8 / float-in-[0,1]
        array or tensor [T,H,W,3] (or [H,W,3]); instruction: non-empty text; reference_image: None, a path
        or an [H,W,3] / [H,W,4] array. num_inference_steps, guidance_scale (instruction),
        video_guidance_scale (source video): None = the model's defaults (`defaults()`). seed: the noise
        seed (same seed, same result). fps: sample the input at this rate (None: N frames evenly);
        source_fps: the frame rate of an array input. progress: a tqdm bar on stderr; callback(step,
        total) after each denoising step.
        """
        return self.edit_batch(
            [video],
            [instruction],
            None if reference_image is None else [reference_image],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            video_guidance_scale=video_guidance_scale,
            seed=seed,
            fps=fps,
            source_fps=source_fps,
            progress=progress,
            callback=callback,
        )[0]

    def edit_batch(
        self,
        videos: Any,
        instructions: Sequence[str],
        references: Sequence[Any] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        video_guidance_scale: float | None = None,
        seed: int | Sequence[int] = 0,
        fps: float | None = None,
        source_fps: float = DEFAULT_SOURCE_FPS,
        batch_size: int | None = None,
        progress: bool = False,
        callback: Callable[[int, int], None] | None = None,
    ) -> list[EditResult]:
        """Edit B items with the same sampler as `__call__`, batched.

        videos: uint8 / float array or tensor [B,T,H,W,3], or a list of anything `__call__` accepts;
        instructions: B strings; references: None, or B items (None where an item has none); seed: one seed
        for every item (item i then matches `__call__(..., seed=seed)`) or B seeds. Items are grouped by
        clip length and by whether they have a reference (the model batches only alike items) and run
        `batch_size` at a time (None: a whole group at once). Returns B EditResults in input order.
        """
        if isinstance(videos, np.ndarray) or _is_tensor(videos):
            if videos.ndim != 5:
                raise ValueError(f"a batch of videos must be [B,T,H,W,3], got shape {tuple(videos.shape)}")
            videos = list(videos)
        videos = list(videos)
        if isinstance(instructions, str):
            raise TypeError("instructions must be a list of strings, one per video")
        instructions = list(instructions)
        count = len(videos)
        if count == 0:
            raise ValueError("no videos to edit")
        references = [None] * count if references is None else list(references)
        seeds = [seed] * count if isinstance(seed, Integral) else list(seed)
        for name, values in (("instructions", instructions), ("references", references), ("seeds", seeds)):
            if len(values) != count:
                raise ValueError(f"{name} has {len(values)} items for {count} videos")
        defaults = self.defaults()
        steps = defaults["num_inference_steps"] if num_inference_steps is None else num_inference_steps
        text_scale = defaults["guidance_scale"] if guidance_scale is None else guidance_scale
        video_scale = defaults["video_guidance_scale"] if video_guidance_scale is None else video_guidance_scale
        _check_settings(steps, text_scale, video_scale, seeds)
        if batch_size is not None and not (isinstance(batch_size, Integral) and batch_size >= 1):
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")

        # 1. Fit every input (all user errors surface here, before any model work).
        items = [self.prepare(v, i, r, fps, source_fps) for v, i, r in zip(videos, instructions, references)]

        # 2. Group alike items (clip length, reference or not), keeping input order inside groups.
        groups: dict[tuple[int, bool], list[int]] = {}
        for index, (frames, _, reference, _, _) in enumerate(items):
            groups.setdefault((len(frames), reference is not None), []).append(index)
        chunks = []
        for indices in groups.values():
            size = batch_size or len(indices)
            chunks += [indices[k : k + size] for k in range(0, len(indices), size)]

        # 3. Sample chunk by chunk, with one progress bar over all denoising steps.
        total = steps * len(chunks)
        done = 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="editing", unit="step", file=sys.stderr, dynamic_ncols=True)

        def on_step(i: int, n: int, x: torch.Tensor) -> None:
            nonlocal done
            done += 1
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(done, total)

        results: list[EditResult | None] = [None] * count
        try:
            for chunk in chunks:
                start = time.perf_counter()
                edited = self._sample(
                    [items[i][0] for i in chunk],
                    [items[i][1] for i in chunk],
                    [items[i][2] for i in chunk],
                    [int(seeds[i]) for i in chunk],
                    steps,
                    float(text_scale),
                    float(video_scale),
                    on_step,
                )
                seconds = (time.perf_counter() - start) / len(chunk)
                for j, i in enumerate(chunk):
                    frames, text, reference, out_fps, notes = items[i]
                    results[i] = EditResult(
                        frames=edited[j],
                        source=frames,
                        reference=reference,
                        instruction=text,
                        notes=notes,
                        fps=out_fps,
                        seed=int(seeds[i]),
                        num_inference_steps=int(steps),
                        guidance_scale=float(text_scale),
                        video_guidance_scale=float(video_scale),
                        seconds=seconds,
                    )
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]

    def _sample(
        self,
        sources: list[np.ndarray],
        instructions: list[str],
        references: list[np.ndarray | None],
        seeds: list[int],
        steps: int,
        guidance_scale: float,
        video_guidance_scale: float,
        on_step: Callable[[int, int, torch.Tensor], None],
    ) -> np.ndarray:
        """Alike items (same T; all with a reference or none) -> edited uint8 [B,T,H,W,3]."""
        import torch

        from viva.flow import euler_sample

        editor, device = self.editor, self.device
        pixels = torch.from_numpy(np.stack(sources)).to(device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        refs = None
        if references[0] is not None:
            refs = torch.from_numpy(np.stack(references)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.no_grad(), self._autocast():
            # 1. Conditions once per item: source (+ reference) latents and instructor tokens.
            cond = editor.encode_condition(instructions, pixels, refs)
            # 2. Initial noise per item from its own seed (as VivaEditor.sample, but per item).
            _, C, _, h, w = cond.source.shape
            shape = (C, cond.latent_frames, h, w)
            noise = torch.stack(
                [torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=torch.float32) for s in seeds]
            ).to(device)
            # 3. Euler ODE from sigma 1 to 0 with two-scale CFG (one batched denoiser call per step).
            sigmas = editor.sigmas(steps).to(device)
            velocity = editor.guided_velocity_fn(cond, guidance_scale, video_guidance_scale)
            latents = euler_sample(velocity, noise, sigmas, callback=on_step)
            # 4. Decode to pixels.
            video = editor.decode(latents)
        video = ((video.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).cpu().numpy()
