"""Wan adapters: diffusers' `WanTransformer3DModel` / `AutoencoderKLWan` and a T5-family text encoder behind
the editor's interfaces (`viva.models.interfaces`).

    WanVAE        VideoAutoencoder: AutoencoderKLWan, latents = (mode - latents_mean) / latents_std
    WanDenoiser   Denoiser: cat([noisy, source], channels) -> WanTransformer3DModel (in_channels = 2 z_dim),
                  timestep sigma * 1000, condition tokens with padding zeroed (Wan attends to all of them)
    T5Instructor  Instructor (text only): tokenizer + UMT5/T5 encoder, padded to max_sequence_length as
                  WanPipeline does (real tokens, then zeros)
    MaskedTokens  TokenRefiner without parameters: tokens * mask (the text-to-video path: the T5 states
                  already live in the transformer's `text_dim` space)

`widen_patch_embedding` turns a text-to-video transformer into a channel-concat editor: the patch embedding
reads extra input channels whose weights start at ZERO, so at initialisation the editor computes exactly
what the text-to-video model computes, whatever the source latents are (Lucy-Edit and VIVA's projector).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import torch
from torch import nn

from viva.errors import VivaUserError
from viva.models.interfaces import Denoiser, Instructor, InstructorOutput, TokenRefiner, VideoAutoencoder

NUM_TRAIN_TIMESTEPS = 1000  # diffusers' FlowMatchEulerDiscreteScheduler: timestep = sigma * 1000


# 0. viva model folders -----------------------------------------------------------------------------------
# `save_editor` writes every component as config.json + model.safetensors. An adapter's config.json holds its
# class name, the wrapped library config ("inner") and its own settings; from_pretrained rebuilds the wrapped
# model from that config with random weights and loads model.safetensors strictly (safetensors' load_model,
# which also handles tied weights such as T5's shared embedding).


def _write_folder(module: nn.Module, directory, config: dict) -> Path:
    from safetensors.torch import save_model

    import viva

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    data = {"_class_name": type(module).__name__, "_viva_version": viva.__version__, **config}
    save_model(module, str(target / "model.safetensors"), metadata={"format": "pt"})
    (target / "config.json").write_text(json.dumps(data, indent=2, default=list) + "\n")
    return target


def _read_folder(cls, directory) -> dict:
    folder = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise VivaUserError(f"{cls.__name__} folder {folder} has no {name}; pass a model folder written by viva")
    try:
        data = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VivaUserError(f"{folder / 'config.json'} is not valid JSON ({e}); re-save the model") from None
    if data.get("_class_name") != cls.__name__:
        raise VivaUserError(f"{folder} holds a {data.get('_class_name')}, not a {cls.__name__}; re-save the model")
    return data


def empty_weights():
    """Build modules inside this context with their parameters on the meta device (no memory, no random
    init; buffers such as RoPE tables are real), then fill them with `_load_weights`: loading a 13B
    checkpoint then costs one read of the file instead of a random initialisation first."""
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def _tied_names(module: nn.Module) -> list[list[str]]:
    """Groups of parameter names that share one tensor: the same Parameter object in `module`, or a pair
    a transformers model declares tied (`_tied_weights_keys`; built under `empty_weights()` the Parameter
    objects are separate until loaded)."""
    groups: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    ties = [names for names in groups.values() if len(names) > 1]
    for prefix, sub in module.named_modules():
        declared = getattr(type(sub), "_tied_weights_keys", None)
        if isinstance(declared, dict):
            dot = f"{prefix}." if prefix else ""
            ties += [[dot + target, dot + source] for target, source in declared.items()]
    return ties


def _load_weights(module: nn.Module, directory) -> nn.Module:
    """Fill `module` (built normally or under `empty_weights()`) with DIRECTORY/model.safetensors, strictly:
    every parameter and persistent buffer must be in the file with its shape (parameters tied in the
    module, which the file stores once, are restored as ties) and nothing else may be. Tensors keep the
    module's dtypes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / "model.safetensors"
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise VivaUserError(f"{path} is not a readable safetensors file ({e}); re-save the model") from None
    own = module.state_dict(keep_vars=True)
    ties = [names for names in ([n for n in g if n in own] for g in _tied_names(module)) if len(names) > 1]
    stored_once = {n for names in ties for n in names if any(m in state for m in names)}
    missing = sorted(k for k in own if k not in state and k not in stored_once)
    unexpected = sorted(k for k in state if k not in own)
    wrong = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        raise VivaUserError(
            f"{path} does not match its config.json (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong[:3]}); re-save the model"
        )
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    module.load_state_dict(state, strict=False, assign=True)
    for names in ties:  # the file stores a tied group once: point the group's other names at that tensor
        loaded = next((n for n in names if n in state), None)
        for name in names:
            if loaded is not None and name not in state:
                owner, _, leaf = name.rpartition(".")
                module.get_submodule(owner)._parameters[leaf] = module.get_parameter(loaded)
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if left:
        raise VivaUserError(f"{path} leaves {left[:3]} without weights; re-save the model")
    return module.eval()


