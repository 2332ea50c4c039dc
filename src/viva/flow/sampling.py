"""Deterministic sampling: the Euler step of the probability-flow ODE, from sigma = 1 to 0.

dx/dsigma = v, so x_next = x + v * (sigma_next - sigma). With an exact (constant) velocity
v = noise - x0 one step from noise already lands on x0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from viva.flow._utils import per_sample

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""velocity_fn(x [B, C, T, h, w], sigma [B]) -> v [B, C, T, h, w]."""


def ode_step(
    x: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor
) -> torch.Tensor:
    """x + v * (sigma_next - sigma), computed in float32, returned in x's dtype. sigma: float or [B]."""
    xf = x.float()
    dt = per_sample(sigma_next, xf) - per_sample(sigma, xf)
    return (xf + v.float() * dt).to(x.dtype)


def euler_sample(
    velocity_fn: VelocityFn,
    x_init: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Integrate from x_init (at sigmas[0], usually pure noise) down the grid `sigmas` [N + 1].

    Calls velocity_fn(x, sigma_batch) N times with sigma_batch a [B] float32 tensor; after step i
    (0-based) calls callback(i, N, x_next), e.g. to advance a progress bar. Returns x at sigmas[-1],
    in x_init's dtype.
    """
    x = x_init
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        sigma_batch = torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32)
        x = ode_step(x, velocity_fn(x, sigma_batch), sigma, sigma_next)
        if callback is not None:
            callback(i, n, x)
    return x
