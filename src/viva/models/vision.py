"""A small ViT for the mini instructor: the source's first frame and the reference image -> patch tokens.

64x64 image, patch 8 -> 8x8 = 64 tokens of width 256, 4 pre-norm transformer blocks, fixed 2D sinusoidal
positions (so any image size divisible by the patch works, although the instructor resizes to
`image_size`). No class token: the instructor uses every patch token (the "where" of an edit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hub import ComponentConfig, PretrainedMixin
from .layers import MLP, Attention, KeyMask

__all__ = ["VisionConfig", "MiniViT", "sincos_2d"]


@dataclass
class VisionConfig(ComponentConfig):
    image_size: int = 64
    patch_size: int = 8
    in_channels: int = 3
    width: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    learned_positions: bool = False  # add a learned table on top of the fixed 2D sin-cos positions
    # patch: one strided convolution per patch (ViT). conv: a small convolutional stem (a 3x3 convolution
    # at full resolution, then log2(patch_size) stride-2 ones, channels doubling up to width/2, GELU; then
    # a 1x1 to width),
    # which sees shapes across patch borders and trains faster on little data (Xiao et al. 2021,
    # "Early convolutions help transformers see better").
    stem: str = "patch"

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"vision.stem must be patch or conv, got {self.stem!r}")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ValueError(f"vision.stem=conv needs a power-of-two patch_size >= 2, got {self.patch_size}")
        if self.width % self.heads or self.width % 4:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads} and by 4")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2


def sincos_2d(height: int, width: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """2D sin-cos position table [height*width, dim] (row-major), half the channels for y, half for x."""
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, device=device, dtype=torch.float64) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float64),
        torch.arange(width, device=device, dtype=torch.float64),
        indexing="ij",
    )
    ang_y = ys.reshape(-1, 1) * omega
    ang_x = xs.reshape(-1, 1) * omega
    table = torch.cat([ang_y.sin(), ang_y.cos(), ang_x.sin(), ang_x.cos()], dim=1)
    if table.shape[1] < dim:  # dim not a multiple of 4 (not allowed by VisionConfig, kept for safety)
        table = F.pad(table, (0, dim - table.shape[1]))
    return table.to(dtype)


def conv_stem(in_channels: int, width: int, patch_size: int) -> nn.Sequential:
    """[B,in,H,W] -> [B,width,H/p,W/p]: a 3x3 convolution at full resolution, log2(p) 3x3 stride-2 ones
    (each + GELU), then a 1x1 to width."""
    steps = patch_size.bit_length() - 1
    first = max(16, (width // 2) >> steps)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, first, 3, padding=1), nn.GELU()]
    channels = first
    for i in range(steps):
        out = max(16, (width // 2) >> (steps - 1 - i))
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GELU()]
        channels = out
    layers.append(nn.Conv2d(channels, width, 1))
    return nn.Sequential(*layers)


class Block(nn.Module):
    """Pre-norm transformer block built from the shared layers (qk-normed attention, GELU MLP)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, qk_norm=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, key_mask: KeyMask | None = None, position: torch.Tensor | None = None) -> torch.Tensor:
        """x [B,N,width] -> [B,N,width]; key_mask: which tokens may be attended to (default: all);
        position [B or 1,N,width]: added to the attention's input only (not to the residual stream)."""
        h = self.norm1(x)
        x = x + self.attn(h if position is None else h + position, key_mask=key_mask)
        return x + self.mlp(self.norm2(x))


class MiniViT(PretrainedMixin, nn.Module):
    """images [B,3,H,W] in [-1,1] (H, W multiples of the patch) -> tokens [B,(H/p)*(W/p),width]."""

    config_class = VisionConfig

    def __init__(self, config: VisionConfig | None = None):
        super().__init__()
        self.config = config = config or VisionConfig()
        self.width = config.width
        self.patch_embed = (
            conv_stem(config.in_channels, config.width, config.patch_size)
            if config.stem == "conv"
            else nn.Conv2d(config.in_channels, config.width, config.patch_size, stride=config.patch_size)
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, config.width)) if config.learned_positions else None
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected images [B,3,H,W], got {tuple(images.shape)}")
        p = self.config.patch_size
        h, w = images.shape[-2:]
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} must be a multiple of the patch size {p}")
        # 1. patchify: [B,3,H,W] -> [B,N,width]
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        # 2. positions: fixed 2D sin-cos (+ optional learned table when the grid matches)
        x = x + sincos_2d(h // p, w // p, self.width, device=x.device, dtype=x.dtype)
        if self.pos_embed is not None and x.shape[1] == self.pos_embed.shape[1]:
            x = x + self.pos_embed
        # 3. transformer
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
