"""Model components behind the interfaces in `viva.models.interfaces`."""

from viva.models.dit import MiniDiT, MiniDiTConfig
from viva.models.hub import ComponentConfig, PretrainedMixin
from viva.models.instructor import (
    MiniVLMInstructor,
    MiniVLMInstructorConfig,
    TextOnlyInstructor,
    TextOnlyInstructorConfig,
)
from viva.models.interfaces import Denoiser, Instructor, InstructorOutput, TokenRefiner, VideoAutoencoder
from viva.models.refiner import MiniTokenRefiner, RefinerConfig
from viva.models.vae import MiniVAE, MiniVAEConfig, VAELossConfig, vae_loss
from viva.models.vision import MiniViT, VisionConfig

__all__ = [
    "ComponentConfig",
    "Denoiser",
    "Instructor",
    "InstructorOutput",
    "MiniDiT",
    "MiniDiTConfig",
    "MiniTokenRefiner",
    "MiniVAE",
    "MiniVAEConfig",
    "MiniViT",
    "MiniVLMInstructor",
    "MiniVLMInstructorConfig",
    "PretrainedMixin",
    "RefinerConfig",
    "TextOnlyInstructor",
    "TextOnlyInstructorConfig",
    "TokenRefiner",
    "vae_loss",
    "VAELossConfig",
    "VideoAutoencoder",
    "VisionConfig",
]
