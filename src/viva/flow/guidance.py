"""Classifier-free guidance with two conditions, as in InstructPix2Pix (Brooks et al. 2023, eq. 3).

The editor's velocity has three flavours per step:
- v_full:    source video AND instruction;
- v_no_text: source video, empty instruction (null tokens);
- v_uncond:  neither (null tokens and a null source, e.g. zero source latents).

  v = v_uncond + video_scale * (v_no_text - v_uncond) + text_scale * (v_full - v_no_text)
    = text_scale * v_full + (video_scale - text_scale) * v_no_text + (1 - video_scale) * v_uncond

Degenerate cases: text_scale = video_scale = 1 -> v_full; text_scale = 0, video_scale = 1 -> v_no_text;
both 0 -> v_uncond. v_uncond is only needed when video_scale != 1 and v_no_text only when
video_scale != text_scale (pass None otherwise and skip that forward pass).
Training makes the null flavours meaningful by dropping conditions at random (`condition_dropout`).
"""

from __future__ import annotations

import torch


def guided_velocity(
    v_full: torch.Tensor,
    v_no_text: torch.Tensor | None,
    v_uncond: torch.Tensor | None,
    text_scale: float,
    video_scale: float,
) -> torch.Tensor:
    """Two-scale guided velocity (see module docstring). All velocities [B, C, T, h, w]."""
    terms = [
        (text_scale, v_full, "v_full"),
        (video_scale - text_scale, v_no_text, "v_no_text"),
        (1.0 - video_scale, v_uncond, "v_uncond"),
    ]
    out = None
    for coef, v, name in terms:
        if coef == 0:
            continue
        if v is None:
            raise ValueError(f"{name} is needed for text_scale={text_scale}, video_scale={video_scale}")
        out = coef * v if out is None else out + coef * v
    return out if out is not None else torch.zeros_like(v_full)


def condition_dropout(
    batch: int,
    generator: torch.Generator | None = None,
    p_text: float = 0.05,
    p_video: float = 0.05,
    p_both: float = 0.05,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time condition dropout: returns (keep_text [B] bool, keep_video [B] bool).

    One uniform u per sample splits [0, 1) into disjoint events, as InstructPix2Pix does:
    u < p_text: drop the instruction only; next p_both: drop both; next p_video: drop the source video
    only; otherwise keep both. So P(drop text) = p_text + p_both, P(drop video) = p_video + p_both.
    A dropped instruction is replaced by the null condition, a dropped video by the null source.
    """
    if min(p_text, p_video, p_both) < 0 or p_text + p_video + p_both > 1:
        raise ValueError(f"dropout probabilities must be >= 0 and sum to <= 1, got {p_text}, {p_video}, {p_both}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(batch, generator=generator, device=gen_device).to(device or gen_device)
    drop_text = u < p_text + p_both
    drop_video = (u >= p_text) & (u < p_text + p_both + p_video)
    return ~drop_text, ~drop_video
