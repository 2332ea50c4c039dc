"""Flow-matching math: schedules, masked loss, guidance, ODE/SDE steps, rollouts and GRPO pieces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from viva.flow import (
    add_noise,
    choose_sde_steps,
    condition_dropout,
    cps_step,
    euler_sample,
    flow_sde_step,
    group_advantages,
    guided_velocity,
    kl_to_reference,
    mask_to_latent,
    masked_flow_loss,
    ode_step,
    ppo_clip_loss,
    sample_timesteps,
    sample_with_logprobs,
    sigma_schedule,
    velocity_target,
)

SHAPE = (3, 4, 2, 5, 6)  # [B, C, T, h, w]


def _xv(seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g).to(dtype), torch.randn(SHAPE, generator=g).to(dtype)


# --- schedules ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 4, 20])
def test_sigma_schedule_matches_diffusers(shift, steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    ours = sigma_schedule(steps, shift=shift)
    assert ours.shape == (steps + 1,) and ours[0] == 1 and ours[-1] == 0
    torch.testing.assert_close(ours, sched.sigmas.float(), atol=1e-6, rtol=0)


def test_sample_timesteps_range_shift_and_determinism():
    t1 = sample_timesteps(4096, torch.Generator().manual_seed(0))
    t2 = sample_timesteps(4096, torch.Generator().manual_seed(0))
    assert torch.equal(t1, t2) and t1.shape == (4096,) and ((t1 > 0) & (t1 < 1)).all()
    assert abs(t1.median().item() - 0.5) < 0.03  # logit-normal(0, 1) is symmetric about 1/2
    shifted = sample_timesteps(4096, torch.Generator().manual_seed(0), shift=3.0)
    torch.testing.assert_close(shifted, 3 * t1 / (1 + 2 * t1))
    u = sample_timesteps(4096, torch.Generator().manual_seed(1), kind="uniform")
    assert abs(u.mean().item() - 0.5) < 0.03
    with pytest.raises(ValueError):
        sample_timesteps(2, kind="cosine")


def test_add_noise_and_target():
    x0, noise = _xv()
    t = torch.tensor([0.0, 0.5, 1.0])
    xt = add_noise(x0, noise, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[2], noise[2])
    torch.testing.assert_close(xt[1], 0.5 * (x0[1] + noise[1]))
    v = velocity_target(x0, noise)
    # x0 and noise are recoverable from x_t and v
    torch.testing.assert_close(xt - t.view(-1, 1, 1, 1, 1) * v, x0)


# --- masked loss ---------------------------------------------------------------------------------------

def test_mask_to_latent_square_at_8x():
    mask = torch.zeros(1, 1, 64, 64)
    mask[0, 0, 20:30, 41:44] = 1  # rows 20..29 -> cells 2, 3; cols 41..43 -> cell 5
    lat = mask_to_latent(mask, (1, 8, 8))
    expected = torch.zeros(1, 1, 8, 8)
    expected[0, 0, 2:4, 5] = 1
    assert lat.shape == (1, 1, 8, 8) and torch.equal(lat, expected)
    # [B, 1, T, H, W] input and a full latent shape work too
    lat5 = mask_to_latent(mask[:, None].bool(), (1, 16, 1, 8, 8))
    assert torch.equal(lat5, expected)


def test_mask_to_latent_time():
    mask = torch.zeros(1, 9, 16, 16)
    mask[0, 4, 0, 0] = 1  # frame 4 -> causal latent frame 1 (frames 1..4) with factor 4
    lat = mask_to_latent(mask, (3, 2, 2))
    assert lat[0, :, 0, 0].tolist() == [0, 1, 0]
    mask8 = torch.zeros(1, 8, 16, 16)
    mask8[0, 5, 15, 15] = 1  # plain blocks of 4 -> latent frame 1
    assert mask_to_latent(mask8, (2, 2, 2), temporal_factor=4)[0, :, 1, 1].tolist() == [0, 1]


def test_masked_loss_zero_mask_is_mse_and_weights_region():
    pred, target = _xv()
    mse = torch.nn.functional.mse_loss(pred, target)
    torch.testing.assert_close(masked_flow_loss(pred, target), mse)
    torch.testing.assert_close(masked_flow_loss(pred, target, torch.zeros(3, 2, 5, 6), mask_weight=4.0), mse)
    w = 2.5
    mask = torch.zeros(3, 2, 5, 6)
    mask[:, :, 1:3, 2:4] = 1
    err = (pred - target) ** 2
    expected = (err * (1 + w * mask[:, None])).mean()
    torch.testing.assert_close(masked_flow_loss(pred, target, mask, mask_weight=w), expected)
    # a pixel-space mask at 8x gives the same as its latent-grid version
    pix = mask.repeat_interleave(8, -2).repeat_interleave(8, -1)
    torch.testing.assert_close(masked_flow_loss(pred, target, pix, mask_weight=w), expected)


def test_masked_loss_frame_weight_excludes_frames():
    pred, target = _xv()
    fw = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # second slot = reference frame
    loss = masked_flow_loss(pred, target, frame_weight=fw)
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(pred[:, :, :1], target[:, :, :1]))
    per = masked_flow_loss(pred, target, frame_weight=fw, reduction="none")
    torch.testing.assert_close(per, ((pred - target) ** 2)[:, :, :1].flatten(1).mean(1))


# --- guidance ------------------------------------------------------------------------------------------

def test_guided_velocity_degenerate_cases():
    a, b = _xv(1)
    c = torch.randn(SHAPE)
    torch.testing.assert_close(guided_velocity(a, b, c, 1.0, 1.0), a)
    torch.testing.assert_close(guided_velocity(a, None, None, 1.0, 1.0), a)
    torch.testing.assert_close(guided_velocity(a, b, c, 0.0, 1.0), b)
    torch.testing.assert_close(guided_velocity(a, b, c, 0.0, 0.0), c)
    torch.testing.assert_close(guided_velocity(a, b, None, 5.0, 1.0), b + 5.0 * (a - b))
    torch.testing.assert_close(guided_velocity(a, b, c, 7.5, 1.5), c + 1.5 * (b - c) + 7.5 * (a - b))
    with pytest.raises(ValueError):
        guided_velocity(a, b, None, 7.5, 1.5)


def test_condition_dropout_rates():
    keep_text, keep_video = condition_dropout(200_000, torch.Generator().manual_seed(0), 0.05, 0.1, 0.02)
    drop_t, drop_v = (~keep_text).float(), (~keep_video).float()
    assert abs(drop_t.mean().item() - 0.07) < 0.005
    assert abs(drop_v.mean().item() - 0.12) < 0.005
    assert abs((drop_t * drop_v).mean().item() - 0.02) < 0.003


# --- ODE -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps,shift", [(1, 1.0), (7, 3.0)])
def test_euler_sample_linear_field_is_exact(steps, shift):
    x0, noise = _xv(2)
    v = velocity_target(x0, noise)
    seen = []
    sigmas = sigma_schedule(steps, shift)
    out = euler_sample(lambda x, s: v, noise, sigmas, callback=lambda i, n, x: seen.append((i, n)))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    assert seen == [(i, steps) for i in range(steps)]


# --- SDE steps -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma,sigma_next", [(0.8, 0.6), (1.0, 0.9), (0.3, 0.0)])
def test_flow_sde_logprob_matches_normal(sigma, sigma_next):
    x, v = _xv(3, torch.bfloat16)
    out = flow_sde_step(x, v, sigma, sigma_next, eta=0.7, generator=torch.Generator().manual_seed(0))
    assert out.sample.dtype == torch.float32 and out.log_prob.shape == (3,) and out.std.shape == (3,)
    s_den = sigma_next if sigma == 1 else sigma
    std_t = 0.7 * math.sqrt(sigma / (1 - s_den))
    dt = sigma_next - sigma
    xf, vf = x.float(), v.float()
    mean = xf * (1 + std_t**2 / (2 * sigma) * dt) + vf * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    scale = std_t * math.sqrt(-dt)
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.std, torch.full((3,), scale))
    ref = Normal(mean, scale).log_prob(out.sample).flatten(1).mean(1)
    torch.testing.assert_close(out.log_prob, ref)
    # re-scoring the drawn sample gives the same log-prob
    again = flow_sde_step(x, v, sigma, sigma_next, eta=0.7, prev_sample=out.sample)
    torch.testing.assert_close(again.log_prob, out.log_prob)
    assert torch.equal(again.sample, out.sample)


def test_flow_sde_per_sample_sigma_and_sigma_max_ref():
    x, v = _xv(4)
    sig, nxt = torch.tensor([1.0, 0.5, 0.25]), torch.tensor([0.9, 0.4, 0.0])
    out = flow_sde_step(x, v, sig, nxt, eta=1.0, noise=torch.zeros(SHAPE))
    for i in range(3):
        zeros = torch.zeros(1, *SHAPE[1:])
        single = flow_sde_step(x[i : i + 1], v[i : i + 1], float(sig[i]), float(nxt[i]), eta=1.0, noise=zeros)
        torch.testing.assert_close(out.mean[i : i + 1], single.mean)
        torch.testing.assert_close(out.sample[i : i + 1], single.mean)  # zero noise
    capped = flow_sde_step(x, v, 1.0, 0.9, eta=1.0, sigma_max_ref=0.95, noise=torch.zeros(SHAPE))
    torch.testing.assert_close(capped.std, torch.full((3,), math.sqrt(1 / 0.05) * math.sqrt(0.1)))


@pytest.mark.parametrize("step", [flow_sde_step, cps_step])
def test_eta_to_zero_recovers_ode(step):
    x, v = _xv(5)
    for sigma, sigma_next in [(1.0, 0.8), (0.6, 0.3)]:
        ode = ode_step(x, v, sigma, sigma_next)
        torch.testing.assert_close(ode, x + v * (sigma_next - sigma))
        exact = step(x, v, sigma, sigma_next, eta=0.0, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(exact.mean, ode)
        torch.testing.assert_close(exact.sample, ode)
        assert torch.all(exact.std == 0) and torch.all(exact.log_prob == 0)
        tiny = step(x, v, sigma, sigma_next, eta=1e-4, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(tiny.mean, ode, atol=1e-5, rtol=0)
        torch.testing.assert_close(tiny.sample, ode, atol=1e-3, rtol=0)
        assert tiny.std.max() < 1e-3


def test_cps_step_formula_and_logprob():
    x, v = _xv(6)
    sigma, sigma_next, eta = 0.7, 0.5, 0.6
    out = cps_step(x, v, sigma, sigma_next, eta, generator=torch.Generator().manual_seed(1))
    std = sigma_next * math.sin(eta * math.pi / 2)
    mean = (x - sigma * v) * (1 - sigma_next) + (x + (1 - sigma) * v) * math.sqrt(sigma_next**2 - std**2)
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.std, torch.full((3,), std))
    torch.testing.assert_close(out.log_prob, Normal(mean, std).log_prob(out.sample).flatten(1).mean(1))
    again = cps_step(x, v, sigma, sigma_next, eta, prev_sample=out.sample)
    torch.testing.assert_close(again.log_prob, out.log_prob)


def test_logprob_gradient_flows_through_mean_only():
    x, v = _xv(7)
    v = v.clone().requires_grad_(True)
    out = flow_sde_step(x, v, 0.5, 0.4, eta=0.7, generator=torch.Generator().manual_seed(0))
    out.log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


# --- GRPO pieces ---------------------------------------------------------------------------------------

def test_kl_zero_for_equal_means_and_value():
    x, y = _xv(8)
    assert torch.all(kl_to_reference(x, x.clone(), 0.3) == 0)
    kl = kl_to_reference(x, y, torch.tensor([0.5, 1.0, 2.0]))
    expected = ((x - y) ** 2).flatten(1).mean(1) / (2 * torch.tensor([0.25, 1.0, 4.0]))
    torch.testing.assert_close(kl, expected)


def test_ppo_clip_loss_hand_computed():
    c = 0.2
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1, 1.1])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, -2.0])
    old = torch.zeros(6)
    loss, frac = ppo_clip_loss(torch.log(ratios), old, adv, c)
    # max(-A r, -A clip(r)) per sample:
    # r=1.5,A=+1: max(-1.5, -1.2) = -1.2 (clipped)   r=1.5,A=-1: max(1.5, 1.2) = 1.5 (unclipped)
    # r=0.5,A=+1: max(-0.5, -0.8) = -0.5 (unclipped) r=0.5,A=-1: max(0.5, 0.8) = 0.8 (clipped)
    # r=1.1,A=+2: -2.2 (inside)                      r=1.1,A=-2: 2.2 (inside)
    expected = torch.tensor([-1.2, 1.5, -0.5, 0.8, -2.2, 2.2]).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(frac, torch.tensor(4 / 6))
    # gradient is zero on the clipped branch
    lp = torch.log(ratios).clone().requires_grad_(True)
    ppo_clip_loss(lp, old, adv, c)[0].backward()
    assert lp.grad[0] == 0 and lp.grad[3] == 0 and lp.grad[1] != 0 and lp.grad[2] != 0


def test_group_advantages():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 0.0, 0.0, 0.0, 10.0])
    adv, valid = group_advantages(rewards, group_size=4)
    groups = adv.view(3, 4)
    torch.testing.assert_close(groups.mean(1), torch.zeros(3), atol=1e-6, rtol=0)
    assert valid.tolist() == [True] * 4 + [False] * 4 + [True] * 4
    assert torch.all(groups[1] == 0)
    r0 = rewards[:4]
    torch.testing.assert_close(groups[0], (r0 - r0.mean()) / (r0.std(unbiased=False) + 1e-4))
    clipped, _ = group_advantages(torch.tensor([0.0] * 99 + [1.0]), group_size=100, clip=5.0)
    assert clipped.max() == 5.0
    b_adv, _ = group_advantages(rewards, group_size=4, batch_std=True)
    torch.testing.assert_close(b_adv[:4], (r0 - r0.mean()) / (rewards.std(unbiased=False) + 1e-4))
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size=5)


# --- rollouts ------------------------------------------------------------------------------------------

def test_sample_with_logprobs_window_mode():
    x0, noise = _xv(9)
    sigmas = sigma_schedule(10, shift=3.0)
    v = velocity_target(x0, noise)
    g = torch.Generator().manual_seed(0)
    out, recs = sample_with_logprobs(lambda x, s: v, noise, sigmas, eta=0.7, sde_window=(2, 5), generator=g)
    assert [r.sde for r in recs] == [2 <= i < 5 for i in range(10)]
    assert all((r.log_prob is not None) == r.sde for r in recs)
    for a, b in zip(recs[:-1], recs[1:]):
        assert torch.equal(a.next_latents, b.latents)
    assert recs[3].timestep.shape == (3,) and recs[3].sigma == float(sigmas[3])
    # re-scoring a stored transition reproduces its log-prob
    r = recs[3]
    again = flow_sde_step(r.latents, v, r.sigma, r.sigma_next, 0.7, prev_sample=r.next_latents)
    torch.testing.assert_close(again.log_prob, r.log_prob)
    assert out.shape == x0.shape and torch.isfinite(out).all()


def test_sample_with_logprobs_random_window_and_fraction():
    sigmas = sigma_schedule(8)
    x = torch.randn(2, 1, 1, 2, 2)
    flags_a = choose_sde_steps(sigmas, sde_window=3, generator=torch.Generator().manual_seed(0))
    flags_b = choose_sde_steps(sigmas, sde_window=3, generator=torch.Generator().manual_seed(0))
    assert flags_a == flags_b and sum(flags_a) == 3
    on = [i for i, f in enumerate(flags_a) if f]
    assert on == list(range(on[0], on[0] + 3))
    starts = {
        choose_sde_steps(sigmas, sde_window=3, generator=torch.Generator().manual_seed(s)).index(True)
        for s in range(40)
    }
    assert len(starts) > 1 and max(starts) <= 5
    g = torch.Generator().manual_seed(3)
    _, recs = sample_with_logprobs(lambda x, s: -x, x, sigmas, eta=0.5, sde_fraction=0.5, generator=g)
    assert sum(r.sde for r in recs) == 4
    # CPS never makes the final step onto sigma = 0 stochastic
    assert choose_sde_steps(sigmas, kind="cps") == [True] * 7 + [False]
    _, recs = sample_with_logprobs(lambda x, s: -x, x, sigmas, eta=0.5, kind="cps", generator=g)
    assert all(torch.isfinite(r.log_prob).all() for r in recs if r.sde)
    with pytest.raises(ValueError):
        choose_sde_steps(sigmas, sde_window=(6, 10))


def test_flow_sde_with_exact_velocity_keeps_the_data_marginal():
    # 1-D Gaussian data x0 ~ N(0, a^2): the exact velocity is linear, v = (t - (1 - t) a^2) / s_t^2 * x.
    a = 0.5

    def velocity(x, t):
        t = t.view(-1, 1, 1, 1, 1)
        return (t - (1 - t) * a * a) / ((1 - t) ** 2 * a * a + t * t) * x

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(20000, 1, 1, 1, 1, generator=g)
    sigmas = sigma_schedule(50, shift=3.0)
    sde, _ = sample_with_logprobs(velocity, noise, sigmas, eta=0.7, generator=g)
    ode = euler_sample(velocity, noise, sigmas)
    assert abs(sde.std().item() - a) < 0.03 and abs(ode.std().item() - a) < 0.03
    assert abs(sde.mean().item()) < 0.02
