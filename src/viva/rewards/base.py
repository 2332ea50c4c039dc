"""The reward protocol: a batch of edits in, one scalar per edit (plus named components) out.

    reward = WeightedSum({"if": InstructionFollowing(), "keep": Preservation(), "quality": Quality()},
                         {"if": 1.0, "keep": 0.5, "quality": 0.25})
    out = reward(batch)          # RewardOutput
    out.total                    # float32 [N]
    out.components               # {"if": [N], "if/score": [N], "if/pass": [N], "keep": [N], ...}

Every reward is a callable `reward(batch: RewardBatch) -> RewardOutput`; `close()` (when present) frees
worker pools. Rewards are deterministic: the same batch gives the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


def _as_numpy(frames: Any) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        return frames.detach().cpu().numpy()
    return np.asarray(frames)


def to_uint8(frames: Any) -> np.ndarray:
    """uint8 copy of clips: uint8 as is, floats in [0, 1] scaled by 255, rounded and clipped."""
    x = _as_numpy(frames)
    if x.dtype == np.uint8:
        return x
    return (np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_float(frames: Any) -> torch.Tensor:
    """float32 tensor in [0, 1] of clips given as uint8 (0..255) or floats (0..1; clipped)."""
    if isinstance(frames, torch.Tensor):
        x = frames.detach().cpu()
    else:
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(frames)))
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x.float().clamp(0.0, 1.0)


@dataclass
class RewardBatch:
    """N edits to score.

    outputs, sources: clips [N,T,H,W,3], uint8 (0..255) or float (0..1), numpy or torch; T = 1 for images.
    instructions: [N] instruction texts. scenes, programs: the world's source scenes and edit programs
    (lists of `Clause`), needed by the world rewards. references: [N] uint8 [h,w,3] reference images or
    None. source_captions, target_captions: [N] captions of the source and of the intended result (CLIP
    rewards; for world batches they default to `scene_caption` of the source and target scenes).
    """

    outputs: Any
    sources: Any
    instructions: list[str] | None = None
    scenes: list | None = None
    programs: list | None = None
    references: list | None = None
    source_captions: list[str] | None = None
    target_captions: list[str] | None = None

    def __post_init__(self) -> None:
        out, src = tuple(self.outputs.shape), tuple(self.sources.shape)
        if len(out) != 5 or out[-1] != 3:
            raise ValueError(f"outputs must be clips [N,T,H,W,3], got shape {out}")
        if out != src:
            raise ValueError(f"outputs {out} and sources {src} must have the same shape")
        n = out[0]
        for name in ("instructions", "scenes", "programs", "references", "source_captions", "target_captions"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"RewardBatch.{name} has {len(value)} items for {n} outputs")

    def __len__(self) -> int:
        return int(self.outputs.shape[0])

    def need(self, *names: str, by: str) -> None:
        """Raise a clear ValueError when a field a reward reads is missing."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{by} needs RewardBatch.{', '.join(missing)}; the batch has none")

    @classmethod
    def from_pairs(cls, pairs: Sequence, outputs: Any) -> "RewardBatch":
        """A batch of world edits: `pairs` are `EditPair`s (their sources, scenes, programs, instructions,
        references) and `outputs` the edited clips [N,T,H,W,3]."""
        return cls(
            outputs=outputs,
            sources=np.stack([p.source for p in pairs]),
            instructions=[p.instruction for p in pairs],
            scenes=[p.source_scene for p in pairs],
            programs=[p.program for p in pairs],
            references=[p.reference for p in pairs],
        )


@dataclass
class RewardOutput:
    """total: float32 [N], the reward. components: name -> float32 [N], the parts it was made of (logged)."""

    total: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Reward(Protocol):
    """Anything callable as `reward(batch) -> RewardOutput`."""

    def __call__(self, batch: RewardBatch) -> RewardOutput: ...


class WeightedSum:
    """total = sum_k weights[k] * rewards[k](batch).total. Components: each part's total under its name and
    its own components as "name/component".

    rewards: name -> Reward; weights: name -> finite float (every name needs one; 0 computes and logs the
    part without training on it)."""

    def __init__(self, rewards: Mapping[str, Reward], weights: Mapping[str, float]) -> None:
        if not rewards:
            raise ValueError("WeightedSum needs at least one reward")
        if set(rewards) != set(weights):
            raise ValueError(
                f"WeightedSum: rewards {sorted(rewards)} and weights {sorted(weights)} must name the same parts"
            )
        for name, w in weights.items():
            if "/" in name:
                raise ValueError(f"reward name {name!r} may not contain '/'")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"weight of {name!r} must be a finite number, got {w!r}")
        self.rewards = dict(rewards)
        self.weights = {k: float(weights[k]) for k in rewards}

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        total = torch.zeros(len(batch), dtype=torch.float32)
        components: dict[str, torch.Tensor] = {}
        for name, reward in self.rewards.items():
            out = reward(batch)
            if tuple(out.total.shape) != (len(batch),):
                raise ValueError(f"reward {name!r} returned shape {tuple(out.total.shape)}, expected ({len(batch)},)")
            total = total + self.weights[name] * out.total.float()
            components[name] = out.total.float()
            for key, value in out.components.items():
                components[f"{name}/{key}"] = value
        return RewardOutput(total=total, components=components)

    def close(self) -> None:
        for reward in self.rewards.values():
            close = getattr(reward, "close", None)
            if close is not None:
                close()