def _inner_config(model: nn.Module) -> dict:
    return {k: v for k, v in dict(model.config).items() if not k.startswith("_")}


# 1. Channel-concat conversion ----------------------------------------------------------------------------


@torch.no_grad()
def widen_patch_embedding(
    transformer: nn.Module, extra_channels: int | None = None, path: str = "patch_embedding"
) -> nn.Module:
    """Give the transformer's patch embedding (the Conv3d at dotted `path`: "patch_embedding" for Wan,
    "x_embedder.proj" for HunyuanVideo) `extra_channels` more input channels (default: as many as it has,
    for [noisy | source]) whose weights are zero; the old channels keep their weights and the bias is
    unchanged, so the model's output does not depend on the new channels until they are trained. The
    diffusers config is updated (in_channels widened, out_channels pinned to the old width), so
    `save_pretrained` writes a folder that `from_pretrained` rebuilds. Returns the same transformer."""
    parent_path, _, leaf = path.rpartition(".")
    parent = transformer.get_submodule(parent_path) if parent_path else transformer
    old = getattr(parent, leaf)
    if not isinstance(old, nn.Conv3d):
        raise TypeError(f"expected a Conv3d patch embedding, got {type(old).__name__}")
    c_in = old.in_channels
    extra = c_in if extra_channels is None else int(extra_channels)
    if extra < 1:
        raise ValueError(f"extra_channels must be >= 1, got {extra}")
    new = nn.Conv3d(
        c_in + extra, old.out_channels, kernel_size=old.kernel_size, stride=old.stride, padding=old.padding,
        bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype,
    )
    new.weight.zero_()
    new.weight[:, :c_in].copy_(old.weight)
    if old.bias is not None:
        new.bias.copy_(old.bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    setattr(parent, leaf, new)
    config = getattr(transformer, "config", None)
    if config is not None and hasattr(transformer, "register_to_config"):
        out_channels = getattr(config, "out_channels", None) or c_in
        transformer.register_to_config(in_channels=c_in + extra, out_channels=out_channels)
    return transformer


# 2. VAE ---------------------------------------------------------------------------------------------------


class WanVAE(VideoAutoencoder):
    """AutoencoderKLWan with its latent normalisation: encode -> (mode - mean) / std; decode -> the VAE's
    decoder of (z * std + mean). Pixels [B,3,T,H,W] in [-1,1], T = 1 + 4k; latents [B,z_dim,1 + k,H/8,W/8]."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.model = vae
        cfg = vae.config
        self.latent_channels = int(cfg.z_dim)
        self.spatial_factor = int(getattr(cfg, "scale_factor_spatial", None) or 2 ** len(cfg.temperal_downsample))
        self.temporal_factor = int(getattr(cfg, "scale_factor_temporal", None) or 2 ** sum(cfg.temperal_downsample))
        shape = (1, self.latent_channels, 1, 1, 1)
        self.register_buffer("latents_mean", torch.tensor(cfg.latents_mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("latents_std", torch.tensor(cfg.latents_std, dtype=torch.float32).view(shape), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def save_pretrained(self, directory) -> Path:
        return _write_folder(self, directory, {"inner": _inner_config(self.model)})

    @classmethod
    def from_pretrained(cls, directory, device=None, dtype=None) -> "WanVAE":
        from diffusers import AutoencoderKLWan

        data = _read_folder(cls, directory)
        with empty_weights():
            model = cls(AutoencoderKLWan.from_config(data["inner"]))
        model = _load_weights(model, directory)
        return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        z = self.model.encode(video.to(self.dtype)).latent_dist.mode()
        mean, std = self.latents_mean.to(z.dtype), self.latents_std.to(z.dtype)
        return ((z - mean) * (1.0 / std)).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.dtype)
        mean, std = self.latents_mean.to(z.dtype), self.latents_std.to(z.dtype)
        z = z / (1.0 / std) + mean  # the same arithmetic as WanPipeline / LucyEditPipeline
        return self.model.decode(z, return_dict=False)[0].float()


# 3. Denoiser ----------------------------------------------------------------------------------------------


class TransformerDenoiser(Denoiser):
    """A Denoiser around a diffusers transformer kept at `self.transformer`: built from a saved config by the
    subclass's `skeleton(data)`, loaded from a folder, with the transformer's gradient checkpointing."""

    transformer: nn.Module

    @classmethod
    def skeleton(cls, data: dict) -> "TransformerDenoiser":
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, directory, device=None, dtype=None):
        data = _read_folder(cls, directory)
        with empty_weights():
            model = cls.skeleton(data)
        model = _load_weights(model, directory)
        return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model

    @property
    def gradient_checkpointing(self) -> bool:
        return bool(getattr(self.transformer, "gradient_checkpointing", False))

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        if value:
            self.transformer.enable_gradient_checkpointing()
        elif self.gradient_checkpointing:
            self.transformer.disable_gradient_checkpointing()


class WanDenoiser(TransformerDenoiser):
    """WanTransformer3DModel as the editing DiT. Its patch embedding reads [noisy | source] (2 z_dim
    channels; see `widen_patch_embedding`); condition tokens [B,L,text_dim] enter its text embedder with
    padding positions zeroed (the Wan transformer has no text attention mask; WanPipeline also feeds zero
    padding), so a dropped instruction is an all-zero sequence."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer
        cfg = transformer.config
        self.latent_channels = int(cfg.out_channels or cfg.in_channels)
        if int(cfg.in_channels) != 2 * self.latent_channels:
            raise ValueError(
                f"WanDenoiser needs a channel-concat transformer (in_channels = 2 x {self.latent_channels}), got "
                f"in_channels {cfg.in_channels}; widen it with widen_patch_embedding"
            )
        self.cond_dim = int(cfg.text_dim)

    def save_pretrained(self, directory) -> Path:
        return _write_folder(self, directory, {"inner": _inner_config(self.transformer)})

    @classmethod
    def skeleton(cls, data: dict) -> "WanDenoiser":
        """The module tree from a saved config.json (no weights loaded; e.g. under torch.device("meta"))."""
        from diffusers import WanTransformer3DModel

        return cls(WanTransformer3DModel.from_config(data["inner"]))

    def forward(self, noisy, source, tokens, token_mask, timestep):
        """noisy/source [B,C,T,h,w]; tokens [B,L,text_dim]; token_mask [B,L]; timestep [B] in [0,1]."""
        dtype = self.transformer.dtype
        # 1. Channel concat: noisy first, as LucyEditPipeline does.
        x = torch.cat([noisy, source.to(noisy.dtype)], dim=1).to(dtype)
        # 2. Text: padding positions are zeros (what WanPipeline feeds), dropped instructions all zeros.
        text = (tokens * token_mask.unsqueeze(-1).to(tokens.dtype)).to(dtype)
        # 3. Time on the scheduler's 0..1000 scale.
        t = timestep.to(x.device, torch.float32).expand(x.shape[0]) * NUM_TRAIN_TIMESTEPS
        out = self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        return out.to(noisy.dtype)


# 4. Text conditioning -------------------------------------------------------------------------------------


def clean_prompt(text: str) -> str:
    """WanPipeline's prompt cleaning (html unescape twice, whitespace collapse; ftfy.fix_text first when
    ftfy is installed, as WanPipeline does)."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


T5_ENCODERS = ("UMT5EncoderModel", "T5EncoderModel")


class T5Instructor(Instructor):
    """A T5-family text encoder (UMT5 for Wan / Lucy-Edit) as a text-only instructor: tokens padded or cut
    to `max_sequence_length`, encoder states of the real tokens, zeros after them (WanPipeline's layout).
    The images are ignored."""

    def __init__(self, tokenizer, encoder: nn.Module, max_sequence_length: int = 512):
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.max_sequence_length = int(max_sequence_length)
        self.hidden_size = int(encoder.config.d_model)

    def save_pretrained(self, directory) -> Path:
        target = _write_folder(
            self, directory,
            {"encoder_class": type(self.encoder).__name__, "inner": self.encoder.config.to_dict(),
             "max_sequence_length": self.max_sequence_length},
        )
        self.tokenizer.save_pretrained(str(target / "tokenizer"))
        return target

    @classmethod
    def from_pretrained(cls, directory, device=None, dtype=None) -> "T5Instructor":
        import transformers
        from transformers import AutoTokenizer

        data = _read_folder(cls, directory)
        name = data.get("encoder_class")
        if name not in T5_ENCODERS:
            raise VivaUserError(f"{directory}: unknown text encoder {name!r}; known: {', '.join(T5_ENCODERS)}")
        config_class = getattr(transformers, name.replace("EncoderModel", "Config"))
        inner = {k: v for k, v in data["inner"].items() if k not in ("transformers_version", "architectures")}
        with empty_weights():
            encoder = getattr(transformers, name)(config_class(**inner))
        folder = Path(directory) / "tokenizer"
        if not folder.is_dir():
            raise VivaUserError(f"{directory} has no tokenizer/ folder; re-save the model")
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = _load_weights(cls(tokenizer, encoder, data.get("max_sequence_length", 512)), directory)
        return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model

    def forward(self, instructions, first_frames=None, references=None) -> InstructorOutput:
        device = next(self.encoder.parameters()).device
        batch = self.tokenizer(
            [clean_prompt(t) for t in instructions], padding="max_length", max_length=self.max_sequence_length,
            truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        states = self.encoder(ids, mask).last_hidden_state
        keep = mask.bool()
        return InstructorOutput(tokens=states * keep.unsqueeze(-1).to(states.dtype), mask=keep)


class MaskedTokens(TokenRefiner):
    """The identity refiner of the text-to-video path: tokens with padding zeroed, no parameters."""

    def save_pretrained(self, directory) -> Path:
        return _write_folder(self, directory, {})

    @classmethod
    def from_pretrained(cls, directory, device=None, dtype=None) -> "MaskedTokens":
        _read_folder(cls, directory)
        return cls()

    def forward(self, tokens, mask, timestep=None):
        return tokens * mask.unsqueeze(-1).to(tokens.dtype)
