"""Safety limits for reading videos and checks of user-supplied frame requests."""

from __future__ import annotations

import math
from numbers import Integral, Real
from dataclasses import dataclass

from viva.errors import VivaUserError

GIB = 2**30


def human_bytes(num_bytes: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class VideoLimits:
    """Upper bounds that turn absurd inputs into a clear `VivaUserError` instead of a crash.

    max_width, max_height: largest accepted frame size in pixels.
    max_frames: most frames one read may return.
    max_file_bytes: largest accepted input file.
    max_decoded_bytes: most memory the returned uint8 array [T,H,W,3] may take.
    """

    max_width: int = 4096
    max_height: int = 4096
    max_frames: int = 10_000
    max_file_bytes: int = 2 * GIB
    max_decoded_bytes: int = 8 * GIB

    def fits(self, height: int, width: int) -> bool:
        """Whether a frame fits the size limit in either orientation."""
        return (width <= self.max_width and height <= self.max_height) or (
            height <= self.max_width and width <= self.max_height
        )

    def check_resolution(self, what: str, width: int, height: int) -> None:
        """Raise if a `width` x `height` frame of `what` (a path) is over the size limit."""
        if width > self.max_width or height > self.max_height:
            raise VivaUserError(
                f"{what} is {width}x{height}, over the size limit of {self.max_width}x{self.max_height} "
                "(VideoLimits.max_width/max_height); downscale it first or raise the limit"
            )

    def check_file_size(self, what: str, num_bytes: int) -> None:
        """Raise if a file of `num_bytes` is over `max_file_bytes`."""
        if num_bytes > self.max_file_bytes:
            raise VivaUserError(
                f"{what} is {human_bytes(num_bytes)}, over the limit of {human_bytes(self.max_file_bytes)} "
                "(VideoLimits.max_file_bytes); trim the file or raise the limit"
            )

    def check_output(self, what: str, num_frames: int, width: int, height: int) -> None:
        """Raise if returning `num_frames` frames of `width` x `height` RGB is over a limit."""
        hint = "pass num_frames= or fps= to sample fewer frames, or raise the limit"
        if num_frames > self.max_frames:
            raise VivaUserError(
                f"reading {what} would return {num_frames} frames, over the limit of {self.max_frames} "
                f"(VideoLimits.max_frames); {hint}"
            )
        num_bytes = num_frames * width * height * 3
        if num_bytes > self.max_decoded_bytes:
            raise VivaUserError(
                f"reading {what} would need {human_bytes(num_bytes)} for {num_frames} frames of {width}x{height}, "
                f"over the limit of {human_bytes(self.max_decoded_bytes)} (VideoLimits.max_decoded_bytes); {hint}"
            )


def check_count(name: str, value: int | None, maximum: int | None = None) -> None:
    """Raise unless `value` is None or a whole number in [1, maximum]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise VivaUserError(f"{name} must be a whole number, got {value!r}")
    if value < 1:
        raise VivaUserError(f"{name} must be at least 1, got {value}")
    if maximum is not None and value > maximum:
        raise VivaUserError(
            f"{name}={value} is over the limit of {maximum} frames (VideoLimits.max_frames); "
            "ask for fewer frames or raise the limit"
        )


def check_fps(name: str, value: float | None) -> None:
    """Raise unless `value` is None or a finite number > 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise VivaUserError(f"{name} must be a positive number of frames per second, got {value!r}")


def check_size(height: int, width: int) -> None:
    """Raise unless `height` and `width` are whole numbers >= 1."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise VivaUserError(f"{name} must be a whole number of pixels >= 1, got {value!r}")
