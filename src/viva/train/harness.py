"""The run loop the VAE and instructor trainers share: accelerator and device, optimizer and LR schedule,
exact resume, checkpoints, SIGTERM, progress and logs.

A trainer subclasses `TrainingRun` and fills in four hooks:

    build()                  -> {name: module} whose weights are checkpointed (trainable state), after
                                 setting `self.model` (what is called in the loop; wrapped for DDP)
    make_loader(start, stop) -> an iterable of the batches of steps [start, stop)
    compute_loss(batch)      -> (loss, {name: float}) for one batch (under autocast)
    finish()                 -> {summary}: final evaluation and export (main process only)

A trainer whose config has `train.fsdp` (SFT) may set it: with several processes the trainable modules are
sharded (viva.train.sharding) instead of wrapped in DDP; `use_plain_modules(modules)` then
gets unsharded copies holding the final weights on the main process before `finish()`.

A step makes one optimizer update from `compute_loss`; a trainer that makes several from one batch (PPO
epochs over a rollout: Edit-GRPO) overrides `step_losses(batch)` instead, yielding one (loss, stats) per
update.

`run()` then does the rest:

1. RUN/config.yaml is written on the first start; a later start with RUN holding checkpoints resumes from
   the newest one, and refuses (one line, exit 2) if the config differs in anything but run-time keys.
2. Randomness is a function of (seed, step): the model is initialised from `seed`, the global torch RNG is
   reseeded before every step from (seed, step, rank), and batches come from `world_data.StepBatchSampler`.
   With model + optimizer + EMA restored, a resumed run reproduces the uninterrupted one bit for bit (on
   CPU; cuDNN autotuning may pick other kernels on a GPU).
3. Every `log_every` steps the means of the window's stats go to RUN/metrics.jsonl and TensorBoard (RUN/tb);
   every `checkpoint_every` steps a checkpoint is written atomically (RUN/checkpoints/step-N).
4. SIGTERM / SIGINT: the step in flight finishes, a checkpoint is written, and the run exits 143 / 130.
   `--stop-at N` stops (with a checkpoint, exit 0) after step N, as a time-sliced job would; with
   `--export` it then also runs step 5 on the weights of step N (a partial model; the run still resumes).
5. After the last step: the final checkpoint, then `finish()` (evaluation, RUN/<component>/ and
   RUN/eval.json).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from viva.errors import VivaUserError

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import save_config, to_dict
from .runtime import EMA, RunLogger, StopSignal, step_generator
from .world_data import coerce_numbers

__all__ = ["OptimConfig", "RunConfig", "TrainingRun", "lr_factor", "RUNTIME_KEYS", "weights_digest", "write_json"]

# Config keys that may change between a run's starts without breaking exact resume.
RUNTIME_KEYS = frozenset(
    {
        "train.device",
        "train.num_workers",
        "train.cpu_threads",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.log_every",
        "train.tensorboard",
        "model.language_model_path",
    }
)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, then cosine decay to `min_lr_ratio * lr` (or constant)."""

    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off

    def __post_init__(self) -> None:
        coerce_numbers(self)
        self.betas = tuple(float(b) for b in self.betas)
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule must be cosine or constant, got {self.schedule!r}")
        if self.lr <= 0 or self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0 or self.grad_clip < 0:
            raise ValueError("need optim.lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1 and grad_clip >= 0")


