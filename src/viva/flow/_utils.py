"""Small shared helpers: broadcasting per-sample scalars over a tensor's non-batch dims."""

from __future__ import annotations

import torch


def per_sample(value: float | torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A float, a 0-d tensor or a [B] tensor as [B, 1, ..., 1] (or [1, ..., 1]) broadcastable against `like`."""
    t = torch.as_tensor(value, dtype=dtype or like.dtype, device=like.device)
    if t.ndim == 0:
        return t.reshape([1] * like.ndim)
    if t.ndim != 1 or t.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"expected a scalar or a [B={like.shape[0]}] tensor, got shape {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def mean_over_sample(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B]: mean over every dim but the batch."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def randn_like_with(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """float32 standard normal noise shaped like `x`, drawn on the generator's device, moved to x's device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device)
