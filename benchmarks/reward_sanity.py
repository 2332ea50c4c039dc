"""Mini-world rewards on known outputs: per category, the mean instruction-following (verifier score),
preservation (SSIM outside the edit region) and quality rewards of the ground-truth target, the unedited
source (identity), the target blurred (Gaussian sigma 1 px) and the target with Gaussian noise (sigma
8/255). Expected: target high on all three; identity 1 on preservation and quality but low on
instruction following; blur and noise lower on quality (and preservation).

Pairs are `make_pair(seed, index, category)` for index 0..N-1 (64x64, 8 frames). Deterministic.

    python benchmarks/reward_sanity.py [--num 20] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage


def degraded(clips: np.ndarray, kind: str) -> np.ndarray:
    x = clips.astype(np.float32)
    if kind == "blur":
        x = ndimage.gaussian_filter(x, (0, 0, 1.0, 1.0, 0))
    elif kind == "noise":
        x = x + np.random.default_rng(0).normal(0.0, 8.0, x.shape)
    return (np.clip(x, 0, 255) + 0.5).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=20, help="pairs per category")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from viva.data.generate import make_pair
    from viva.data.pair import ALL_CATEGORIES
    from viva.rewards.base import RewardBatch
    from viva.rewards.world import InstructionFollowing, Preservation, Quality

    rewards = {"IF": InstructionFollowing(), "keep": Preservation(), "quality": Quality()}
    kinds = ("target", "identity", "blur", "noise")
    print(f"mini-world rewards, {args.num} pairs per category, seed {args.seed}: IF / keep / quality")
    print(f"{'category':<12}" + "".join(f"{k:>20}" for k in kinds))
    for category in ALL_CATEGORIES:
        pairs = [make_pair(args.seed, i, category) for i in range(args.num)]
        targets = np.stack([p.target for p in pairs])
        outputs = {
            "target": targets,
            "identity": np.stack([p.source for p in pairs]),
            "blur": degraded(targets, "blur"),
            "noise": degraded(targets, "noise"),
        }
        cells = []
        for kind in kinds:
            batch = RewardBatch.from_pairs(pairs, outputs[kind])
            means = [float(r(batch).total.mean()) for r in rewards.values()]
            cells.append("{:.2f} / {:.2f} / {:.2f}".format(*means))
        print(f"{category:<12}" + "".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    main()
