"""Which frames to keep from a clip: one streaming rule shared by `read_video` and `sample_frames`.

Rules (T = frames in the clip):
- neither `num_frames` nor `target_fps`: every frame.
- `num_frames` only: N frames evenly spaced by index, first and last included
  (indices ``round(linspace(0, T-1, N))``; N > T repeats frames).
- `target_fps` (with or without `num_frames`): for each tick ``t0 + k / target_fps`` inside the clip (more
  than a quarter target period before its end), the frame nearest in time (ties go to the earlier frame);
  with `num_frames`, only the first N ticks, so a clip shorter than ``N / target_fps`` seconds gives fewer
  than N frames.
- evenly spaced indices past the real end (a file holding fewer frames than it announced) repeat the last.
- `max_frames`: keep at most this many output frames (the first ones).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Generic, TypeVar

import numpy as np

Item = TypeVar("Item")
_EPS = 1e-6  # seconds; absorbs rounding of container timestamps
_END_MARGIN = 0.25  # a tick within a quarter target period of the clip's end is past it (GIF rounds delays)


def even_indices(num_available: int, num_frames: int) -> np.ndarray:
    """[num_frames] int64 indices spread evenly over [0, num_available), first and last included."""
    return np.rint(np.linspace(0, num_available - 1, num_frames)).astype(np.int64)


class FrameSampler(Generic[Item]):
    """Streams (item, time) pairs in display order and returns the items to keep, in output order.

    `push` returns the items selected so far; `done` tells the caller it may stop decoding.
    Items are opaque (decoded frames, file paths, indices), so costly conversion happens only for kept ones.
    """

    def __init__(
        self,
        num_available: int | None = None,
        num_frames: int | None = None,
        target_fps: float | None = None,
        max_frames: int | None = None,
    ) -> None:
        if num_frames is not None and target_fps is None and num_available is None:
            raise ValueError("evenly spaced sampling needs the clip's frame count")
        self.target_fps = target_fps
        caps = (max_frames, num_frames if target_fps is not None else None)
        self.limit: float = min((c for c in caps if c is not None), default=math.inf)
        self.wanted: list[int] | None = None  # evenly-spaced mode: pending source indices, next one last
        if target_fps is None and num_frames is not None:
            self.wanted = even_indices(num_available, num_frames).tolist()[::-1]  # type: ignore[arg-type]
        self.emitted = 0
        self._index = 0
        self._tick = 0
        self._t0: float | None = None
        self._prev: tuple[Item, float] | None = None

    @property
    def done(self) -> bool:
        """True once no further frame can be selected."""
        return self.emitted >= self.limit or self.wanted == []

    def _emit(self, items: list[Item]) -> list[Item]:
        room = self.limit - self.emitted
        if len(items) > room:
            items = items[: int(room)]
        self.emitted += len(items)
        return items

    def _next_tick(self) -> float:
        return self._t0 + self._tick / self.target_fps  # type: ignore[operator]

    def push(self, item: Item, time: float) -> list[Item]:
        """Offer the next frame (`time` in seconds); return the items to append to the output."""
        out: list[Item] = []
        if self.wanted is not None:
            while self.wanted and self.wanted[-1] == self._index:
                self.wanted.pop()
                out.append(item)
        elif self.target_fps is None:
            out.append(item)
        else:
            if self._t0 is None:
                self._t0 = time
            while self.emitted + len(out) < self.limit and self._next_tick() <= time + _EPS:
                tick = self._next_tick()
                closer_prev = self._prev is not None and tick - self._prev[1] <= time - tick + _EPS
                out.append(self._prev[0] if closer_prev else item)  # type: ignore[index]
                self._tick += 1
        self._prev = (item, time)
        self._index += 1
        return self._emit(out)

    def finish(self, end_time: float) -> list[Item]:
        """Signal the end of the clip (`end_time`: when the last frame stops showing); return last items.

        Evenly-spaced indices past the real end (a clip shorter than announced) repeat the last frame.
        """
        out: list[Item] = []
        if self._prev is None:
            return out
        if self.wanted:  # the clip had fewer frames than announced: the last one stands in
            out += [self._prev[0]] * len(self.wanted)
            self.wanted = []
        if self.target_fps is not None:
            while self.emitted + len(out) < self.limit and self._next_tick() < end_time - _END_MARGIN / self.target_fps:
                out.append(self._prev[0])
                self._tick += 1
        return self._emit(out)

    def run(self, items: Iterable[tuple[Item, float]], end_time: float) -> list[Item]:
        """Select from a whole sequence of (item, time) pairs at once."""
        out: list[Item] = []
        for item, time in items:
            if self.done:
                return out
            out += self.push(item, time)
        return out + self.finish(end_time)


def expected_count(
    num_available: int, src_fps: float, num_frames: int | None, target_fps: float | None
) -> int:
    """How many frames the rule returns for a clip of `num_available` frames at `src_fps` (before max_frames)."""
    if target_fps is None:
        return num_frames if num_frames is not None else num_available
    ticks = max(1, int(np.ceil(num_available / src_fps * target_fps - _END_MARGIN)))
    return min(ticks, num_frames) if num_frames is not None else ticks


def sample_indices(
    num_available: int, src_fps: float, num_frames: int | None = None, target_fps: float | None = None
) -> np.ndarray:
    """[N] int64 source indices chosen by the rule for a constant-rate clip of `num_available` frames."""
    sampler: FrameSampler[int] = FrameSampler(num_available, num_frames, target_fps)
    pairs = ((i, i / src_fps) for i in range(num_available))
    return np.asarray(sampler.run(pairs, end_time=num_available / src_fps), dtype=np.int64)
