"""The mini token refiner: maps instructor tokens into the DiT's condition space.

Modelled on HunyuanVideo's individual token refiner: an input projection, then a few pre-norm
self-attention blocks over the (padding-masked) tokens whose residual branches are gated (adaLN-zero
gates, zero at init) by a condition vector made of the timestep embedding and the mean-pooled tokens.
A fresh refiner is therefore just the input projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from viva.errors import VivaUserError
from viva.models.hub import ComponentConfig, PretrainedMixin
from viva.models.interfaces import TokenRefiner
from viva.models.layers import (
    MLP,
    Attention,
    KeyMask,
    TimestepEmbedder,
    gated_residual,
    masked_mean,
    run_block,
    zero_init_,
)


@dataclass
class RefinerConfig(ComponentConfig):
    """in_dim: instructor token width (384 for MiniLM); hidden_size: output width (the DiT's cond_dim)."""

    in_dim: int = 384
    hidden_size: int = 256
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    qk_norm: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise VivaUserError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")


class RefinerBlock(nn.Module):
    """Pre-norm masked self-attention + MLP, each residual gated by Linear(SiLU(cond)) (zero-init)."""

    def __init__(self, config: RefinerConfig):
        super().__init__()
        dim = config.hidden_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, config.num_heads, qk_norm=config.qk_norm)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * config.mlp_ratio))
        self.gates = zero_init_(nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, key_mask: KeyMask) -> torch.Tensor:
        """x [B, L, D]; cond [B, D] -> [B, L, D]."""
        gate_attn, gate_mlp = self.gates(F.silu(cond)).to(x.dtype).chunk(2, dim=-1)
        x = gated_residual(x, gate_attn, self.attn(self.norm1(x), key_mask=key_mask))
        return gated_residual(x, gate_mlp, self.mlp(self.norm2(x)))


class MiniTokenRefiner(PretrainedMixin, TokenRefiner):
    """tokens [B, L, in_dim] + mask [B, L] (+ timestep [B] in [0, 1]) -> refined tokens [B, L, hidden_size].

    Padding positions come out as zeros (they are masked out of every attention anyway). Without a
    timestep the condition is the pooled tokens alone.
    """

    config_class = RefinerConfig

    def __init__(self, config: RefinerConfig | None = None):
        super().__init__()
        self.config = config = config or RefinerConfig()
        dim = config.hidden_size
        self.gradient_checkpointing = False
        self.proj_in = nn.Linear(config.in_dim, dim)
        self.time_embed = TimestepEmbedder(dim)
        self.pooled_embed = nn.Sequential(nn.Linear(config.in_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(RefinerBlock(config) for _ in range(config.depth))

    @property
    def out_dim(self) -> int:
        return self.config.hidden_size

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor | None, timestep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """tokens [B, L, in_dim]; mask [B, L] bool (True = real; None = all real); timestep [B] in [0, 1]
        or None -> [B, L, hidden_size]."""
        B = tokens.shape[0]
        dtype = self.proj_in.weight.dtype  # residual dtype: float32 under autocast
        tokens = tokens.to(dtype)
        if mask is not None:
            mask = mask.bool()
            tokens = tokens.masked_fill(~mask.unsqueeze(-1), 0.0)  # padding values never reach any output

        # 1. Condition vector [B, D]: pooled real tokens (+ timestep embedding).
        cond = self.pooled_embed(masked_mean(tokens, mask))
        if timestep is not None:
            cond = cond + self.time_embed(timestep.to(tokens.device).expand(B))

        # 2. Input projection [B, L, D].
        x = self.proj_in(tokens).to(dtype)

        # 3. Gated masked self-attention blocks.
        key_mask = KeyMask.from_mask(mask)
        for block in self.blocks:
            x = run_block(block, x, cond, key_mask, gradient_checkpointing=self.gradient_checkpointing)

        # 4. Zero the padding positions.
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        return x
