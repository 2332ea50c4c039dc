"""Training checkpoints in safetensors + JSON only (never pickle), written atomically, resumed exactly.

Layout of a run folder:

    RUN/checkpoints/step-00001000/  trainable.safetensors  ema.safetensors  optimizer.safetensors  state.json
    RUN/checkpoints/latest          (text: the name of the newest complete checkpoint)

A checkpoint folder is built under a temporary name and renamed into place; `latest` is replaced
atomically after it, so an interruption at any moment leaves the previous checkpoint usable. Training
randomness is derived from (seed, step, rank), so model + optimizer + EMA + step resume a run exactly.
Checkpoints always hold full tensors: under FSDP (viva.train.sharding) the shards are gathered on save
(every rank calls `save_checkpoint`, rank 0 writes) and cut back to each rank's shard on load.
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

from .sharding import distribute_like, full_tensors

LATEST = "latest"


def flatten_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state_dict as (full tensors for safetensors, JSON-able rest); a collective under FSDP."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return full_tensors(tensors), {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """The inverse of `flatten_optimizer_state`; given the `optimizer`, per-parameter tensors shaped like
    its parameters are cut to this rank's shard where those are sharded."""
    params = [p for group in optimizer.param_groups for p in group["params"]] if optimizer is not None else []
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        if index.isdigit() and int(index) < len(params) and value.shape == params[int(index)].shape:
            value = distribute_like(value, params[int(index)])
        state.setdefault(int(index), {})[name] = value
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def module_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Trainable modules' weights under "name.param" keys (full float32 copies on CPU; a collective when
    the modules are sharded)."""
    return full_tensors({f"{name}.{key}": value for name, module in modules.items() for key, value in module.state_dict().items()})


def load_module_state(modules: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor]) -> None:
    """Load full "name.param" tensors into `modules` (each rank keeps its shard of sharded parameters)."""
    for name, module in modules.items():
        prefix = f"{name}."
        current = module.state_dict()
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        own = {k: distribute_like(v, current[k]) if k in current else v for k, v in own.items()}
        module.load_state_dict(own, strict=True)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    ema: dict[str, torch.Tensor] | None = None,
    state: dict[str, Any] | None = None,
    keep: int = 2,
    write: bool = True,
) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep` checkpoints.
    Under FSDP every rank calls it (the shards are gathered) and only the one with `write` writes."""
    trainable = module_state(modules)
    ema = full_tensors(ema) if ema is not None else None
    optimizer_state = flatten_optimizer_state(optimizer) if optimizer is not None else None
    root = Path(run_dir) / "checkpoints"
    name = f"step-{step:08d}"
    if not write:
        return root / name
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".{name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        save_file(trainable, str(tmp / "trainable.safetensors"))
        if ema is not None:
            save_file(ema, str(tmp / "ema.safetensors"))
        meta: dict[str, Any] = {"step": step, "state": state or {}}
        if optimizer_state is not None:
            tensors, opt_meta = optimizer_state
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
            optimizer.load_state_dict(unflatten_optimizer_state(tensors, meta["optimizer"], optimizer))
        ema_path = folder / "ema.safetensors"
        ema = load_file(str(ema_path)) if ema_path.is_file() else None
    except (OSError, json.JSONDecodeError, SafetensorError, KeyError, RuntimeError) as e:
        raise VivaUserError(
            f"checkpoint {folder} cannot be resumed ({str(e).splitlines()[0]}); "
            "delete it or start a new run with a different --out"
        ) from None
    return int(meta["step"]), ema, meta.get("state", {})
