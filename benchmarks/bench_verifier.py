"""Verifier speed: verified clips per second on one core, for exact targets of generated pairs.

Rows: 8-frame 64x64 clips and 1-frame 64x64 images, each over the ten primitive categories and hybrids
(pairs made once, before timing), cold (each clip's edit seen for the first time, as in evaluation) and
again in groups (the same source and program verified G times in a row, as Edit-GRPO scores a group of
samples of one prompt: the expected renders are cached per prompt). Single-threaded BLAS.

    python benchmarks/bench_verifier.py [--pairs 6] [--repeats 3] [--group 8]
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import statistics  # noqa: E402
import time  # noqa: E402

from viva.data.generate import DataConfig, make_pair  # noqa: E402
from viva.data.pair import ALL_CATEGORIES  # noqa: E402
from viva.world.verify import clear_cache, verify  # noqa: E402


def make_pairs(n: int, image: bool):
    config = DataConfig(image_fraction=1.0 if image else 0.0)
    return [make_pair(7, i, c, config) for i in range(n) for c in ALL_CATEGORIES]


def time_cold(pairs, repeats: int) -> float:
    """Median over repeats of seconds per clip, every clip's expectations computed afresh."""
    runs = []
    for _ in range(repeats):
        clear_cache()
        start = time.perf_counter()
        for p in pairs:
            verify(p.source_scene, p.program, p.target, p.reference, cache=False)
        runs.append((time.perf_counter() - start) / len(pairs))
    return statistics.median(runs)


def time_grouped(pairs, repeats: int, group: int) -> float:
    runs = []
    for _ in range(repeats):
        clear_cache()
        start = time.perf_counter()
        for p in pairs:
            for _ in range(group):
                verify(p.source_scene, p.program, p.target, p.reference)
        runs.append((time.perf_counter() - start) / (len(pairs) * group))
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=6, help="pairs per category")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--group", type=int, default=8, help="samples per prompt in the grouped rows")
    args = parser.parse_args()
    print(f"{'clips':<26} {'mode':<18} {'clips/s':>9} {'ms/clip':>9}")
    for label, image in (("64x64, 8 frames", False), ("64x64, 1 frame (image)", True)):
        pairs = make_pairs(args.pairs, image)
        for p in pairs[:3]:  # warm up (templates, imports)
            verify(p.source_scene, p.program, p.target, p.reference)
        for mode, seconds in (
            ("cold", time_cold(pairs, args.repeats)),
            (f"groups of {args.group}", time_grouped(pairs, args.repeats, args.group)),
        ):
            print(f"{label:<26} {mode:<18} {1.0 / seconds:9.0f} {seconds * 1e3:9.2f}")


if __name__ == "__main__":
    main()