@dataclass
class RunConfig:
    """The training run: length, batch, seed, device and precision, EMA, workers, checkpoints, logs."""

    steps: int = 1000
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    mixed_precision: str = "bf16"  # bf16 autocast (CPU or GPU) | no (float32; also fp32)
    ema_decay: float = 0.0  # 0: no EMA; else the exported weights are the EMA's
    num_workers: int = -1  # DataLoader workers generating data; -1: min(14, cores - 2)
    cpu_threads: int = 0  # torch intra-op threads of the main process (0: torch's default)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    tensorboard: bool = True

    def __post_init__(self) -> None:
        coerce_numbers(self)
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"train.steps and train.batch_size must be positive, got {self.steps} and {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be auto, cpu or cuda, got {self.device!r}")
        if self.mixed_precision is False or self.mixed_precision in ("fp32", "float32"):
            self.mixed_precision = "no"  # YAML reads a bare `no` as false
        if self.mixed_precision not in ("bf16", "no"):
            raise ValueError(f"train.mixed_precision must be bf16 or no, got {self.mixed_precision!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("train.checkpoint_every, log_every and keep_checkpoints must be at least 1")


def lr_factor(step: int, steps: int, optim: OptimConfig) -> float:
    """Multiplier of the base LR for update number `step` (0-based)."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    span = max(1, steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class RunFolderInUse(VivaUserError):
    """Another process holds the run folder's lock."""


def lock_run_folder(run_dir: Path):
    """Take RUN/.lock (an exclusive flock, held while the returned file stays open, released by the OS
    if the process dies): two trainings writing one run folder would interleave their checkpoints and
    logs. A folder already locked is one line (VivaUserError) naming the process that holds it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): unguarded, as before
        return None
    handle = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderInUse(
            f"{run_dir} is in use by another training run (process {holder}); wait for it to finish or stop it, "
            "or give another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def write_json(path: Path, data: Any) -> None:
    from viva.io.atomic import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def weights_digest(modules: dict) -> str:
    """SHA-256 of modules' full float32 parameters and buffers (CPU bytes, sorted keys); any object with a
    `state_dict()` will do."""
    import hashlib

    from .sharding import full_tensors

    h = hashlib.sha256()
    for name in sorted(modules):
        state = full_tensors(modules[name].state_dict())  # sharded (FSDP) weights: gathered, a collective
        for key in sorted(state):
            h.update(f"{name}.{key}".encode())
            h.update(state[key].to(torch.float32).numpy().tobytes())
    return h.hexdigest()


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _make_accelerator(device: str, mixed_precision: str, kwargs_handlers=None):
    """An accelerate.Accelerator on `device` (auto: CUDA when available)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if device == "cuda" and not torch.cuda.is_available():
        raise VivaUserError("train.device is cuda but no CUDA GPU is visible; use --device cpu (or auto)")
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not distributed:
        # Several runs in one process (tests, notebooks) may differ in precision or device.
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu, kwargs_handlers=kwargs_handlers or [])


