"""Clips stored as image files: a folder of numbered frames, or one image (a 1-frame clip)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from viva.errors import VivaUserError
from viva.io.clip import VideoInfo
from viva.io.image import IMAGE_FORMATS, image_size, read_image
from viva.io.limits import VideoLimits


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders 'frame2.png' before 'frame10.png'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_files(folder: Path) -> list[Path]:
    """Image files in `folder` (not hidden, not recursive), in natural order of their names."""
    files = [
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_FORMATS and not p.name.startswith(".")
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


class ImageFilesReader:
    """Frames stored one per image file, shown at `fps`; see `ClipReader`."""

    def __init__(self, path: str | Path, files: list[Path], fps: float, container: str, limits: VideoLimits) -> None:
        self.files, self.limits = files, limits
        width, height = image_size(files[0], limits)
        self.info = VideoInfo(
            path=Path(path),
            fps=fps,
            width=width,
            height=height,
            num_frames=len(files),
            duration=len(files) / fps,
            codec=IMAGE_FORMATS[files[0].suffix.lower()].lower(),
            container=container,
        )
        self.broken: str | None = None
        self.end_time = self.info.duration

    @classmethod
    def from_folder(cls, folder: Path, fps: float, limits: VideoLimits) -> ImageFilesReader:
        files = frame_files(folder)
        if not files:
            kinds = "/".join(ext.lstrip(".").upper() for ext in IMAGE_FORMATS)
            raise VivaUserError(f"folder {folder} holds no frames ({kinds} files); give a video file or a frame folder")
        return cls(folder, files, fps, "frames", limits)

    def frames(self) -> Iterator[tuple[Path, float]]:
        for index, file in enumerate(self.files):
            yield file, index / self.info.fps

    def to_array(self, file: Path) -> np.ndarray:
        frame = read_image(file, self.limits)
        if frame.shape[:2] != (self.info.height, self.info.width):
            raise VivaUserError(
                f"frame {file.name} is {frame.shape[1]}x{frame.shape[0]} but {self.files[0].name} is "
                f"{self.info.width}x{self.info.height}; all frames of a folder must share one size"
            )
        return frame

    def close(self) -> None:
        pass
