"""Stochastic sampling steps with log-probabilities: the Gaussian policy of Edit-GRPO (PAPER.md section 3).

Each step maps x (at sigma) to x_next (at sigma_next < sigma, dt = sigma_next - sigma < 0) by a Gaussian
N(mean, std^2 I) whose mean depends on the model's velocity v; log_prob is that Gaussian's log-density of
x_next, averaged (not summed) over the non-batch dims. Everything is computed in float32 whatever the
input dtype (bf16 overflows in the mean). Pass `prev_sample` to score a stored sample under a new
velocity instead of drawing one (the policy-ratio recomputation of GRPO); the sample is detached in the
log-density, so gradients flow only through the mean.

`SDEStepOutput.std` is always the TOTAL per-step scale of x_next given x, i.e. what multiplies the unit
noise: eta*sqrt(sigma/(1-sigma))*sqrt(-dt) for the Flow-SDE, sigma_next*sin(eta*pi/2) for CPS.
A step whose std is 0 (eta = 0, or CPS landing on sigma_next = 0) is deterministic: its log_prob is
reported as 0 (a point mass; the policy ratio is then 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from viva.flow._utils import mean_over_sample, per_sample, randn_like_with


@dataclass
class SDEStepOutput:
    """sample, mean: [B, C, T, h, w] float32; log_prob: [B] float32; std: [B] float32 (total step scale)."""

    sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-element log N(x; mean, std^2), std broadcastable to x; elements with std == 0 give 0."""
    positive = std > 0
    safe = torch.where(positive, std, torch.ones_like(std))
    lp = -((x - mean) ** 2) / (2 * safe**2) - torch.log(safe) - 0.5 * math.log(2 * math.pi)
    return torch.where(positive, lp, torch.zeros_like(lp))


def _finish(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, noise, generator, prev_sample) -> SDEStepOutput:
    if prev_sample is not None:
        sample = prev_sample.float()
    else:
        noise = randn_like_with(mean, generator) if noise is None else noise.float()
        sample = mean + scale * noise
    log_prob = mean_over_sample(gaussian_log_prob(sample.detach(), mean, scale))
    return SDEStepOutput(sample=sample, log_prob=log_prob, mean=mean, std=scale.reshape(-1).expand(x.shape[0]))


def flow_sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    eta: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
    sigma_max_ref: float | None = None,
) -> SDEStepOutput:
    """One Flow-SDE step (Flow-GRPO). x, v: [B, C, T, h, w]; sigma, sigma_next: float or [B].

    std_t = eta * sqrt(sigma / (1 - sigma')) with sigma' = sigma, except at sigma == 1 where
    sigma' = sigma_max_ref (default: sigma_next, which on the first step of a schedule IS sigmas[1],
    the value Flow-GRPO uses);
    mean  = x * (1 + std_t^2 / (2 sigma) * dt) + v * (1 + std_t^2 (1 - sigma) / (2 sigma)) * dt;
    x_next = mean + std_t * sqrt(-dt) * noise  (noise ~ N(0, I), drawn with `generator` unless given);
    log_prob = mean over non-batch dims of log N(x_next; mean, (std_t sqrt(-dt))^2).
    With eta = 0 the mean is the Euler step x + v dt.
    """
    x32, v32 = x.float(), v.float()
    s, s_next = per_sample(sigma, x32, torch.float32), per_sample(sigma_next, x32, torch.float32)
    dt = s_next - s
    ref = s_next if sigma_max_ref is None else torch.full_like(s, sigma_max_ref)
    std_t = eta * torch.sqrt(s / (1 - torch.where(s == 1, ref, s)))
    mean = x32 * (1 + std_t**2 / (2 * s) * dt) + v32 * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
    return _finish(x32, mean, std_t * torch.sqrt(-dt), noise, generator, prev_sample)


def cps_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    eta: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
) -> SDEStepOutput:
    """One coefficient-preserving (CPS) step. Shapes as `flow_sde_step`.

    std = sigma_next * sin(eta * pi / 2); x0_hat = x - sigma v; x1_hat = x + (1 - sigma) v;
    mean = x0_hat (1 - sigma_next) + x1_hat sqrt(sigma_next^2 - std^2); x_next = mean + std * noise,
    so x_next keeps the marginal's coefficients: (1 - sigma_next) on data, sigma_next on total noise.
    log_prob: the full Gaussian log N(x_next; mean, std^2), averaged over non-batch dims (Flow-GRPO's
    code keeps only -(x_next - mean)^2, dropping the 1/(2 std^2) scale and the constants).
    With eta = 0 the mean is the Euler step x + v dt. The last step onto sigma_next = 0 is deterministic.
    """
    x32, v32 = x.float(), v.float()
    s, s_next = per_sample(sigma, x32, torch.float32), per_sample(sigma_next, x32, torch.float32)
    std = s_next * math.sin(eta * math.pi / 2)
    x0_hat = x32 - s * v32
    x1_hat = x32 + (1 - s) * v32
    mean = x0_hat * (1 - s_next) + x1_hat * torch.sqrt((s_next**2 - std**2).clamp_min(0))
    return _finish(x32, mean, std, noise, generator, prev_sample)


def stochastic_step(
    kind: str,
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    eta: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
) -> SDEStepOutput:
    """Dispatch on kind: "sde" -> `flow_sde_step`, "cps" -> `cps_step`."""
    if kind == "sde":
        return flow_sde_step(x, v, sigma, sigma_next, eta, noise=noise, generator=generator, prev_sample=prev_sample)
    if kind == "cps":
        return cps_step(x, v, sigma, sigma_next, eta, noise=noise, generator=generator, prev_sample=prev_sample)
    raise ValueError(f"unknown step kind {kind!r}; use 'sde' or 'cps'")
