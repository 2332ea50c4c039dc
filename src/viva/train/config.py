"""Typed training configs: dataclasses loaded from YAML and overridden from the command line.

    cfg = load_config(SFTConfig, "configs/sft.yaml", ["train.lr=3e-4", "data.root=data/train"])

Nested dataclass fields are addressed with dots. Values are parsed as YAML scalars (`1e-4`, `true`,
`[1, 2]`). Unknown keys fail with one clear line rather than being silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from viva.errors import VivaUserError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict; lists become tuples for tuple fields."""
    if not isinstance(data, dict):
        raise VivaUserError(f"config section {where or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise VivaUserError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            base = dataclasses.asdict(hint()) if _has_defaults(hint) else {}
            base.update(value)
            kwargs[key] = from_dict(hint, base, where=f"{where}{key}.")
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            kwargs[key] = tuple(value)
        elif isinstance(value, str) and _accepts_float(hint):
            kwargs[key] = _to_float(value, where + key)  # YAML 1.1 reads `1e-4` (no dot) as a string
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise VivaUserError(f"invalid config {where or cls.__name__}: {e}") from None


def _accepts_float(hint: Any) -> bool:
    if hint is float:
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and float in typing.get_args(hint) and str not in typing.get_args(hint)


def _to_float(value: str, key: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise VivaUserError(f"config key {key} must be a number, got {value!r}") from None


def _has_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """["a.b=1", "c=x"] -> {"a": {"b": 1}, "c": "x"}."""
    data: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise VivaUserError(f"override {item!r} must look like key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of `cls`, updated by the YAML file at `path`, then by dotted `overrides`."""
    data = dataclasses.asdict(cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise VivaUserError(f"config file {path} does not exist; pass a YAML file (see configs/)")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise VivaUserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        data = _merge(data, loaded)
    data = _merge(data, parse_overrides(overrides or []))
    return from_dict(cls, data)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML next to a run's outputs (atomically)."""
    from viva.io.atomic import atomic_write_bytes

    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    atomic_write_bytes(Path(path), text.encode())


def read_json_object(path: Path, what: str) -> dict:
    """The JSON object in `path`, or a one-line VivaUserError ending in `what` (how to fix it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VivaUserError(f"cannot read {path} ({e}); {what}") from None
    if not isinstance(data, dict):
        raise VivaUserError(f"{path} is not a JSON object; {what}")
    return data


def component_config(folder: str, option: str, hint: str) -> dict:
    """config.json of a component folder, after checking the folder is complete."""
    path = Path(folder)
    if not path.is_dir():
        raise VivaUserError(f"{option} folder {path} does not exist; {hint}")
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise VivaUserError(f"{option} folder {path} has no {name}; {hint}")
    return read_json_object(path / "config.json", hint)
