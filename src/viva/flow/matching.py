"""Flow-matching training targets and the edit-region weighted loss (PAPER.md section 2).

x_t = (1 - t) x0 + t noise and v = noise - x0, so x0 = x_t - t v and noise = x_t + (1 - t) v.
Loss: mean((1 + w_m M) * (v_pred - v_target)^2), M = pixel edit mask brought to the latent grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from viva.flow._utils import per_sample


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise. x0, noise: [B, C, T, h, w] (any [B, ...]); t: float or [B] in [0, 1]."""
    t = per_sample(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = d x_t / d t = noise - x0 (constant along the straight path). Same shape as x0."""
    return noise - x0


def _temporal_groups(t_in: int, t_out: int, temporal_factor: int | None) -> list[tuple[int, int]]:
    """For each latent frame, the [start, end) range of pixel frames it covers."""
    if t_out == t_in:
        return [(i, i + 1) for i in range(t_in)]
    if t_out > t_in or t_out < 1:
        raise ValueError(f"cannot bring {t_in} mask frames to {t_out} latent frames")
    if t_out == 1:
        return [(0, t_in)]
    if temporal_factor is None and (t_in - 1) % (t_out - 1) == 0:
        temporal_factor = (t_in - 1) // (t_out - 1)  # causal video VAE: T' = 1 + (T - 1) // f
    if temporal_factor is not None:
        f = temporal_factor
        if t_out == 1 + (t_in - 1) // f:  # causal: frame 0 alone, then blocks of f
            starts = [0] + [1 + i * f for i in range(t_out - 1)]
        elif t_out == -(-t_in // f):  # plain blocks of f
            starts = [i * f for i in range(t_out)]
        else:
            raise ValueError(f"{t_in} frames with temporal factor {f} do not give {t_out} latent frames")
        ends = starts[1:] + [t_in]  # leftover frames join the last block
        return list(zip(starts, ends))
    # any other ratio: adaptive pooling bins (overlapping where the ratio is not an integer)
    return [((i * t_in) // t_out, -(-((i + 1) * t_in) // t_out)) for i in range(t_out)]


def mask_to_latent(
    mask: torch.Tensor,
    latent_shape: tuple[int, ...] | torch.Size,
    temporal_factor: int | None = None,
) -> torch.Tensor:
    """Pixel edit mask -> latent grid, marking every latent cell that touches an edited pixel.

    mask: [B, T, H, W] or [B, 1, T, H, W], bool or float in {0, 1} (soft values pass through max).
    latent_shape: (T', h, w), or a full latent shape whose last three dims are (T', h, w).
    Space: adaptive max-pool [H, W] -> [h, w] (exact block max when H, W are multiples of h, w).
    Time: T' == T keeps frames; otherwise max over the frames each latent frame covers: the causal
    video-VAE layout (frame 0 alone, then blocks of f, T' = 1 + (T - 1) // f) when `temporal_factor` is
    None and (T - 1) is a multiple of (T' - 1) or when `temporal_factor` says so; plain blocks of f when
    T' = ceil(T / f); adaptive-pooling bins otherwise.
    Returns float32 [B, T', h, w] on mask's device.
    """
    if mask.ndim == 5:
        if mask.shape[1] != 1:
            raise ValueError(f"a 5-d mask must be [B, 1, T, H, W], got {tuple(mask.shape)}")
        mask = mask[:, 0]
    if mask.ndim != 4:
        raise ValueError(f"mask must be [B, T, H, W] or [B, 1, T, H, W], got {tuple(mask.shape)}")
    t_out, h, w = (int(s) for s in tuple(latent_shape)[-3:])
    b, t_in, hh, ww = mask.shape
    m = mask.float()
    if (hh, ww) != (h, w):
        m = F.adaptive_max_pool2d(m.reshape(b * t_in, 1, hh, ww), (h, w)).reshape(b, t_in, h, w)
    groups = _temporal_groups(t_in, t_out, temporal_factor)
    if len(groups) == t_in and all(e - s == 1 for s, e in groups):
        return m
    return torch.stack([m[:, s:e].amax(dim=1) for s, e in groups], dim=1)


def masked_flow_loss(
    v_pred: torch.Tensor,
    v_target: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_weight: float = 1.0,
    frame_weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Edit-weighted flow-matching loss, computed in float32.

    v_pred, v_target: [B, C, T', h, w]. mask: None, a latent-grid mask [B, T', h, w] / [B, 1, T', h, w],
    or a pixel mask [B, T, H, W] / [B, 1, T, H, W] (converted with `mask_to_latent` when its last three
    dims differ from the latents'). When the latents carry an extra reference-frame slot, convert the
    mask with the video's latent shape yourself, pad it with a zero frame and give that slot
    frame_weight 0. frame_weight: [B, T'] (0 = frame does not count, e.g. the reference slot).

    Per element: e = (1 + mask_weight * M) * (v_pred - v_target)^2. Normalised by the number of counted
    elements (sum of frame weights times C*h*w), so with M = 0 (or mask=None) it is the plain MSE over
    counted frames. reduction="mean": scalar over the batch; "none": [B], each sample normalised by its
    own count (0 for a sample with no counted frame).
    """
    if v_pred.shape != v_target.shape or v_pred.ndim != 5:
        shapes = f"{tuple(v_pred.shape)}, {tuple(v_target.shape)}"
        raise ValueError(f"v_pred and v_target must be equal [B, C, T, h, w] shapes, got {shapes}")
    b, _, t, h, w = v_pred.shape
    err = (v_pred.float() - v_target.float()).pow(2)
    weight = torch.ones(b, 1, t, h, w, device=err.device)
    if mask is not None:
        m = mask[:, 0] if mask.ndim == 5 else mask
        if tuple(m.shape[-3:]) != (t, h, w):
            m = mask_to_latent(m, (t, h, w))
        weight = weight + mask_weight * m.float().to(err.device).reshape(b, 1, t, h, w)
    count = torch.ones(b, 1, t, 1, 1, device=err.device)
    if frame_weight is not None:
        if tuple(frame_weight.shape) != (b, t):
            raise ValueError(f"frame_weight must be [B={b}, T'={t}], got {tuple(frame_weight.shape)}")
        count = frame_weight.float().to(err.device).reshape(b, 1, t, 1, 1)
    weighted = err * weight * count
    denom = count.expand_as(err)
    if reduction == "mean":
        return weighted.sum() / denom.sum().clamp_min(1e-12)
    if reduction == "none":
        return weighted.flatten(1).sum(1) / denom.flatten(1).sum(1).clamp_min(1e-12)
    raise ValueError(f"unknown reduction {reduction!r}; use 'mean' or 'none'")
