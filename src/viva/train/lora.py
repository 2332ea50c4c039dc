"""LoRA adapters on the denoiser (peft), for Edit-GRPO: validated targets, a switch for the reference
policy, the adapter's own weights for checkpoints, merging for export.

    lora = DenoiserLoRA(editor.denoiser, LoraSettings(rank=8, alpha=8, targets=("to_qkv", "fc1")))
    with lora.disabled():          # the reference policy: the same network without the adapters
        v_ref = editor.velocity(...)
    lora.weights()                 # checkpointable: state_dict / load_state_dict of the LoRA tensors only
    merged = lora.merge()          # a plain denoiser with B A * alpha / rank folded into its weights

Targets use peft's rule for a list of names: a target matches a module whose dotted name equals it or ends
with "." + target. Every target must match at least one supported layer (nn.Linear), otherwise
`VivaUserError` names it and lists the names that would match: a LoRA that silently adapts nothing is
the most common way such runs go wrong.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import VivaUserError
from .world_data import coerce_numbers

__all__ = ["LoraSettings", "DenoiserLoRA", "match_targets", "LORA_LAYERS"]

LORA_LAYERS = (nn.Linear,)  # what the adapters are put on (the DiT has no other matmul layers)
ADAPTER = "default"


@dataclass
class LoraSettings:
    """rank r and alpha (the update is B A * alpha / r; B starts at zero, so a fresh adapter changes
    nothing); targets: module names (peft suffix rule, see the module docstring); dropout on the adapter's
    input; init: peft's init_lora_weights (true: Kaiming A, zero B)."""

    rank: int = 16
    alpha: float = 16.0
    targets: tuple[str, ...] = ("to_qkv", "to_q", "to_kv", "to_out", "fc1", "fc2")
    dropout: float = 0.0

    def __post_init__(self) -> None:
        coerce_numbers(self)
        self.targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"lora.rank must be >= 1 and lora.alpha > 0, got {self.rank} and {self.alpha}")
        if not self.targets or not all(isinstance(t, str) and t.strip() for t in self.targets):
            raise ValueError(f"lora.targets must be a non-empty list of module names, got {list(self.targets)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def match_targets(model: nn.Module, targets) -> dict[str, list[str]]:
    """target -> the names of the LoRA-able layers of `model` it matches. Raises VivaUserError (one line)
    when a target matches none."""
    layers = [name for name, module in model.named_modules() if isinstance(module, LORA_LAYERS)]
    found = {t: [n for n in layers if _matches(n, t)] for t in targets}
    missing = [t for t, names in found.items() if not names]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in layers})
        raise VivaUserError(
            f"lora.targets {', '.join(repr(t) for t in missing)} match no linear layer of the "
            f"{type(model).__name__}; use layer names such as {', '.join(leaves)} (or dotted paths like blocks.0.mlp.fc1)"
        )
    return found


class _LoraWeights:
    """The adapter tensors of a model as a checkpointable object (state_dict / load_state_dict)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if "lora_" in k}

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        own = self.state_dict()
        if strict and set(own) != set(state):
            extra, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state))
            raise RuntimeError(f"LoRA weights do not match: missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad():
            for key, value in state.items():
                own[key].copy_(value)


class DenoiserLoRA:
    """peft LoRA adapters injected into `model` in place (its targeted nn.Linear become lora.Linear); the
    base weights are frozen, only the adapters train."""

    def __init__(self, model: nn.Module, settings: LoraSettings):
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel

        matched = match_targets(model, settings.targets)
        self.settings = settings
        self.layers = sorted({name for names in matched.values() for name in names})
        self.config = LoraConfig(
            r=int(settings.rank),
            lora_alpha=float(settings.alpha),
            lora_dropout=float(settings.dropout),
            target_modules=list(settings.targets),
            bias="none",
        )
        model.requires_grad_(False)
        self.tuner = LoraModel(model, self.config, ADAPTER)  # injects in place; trains only lora_ params
        self.model = model

    def parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.model.named_parameters() if "lora_" in name]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def weights(self) -> _LoraWeights:
        return _LoraWeights(self.model)

    @contextmanager
    def disabled(self):
        """The base model (the reference policy of the KL term) inside the block."""
        self.tuner.disable_adapter_layers()
        try:
            yield
        finally:
            self.tuner.enable_adapter_layers()

    def save_adapter(self, folder: str | os.PathLike) -> Path:
        """The unmerged adapter in peft's folder format (adapter_config.json + adapter_model.safetensors,
        keys without the adapter name), written atomically."""
        import secrets
        import shutil

        from safetensors.torch import save_file

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.{secrets.token_hex(4)}.tmp"
        tmp.mkdir()
        try:
            self.config.save_pretrained(str(tmp))
            tensors = {
                "base_model.model." + k.replace(f".{ADAPTER}.", "."): v.detach().to("cpu").contiguous()
                for k, v in self.weights().state_dict().items()
            }
            save_file(tensors, str(tmp / "adapter_model.safetensors"))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def load_adapter(self, folder: str | os.PathLike) -> None:
        """Load adapter weights written by `save_adapter` (same targets and rank) into this model."""
        from safetensors.torch import load_file

        path = Path(folder) / "adapter_model.safetensors"
        if not path.is_file():
            raise VivaUserError(f"adapter folder {folder} has no adapter_model.safetensors; pass a RUN/adapter folder")
        prefix = "base_model.model."
        state = {}
        for key, value in load_file(str(path)).items():
            name, kind = key[len(prefix):].rsplit(".", 1)  # "...fc1.lora_A", "weight"
            state[f"{name}.{ADAPTER}.{kind}"] = value
        try:
            self.weights().load_state_dict(state)
        except RuntimeError as e:
            raise VivaUserError(f"adapter {folder} does not fit this model ({e}); use the run's lora settings") from None

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """Fold the adapters into the base weights and remove them: returns the plain model (the same
        object, its lora.Linear replaced by nn.Linear). The adapters are gone afterwards."""
        merged = self.tuner.merge_and_unload()
        merged.requires_grad_(False)
        return merged
