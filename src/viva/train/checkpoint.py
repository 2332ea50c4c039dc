"""Training checkpoints in safetensors + JSON only (never pickle), written atomically, resumed exactly.

Layout of a run folder:

    RUN/checkpoints/step-00001000/  trainable.safetensors  ema.safetensors  optimizer.safetensors  state.json
    RUN/checkpoints/latest          (text: the name of the newest complete checkpoint)

A checkpoint folder is built under a temporary name and renamed into place; `latest` is replaced
atomically after it, so an interruption at any moment leaves the previous checkpoint usable. Training
randomness is derived from (seed, step, rank), so model + optimizer + EMA + step resume a run exactly.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from viva.errors import VivaUserError
from viva.io.atomic import atomic_write_bytes

LATEST = "latest"


def flatten_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state_dict as (tensors for safetensors, JSON-able rest)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def module_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Trainable modules' weights under "name.param" keys (float32 copies on CPU)."""
    return {
        f"{name}.{key}": value.detach().to("cpu").contiguous()
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }


def load_module_state(modules: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor]) -> None:
    for name, module in modules.items():
        prefix = f"{name}."
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(own, strict=True)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    ema: dict[str, torch.Tensor] | None = None,
    state: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep` checkpoints."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    tmp = root / f".{name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        save_file(module_state(modules), str(tmp / "trainable.safetensors"))
        if ema is not None:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        meta: dict[str, Any] = {"step": step, "state": state or {}}
        if optimizer is not None:
            tensors, opt_meta = flatten_optimizer_state(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            meta["optimizer"] = opt_meta
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_bytes(root / LATEST, name.encode())
    old = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for stale in old[:-keep] if keep > 0 else []:
        if stale.name != name:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text().strip()
    return folder if (folder / "state.json").is_file() else None


def load_checkpoint(
    folder: str | os.PathLike,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[int, dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Restore modules (and optimizer) from `folder`; returns (step, ema tensors or None, extra state)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "state.json").read_text())
        load_module_state(modules, load_file(str(folder / "trainable.safetensors")))
        if optimizer is not None and "optimizer" in meta:
            tensors = load_file(str(folder / "optimizer.safetensors"))
            optimizer.load_state_dict(unflatten_optimizer_state(tensors, meta["optimizer"]))
        ema_path = folder / "ema.safetensors"
        ema = load_file(str(ema_path)) if ema_path.is_file() else None
    except (OSError, json.JSONDecodeError, SafetensorError, KeyError, RuntimeError) as e:
        raise VivaUserError(
            f"checkpoint {folder} cannot be resumed ({str(e).splitlines()[0]}); "
            "delete it or start a new run with a different --out"
        ) from None
    return int(meta["step"]), ema, meta.get("state", {})
