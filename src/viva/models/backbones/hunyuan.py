"""HunyuanVideo adapters (the paper's backbone): diffusers' `HunyuanVideoTransformer3DModel` and
`AutoencoderKLHunyuanVideo` behind the editor's interfaces.

    HunyuanVAE        VideoAutoencoder: latents = mode * scaling_factor (HunyuanVideoPipeline's convention)
    HunyuanRefiner    TokenRefiner: the transformer's own token refiner (`context_embedder`, a
                      HunyuanVideoTokenRefiner: timestep- and pooled-text-conditioned self-attention blocks),
                      moved out of the transformer so the editor runs it once per prompt
    HunyuanDenoiser   Denoiser: the transformer with its patch embedding widened to [noisy | source]
                      (zero-initialised source channels) and the refiner replaced by a pass-through

HunyuanVideo also reads a pooled CLIP text vector (`pooled_projections`). VIVA has no CLIP encoder: the
denoiser derives it from the mean of the refined tokens through a ZERO-initialised linear layer, so at
initialisation the model sees the pooled vector of an empty CLIP prompt's zero projection (documented in
docs/backbones.md). Guidance-distilled checkpoints (`guidance_embeds`) get `embedded_guidance` (6.0 by
default, HunyuanVideo's) as their guidance input.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from viva.models.backbones.wan import (
    NUM_TRAIN_TIMESTEPS,
    TransformerDenoiser,
    _inner_config,
    _load_weights,
    empty_weights,
    _read_folder,
    _write_folder,
    widen_patch_embedding,
)
from viva.models.interfaces import TokenRefiner, VideoAutoencoder


def _masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class HunyuanVAE(VideoAutoencoder):
    """AutoencoderKLHunyuanVideo; latents = mode * scaling_factor. Pixels [B,3,1 + 4k,H,W] in [-1,1]."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.model = vae
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.spatial_factor = int(cfg.spatial_compression_ratio)
        self.temporal_factor = int(cfg.temporal_compression_ratio)
        self.scaling_factor = float(cfg.scaling_factor)

    def save_pretrained(self, directory) -> Path:
        return _write_folder(self, directory, {"inner": _inner_config(self.model)})

    @classmethod
    def from_pretrained(cls, directory, device=None, dtype=None) -> "HunyuanVAE":
        from diffusers import AutoencoderKLHunyuanVideo

        data = _read_folder(cls, directory)
        with empty_weights():
            model = cls(AutoencoderKLHunyuanVideo.from_config(data["inner"]))
        model = _load_weights(model, directory)
        return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        return (self.model.encode(video.to(dtype)).latent_dist.mode() * self.scaling_factor).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        return self.model.decode((latents / self.scaling_factor).to(dtype), return_dict=False)[0].float()


class _RefinedTokens(nn.Module):
    """Stands in for the transformer's `context_embedder`: the tokens are already refined."""

    def forward(self, hidden_states, timestep=None, attention_mask=None):
        return hidden_states


class HunyuanRefiner(TokenRefiner):
    """HunyuanVideoTokenRefiner: VLM tokens [B,L,text_embed_dim] -> [B,L,inner_dim], given the timestep.
    Rows without a real token (a dropped instruction) come out as zeros (the diffusers module would divide
    by zero)."""

    def __init__(self, refiner: nn.Module, kwargs: dict):
        super().__init__()
        self.refiner = refiner
        self.kwargs = dict(kwargs)  # HunyuanVideoTokenRefiner constructor arguments (for save / load)

    @classmethod
    def from_transformer(cls, transformer: nn.Module) -> "HunyuanRefiner":
        cfg = transformer.config
        kwargs = dict(in_channels=cfg.text_embed_dim, num_attention_heads=cfg.num_attention_heads,
                      attention_head_dim=cfg.attention_head_dim, num_layers=cfg.num_refiner_layers,
                      mlp_ratio=cfg.mlp_ratio)
        return cls(transformer.context_embedder, kwargs)

    def save_pretrained(self, directory) -> Path:
        return _write_folder(self, directory, {"inner": self.kwargs})

    @classmethod
    def from_pretrained(cls, directory, device=None, dtype=None) -> "HunyuanRefiner":
        from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoTokenRefiner

        data = _read_folder(cls, directory)
        with empty_weights():
            model = cls(HunyuanVideoTokenRefiner(**data["inner"]), data["inner"])
        model = _load_weights(model, directory)
        return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model

    def forward(self, tokens, mask, timestep=None):
        B = tokens.shape[0]
        dtype = next(self.refiner.parameters()).dtype
        t = torch.zeros(B, device=tokens.device) if timestep is None else timestep.to(tokens.device).expand(B)
        mask = mask.bool()
        empty = ~mask.any(1)
        safe = mask.clone()
        safe[empty, 0] = True
        out = self.refiner(tokens.to(dtype), (t.float() * NUM_TRAIN_TIMESTEPS).to(dtype), safe.long())
        return out * mask.unsqueeze(-1).to(out.dtype)


