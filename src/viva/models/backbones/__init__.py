"""Full-scale backbones behind the editor's interfaces, loaded from LOCAL diffusers-format folders.

    editor = load_preset("lucy-edit", "/models/Lucy-Edit-Dev")   # a VivaEditor
    VivaPipeline(editor)("clip.mp4", "make the car red")

Presets (see docs/backbones.md):

- `wan-t2v`: a Wan text-to-video folder (WanPipeline layout: transformer/, vae/, text_encoder/,
  tokenizer/, scheduler/) turned into a channel-concat editor by `widen_patch_embedding` (zero-initialised
  source channels: at load time it generates exactly what WanPipeline generates).
- `lucy-edit`: a Lucy-Edit folder (LucyEditPipeline layout; its transformer already reads 2 x z_dim
  channels [noisy | condition]); reproduces LucyEditPipeline.
- `wan-qwen`: a Wan folder (transformer/, vae/; a text-to-video transformer is widened, a channel-concat
  one used as is) + a Qwen2.5-VL folder as the instructor (template prefix dropped) + a fresh token
  refiner (`MiniTokenRefiner`, VLM width -> Wan text_dim).
- `hunyuan-llava` (the paper's): a HunyuanVideo folder (transformer/, vae/; widened) + a LLaVA folder as
  the instructor; the transformer's own token refiner is the refiner.

Weights are read with safetensors only, never fetched (`local_files_only=True`), no remote code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from viva.errors import VivaUserError
from viva.models.backbones.folders import check_component, check_folder
from viva.models.backbones.hunyuan import HunyuanDenoiser, HunyuanRefiner, HunyuanVAE
from viva.models.backbones.vlm import VLMInstructor
from viva.models.backbones.wan import (
    MaskedTokens,
    T5Instructor,
    WanDenoiser,
    WanVAE,
    clean_prompt,
    widen_patch_embedding,
)

PRESETS = ("wan-t2v", "lucy-edit", "wan-qwen", "hunyuan-llava")
VLM_PRESETS = ("wan-qwen", "hunyuan-llava")  # these read a VLM folder too (default: WEIGHTS/vlm)

__all__ = [
    "PRESETS",
    "PRESET_SIZES",
    "check_preset_folder",
    "HunyuanDenoiser",
    "HunyuanRefiner",
    "HunyuanVAE",
    "MaskedTokens",
    "T5Instructor",
    "VLMInstructor",
    "WanDenoiser",
    "WanVAE",
    "clean_prompt",
    "load_preset",
    "widen_patch_embedding",
]


def _scheduler_shift(folder: Path) -> float:
    """The flow shift of a pipeline folder's scheduler config (1.0 when there is none)."""
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return 1.0
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VivaUserError(f"{path} is not valid JSON ({e}); re-download the weights") from None
    return float(data.get("flow_shift") or data.get("shift") or 1.0)


PRESET_SIZES = {  # height, width, frames
    "wan-t2v": (480, 832, 81), "lucy-edit": (480, 832, 81), "wan-qwen": (480, 832, 81), "hunyuan-llava": (544, 960, 129),
}


def check_preset_folder(preset: str, weights: str | os.PathLike, vlm: str | os.PathLike | None = None) -> Path:
    """Cheap checks (nothing built, nothing loaded) that `weights` is a complete local folder for `preset`;
    returns it. Every problem is one VivaUserError line."""
    if preset not in PRESETS:
        raise VivaUserError(f"unknown backbone preset {preset!r}; choose one of {', '.join(PRESETS)}")
    folder = check_folder(weights, preset)
    for name in ("transformer", "vae"):
        check_component(folder / name, preset)
    if preset in VLM_PRESETS:
        check_component(Path(vlm) if vlm is not None else folder / "vlm", f"{preset} VLM")
    else:
        check_component(folder / "text_encoder", preset)
        check_component(folder / "tokenizer", preset, needs_weights=False)
    return folder


