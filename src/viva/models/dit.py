"""The mini editing DiT: a few-million-parameter video diffusion transformer for the mini world.

Source and noisy latents are concatenated along channels and patchified by a trainable projector (as in
VIVA and Lucy-Edit); blocks run 3D-RoPE self-attention over all (t, h, w) patches, cross-attention to the
refined instruction tokens and an MLP, modulated by the flow time with adaLN-zero (one shared modulation
projection plus a learned per-block offset, as in Wan / PixArt-alpha's adaLN-single). Every block, and
the output head, starts as the identity / zero, so an untrained model predicts zero velocity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from viva.errors import VivaUserError
from viva.models.hub import ComponentConfig, PretrainedMixin
from viva.models.interfaces import Denoiser
from viva.models.layers import (
    MLP,
    Attention,
    KeyMask,
    Rope3D,
    TimestepEmbedder,
    gated_residual,
    grid_positions,
    modulate,
    run_block,
    zero_init_,
)


@dataclass
class MiniDiTConfig(ComponentConfig):
    """latent_channels: C of the VAE latents (the projector reads 2C: noisy + source); patch_size:
    (pt, ph, pw); cond_dim: width of the refined tokens; rope_axes_dim: head channels rotated by the t,
    h and w positions (even, summing to hidden_size / num_heads); qk_norm: RMSNorm on q and k."""

    latent_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 256
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    cond_dim: int = 256
    rope_axes_dim: tuple[int, int, int] = (16, 24, 24)
    rope_theta: float = 10000.0
    qk_norm: bool = True

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)
        self.rope_axes_dim = tuple(int(d) for d in self.rope_axes_dim)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise VivaUserError(f"patch_size must be three positive ints (t, h, w), got {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise VivaUserError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        head_dim = self.hidden_size // self.num_heads
        axes = self.rope_axes_dim
        if len(axes) != 3 or sum(axes) != head_dim or any(d % 2 for d in axes):
            raise VivaUserError(
                f"rope_axes_dim {self.rope_axes_dim} must be three even numbers summing to the head dim {head_dim}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values per input patch: 2C * pt * ph * pw."""
        pt, ph, pw = self.patch_size
        return 2 * self.latent_channels * pt * ph * pw


class DiTBlock(nn.Module):
    """Self-attention (3D RoPE) -> cross-attention to tokens -> MLP, adaLN-zero modulated.

    Self-attention and MLP are gated by the time modulation (gates start at zero); cross-attention is
    plain pre-norm with a zero-initialised output projection. So a fresh block is exactly the identity.
    """

    def __init__(self, config: MiniDiTConfig):
        super().__init__()
        dim = config.hidden_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.self_attn = Attention(dim, config.num_heads, qk_norm=config.qk_norm)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = Attention(dim, config.num_heads, context_dim=config.cond_dim, qk_norm=config.qk_norm)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.mlp = MLP(dim, int(dim * config.mlp_ratio))
        # Per-block offset added to the shared time modulation: (shift, scale, gate) x (attn, mlp).
        self.modulation = nn.Parameter(torch.zeros(6, dim))
        zero_init_(self.cross_attn.to_out)

    def forward(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor,
        key_mask: KeyMask,
        modulation: torch.Tensor,
        rope: torch.Tensor,
    ) -> torch.Tensor:
        """x [B, N, D]; tokens [B, L, cond_dim]; modulation [B, 6, D]; rope [N, Dh/2] complex rotations."""
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = (modulation + self.modulation).unbind(1)
        # 1. Self-attention over all patches of all frames.
        h = self.self_attn(modulate(self.norm1(x), shift_attn, scale_attn), rope=rope)
        x = gated_residual(x, gate_attn, h)
        # 2. Cross-attention to the instruction tokens (padding masked).
        x = x + self.cross_attn(self.norm2(x), context=tokens, key_mask=key_mask)
        # 3. MLP.
        h = self.mlp(modulate(self.norm3(x), shift_mlp, scale_mlp))
        return gated_residual(x, gate_mlp, h)


