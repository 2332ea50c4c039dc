"""Reading clips: `probe_video` and `read_video` over video files, frame folders and single images."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from viva.errors import VivaUserError
from viva.io.clip import DEFAULT_FOLDER_FPS, ClipReader, VideoInfo
from viva.io.container import ContainerReader
from viva.io.folder import ImageFilesReader
from viva.io.image import IMAGE_FORMATS
from viva.io.limits import VideoLimits, check_count, check_fps
from viva.io.sampling import FrameSampler, expected_count


def open_clip(
    path: str | os.PathLike, limits: VideoLimits = VideoLimits(), folder_fps: float = DEFAULT_FOLDER_FPS
) -> ClipReader:
    """Open a video file, a folder of frames or an image; check it against `limits`; caller must close()."""
    check_fps("folder_fps", folder_fps)
    path = Path(path)
    if path.is_dir():
        clip: ClipReader = ImageFilesReader.from_folder(path, folder_fps, limits)
    elif path.suffix.lower() in IMAGE_FORMATS and path.is_file():
        clip = ImageFilesReader(path, [path], folder_fps, "image", limits)
    else:
        clip = ContainerReader(path, limits)
    try:
        limits.check_resolution(str(path), clip.info.width, clip.info.height)
    except VivaUserError:
        clip.close()
        raise
    return clip


def probe_video(
    path: str | os.PathLike, limits: VideoLimits = VideoLimits(), folder_fps: float = DEFAULT_FOLDER_FPS
) -> VideoInfo:
    """Describe a video file, a folder of PNG/JPEG frames (natural name order, `folder_fps`) or an image."""
    clip = open_clip(path, limits, folder_fps)
    clip.close()
    return clip.info


class _LastConverted:
    """Calls `convert` once per distinct item in a row (a frame picked twice is decoded once)."""

    def __init__(self, convert: Callable[[Any], np.ndarray]) -> None:
        self.convert, self.item, self.array = convert, None, None

    def __call__(self, item: Any) -> np.ndarray:
        if item is not self.item:
            self.item, self.array = item, self.convert(item)
        return self.array  # type: ignore[return-value]


def read_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    limits: VideoLimits = VideoLimits(),
    folder_fps: float = DEFAULT_FOLDER_FPS,
) -> tuple[np.ndarray, VideoInfo]:
    """Decode a clip to uint8 RGB frames [T,H,W,3] and describe the source.

    Selection (see `viva.io.sampling`): all frames; `num_frames` only: N frames evenly over the clip;
    `fps` only: the clip resampled to `fps` (nearest frame by timestamp); both: the first `num_frames`
    frames at `fps` (fewer if the clip ends first); `max_frames`: keep at most the first M selected frames.
    Decoding stops as soon as the selection is complete.

    Truncated or corrupt files raise `VivaUserError` unless every requested frame decoded before the damage.
    """
    check_count("num_frames", num_frames, limits.max_frames)
    check_count("max_frames", max_frames)
    check_fps("fps", fps)
    clip = open_clip(path, limits, folder_fps)
    try:
        info = clip.info
        count = expected_count(info.num_frames, info.fps, num_frames, fps)
        limits.check_output(str(path), min(count, max_frames or count), info.width, info.height)
        sampler: FrameSampler[Any] = FrameSampler(info.num_frames, num_frames, fps, max_frames)
        convert = _LastConverted(clip.to_array)
        out: list[np.ndarray] = []
        for item, time in clip.frames():
            out += map(convert, sampler.push(item, time))
            if sampler.done:
                break
            limits.check_output(str(path), len(out), info.width, info.height)  # in case the file lied
        if clip.broken and not sampler.done:
            raise VivaUserError(f"{path} is truncated or corrupt: {clip.broken}; re-export or re-download it")
        out += map(convert, sampler.finish(clip.end_time))
    finally:
        clip.close()
    if not out:
        raise VivaUserError(f"{path} has no decodable video frames; check the file or re-export it")
    return np.stack(out), info
