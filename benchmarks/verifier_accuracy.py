"""Verifier accuracy on generated pairs: per category, how often the exact target passes, the unedited
source passes, and the degraded target passes (Gaussian blur sigma 1 px, Gaussian noise sigma 8/255,
brightness x0.9 or x1.1 alternating, clipped). Acceptance: target >= 99%, source <= 2%, degraded >= 95%.

Pairs are `make_pair(seed, index, category)` for index 0..N-1 (default config: 64x64, 8 frames); the
degradation of pair i is seeded with i. Deterministic.

    python benchmarks/verifier_accuracy.py [--num 500] [--seed 0] [--images] [--workers 2] [--show-failures]
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import ndimage

GOALS = {"target": 0.99, "source": 0.02, "degraded": 0.95}


def degrade(frames: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = frames.astype(np.float32) / 255.0
    x = ndimage.gaussian_filter(x, (0, 1.0, 1.0, 0))
    x = x + rng.normal(0.0, 8.0 / 255.0, x.shape)
    x = np.clip(x * (0.9 if seed % 2 == 0 else 1.1), 0.0, 1.0)
    return (x * 255.0 + 0.5).astype(np.uint8)


def run_category(job):
    category, num, seed, images = job
    from viva.data.generate import DataConfig, make_pair
    from viva.world.verify import verify

    config = DataConfig(image_fraction=1.0 if images else 0.0)
    counts = {"target": 0, "source": 0, "degraded": 0}
    failures = []
    for i in range(num):
        pair = make_pair(seed, i, category, config)
        args = (pair.source_scene, pair.program)
        for kind, frames, want in (
            ("target", pair.target, True),
            ("source", pair.source, False),
            ("degraded", degrade(pair.target, i), True),
        ):
            result = verify(*args, frames, pair.reference)
            counts[kind] += result.passed
            if result.passed != want:
                failures.append(f"{category} #{i} {kind}: {pair.instruction!r} -> {result.summary()}")
    return category, counts, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=500, help="pairs per category")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", action="store_true", help="1-frame image pairs instead of clips")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--show-failures", action="store_true")
    args = parser.parse_args()
    from viva.data.pair import ALL_CATEGORIES

    jobs = [(c, args.num, args.seed, args.images) for c in ALL_CATEGORIES]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(run_category, jobs))
    print(f"verifier accuracy: {args.num} pairs per category, seed {args.seed}, "
          f"{'1-frame images' if args.images else '8-frame clips'} 64x64")
    print(f"{'category':<12} {'target':>8} {'source':>8} {'degraded':>9}")
    ok = True
    all_failures = []
    for category, counts, failures in results:
        rates = {k: v / args.num for k, v in counts.items()}
        flags = {
            "target": rates["target"] >= GOALS["target"],
            "source": rates["source"] <= GOALS["source"],
            "degraded": rates["degraded"] >= GOALS["degraded"],
        }
        ok &= all(flags.values())
        cells = [f"{rates[k]:7.1%}{'' if flags[k] else '!'}" for k in ("target", "source", "degraded")]
        print(f"{category:<12} {cells[0]:>8} {cells[1]:>8} {cells[2]:>9}")
        all_failures += failures
    print(f"goals: target >= {GOALS['target']:.0%}, source <= {GOALS['source']:.0%}, "
          f"degraded >= {GOALS['degraded']:.0%}: {'met' if ok else 'NOT met (!)'}")
    if args.show_failures:
        for line in all_failures:
            print(line)


if __name__ == "__main__":
    main()
