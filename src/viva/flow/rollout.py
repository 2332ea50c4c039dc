"""Edit-GRPO rollouts: sample with stochastic steps where the policy is trained, ODE steps elsewhere.

Modes (`sample_with_logprobs`), over the N steps of `sigmas` [N + 1]:
- all stochastic (default, plain Flow-GRPO);
- window: SDE on a contiguous window of steps, ODE elsewhere (the "Fast" variant); a fixed
  (start, end) or, given an int size, a position drawn per call with `generator`;
- fraction: SDE on a random subset of round(fraction * eligible) steps.
"Eligible" steps are those with noise: every step for kind="sde", all but a final step onto
sigma = 0 for kind="cps" (its std is 0). Each step yields a `StepRecord`; SDE records keep what the
trainer needs to re-score the same transition under the current policy:

    out = stochastic_step(kind, rec.latents, v_new, rec.sigma, rec.sigma_next, eta, prev_sample=rec.next_latents)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from viva.flow.sampling import VelocityFn, ode_step
from viva.flow.sde import stochastic_step


@dataclass
class StepRecord:
    """One denoising step. latents / next_latents: [B, C, T, h, w] float32 (detached);
    timestep: [B] float32 (= sigma, what the model saw); log_prob: [B] for SDE steps, None for ODE steps;
    mean, std: the step's Gaussian (mean [B, C, T, h, w], total std [B]) for SDE steps, else None."""

    index: int
    sigma: float
    sigma_next: float
    timestep: torch.Tensor
    latents: torch.Tensor
    next_latents: torch.Tensor
    sde: bool
    log_prob: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None


def _randint(high: int, generator: torch.Generator | None) -> int:
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(high, (1,), generator=generator, device=device).item())


def choose_sde_steps(
    sigmas: torch.Tensor,
    kind: str = "sde",
    sde_window: tuple[int, int] | int | None = None,
    sde_fraction: float | None = None,
    generator: torch.Generator | None = None,
) -> list[bool]:
    """[N] flags: which steps of `sigmas` [N + 1] are stochastic (see module docstring)."""
    n = len(sigmas) - 1
    eligible = n - 1 if kind == "cps" and float(sigmas[-1]) == 0.0 else n
    if eligible < 1:
        raise ValueError(f"no step of this {n}-step schedule can be stochastic with kind={kind!r}")
    if sde_window is not None and sde_fraction is not None:
        raise ValueError("give sde_window or sde_fraction, not both")
    if sde_window is None and sde_fraction is None:
        return [i < eligible for i in range(n)]
    if sde_window is not None:
        if isinstance(sde_window, int):
            size = sde_window
            if not 1 <= size <= eligible:
                raise ValueError(f"window size must be in [1, {eligible}], got {size}")
            start = _randint(eligible - size + 1, generator)
            end = start + size
        else:
            start, end = sde_window
            if not 0 <= start < end <= eligible:
                raise ValueError(f"window (start, end) must satisfy 0 <= start < end <= {eligible}, got {sde_window}")
        return [start <= i < end for i in range(n)]
    if not 0 < sde_fraction <= 1:
        raise ValueError(f"sde_fraction must be in (0, 1], got {sde_fraction}")
    k = max(1, round(sde_fraction * eligible))
    device = generator.device if generator is not None else "cpu"
    picked = set(torch.randperm(eligible, generator=generator, device=device)[:k].tolist())
    return [i in picked for i in range(n)]


def sample_with_logprobs(
    velocity_fn: VelocityFn,
    x_init: torch.Tensor,
    sigmas: torch.Tensor,
    eta: float,
    sde_window: tuple[int, int] | int | None = None,
    sde_fraction: float | None = None,
    generator: torch.Generator | None = None,
    kind: str = "sde",
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, list[StepRecord]]:
    """Roll out from x_init [B, C, T, h, w] (at sigmas[0]) along `sigmas` [N + 1].

    velocity_fn(x float32 [B, C, T, h, w], sigma [B] float32) -> v. sde_window: (start, end) steps
    [start, end), or an int window size placed at random with `generator`; sde_fraction: random subset;
    neither: every eligible step stochastic. kind: "sde" (Flow-SDE) or "cps". The same `generator` draws
    the window / subset and then the step noises. callback(i, N, x_next) after each step.
    Returns (x at sigmas[-1] float32, N StepRecords). Wrap in torch.no_grad() for rollouts.
    """
    flags = choose_sde_steps(sigmas, kind, sde_window, sde_fraction, generator)
    x = x_init.float()
    n = len(sigmas) - 1
    records: list[StepRecord] = []
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        timestep = torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32)
        v = velocity_fn(x, timestep)
        if flags[i]:
            out = stochastic_step(kind, x, v, sigma, sigma_next, eta, generator=generator)
            x_next = out.sample
            rec = StepRecord(i, sigma, sigma_next, timestep, x.detach(), x_next.detach(), True,
                             out.log_prob.detach(), out.mean.detach(), out.std.detach())
        else:
            x_next = ode_step(x, v, sigma, sigma_next)
            rec = StepRecord(i, sigma, sigma_next, timestep, x.detach(), x_next.detach(), False)
        records.append(rec)
        x = x_next
        if callback is not None:
            callback(i, n, x)
    return x, records
