"""Edit-GRPO objective pieces (PAPER.md section 3): group advantages, PPO-clip loss, KL to the reference.

Per SDE step with policy ratio r = exp(log_prob - old_log_prob) and advantage A:
    loss = mean(max(-A r, -A clip(r, 1 - c, 1 + c))) + beta * mean(KL)
"""

from __future__ import annotations

import torch

from viva.flow._utils import mean_over_sample, per_sample


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    eps: float = 1e-4,
    clip: float | None = 5.0,
    batch_std: bool = False,
    min_std: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-normalised advantages.

    rewards: [K * G], the G samples of each prompt contiguous (rewards.view(K, G) is one row per prompt).
    A_i = (r_i - mean_group) / (std + eps), std = the group's std (population, ddof 0) or, with
    batch_std, the std of all K*G rewards; then clamped to [-clip, clip] (clip=None: no clamp).
    Returns (advantages [K * G] float32, valid [K * G] bool): valid is False for every sample of a group
    whose rewards have std <= min_std (all equal: no signal; those advantages are set to 0 and the
    trainer should skip them).
    """
    if rewards.ndim != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [K * G] with G = {group_size}, got shape {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    group_std = r.std(dim=1, unbiased=False, keepdim=True)
    std = r.std(unbiased=False) if batch_std else group_std
    adv = (r - mean) / (std + eps)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    valid = (group_std > min_std).expand_as(r)
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    return adv.reshape(-1), valid.reshape(-1)


def ppo_clip_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clip on the per-step ratio. All inputs [B] (old_log_prob is detached here).

    ratio = exp(log_prob - old_log_prob); loss = mean(max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c))).
    Returns (loss scalar, clip_fraction scalar = fraction of samples with |ratio - 1| > c).
    """
    ratio = torch.exp(log_prob - old_log_prob.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    clip_fraction = ((ratio - 1.0).abs() > clip_range).float().mean()
    return loss, clip_fraction.detach()


def kl_to_reference(mean: torch.Tensor, mean_ref: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(mean_ref, std^2)) per element, averaged over non-batch dims -> [B].

    = ||mean - mean_ref||^2 / (2 std^2), with std the step's TOTAL std (`SDEStepOutput.std`,
    i.e. std_t * sqrt(-dt) for the Flow-SDE): the exact KL between the two step Gaussians, on the same
    per-element scale as the averaged log_prob. (Flow-GRPO's code divides by std_t^2 instead, which is
    this KL times -dt: a beta tuned there corresponds to beta * (-dt) here.)
    mean, mean_ref: [B, C, T, h, w]; std: float or [B].
    """
    diff = mean.float() - mean_ref.float()
    return mean_over_sample(diff.pow(2) / (2 * per_sample(std, diff, torch.float32) ** 2))
