"""Fully sharded data parallel training (FSDP2: `torch.distributed.fsdp.fully_shard`) of the trainable modules.

With `train.fsdp=true` and several processes (`accelerate launch` / `torchrun`; gloo on CPU, NCCL on GPU),
each block of the trainable modules (every element of their outermost `nn.ModuleList`s: the DiT's and the
refiner's blocks, diffusers' `blocks` / `transformer_blocks` / `single_transformer_blocks`) becomes one
FSDP unit, then each trainable module, then the model object that holds them. Parameters, gradients and
AdamW moments are split across the ranks (DTensor shards, dim 0); a unit's weights are all-gathered for
its forward and backward only. The frozen VAE and instructor are not sharded.

Checkpoints, previews and exports stay full tensors, so a run checkpointed under FSDP resumes under DDP
or in one process and the other way round: `full_tensors` gathers DTensor shards (a collective: every rank
calls it, in the same order), `distribute_like` cuts a full tensor down to this rank's shard. Exports are
built from a parameter-less copy of each trainable module taken before sharding (`meta_skeleton`), filled
with the gathered weights (`materialize`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["shard_units", "shard_model", "full_tensors", "distribute_like", "meta_skeleton", "materialize"]


def _dtensor_type():
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(tensor) -> bool:
    return isinstance(tensor, _dtensor_type())


def shard_units(module: nn.Module) -> list[nn.Module]:
    """The blocks of `module` that become their own FSDP unit: the elements (with parameters) of every
    `nn.ModuleList` not inside another such list, in registration order."""
    units: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            if isinstance(child, nn.ModuleList):
                units.extend(block for block in child if any(True for _ in block.parameters()))
            else:
                visit(child)

    visit(module)
    return units


def shard_model(model: nn.Module, modules: dict[str, nn.Module]) -> int:
    """Shard `modules` (the trainable ones, all held by `model`) in place: blocks, then each module, then
    `model`. Call after the modules are on their device and before the optimizer is built; returns the
    number of FSDP units."""
    import warnings

    from torch.distributed.fsdp import fully_shard

    # HunyuanVideo's single-stream blocks (and so our denoiser) return slices of one tensor; nothing writes
    # to them in place, and FSDP training of it equals DDP's (tests/test_backbones.py), so FSDP2's warning
    # about views is noise there.
    warnings.filterwarnings(
        "ignore", message=r"FSDP2-wrapped module \(FSDP(HunyuanVideoSingleTransformerBlock|HunyuanDenoiser)\) returned a view"
    )
    count = 0
    for module in modules.values():
        for block in shard_units(module):
            fully_shard(block)
            count += 1
        fully_shard(module)
        count += 1
    fully_shard(model)
    return count + 1


def full_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every DTensor gathered to a full CPU tensor (collective when any is sharded: call on
    every rank with the same keys); plain tensors are detached CPU copies."""
    out = {}
    for key in state:  # dict order: identical on every rank
        value = state[key]
        if is_sharded(value):
            value = value.full_tensor()
        out[key] = value.detach().to("cpu").contiguous()
    return out


def distribute_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` as a shard laid out like the DTensor `like` (this rank's part; no communication), or `full`
    itself when `like` is a plain tensor."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def meta_skeleton(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters live on the meta device (no memory); buffers are copied for
    real (RoPE tables and other non-persistent buffers are not in checkpoints). Take it before sharding."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad) for p in module.parameters()}
    return copy.deepcopy(module, memo)


def materialize(skeleton: nn.Module, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> nn.Module:
    """A plain (unsharded) module: a copy of `skeleton` holding the full weights `state` (its state_dict
    keys) on `device`."""
    module = copy.deepcopy(skeleton)
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    module.to_empty(device=device)
    with torch.no_grad():
        for name, b in module.named_buffers():
            b.copy_(buffers[name])
    module.load_state_dict(state, strict=True)
    return module