class MiniDiT(PretrainedMixin, Denoiser):
    """Velocity model v(noisy, source, tokens, t) on video latents [B, C, T, h, w].

    T, h and w must be divisible by the patch size; any grid works (RoPE is computed on the fly), so
    images (T = 1), clips (T = 8) and clips with an appended reference frame (T = 9) share one model.
    Set `gradient_checkpointing = True` to recompute block activations in backward.
    """

    config_class = MiniDiTConfig

    def __init__(self, config: MiniDiTConfig | None = None):
        super().__init__()
        self.config = config = config or MiniDiTConfig()
        dim = config.hidden_size
        pt, ph, pw = config.patch_size
        self.gradient_checkpointing = False

        # Projector: patchified [noisy | source] -> model width.
        self.proj_in = nn.Linear(config.patch_dim, dim)
        self.rope = Rope3D(config.rope_axes_dim, config.rope_theta)
        # Time: embedding -> shared adaLN modulation (6 vectors per block, zero-init).
        self.time_embed = TimestepEmbedder(dim)
        self.time_modulation = zero_init_(nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        # Output head: adaLN (shift, scale) + linear to patch velocities, both zero-init.
        self.norm_out = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.out_modulation = zero_init_(nn.Linear(dim, 2 * dim))
        self.proj_out = zero_init_(nn.Linear(dim, config.latent_channels * pt * ph * pw))

    def forward(
        self,
        noisy: torch.Tensor,
        source: torch.Tensor,
        tokens: torch.Tensor,
        token_mask: torch.Tensor | None,
        timestep: torch.Tensor,
    ) -> torch.Tensor:
        """noisy, source: [B, C, T, h, w]; tokens: [B, L, cond_dim]; token_mask: [B, L] bool (True = real
        token; None = all real); timestep: [B] in [0, 1] (1 = pure noise) -> velocity [B, C, T, h, w]."""
        B, C, T, h, w = noisy.shape
        pt, ph, pw = self.config.patch_size
        if source.shape != noisy.shape:
            raise ValueError(f"source {tuple(source.shape)} and noisy {tuple(noisy.shape)} latents differ in shape")
        if C != self.config.latent_channels or T % pt or h % ph or w % pw:
            raise ValueError(
                f"latents {tuple(noisy.shape)} need {self.config.latent_channels} channels and T, h, w divisible "
                f"by patch size {self.config.patch_size}"
            )
        grid = (T // pt, h // ph, w // pw)
        # The residual stream and the modulation keep the parameters' dtype (float32 under autocast).
        dtype = self.proj_in.weight.dtype

        # 1. Condition on the source by concatenating it with the noisy latents along channels: [B, 2C, T, h, w].
        x = torch.cat([noisy, source], dim=1).to(dtype)

        # 2. Projector: patchify to [B, N, 2C*pt*ph*pw] (N = T/pt * h/ph * w/pw, t slowest) -> [B, N, D].
        x = rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)
        x = self.proj_in(x).to(dtype)

        # 3. Positions: 3D RoPE rotations over the (t, h, w) patch grid, [N, Dh/2] complex.
        rope = self.rope(grid_positions(*grid, device=x.device))

        # 4. Time: sinusoidal(t * 1000) -> MLP -> temb [B, D] -> shared modulation [B, 6, D].
        temb = self.time_embed(timestep.to(x.device).expand(B))
        modulation = self.time_modulation(F.silu(temb)).unflatten(1, (6, -1)).to(dtype)

        # 5. Blocks: self-attention (RoPE), cross-attention to the tokens (padding masked), MLP.
        tokens = tokens.to(dtype)
        if token_mask is not None:
            token_mask = token_mask.bool()
            tokens = tokens.masked_fill(~token_mask.unsqueeze(-1), 0.0)  # padding values never reach the output
        key_mask = KeyMask.from_mask(token_mask)
        for block in self.blocks:
            x = run_block(
                block, x, tokens, key_mask, modulation, rope, gradient_checkpointing=self.gradient_checkpointing
            )

        # 6. Output head: final adaLN + linear to patch velocities [B, N, C*pt*ph*pw].
        shift, scale = self.out_modulation(F.silu(temb)).to(dtype).chunk(2, dim=-1)
        x = self.proj_out(modulate(self.norm_out(x), shift, scale))

        # 7. Unpatchify to [B, C, T, h, w].
        t, hh, ww = grid
        x = rearrange(x, "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)", t=t, h=hh, w=ww, pt=pt, ph=ph, pw=pw)
        return x.to(noisy.dtype)
