"""HF-style model folders for every component: `config.json` + `model.safetensors`.

A component is an `nn.Module` with `PretrainedMixin`, built as `cls(config)` from a dataclass config that
derives from `ComponentConfig`:

    @dataclass
    class MyConfig(ComponentConfig):
        width: int = 64

    class MyModel(PretrainedMixin, nn.Module):
        config_class = MyConfig
        def __init__(self, config: MyConfig | None = None): ...

    model.save_pretrained("out/my_model");  MyModel.from_pretrained("out/my_model")

Weights are only ever read with safetensors (never unpickled). Saving is atomic: files are written into a
temporary sibling folder, then renamed into place, so a crash never leaves a half-written model folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import viva
from viva.errors import VivaUserError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

C = TypeVar("C", bound="ComponentConfig")
M = TypeVar("M", bound="PretrainedMixin")


def _is_tuple_type(hint: Any) -> bool:
    if typing.get_origin(hint) is tuple:
        return True
    return any(_is_tuple_type(arg) for arg in typing.get_args(hint))


class ComponentConfig:
    """Base of component config dataclasses: a JSON-friendly dict round trip.

    `from_dict` turns lists back into tuples for tuple-typed fields, ignores bookkeeping keys that start
    with "_", and rejects unknown keys (a typo in a YAML file should fail, not be silently dropped).
    """

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        unknown = sorted(set(data) - names)
        if unknown:
            raise VivaUserError(
                f"unknown {cls.__name__} field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(names))}"
            )
        kwargs = {
            k: tuple(v) if isinstance(v, list) and _is_tuple_type(hints.get(k)) else v for k, v in data.items()
        }
        return cls(**kwargs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


class PretrainedMixin:
    """save_pretrained / from_pretrained for an `nn.Module` built as `cls(config)`.

    Subclasses set `config_class` and keep the config they were built from in `self.config`.
    """

    config_class: ClassVar[type[ComponentConfig]]
    config: ComponentConfig

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights `save_pretrained` writes and `from_pretrained` requires (CPU, contiguous): the whole
        state dict here; a model whose parts come from elsewhere (e.g. a pretrained text encoder loaded
        from its package) leaves those out."""
        return {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}

    def save_pretrained(self, save_directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write config.json + model.safetensors into `save_directory` (created, or updated in place).
        dtype: store floating-point weights in this dtype (e.g. torch.float16 halves the file; loading casts
        them back to the model's dtype); None keeps them as they are."""
        target = Path(save_directory)
        if target.exists() and not target.is_dir():
            raise VivaUserError(f"cannot save model to {target}: it is a file; give a folder path")
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            tmp.mkdir(parents=True)
        except OSError as e:
            raise VivaUserError(
                f"cannot save model to {target}: {e.strerror}; check the path and its permissions"
            ) from None
        try:
            config = self.config.to_dict()
            config = {"_class_name": type(self).__name__, "_viva_version": viva.__version__, **config}
            state = self.own_state_dict()
            if dtype is not None:
                state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
                config["_weights_dtype"] = str(dtype).removeprefix("torch.")
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            if not target.exists():
                os.replace(tmp, target)
            else:
                # Weights before config: a reader never sees a new config next to old weights.
                for name in (WEIGHTS_NAME, CONFIG_NAME):
                    os.replace(tmp / name, target / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    @classmethod
    def from_pretrained(
        cls: type[M],
        directory: str | os.PathLike,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> M:
        """Build the model from `directory`'s config.json, load model.safetensors (strict over
        `own_state_dict`) and return it in
        eval mode, optionally moved to `device` / cast to `dtype`."""
        folder = Path(directory)
        hint = "pass a folder written by save_pretrained (config.json + model.safetensors)"
        if not folder.is_dir():
            raise VivaUserError(f"{cls.__name__} folder {folder} does not exist; {hint}")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise VivaUserError(f"{cls.__name__} folder {folder} has no {name}; {hint}")
        try:
            data = json.loads((folder / CONFIG_NAME).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VivaUserError(f"{folder / CONFIG_NAME} is not valid JSON ({e}); re-save the model") from None
        stored = data.get("_class_name")
        if stored is not None and stored != cls.__name__:
            raise VivaUserError(
                f"{folder} holds a {stored}, not a {cls.__name__}; load it with {stored}.from_pretrained"
            )
        model = cls(cls.config_class.from_dict(data))
        load_weights(model, folder)
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model.eval()


def load_weights(model: PretrainedMixin, directory: str | os.PathLike, fresh: tuple[str, ...] = ()) -> None:
    """Load `directory`/model.safetensors into `model`, strictly over its `own_state_dict` (every key
    present, none unexpected, shapes equal), except that keys starting with a prefix in `fresh` may be
    missing (parts added to a saved model: they keep their initialisation)."""
    folder = Path(directory)
    try:
        state = load_file(str(folder / WEIGHTS_NAME), device="cpu")
    except (SafetensorError, OSError) as e:
        raise VivaUserError(
            f"{folder / WEIGHTS_NAME} is not a readable safetensors file ({e}); re-save the model"
        ) from None
    own = model.own_state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(fresh))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        groups = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for label, keys in groups if keys]
        raise VivaUserError(
            f"{folder / WEIGHTS_NAME} does not match its config.json ({'; '.join(parts)}); re-save the model"
        )
    result = model.load_state_dict(state, strict=False)  # strict over own_state_dict, checked above
    assert not result.unexpected_keys
