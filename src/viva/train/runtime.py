"""What every trainer shares at run time: the accelerator, per-step randomness, EMA, stop signals, logs.

Trainers run under accelerate: one process by default; `accelerate launch` or `torchrun` start several
(gloo on CPU, NCCL on GPU) and accelerate's DDP wrapper keeps their gradients synchronised.
"""

from __future__ import annotations

import json
import os
import signal
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn


def step_generator(seed: int, step: int, rank: int = 0, stream: str = "") -> torch.Generator:
    """A CPU generator determined by (seed, step, rank, stream): a resumed run draws the same numbers."""
    key = zlib.crc32(f"{seed}/{step}/{rank}/{stream}".encode())
    return torch.Generator().manual_seed(key)


class EMA:
    """Exponential moving average of a set of modules' float parameters (kept in float32 on their device)."""

    def __init__(self, modules: dict[str, nn.Module], decay: float = 0.999):
        self.decay = decay
        self.modules = modules
        self.shadow = {
            f"{name}.{key}": p.detach().float().clone()
            for name, module in modules.items()
            for key, p in module.named_parameters()
            if p.requires_grad
        }

    def _params(self):
        for name, module in self.modules.items():
            for key, p in module.named_parameters():
                full = f"{name}.{key}"
                if full in self.shadow:
                    yield full, p

    @torch.no_grad()
    def update(self, step: int | None = None) -> None:
        # Warm-up (as in diffusers' EMAModel): decay ramps from 0 so early averages are not stale.
        decay = self.decay if step is None else min(self.decay, (1 + step) / (10 + step))
        for key, p in self._params():
            self.shadow[key].lerp_(p.detach().float(), 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Full tensors (a checkpoint's); each rank keeps its shard of sharded parameters (FSDP)."""
        from .sharding import distribute_like

        for key, value in state.items():
            if key in self.shadow:
                self.shadow[key].copy_(distribute_like(value, self.shadow[key]))

    @torch.no_grad()
    def copy_to(self) -> None:
        """Overwrite the live parameters with the averages (for export)."""
        for key, p in self._params():
            p.copy_(self.shadow[key].to(p.dtype))


class StopSignal:
    """Turns SIGTERM (and SIGINT) into a flag the training loop checks after each step, so it can save a
    checkpoint before exiting. Use as a context manager; the previous handlers are restored on exit."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum

    def __enter__(self) -> "StopSignal":
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def stop(self) -> bool:
        return self.received is not None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.received) if self.received is not None else 0


class RunLogger:
    """Scalars to TensorBoard (RUN/tb) and to RUN/metrics.jsonl; only the main process writes."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tb"))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, float(value), step)

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint's step (they will be logged again)."""
        if not self.enabled or not self.path.is_file():
            return
        lines = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in lines))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
