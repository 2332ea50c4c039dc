"""Transformer building blocks shared by the mini DiT, the token refiner and later components.

Sequences are [B, N, D]; attention heads are [B, H, N, Dh] (Dh = D / H). Everything runs in float32 and
under `torch.autocast(..., dtype=torch.bfloat16)`: matmuls go to bf16, while the residual stream, the
adaLN modulation and the rotary angles stay float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint


# ---------------------------------------------------------------------------------------------------------
# Timestep embedding
# ---------------------------------------------------------------------------------------------------------


def sinusoidal_embedding(
    timestep: torch.Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal features of `timestep * scale` ([B] float) -> [B, dim] float32, laid out [cos | sin].

    Flow-matching time lives in [0, 1]; `scale = 1000` spreads it over the range the usual DDPM-style
    frequencies resolve (as diffusers' `Timesteps` does for t in [0, 1000]).
    """
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)
    angles = timestep.float()[:, None] * scale * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """t [B] in [0, 1] -> sinusoidal(t * 1000) -> Linear -> SiLU -> Linear -> [B, hidden_size]."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(timestep, self.frequency_dim).to(self.mlp[0].weight.dtype))


# ---------------------------------------------------------------------------------------------------------
# Normalisation and modulation
# ---------------------------------------------------------------------------------------------------------


class RMSNorm(nn.RMSNorm):
    """RMSNorm over the last dim that keeps the input dtype (bf16 under autocast uses the fused kernel
    instead of falling back when the float32 weight and the bf16 input disagree)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) if self.weight is not None else None
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, N, D] * (1 + scale) + shift, with shift / scale [B, D] broadcast over tokens."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


