"""Operations on in-memory clips: uint8 arrays [T,H,W,3]."""

from __future__ import annotations

import numpy as np
from PIL import Image

from viva.io.limits import check_count, check_fps, check_size
from viva.io.sampling import sample_indices


def check_frames(frames: np.ndarray, name: str = "frames") -> None:
    """Raise ValueError unless `frames` is a non-empty uint8 array [T,H,W,3] (a programming error)."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        got = f"{frames.dtype} {tuple(frames.shape)}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(
            f"{name} must be a uint8 array [T,H,W,3], got {got}; "
            "convert floats in [0,1] with (x * 255).round().clip(0, 255).astype(np.uint8)"
        )
    if 0 in frames.shape:
        raise ValueError(f"{name} is empty: shape {frames.shape}")


def sample_frames(
    frames: np.ndarray, src_fps: float, num_frames: int | None = None, target_fps: float | None = None
) -> np.ndarray:
    """Select frames from [T,H,W,3] by the rule of `viva.io.sampling` (same as `read_video`) -> [N,H,W,3]."""
    check_frames(frames)
    check_fps("src_fps", src_fps)
    check_fps("target_fps", target_fps)
    check_count("num_frames", num_frames)
    return frames[sample_indices(len(frames), src_fps, num_frames, target_fps)]


def _crop_box(src_w: int, src_h: int, width: int, height: int) -> tuple[float, float, float, float]:
    """Centered source region (left, top, right, bottom) with the aspect ratio of `width` x `height`."""
    scale = max(width / src_w, height / src_h)  # output pixels per source pixel; short side covers
    box_w, box_h = width / scale, height / scale
    left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
    return left, top, left + box_w, top + box_h


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """[T,H,W,3] uint8 -> [T,height,width,3] uint8: scale so the short side covers, then center crop.

    Uses PIL's antialiased bilinear filter on the cropped region of each frame (area-like when shrinking).
    Returns `frames` itself when the size already matches.
    """
    check_frames(frames)
    check_size(height, width)
    src_h, src_w = frames.shape[1:3]
    if (src_h, src_w) == (height, width):
        return frames
    box = _crop_box(src_w, src_h, width, height)
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        out[t] = np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR, box=box))
    return out


def _fps_text(fps: float) -> str:
    return f"{fps:g}"


def fit_to_model(
    frames: np.ndarray,
    fps: float,
    height: int,
    width: int,
    num_frames: int,
    target_fps: float | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Bring a clip [T,H,W,3] at `fps` to exactly [num_frames,height,width,3]; return it and notes.

    Time: with `target_fps`, the first `num_frames` frames resampled to `target_fps`; without it, `num_frames`
    frames spread evenly over the clip. A clip that is too short is padded by repeating its last frame.
    Space: `resize_center_crop`. Each note is one human-readable line saying what was changed.
    """
    check_frames(frames)
    check_fps("fps", fps)
    check_fps("target_fps", target_fps)
    check_count("num_frames", num_frames)
    check_size(height, width)
    notes: list[str] = []

    # 1. time: sample (cheap, and it shrinks the work of step 2)
    total = len(frames)
    rate_changes = target_fps is not None and abs(target_fps - fps) > 1e-6
    if total > num_frames or rate_changes:
        frames = sample_frames(frames, fps, num_frames, target_fps)
        how = f"at {_fps_text(target_fps)} fps (source {_fps_text(fps)} fps)" if target_fps is not None else "evenly"
        if rate_changes or len(frames) != total:
            notes.append(f"sampled {len(frames)} of {total} frames {how}")

    # 2. space: cover and center crop
    src_h, src_w = frames.shape[1:3]
    if (src_h, src_w) != (height, width):
        frames = resize_center_crop(frames, height, width)
        cropped = abs(src_w / src_h - width / height) > 1e-6
        notes.append(f"resized {src_w}x{src_h} -> {width}x{height}" + (" (center crop)" if cropped else ""))

    # 3. time again: pad a short clip with its last frame
    if len(frames) < num_frames:
        pad = np.repeat(frames[-1:], num_frames - len(frames), axis=0)
        notes.append(f"padded {len(frames)} -> {num_frames} frames by repeating the last frame")
        frames = np.concatenate([frames, pad])
    return frames, notes