def load_preset(
    preset: str,
    weights: str | os.PathLike,
    height: int = 480,
    width: int = 832,
    num_frames: int = 81,
    max_sequence_length: int = 512,
    dtype=None,
    device=None,
    vlm: str | os.PathLike | None = None,
):
    """A VivaEditor for `preset` from the local pipeline folder `weights` (see the module docstring).
    height / width / num_frames: the clip size the editor works at (num_frames = 1 + 4k). dtype: e.g.
    torch.bfloat16 for the transformer and text encoder (the VAE stays float32). vlm: the VLM folder of the
    VLM presets (default WEIGHTS/vlm)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    from viva.models.editor import EditorConfig, VivaEditor

    folder = check_preset_folder(preset, weights, vlm)
    what = preset
    if (num_frames - 1) % 4:
        raise VivaUserError(f"num_frames must be 1 + 4k for the video VAE (e.g. 81), got {num_frames}")
    if preset == "hunyuan-llava":
        return _load_hunyuan_llava(folder, Path(vlm) if vlm else folder / "vlm", height, width, num_frames, dtype, device)
    load = {"use_safetensors": True, "local_files_only": True}
    try:
        # torch_dtype (not .to) keeps the modules diffusers wants in float32 (norms, time embedder, rope).
        transformer = WanTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=dtype, **load)
        vae = AutoencoderKLWan.from_pretrained(folder / "vae", **load)
        if preset not in VLM_PRESETS:
            encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype, **load)
            tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VivaUserError(f"cannot load {what} weights from {folder}: {first}") from None
    z = int(vae.config.z_dim)
    c_in = int(transformer.config.in_channels)
    if preset == "wan-qwen":
        if c_in == z:
            widen_patch_embedding(transformer)
        elif c_in != 2 * z:
            raise VivaUserError(f"{folder}/transformer reads {c_in} channels, not {z} or 2 x {z}: not a Wan model")
    elif preset == "wan-t2v":
        if c_in != z:
            raise VivaUserError(
                f"{folder}/transformer reads {c_in} channels, not the VAE's {z}: not a text-to-video Wan model "
                "(use --preset lucy-edit for channel-concat checkpoints)"
            )
        widen_patch_embedding(transformer)
    elif c_in != 2 * z:
        raise VivaUserError(
            f"{folder}/transformer reads {c_in} channels, not 2 x {z}: not a Lucy-Edit (channel-concat) model "
            "(use --preset wan-t2v for text-to-video checkpoints)"
        )
    if preset == "wan-qwen":
        from viva.models.backbones.vlm import VLMInstructor
        from viva.models.refiner import MiniTokenRefiner, RefinerConfig

        instructor = VLMInstructor.from_folder(Path(vlm) if vlm else folder / "vlm", dtype=dtype)
        text_dim = int(transformer.config.text_dim)
        heads = next(h for h in (text_dim // 128, 8, 4, 2, 1) if h >= 1 and text_dim % h == 0)
        refiner = MiniTokenRefiner(RefinerConfig(in_dim=instructor.hidden_size, hidden_size=text_dim, depth=2,
                                                 num_heads=heads))
    else:
        instructor = T5Instructor(tokenizer, encoder, max_sequence_length)
        refiner = MaskedTokens()
    if dtype is not None:
        refiner.to(dtype)
    config = EditorConfig(
        height=height, width=width, num_frames=num_frames, shift=_scheduler_shift(folder), sigma_grid="diffusers",
        default_steps=50, default_guidance_scale=5.0, default_video_guidance_scale=1.0,
    )
    editor = VivaEditor(
        vae=WanVAE(vae),
        instructor=instructor,
        refiner=refiner,
        denoiser=WanDenoiser(transformer),
        config=config,
    )
    if device is not None:
        editor.to(device)
    return editor.eval()


def _load_hunyuan_llava(folder: Path, vlm: Path, height: int, width: int, num_frames: int, dtype, device):
    """HunyuanVideo (transformer widened, its token refiner as the refiner) + LLaVA instructor."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

    from viva.models.backbones.hunyuan import HunyuanDenoiser, HunyuanRefiner, HunyuanVAE
    from viva.models.backbones.vlm import VLMInstructor
    from viva.models.editor import EditorConfig, VivaEditor

    load = {"use_safetensors": True, "local_files_only": True}
    try:
        transformer = HunyuanVideoTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=dtype, **load)
        vae = AutoencoderKLHunyuanVideo.from_pretrained(folder / "vae", **load)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VivaUserError(f"cannot load hunyuan-llava weights from {folder}: {first}") from None
    instructor = VLMInstructor.from_folder(vlm, dtype=dtype)
    if instructor.hidden_size != int(transformer.config.text_embed_dim):
        raise VivaUserError(
            f"the VLM in {vlm} is {instructor.hidden_size} wide but the HunyuanVideo token refiner reads "
            f"{transformer.config.text_embed_dim}; use a LLaVA whose language model matches"
        )
    z = int(vae.config.latent_channels)
    c_in = int(transformer.config.in_channels)
    if c_in not in (z, 2 * z):
        raise VivaUserError(f"{folder}/transformer reads {c_in} channels, not {z} or 2 x {z}")
    refiner = HunyuanRefiner.from_transformer(transformer)  # before the denoiser takes the transformer apart
    denoiser = HunyuanDenoiser.from_text_to_video(transformer)
    if dtype is not None:
        denoiser.pooled_proj.to(dtype)
    config = EditorConfig(
        height=height, width=width, num_frames=num_frames, shift=_scheduler_shift(folder), sigma_grid="linear",
        default_steps=50, default_guidance_scale=5.0, default_video_guidance_scale=1.5,
    )
    editor = VivaEditor(vae=HunyuanVAE(vae), instructor=instructor, refiner=refiner, denoiser=denoiser, config=config)
    if device is not None:
        editor.to(device)
    return editor.eval()