def gated_residual(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """x + gate * h for x, h [B, N, D] and a gate [B, D] broadcast over tokens (one fused kernel)."""
    return torch.addcmul(x, gate.unsqueeze(1), h)


def zero_init_(module: nn.Linear) -> nn.Linear:
    """Zero a linear layer's weight and bias in place (adaLN-zero, zero-init output heads)."""
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


class MLP(nn.Module):
    """Linear -> GELU (tanh) -> Linear: [B, N, dim] -> [B, N, dim]."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


# ---------------------------------------------------------------------------------------------------------
# 3D rotary position embedding
# ---------------------------------------------------------------------------------------------------------


def grid_positions(frames: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Integer (t, h, w) coordinates of a patch grid in row-major order (t slowest) -> [N, 3] float32."""
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in (frames, height, width)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


class Rope3D(nn.Module):
    """Rotary position embedding over (t, h, w), computed on the fly for any grid (no maximum length).

    Head channels form Dh/2 adjacent pairs (2i, 2i + 1), split into one block per axis (`axes_dim`, each
    even, summing to Dh); pair j of an axis with d channels rotates by position[axis] * theta ** (-2j / d).
    Rotations make q.k depend only on the relative offset of the two positions. No parameters, no buffers.
    """

    def __init__(self, axes_dim: Sequence[int], theta: float = 10000.0):
        super().__init__()
        if any(d <= 0 or d % 2 for d in axes_dim):
            raise ValueError(f"rope axes dims must be positive and even, got {tuple(axes_dim)}")
        self.axes_dim = tuple(int(d) for d in axes_dim)
        self.theta = float(theta)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions [N, len(axes_dim)] -> unit rotations exp(i * angle) [N, Dh/2] complex64."""
        angles = []
        for axis, dim in enumerate(self.axes_dim):
            inv_freq = self.theta ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
            angles.append(positions[:, axis : axis + 1].float() * inv_freq)
        angles = torch.cat(angles, dim=-1)
        return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs of x [..., N, Dh] by rotations [N, Dh/2] complex (one complex multiply,
    in float32; returned in x's dtype)."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotations).flatten(-2).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------


class KeyMask(NamedTuple):
    """A [B, L] key padding mask prepared once per forward for every attention layer that uses it.

    attn_mask: [B, 1, 1, L] bool for SDPA (True = attend), or None when every key is real.
    keep: [B, 1, 1, 1] float, 0 for rows with no real key at all (their output is set to zero instead of
    the NaN a softmax over nothing would give), or None when every row has a real key.
    """

    attn_mask: torch.Tensor | None
    keep: torch.Tensor | None

    @classmethod
    def from_mask(cls, mask: torch.Tensor | None) -> KeyMask:
        """mask: [B, L] bool, True for real tokens (None = all real)."""
        if mask is None:
            return cls(None, None)
        mask = mask.bool()
        if bool(mask.all()):
            return cls(None, None)
        has_key = mask.any(dim=-1)  # [B]
        if bool(has_key.all()):
            return cls(mask[:, None, None, :], None)
        # Empty rows attend to every (padding) key so the softmax stays finite; `keep` zeroes them after.
        attn_mask = (mask | ~has_key[:, None])[:, None, None, :]
        return cls(attn_mask, has_key.float()[:, None, None, None])


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` on [B, H, N, Dh] heads, picking the faster CPU kernel.

    On CPU (torch 2.13) the flash kernel's backward in bf16 costs ~2.5 ms per call at our sizes whatever the
    key length, 1.2x (128 keys) to 2.7x (32 keys) the math kernel's; forward and float32 favour flash. So
    low-precision training on CPU uses the math kernel, everything else the default choice.
    """
    if q.device.type == "cpu" and q.requires_grad and q.dtype in (torch.bfloat16, torch.float16):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


class Attention(nn.Module):
    """Multi-head attention on `F.scaled_dot_product_attention`.

    Self-attention (context_dim None): one fused QKV projection, optional 3D RoPE on q and k.
    Cross-attention (context_dim given): queries from x, keys/values from a context [B, L, context_dim]
    with a key padding mask. qk_norm applies RMSNorm per head to q and k before RoPE.
    """

    def __init__(
        self, dim: int, num_heads: int, context_dim: int | None = None, qk_norm: bool = True, eps: float = 1e-6
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.to_q = nn.Linear(dim, dim)
            self.to_kv = nn.Linear(context_dim, 2 * dim)
        else:
            self.to_qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = RMSNorm(self.head_dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(self.head_dim, eps=eps) if qk_norm else nn.Identity()
        self.to_out = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_mask: KeyMask | None = None,
        rope: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, N, D]; context [B, L, context_dim] (cross only); key_mask over the keys; rope: rotations
        [N, Dh/2] complex from `Rope3D` (self only) -> [B, N, D]."""
        B, N, D = x.shape
        H, Dh = self.num_heads, self.head_dim
        # 1. Project to heads: [B, N, H, Dh] each.
        if self.is_cross:
            q = self.to_q(x).view(B, N, H, Dh)
            k, v = self.to_kv(context).view(B, context.shape[1], 2, H, Dh).unbind(2)
        else:
            q, k, v = self.to_qkv(x).view(B, N, 3, H, Dh).unbind(2)
        # 2. qk RMSNorm, heads first: [B, H, N, Dh].
        q = self.norm_q(q).transpose(1, 2)
        k = self.norm_k(k).transpose(1, 2)
        v = v.transpose(1, 2)
        # 3. Rotary positions (relative offsets in (t, h, w)).
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        # 4. Attention; rows without any real key return zero.
        attn_mask, keep = key_mask if key_mask is not None else (None, None)
        out = scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        if keep is not None:
            out = out * keep.to(out.dtype)
        # 5. Merge heads and project out.
        return self.to_out(out.transpose(1, 2).reshape(B, N, D))


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of x [B, L, D] over the real tokens of mask [B, L] -> [B, D] (zero for a row with none)."""
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def run_block(block: nn.Module, *args, gradient_checkpointing: bool = False):
    """Call block(*args), recomputing its activations in backward when checkpointing is on and grad is."""
    if gradient_checkpointing and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)
