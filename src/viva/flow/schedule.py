"""Noise levels. Convention: t = sigma in [0, 1]; x_t = (1 - t) x0 + t noise; 1 = pure noise.

- `shift_sigmas`: the static timestep shift of SD3 / diffusers' FlowMatchEulerDiscreteScheduler,
  sigma' = s sigma / (1 + (s - 1) sigma): s > 1 spends more time at high noise.
- `sample_timesteps`: training times, logit-normal (SD3) or uniform, then shifted.
- `sigma_schedule`: the sampling grid, [num_steps + 1] from 1 down to 0.
"""

from __future__ import annotations

import torch


def shift_sigmas(sigmas: torch.Tensor, shift: float = 1.0) -> torch.Tensor:
    """sigma' = shift * sigma / (1 + (shift - 1) * sigma); keeps 0 -> 0 and 1 -> 1 exactly (the SDE step
    treats sigma == 1 specially, so rounding must not turn it into 0.99999994). Any shape."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if shift == 1.0:
        return sigmas
    shifted = shift * sigmas / (1 + (shift - 1) * sigmas)
    return torch.where(sigmas == 1, sigmas, shifted)


def sample_timesteps(
    batch: int,
    generator: torch.Generator | None = None,
    kind: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """[batch] float32 training times in (0, 1).

    kind="logit_normal": t = sigmoid(n), n ~ N(mean, std^2) (SD3's default, mean 0, std 1);
    kind="uniform": t ~ U(0, 1) (`mean`, `std` ignored). Then `shift_sigmas(t, shift)`.
    Random numbers are drawn on the generator's device (CPU without one) and moved to `device`.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if kind == "logit_normal":
        n = torch.randn(batch, generator=generator, device=gen_device, dtype=torch.float32)
        t = torch.sigmoid(n * std + mean)
    elif kind == "uniform":
        t = torch.rand(batch, generator=generator, device=gen_device, dtype=torch.float32)
    else:
        raise ValueError(f"unknown timestep distribution {kind!r}; use 'logit_normal' or 'uniform'")
    return shift_sigmas(t, shift).to(device or gen_device)


def sigma_schedule(num_steps: int, shift: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """[num_steps + 1] float32 sigmas, sigmas[0] = 1, sigmas[-1] = 0: shift_sigmas(linspace(1, 0, N + 1)).

    Identical to diffusers' FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(
    sigmas=linspace(1, 0, N + 1)[:-1]).sigmas, which is how the HunyuanVideo pipeline calls it.
    (Calling set_timesteps(num_steps) alone gives a different grid: linspace(1, sigma_min, N) with
    sigma_min = 1/1000 shifted twice, then 0.)
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float32, device=device)
    return shift_sigmas(sigmas, shift)
