"""What every readable clip source provides: its `VideoInfo` and a lazy stream of frames."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

DEFAULT_FOLDER_FPS = 8.0  # frame rate assumed for folders of frames and single images


@dataclass(frozen=True)
class VideoInfo:
    """Facts about a clip, known without decoding it.

    fps: nominal frame rate; num_frames: frames in the clip; duration: seconds;
    codec: e.g. "h264", "vp9", "png"; container: e.g. "mp4", "matroska", "gif", "frames", "image".
    """

    path: Path
    fps: float
    width: int
    height: int
    num_frames: int
    duration: float
    codec: str
    container: str


class ClipReader(Protocol):
    """A clip opened for reading. `frames()` yields (item, seconds) lazily; `to_array` decodes one item."""

    info: VideoInfo
    broken: str | None  # why the clip ended early (decode error, missing frames), set while iterating
    end_time: float  # when the last yielded frame stops showing; valid once `frames()` is exhausted

    def frames(self) -> Iterator[tuple[Any, float]]: ...

    def to_array(self, item: Any) -> np.ndarray:  # -> uint8 [H,W,3] of size info.height x info.width
        ...

    def close(self) -> None: ...