class _Window:
    """Running means of a logging window's stats."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.start = time.perf_counter()
        self.data_time = 0.0
        self.samples = 0
        self.steps = 0

    def add(self, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


class TrainingRun:
    """A resumable training run in RUN (see the module docstring). Subclasses set `component` (the
    exported folder's name) and implement the four hooks."""

    component = "model"
    unit = "samples"  # what `samples_per_batch` counts, for the throughput log
    runtime_keys = RUNTIME_KEYS  # config keys a resumed run may change

    def __init__(
        self, config, run_dir: str | os.PathLike, stop_at: int | None = None, progress: bool = True, export: bool = False
    ):
        self.config = config
        self.export = export  # export RUN/<component> even when stopped before train.steps (a partial model)
        self.steps_done = 0
        self.train: RunConfig = config.train
        self.optim: OptimConfig = config.optim
        self.run_dir = Path(run_dir)
        self.stop_at = stop_at
        self.progress = progress
        self.model: nn.Module | None = None
        self.modules: dict[str, nn.Module] = {}
        self.samples_per_batch = self.train.batch_size

    # -- hooks -------------------------------------------------------------------------------------------
    def build(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        params = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        return [{"params": params}]

    def make_loader(self, start: int, stop: int):
        raise NotImplementedError

    def compute_loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def step_losses(self, batch):
        """The (loss, stats) of each optimizer update of one step, in order (each is asked for under
        autocast, then backpropagated and applied before the next). Default: one update, `compute_loss`."""
        yield self.compute_loss(batch)

    def finish(self) -> dict:
        raise NotImplementedError

    def accelerator_kwargs(self) -> list:
        return []

    def after_step(self, step: int, ema: EMA | None) -> None:
        """Called on every process after each step's update, EMA update, log and checkpoint (previews,
        checks); `ema` is the run's EMA (None without one). Default: nothing."""

    def checkpoint_modules(self) -> dict:
        """What checkpoints hold: `self.modules` by default (objects with state_dict / load_state_dict)."""
        return self.modules

    def use_plain_modules(self, modules: dict[str, nn.Module]) -> None:
        """FSDP only, main process, before `finish()`: unsharded copies of `self.modules` holding the final
        (EMA) weights; a trainer puts them where `finish()` reads them. Default: `self.modules`."""
        self.modules = modules

    # -- sharding (FSDP) ---------------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return getattr(self, "_skeletons", None) is not None

    def _shard(self) -> None:
        """train.fsdp with several processes: keep parameter-less copies of the trainable modules (for
        previews and the export), then shard them in place."""
        from .sharding import meta_skeleton, shard_model

        self._skeletons = {name: meta_skeleton(module) for name, module in self.modules.items()}
        units = shard_model(self.model, self.modules)
        self.log(f"FSDP: trainable modules sharded over {self.world} processes ({units} units)")

    def trainable_state(self, ema: EMA | None = None) -> dict[str, torch.Tensor]:
        """Full CPU copies of the trainable weights ("name.param"), the EMA's where there is one. Under
        FSDP a collective: call it on every process."""
        from .checkpoint import module_state
        from .sharding import full_tensors

        state = module_state(self.modules)
        if ema is not None:
            state.update(full_tensors(ema.state_dict()))
        return state

    def plain_copies(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, nn.Module]:
        """Unsharded copies of the trainable modules (on this run's device), holding `state` when given."""
        import copy

        from .checkpoint import load_module_state
        from .sharding import materialize

        if self.sharded:
            if state is None:
                raise ValueError("the modules are sharded: pass the gathered `trainable_state()`")
            copies = {}
            for name, skeleton in self._skeletons.items():
                prefix = f"{name}."
                own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                copies[name] = materialize(skeleton, own, self.device)
            return copies
        copies = {name: copy.deepcopy(module) for name, module in self.modules.items()}
        if state is not None:
            load_module_state(copies, state)
        return copies

    # -- helpers -----------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, file=sys.stderr, flush=True)

    def _check_config(self) -> None:
        """Write RUN/config.yaml, or check that a resumed run uses the same config."""
        path = self.run_dir / "config.yaml"
        current = to_dict(self.config)
        if latest_checkpoint(self.run_dir) is not None and path.is_file():
            stored = yaml.safe_load(path.read_text()) or {}
            a, b = _flatten(stored), _flatten(json.loads(json.dumps(current)))
            # A field added to the config after the run started is fine at its default (the old behaviour).
            defaults = _flatten(json.loads(json.dumps(to_dict(type(self.config)()))))
            changed = sorted(
                k for k in set(a) | set(b)
                if a.get(k) != b.get(k) and k not in self.runtime_keys and not (k not in a and b[k] == defaults.get(k))
            )
            if changed:
                shown = ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in changed[:4])
                raise VivaUserError(
                    f"{self.run_dir} holds a run started with another config ({shown}{' ...' if len(changed) > 4 else ''}); "
                    "resume it with the same config, or give a new --out"
                )
        if self.is_main:
            save_config(self.config, path)

    # -- weight checks across processes --------------------------------------------------------------
    def _write_sync(self, step: int, modules: dict, initial: bool = False) -> str:
        """Append this rank's weights digest at `step` to RUN/sync/rank-R.jsonl; returns the digest."""
        digest = weights_digest(modules)
        folder = self.run_dir / "sync"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"rank-{self.rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "sha256": digest, "initial": initial}) + "\n")
        return digest

    def _check_sync(self, step: int, modules: dict | None = None) -> None:
        """Record the trainable weights' digest and stop the run if the ranks disagree (the classic
        unsynchronised-gradients bug of multi-GPU RL/SFT code). `modules`: default `self.modules`."""
        digest = self._write_sync(step, self.modules if modules is None else modules)
        if self.world == 1:
            return
        import torch.distributed as dist

        digests = [None] * self.world
        dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise RuntimeError(
                f"trainable weights differ across ranks at step {step} ({', '.join(d[:12] for d in digests)}): "
                "gradients are not synchronised"
            )

    def _any_rank(self, flag: bool) -> bool:
        """`flag` OR-ed over the processes (one tiny all-reduce per step): a signal that reached only some
        ranks, or reached them on either side of a step boundary, stops all of them after the same step,
        so their checkpoint collectives (FSDP gathers, the barrier) match instead of hanging."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def _set_lr(self, optimizer, step: int) -> float:
        factor = lr_factor(step, self.train.steps, self.optim)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return optimizer.param_groups[0]["lr"]

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> int:
        """Train (resuming from the newest checkpoint), then evaluate and export; returns the exit code. A
        user error (bad init folder, unreadable weights, ...) in a run this call started removes the run
        folder it created, so nothing partial is left behind."""
        created = not self.run_dir.exists()
        self._lock = None
        try:
            return self._run()
        except VivaUserError as error:
            if created and not isinstance(error, RunFolderInUse):  # never another run's folder
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        finally:
            if self._lock is not None:
                self._lock.close()  # releases the run folder

            # Tear the process group down before the interpreter exits: a gloo group left to the C++
            # static destructors can abort the process ("terminate called without an active exception").
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()

    def _run(self) -> int:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise VivaUserError(f"--out {self.run_dir} is a file; give a folder for the run")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator = _make_accelerator(self.train.device, self.train.mixed_precision, self.accelerator_kwargs())
        self.is_main = self.accelerator.is_main_process
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        if self.accelerator.distributed_type.value == "FSDP":
            raise VivaUserError(
                "accelerate's own FSDP is not used by viva: launch with a multi-GPU config "
                "(configs/accelerate/ddp.yaml) and set train.fsdp=true to shard the trainable modules"
            )
        if self.is_main:
            self._lock = lock_run_folder(self.run_dir)
        self._check_config()
        if self.train.cpu_threads > 0:
            torch.set_num_threads(self.train.cpu_threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # 1. Model, optimizer, EMA (initialised from the seed), then the newest checkpoint.
        torch.manual_seed(self.train.seed)
        self.modules = self.build()
        self._skeletons = None
        if getattr(self.train, "fsdp", False):
            if self.world > 1:
                self._shard()
            else:
                self.log("train.fsdp: one process, nothing to shard (launch several with accelerate launch / torchrun)")
        groups = self.param_groups()
        for group in groups:
            group.setdefault("lr", self.optim.lr)
            group["base_lr"] = group["lr"]
        optimizer = torch.optim.AdamW(
            groups, lr=self.optim.lr, betas=self.optim.betas, eps=self.optim.eps, weight_decay=self.optim.weight_decay
        )
        ema = EMA(self.modules, self.train.ema_decay) if self.train.ema_decay > 0 else None
        step, state = 0, {}
        checkpoint = latest_checkpoint(self.run_dir)
        if checkpoint is not None:
            step, ema_state, state = load_checkpoint(checkpoint, self.checkpoint_modules(), optimizer)
            if ema is not None and ema_state is not None:
                ema.load_state_dict(ema_state)
            self.log(f"resuming {self.run_dir} from step {step} ({checkpoint.name})")
        if not self.sharded:  # sharded: FSDP reduce-scatters the gradients itself; nothing to wrap
            self.model, optimizer = self.accelerator.prepare(self.model, optimizer)
        logger = RunLogger(self.run_dir, enabled=self.is_main, tensorboard=self.train.tensorboard)
        logger.truncate_after(step)
        params = [p for g in optimizer.param_groups for p in g["params"]]

        def checkpoint_now(at: int) -> None:
            if self.is_main or self.sharded:  # sharded: every rank gathers, the main one writes
                save_checkpoint(
                    self.run_dir,
                    at,
                    self.checkpoint_modules(),
                    optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                    ema=ema.state_dict() if ema is not None else None,
                    state={"component": self.component},
                    keep=self.train.keep_checkpoints,
                    write=self.is_main,
                )
            self.accelerator.wait_for_everyone()

        # 2. The loop.
        stop_step = self.train.steps if self.stop_at is None else min(self.train.steps, self.stop_at)
        saved_at = step if checkpoint is not None else -1
        exit_code = 0
        if step < stop_step:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=self.train.steps,
                initial=step,
                desc=f"train {self.component}",
                disable=not (self.progress and self.is_main),
                dynamic_ncols=True,
                file=sys.stderr,
            )
            self.model.train()
            window = _Window()
            with StopSignal() as signal_flag:
                fetch_start = time.perf_counter()
                for batch in self.make_loader(step, stop_step):
                    window.data_time += time.perf_counter() - fetch_start
                    lr = self._set_lr(optimizer, step)
                    torch.manual_seed(int(step_generator(self.train.seed, step, self.rank).initial_seed()))
                    updates = self.step_losses(batch)
                    while True:
                        with self.accelerator.autocast():
                            update = next(updates, None)
                        if update is None:
                            break
                        loss, stats = update
                        self.accelerator.backward(loss)
                        if self.optim.grad_clip > 0:
                            if self.sharded:
                                norm = torch.nn.utils.clip_grad_norm_(params, self.optim.grad_clip).full_tensor()
                            else:
                                norm = self.accelerator.clip_grad_norm_(params, self.optim.grad_clip)
                            stats["grad_norm"] = float(norm)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        stats["lr"] = lr
                        window.add(stats)
                    step += 1
                    if ema is not None:
                        ema.update(step)
                    window.steps += 1
                    window.samples += self.samples_per_batch * self.world
                    bar.update(1)
                    if step % self.train.log_every == 0 or step == stop_step:
                        elapsed = time.perf_counter() - window.start
                        scalars = window.means()
                        scalars[f"{self.unit}_per_s"] = window.samples / max(elapsed, 1e-9)
                        scalars["data_wait_fraction"] = window.data_time / max(elapsed, 1e-9)
                        logger.log(step, scalars)
                        bar.set_postfix(loss=f"{scalars.get('loss', float('nan')):.4f}", refresh=False)
                        window = _Window()
                    if step % self.train.checkpoint_every == 0 and step < self.train.steps:
                        checkpoint_now(step)
                        saved_at = step
                    self.after_step(step, ema)
                    if self._any_rank(signal_flag.stop):  # every rank stops after the same step
                        exit_code = signal_flag.exit_code or 128 + int(signal.SIGTERM)
                        break
                    fetch_start = time.perf_counter()
            bar.close()
        if saved_at != step:
            checkpoint_now(step)
        logger.close()
        if exit_code:
            self.log(f"stopped by signal at step {step}; checkpoint saved in {self.run_dir}; run the same command to resume")
            return exit_code
        self.steps_done = step
        if step < self.train.steps and not self.export:
            self.log(f"stopped at step {step} of {self.train.steps} (--stop-at); run the same command to resume")
            return 0
        if step < self.train.steps:
            self.log(f"exporting the partial model of step {step} of {self.train.steps}; run again without --export to resume")

        # 3. Evaluation and export.
        if self.sharded:  # gather the final (EMA) weights on every rank; the main one exports plain copies
            state = self.trainable_state(ema)
            if self.is_main:
                self.use_plain_modules(self.plain_copies(state))
            ema = None
        if self.is_main:
            if ema is not None:
                ema.copy_to()
            self.model.eval()
            with torch.no_grad():
                self.finish()
        self.accelerator.wait_for_everyone()
        return 0
