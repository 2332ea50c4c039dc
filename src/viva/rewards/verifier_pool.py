"""The verifier calls of `InstructionFollowing`, in this process or in a worker pool.

Torch-free on purpose: spawned workers import only numpy/scipy and the world, so they start fast. Both
paths run `verify_group` on the same groups, so their numbers are identical.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def verify_group(job: tuple) -> list[tuple[float, bool]]:
    """Verify the samples of one prompt. job: (scene, program, frames uint8 [G,T,H,W,3], reference
    [h,w,3] or None, threshold). Returns [(mean clause score, passed)] * G. One prompt per job, so the
    verifier's cached `Expectation` is built once per group."""
    from viva.world.verify import verify

    scene, program, frames, reference, threshold = job
    out = []
    for clip in frames:
        result = verify(scene, program, clip, reference, threshold=threshold)
        out.append((float(result.score), bool(result.passed)))
    return out


def group_jobs(scenes, programs, frames: np.ndarray, references, threshold: float):
    """Split a batch into per-prompt jobs: consecutive samples with the same (scene, program, reference)
    share a job. Returns (jobs, sizes)."""
    jobs, sizes = [], []
    start, n = 0, len(frames)
    while start < n:
        stop = start + 1
        while stop < n and _same(scenes, programs, references, start, stop):
            stop += 1
        jobs.append((scenes[start], programs[start], frames[start:stop], references[start], threshold))
        sizes.append(stop - start)
        start = stop
    return jobs, sizes


def _same(scenes, programs, references, i: int, j: int) -> bool:
    ref_i, ref_j = references[i], references[j]
    same_ref = (ref_i is None and ref_j is None) or (
        ref_i is not None and ref_j is not None and np.array_equal(ref_i, ref_j)
    )
    return same_ref and repr(scenes[i]) == repr(scenes[j]) and repr(programs[i]) == repr(programs[j])


class VerifierPool:
    """A lazily started process pool running `verify_group` (spawned workers: safe next to torch)."""

    def __init__(self, workers: int, context: str = "spawn") -> None:
        self.workers = int(workers)
        self.context = context
        self._pool: ProcessPoolExecutor | None = None

    def map(self, jobs: list) -> list:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(self.context))
        return list(self._pool.map(verify_group, jobs))

    def close(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None
