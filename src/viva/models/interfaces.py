"""The four small interfaces every backbone implements; `VivaEditor` composes them.

Video tensors are [B, C, T, H, W]; pixels are float in [-1, 1]; images are 1-frame clips (T = 1).
Mini components and the full-scale adapters (diffusers / transformers backbones) implement the same
interfaces, so the editor, trainers and pipeline never depend on a particular backbone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


class VideoAutoencoder(nn.Module, ABC):
    """Encodes pixels [B,3,T,H,W] to latents [B,C,T',H/s,W/s] and back (s = `spatial_factor`,
    T' = 1 + (T - 1) // `temporal_factor` for causal video VAEs, T' = T when temporal_factor == 1)."""

    latent_channels: int
    spatial_factor: int
    temporal_factor: int = 1

    @abstractmethod
    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


@dataclass
class InstructorOutput:
    """tokens: [B, L, D] hidden states; mask: [B, L] bool, True for real tokens."""

    tokens: torch.Tensor
    mask: torch.Tensor


class Instructor(nn.Module, ABC):
    """Reads the instruction with the source's first frame (and an optional reference image) and returns
    the condition tokens. A text-only instructor ignores the images."""

    hidden_size: int

    @abstractmethod
    def forward(
        self,
        instructions: list[str],
        first_frames: torch.Tensor | None = None,
        references: list[torch.Tensor | None] | None = None,
    ) -> InstructorOutput:
        """instructions: B strings; first_frames: [B,3,H,W] in [-1,1]; references: B items, each
        [3,h,w] in [-1,1] or None."""


class TokenRefiner(nn.Module, ABC):
    """Maps instructor tokens [B,L,D_in] (with mask [B,L]) into the denoiser's condition space
    [B,L,D_model]; may depend on the timestep [B] (as HunyuanVideo's refiner does)."""

    @abstractmethod
    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, timestep: torch.Tensor | None = None) -> torch.Tensor: ...


class Denoiser(nn.Module, ABC):
    """The DiT: velocity for noisy latents given the source latents, refined tokens and time.

    noisy: [B,C,T,h,w]; source: [B,C,T,h,w] (already aligned with `noisy`: when a reference image is
    used, the editor appends its latent to the source along time and a zero frame to `noisy`); tokens:
    [B,L,D]; token_mask: [B,L] bool; timestep: [B] in [0, 1] (1 = pure noise). Returns [B,C,T,h,w].
    Source and noisy latents are concatenated along channels and projected to the model width.
    """

    @abstractmethod
    def forward(
        self,
        noisy: torch.Tensor,
        source: torch.Tensor,
        tokens: torch.Tensor,
        token_mask: torch.Tensor,
        timestep: torch.Tensor,
    ) -> torch.Tensor: ...
