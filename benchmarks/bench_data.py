"""Pair-generation throughput on one core: pairs/s per category at 64x64x8 frames.

Prints a table: make_pair alone (scene sampling, both renders, mask, instruction) and make_pair plus
the shard encoding (PNGs + JSON + tar), which is what `viva data generate` does per pair and per worker.

    python benchmarks/bench_data.py [--num 200] [--size 64] [--frames 8]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from viva.data.format import encode_sample, write_tar  # noqa: E402
from viva.data.generate import DataConfig, make_pair  # noqa: E402
from viva.data.pair import PRIMITIVE_CATEGORIES  # noqa: E402


def measure(category: str | None, num: int, config: DataConfig) -> tuple[float, float]:
    """(pairs/s for make_pair, pairs/s for make_pair + encoding into a tar)."""
    start = time.perf_counter()
    pairs = [make_pair(1234, i, category, config) for i in range(num)]
    generate_s = time.perf_counter() - start
    start = time.perf_counter()
    write_tar([(p.key, encode_sample(p, i)) for i, p in enumerate(pairs)])
    encode_s = time.perf_counter() - start
    return num / generate_s, num / (generate_s + encode_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=200, help="pairs per category")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    config = DataConfig(height=args.size, width=args.size, num_frames=args.frames)
    make_pair(0, 0, None, config)  # warm up imports and caches
    print(f"pair generation, 1 process, {args.size}x{args.size}x{args.frames} frames, {args.num} pairs each")
    print(f"| {'category':<12} | {'pairs/s (generate)':>18} | {'pairs/s (+ shard encode)':>24} |")
    print(f"|{'-' * 14}|{'-' * 20}:|{'-' * 26}:|")
    rows = [*PRIMITIVE_CATEGORIES, "hybrid", None]
    for category in rows:
        gen, total = measure(category, args.num, config)
        print(f"| {category or 'mixed (all)':<12} | {gen:>18.1f} | {total:>24.1f} |")


if __name__ == "__main__":
    main()