class HunyuanDenoiser(TransformerDenoiser):
    """HunyuanVideoTransformer3DModel reading [noisy | source] (in_channels = 2 x latent channels) and
    already-refined tokens. Text attention is masked to each row's real tokens (HunyuanVideo keeps the
    first sum(mask) tokens, so real tokens must come first, as every viva instructor lays them out)."""

    def __init__(self, transformer: nn.Module, embedded_guidance: float = 6.0):
        super().__init__()
        cfg = transformer.config
        self.latent_channels = int(cfg.out_channels or cfg.in_channels)
        if int(cfg.in_channels) != 2 * self.latent_channels:
            raise ValueError(f"HunyuanDenoiser needs in_channels = 2 x {self.latent_channels}; widen the transformer")
        transformer.context_embedder = _RefinedTokens()
        self.transformer = transformer
        self.embedded_guidance = float(embedded_guidance)
        inner = int(cfg.num_attention_heads * cfg.attention_head_dim)
        self.pooled_proj = nn.Linear(inner, int(cfg.pooled_projection_dim))
        nn.init.zeros_(self.pooled_proj.weight)
        nn.init.zeros_(self.pooled_proj.bias)

    @classmethod
    def from_text_to_video(cls, transformer: nn.Module, **kwargs) -> "HunyuanDenoiser":
        """Widen a text-to-video transformer's patch embedding (zero source channels) and wrap it."""
        if int(transformer.config.in_channels) == int(transformer.config.out_channels or transformer.config.in_channels):
            widen_patch_embedding(transformer, path="x_embedder.proj")
        return cls(transformer, **kwargs)

    def save_pretrained(self, directory) -> Path:
        return _write_folder(self, directory, {"inner": _inner_config(self.transformer),
                                               "embedded_guidance": self.embedded_guidance})

    @classmethod
    def skeleton(cls, data: dict) -> "HunyuanDenoiser":
        """The module tree from a saved config.json (no weights loaded; e.g. under torch.device("meta"))."""
        from diffusers import HunyuanVideoTransformer3DModel

        return cls(HunyuanVideoTransformer3DModel.from_config(data["inner"]), data.get("embedded_guidance", 6.0))

    def forward(self, noisy, source, tokens, token_mask, timestep):
        dtype = self.transformer.dtype
        B = noisy.shape[0]
        # 1. Channel concat [noisy | source].
        x = torch.cat([noisy, source.to(noisy.dtype)], dim=1).to(dtype)
        # 2. Pooled text vector from the refined tokens (zero at init: no CLIP in VIVA).
        mask = token_mask.bool()
        pooled = self.pooled_proj(_masked_mean(tokens.float(), mask).to(self.pooled_proj.weight.dtype)).to(dtype)
        t = timestep.to(x.device, torch.float32).expand(B) * NUM_TRAIN_TIMESTEPS
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((B,), self.embedded_guidance * 1000.0, device=x.device, dtype=dtype)
        out = self.transformer(
            hidden_states=x, timestep=t.to(dtype), encoder_hidden_states=tokens.to(dtype),
            encoder_attention_mask=mask.long(), pooled_projections=pooled, guidance=guidance, return_dict=False,
        )[0]
        return out.to(noisy.dtype)
