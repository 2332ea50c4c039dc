"""`viva train instructor`: vision-language pre-training of the mini VLM instructor on the world.

    viva train instructor --config configs/instructor_mini.yaml --out runs/instructor [KEY=VALUE ...]

PAPER.md: the editor's VLM is a frozen, pre-trained LLaVA. Our MiniVLMInstructor has a pre-trained text
encoder (MiniLM) but a new ViT + projector, so before it can be frozen in the editor it must learn to
*ground* instructions: which sprite an instruction points at, where it is and what it looks like. This is
LLaVA's stage 1 (projector alignment) for our world, with the ViT trained too.

Objective (our choice). The instructor reads (instruction, source's first frame, reference image) exactly
as in the editor, and small heads answer questions about the pair from its output tokens; the heads are
discarded after training, only the instructor is exported:

- per clause (1, or 3 when the data has hybrids): the edit category (add ... ref_replace), the referred
  (target) sprite's color, shape, 3x3 cell of its centre in the first frame and size class, the new
  sprite's color/shape (add, replace; the new color of a recolor), the named region of an add, the resize
  direction, the global state asked for, the new background's kind and color;
- the reference image: present or not, and its sprite's color, shape and pattern kind;
- dense (`heads.dense_weight`), from every image token's output: the color and shape of the sprite its
  patch shows (or background), and whether that sprite is the one the instruction refers to (a
  referring-segmentation target: the image tokens must know what is where and which object is meant,
  which needs the image and instruction tokens to talk inside MiniLM).

Each question's head attention-pools the INSTRUCTION tokens ([CLS], words, [SEP]; `heads.
read_instruction_only`) with its own learned query (one shared attention layer + MLP) and a linear
classifier: the answers must flow from the image into the instruction tokens, which is what "visually
grounded instruction tokens" means, and what the probe then measures; labels that do not apply are ignored. Loss: mean cross-entropy over the
heads + dense_weight * (patch color CE + patch shape CE + referred BCE). MiniLM's transformer layers train at `optim.language_model_lr` (`model.train_language_model`; false
freezes MiniLM); the ViT, projector and type embeddings train.

The text alone cannot answer most target questions: an instruction names its target by color, shape,
size or position ("the star", "the leftmost one"), so the target's color or cell must be read off the
image. The grounding probe (`viva.train.probe`) measures exactly that on the frozen, exported instructor.

At the end: held-out accuracy of every head (`eval.num_examples` pairs of seed `eval.seed`), the
grounding probe of the trained instructor and of the text-only baseline, RUN/instructor/ and
RUN/eval.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..errors import VivaUserError
from ..models.hub import load_weights
from ..models.instructor import MiniVLMInstructor, MiniVLMInstructorConfig
from .config import component_config
from .harness import OptimConfig, RunConfig, TrainingRun, write_json
from .probe import instruction_token_mask
from .world_data import (
    COLOR_NAMES,
    IGNORE,
    REGION_NAMES,
    SIZE_NAMES,
    GroundingExamples,
    PairSource,
    StepBatchSampler,
    WorldDataConfig,
    auto_workers,
    ignore_stop_signals,
    coerce_numbers,
    collate_grounding,
    grounding_label_spaces,
    to_unit,
)
from ..world.scene import SHAPES

PATCH_OUTPUTS = len(COLOR_NAMES) + 1 + len(SHAPES) + 1 + 1  # color or none, shape or none, referred
# The vision head (before MiniLM): (name, classes, column of `patch_labels`) in the order of its logits:
# color or none, shape or none, 3x3 cell of the sprite's centre, its size class.
VISION_PARTS = (
    ("color", len(COLOR_NAMES) + 1, 0),
    ("shape", len(SHAPES) + 1, 1),
    ("cell", len(REGION_NAMES), 3),
    ("size", len(SIZE_NAMES), 4),
)
VISION_OUTPUTS = sum(classes for _, classes, _ in VISION_PARTS)


def vision_parts(vision: torch.Tensor):
    """Vision logits [B,N,VISION_OUTPUTS] -> (name, logits [B,N,classes], patch_labels column) per part."""
    start = 0
    for name, classes, column in VISION_PARTS:
        yield name, vision[..., start : start + classes], column
        start += classes

__all__ = [
    "GroundingHeads",
    "GroundingModel",
    "HeadsConfig",
    "InstructorDataConfig",
    "InstructorEvalConfig",
    "InstructorOptimConfig",
    "InstructorTrainConfig",
    "InstructorTrainingRun",
    "ProbeConfig",
    "grounding_loss",
    "evaluate_heads",
]


# Configs -------------------------------------------------------------------------------------------------


@dataclass
class HeadsConfig:
    max_clauses: int = 0  # clauses asked about; 0: 3 when the data has hybrids, else 1
    attention_heads: int = 4
    mlp_ratio: float = 2.0
    dense_weight: float = 1.0  # weight of the per-patch "what is where / which is referred" loss (0: off)
    read_instruction_only: bool = True  # questions read the instruction tokens only (not image tokens)
    # weight of a per-patch color + shape loss on the projected first-frame tokens BEFORE MiniLM (0: off):
    # teaches the ViT what each patch shows directly, as a pre-trained vision tower would know it
    vision_weight: float = 0.0

    def __post_init__(self) -> None:
        coerce_numbers(self)
        if self.max_clauses < 0 or self.attention_heads < 1 or self.dense_weight < 0 or self.vision_weight < 0:
            raise ValueError("need heads.max_clauses >= 0, attention_heads >= 1, dense_weight >= 0 and vision_weight >= 0")


@dataclass
class InstructorDataConfig(WorldDataConfig):
    image_fraction: float = 0.5  # the instructor reads first frames: image pairs are cheaper and as good


@dataclass
class InstructorOptimConfig(OptimConfig):
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 300
    language_model_lr: float = 1e-4  # used when model.train_language_model is true


@dataclass
class InstructorEvalConfig:
    seed: int = 1_000_003  # held-out pairs (must differ from data.seed)
    num_examples: int = 1000
    batch_size: int = 128

    def __post_init__(self) -> None:
        coerce_numbers(self)
        if self.num_examples < 1 or self.batch_size < 1:
            raise ValueError("eval.num_examples and eval.batch_size must be at least 1")


@dataclass
class ProbeConfig:
    """The grounding probe run after training (see viva.train.probe)."""

    enabled: bool = True
    num_train: int = 2000
    num_test: int = 1000
    seed: int = 2_000_003  # train examples; the held-out test examples use seed + 1
    batch_size: int = 128
    l2: float = 1e-3
    max_iter: int = 200  # L-BFGS iterations of each linear probe
    baseline: bool = True  # also probe the text-only instructor

    def __post_init__(self) -> None:
        coerce_numbers(self)
        if self.num_train < 10 or self.num_test < 1 or self.batch_size < 1 or self.l2 < 0:
            raise ValueError("need probe.num_train >= 10, num_test >= 1, batch_size >= 1 and l2 >= 0")


def _default_model() -> MiniVLMInstructorConfig:
    """The pre-training recipe's instructor (configs/instructor_mini.yaml): 16 tokens per image with a
    position table, MiniLM's layers trained."""
    return MiniVLMInstructorConfig(image_token_pool=2, image_token_positions=True, train_language_model=True)


@dataclass
class InstructorTrainConfig:
    model: MiniVLMInstructorConfig = field(default_factory=_default_model)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    data: InstructorDataConfig = field(default_factory=InstructorDataConfig)
    optim: InstructorOptimConfig = field(default_factory=InstructorOptimConfig)
    train: RunConfig = field(default_factory=lambda: RunConfig(steps=2200, batch_size=128, log_every=50))
    eval: InstructorEvalConfig = field(default_factory=InstructorEvalConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    init: str | None = None  # a saved MiniVLMInstructor folder to start from (its config replaces `model`)
    # all | fusion (only the fusion layers train; the init's ViT and MiniLM stay) | vision (vision
    # pre-training: the ViT and projector alone, on what each patch shows; then `init=` this run's export)
    train_part: str = "all"

    def __post_init__(self) -> None:
        if self.train_part not in ("all", "fusion", "vision"):
            raise ValueError(f"train_part must be all, fusion or vision, got {self.train_part!r}")
        if self.init is not None:
            hint = "it is not a saved instructor folder: pass e.g. runs/instructor/instructor (written by `viva train instructor`)"
            data = component_config(self.init, "init", hint)
            if data.get("_class_name") != MiniVLMInstructor.__name__:
                raise VivaUserError(f"init folder {self.init} holds a {data.get('_class_name')}, not a MiniVLMInstructor; {hint}")
            fusion = max(int(data.get("fusion_layers", 0)), self.model.fusion_layers)
            self.model = MiniVLMInstructorConfig.from_dict({**data, "fusion_layers": fusion})
        if self.train_part == "fusion" and (self.init is None or self.model.fusion_layers == 0):
            raise ValueError("train_part=fusion trains fusion layers on a trained instructor: give init=DIR and model.fusion_layers=N (N >= 1)")
        if self.data.root is None and self.eval.seed == self.data.seed:
            raise ValueError(f"eval.seed must differ from data.seed ({self.data.seed}): held-out pairs must be unseen")

    @property
    def patch_grid(self) -> int:
        return self.model.token_grid

    @property
    def max_clauses(self) -> int:
        return self.heads.max_clauses or (3 if self.data.has_hybrids else 1)


# Heads ---------------------------------------------------------------------------------------------------


class GroundingHeads(nn.Module):
    """Questions about a pair, answered from instructor tokens [B,L,D] (mask [B,L]).

    One learned query per question attention-pools the (layer-normed) tokens; a shared MLP and a linear
    classifier per question give the logits. The dense head reads every image token (positions 1..n_img,
    the patch grid) and predicts its patch's color, shape and whether it shows the referred sprite."""

    def __init__(
        self,
        hidden: int,
        spaces: dict[str, tuple[str, ...]],
        image_tokens: int = 0,
        attention_heads: int = 4,
        mlp_ratio: float = 2.0,
        vision: bool = False,
    ):
        super().__init__()
        self.names = tuple(spaces)
        self.image_tokens = int(image_tokens)
        self.norm = nn.LayerNorm(hidden)
        self.queries = nn.Parameter(torch.randn(len(self.names), hidden) * 0.02)
        self.attention = nn.MultiheadAttention(hidden, attention_heads, batch_first=True)
        self.mlp_norm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, int(hidden * mlp_ratio)), nn.GELU(), nn.Linear(int(hidden * mlp_ratio), hidden))
        self.out_norm = nn.LayerNorm(hidden)
        self.classifiers = nn.ModuleList(nn.Linear(hidden, len(spaces[n])) for n in self.names)
        self.dense = None
        if self.image_tokens:
            self.dense_norm = nn.LayerNorm(hidden)
            self.dense = nn.Linear(hidden, PATCH_OUTPUTS)
        # Optional: each projected first-frame token (before MiniLM) -> what its patch shows (no
        # "referred": there is no text before MiniLM).
        self.vision = None
        if vision:
            self.vision_norm = nn.LayerNorm(hidden)
            self.vision = nn.Linear(hidden, VISION_OUTPUTS)

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor, read_mask: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """read_mask: the tokens the questions may read (default: every real token)."""
        b = tokens.shape[0]
        x = self.norm(tokens)
        # 1. One query per question attends over the tokens it may read.
        q = self.queries[None].expand(b, -1, -1).to(x.dtype)
        read = mask if read_mask is None else read_mask
        pooled, _ = self.attention(q, x, x, key_padding_mask=~read, need_weights=False)
        pooled = pooled + q
        pooled = self.out_norm(pooled + self.mlp(self.mlp_norm(pooled)))
        logits = [head(pooled[:, i]) for i, head in enumerate(self.classifiers)]
        # 2. Dense: every image token's output -> its patch's color, shape and "is the referred sprite".
        dense = None
        if self.dense is not None:
            img = tokens[:, 1 : 1 + self.image_tokens]  # after [CLS]
            dense = self.dense(self.dense_norm(img))  # [B, n_img, PATCH_OUTPUTS]
        return logits, dense


class GroundingModel(nn.Module):
    """Instructor + heads: the module trained (and wrapped for DDP). With `read_instruction_only`, the
    questions read only the [CLS] + instruction + [SEP] tokens, so what they ask (which sprite, its color,
    where it is, what the reference shows) must flow from the image into the instruction tokens.
    forward -> (question logits, dense logits [B,n_img,PATCH_OUTPUTS] or None, vision logits
    [B,n_img,VISION_OUTPUTS] of the projected frame tokens or None).

    train_part: "all"; "fusion" (only the fusion layers train: the ViT and MiniLM are frozen, no dropout);
    "vision" (vision pre-training: only the ViT, projector and image embeddings train, on the vision head
    alone; MiniLM is not run and the question logits are empty)."""

    def __init__(
        self, instructor: MiniVLMInstructor, heads: GroundingHeads, read_instruction_only: bool = True, train_part: str = "all"
    ):
        super().__init__()
        self.instructor = instructor
        self.heads = heads
        self.read_instruction_only = read_instruction_only
        self.train_part = train_part
        if train_part == "fusion":
            instructor.requires_grad_(False)
            instructor.fusion.requires_grad_(True)
        elif train_part == "vision":
            if heads.vision is None:
                raise ValueError("train_part=vision needs the heads' vision head")
            self.requires_grad_(False)
            for module in (instructor.vision, instructor.projector, heads.vision, heads.vision_norm):
                module.requires_grad_(True)
            instructor.image_type.requires_grad_(True)
            if instructor.image_positions is not None:
                instructor.image_positions.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.train_part != "all":  # the frozen parts keep eval mode (no dropout)
            self.instructor.eval()
            trained = self.instructor.fusion if self.train_part == "fusion" else self.instructor.vision
            trained.train(mode)
        return self

    def forward(self, instructions, frames, references):
        vision_only = self.train_part == "vision"  # references are not read then: not encoded either
        frame_tokens, ref_tokens = self.instructor.encode_images(len(instructions), frames, None if vision_only else references)
        vision = None
        if self.heads.vision is not None:
            vision = self.heads.vision(self.heads.vision_norm(frame_tokens))
        if vision_only:
            return [], None, vision
        out = self.instructor.read(instructions, frame_tokens, ref_tokens)
        read = instruction_token_mask(self.instructor, out.mask, references) if self.read_instruction_only else None
        logits, dense = self.heads(out.tokens, out.mask, read)
        return logits, dense, vision


def grounding_loss(
    logits: list[torch.Tensor],
    dense: torch.Tensor | None,
    labels: torch.Tensor,
    patches: torch.Tensor | None,
    names: tuple[str, ...],
    dense_weight: float = 1.0,
    vision: torch.Tensor | None = None,
    vision_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over heads of cross-entropy (ignored labels skipped) + dense_weight * the per-patch loss
    (color CE + shape CE + referred BCE, `patch_labels`) + vision_weight * `vision_loss`; stats hold the
    loss parts and every head's accuracy on the batch (NaN when no label of the batch applies)."""
    total = logits[0].new_zeros((), dtype=torch.float32)
    stats: dict[str, float] = {}
    for i, (name, logit) in enumerate(zip(names, logits)):
        target = labels[:, i]
        valid = target != IGNORE
        count = int(valid.sum())
        if count == 0:
            stats[f"acc/{name}"] = float("nan")
            continue
        ce = F.cross_entropy(logit.float(), target, ignore_index=IGNORE, reduction="sum") / count
        total = total + ce
        with torch.no_grad():
            stats[f"acc/{name}"] = float((logit.argmax(-1)[valid] == target[valid]).float().mean())
    ce_mean = total / len(names)
    loss = ce_mean
    stats["ce"] = float(ce_mean.detach())
    if dense is not None and patches is not None and dense_weight > 0:
        dense_loss, dense_stats = patch_loss(dense, patches)
        loss = loss + dense_weight * dense_loss
        stats.update(dense_stats)
    if vision is not None and patches is not None and vision_weight > 0:
        part, vision_stats = vision_loss(vision, patches)
        loss = loss + vision_weight * part
        stats.update(vision_stats)
    stats["loss"] = float(loss.detach())
    return loss, stats


def _patch_ce(
    logits: torch.Tensor, target: torch.Tensor, sprite: torch.Tensor, name: str, stats: dict[str, float]
) -> torch.Tensor:
    """Cross-entropy of per-patch logits [B,N,C] vs target [B,N] (IGNORE skipped); records `name`_ce and
    the accuracy on patches that show a sprite (`sprite` [B,N]) as acc/`name`."""
    valid = target != IGNORE
    if not valid.any():
        return logits.new_zeros((), dtype=torch.float32)
    ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)
    stats[f"{name}_ce"] = float(ce.detach())
    with torch.no_grad():
        if sprite.any():
            stats[f"acc/{name}"] = float((logits.argmax(-1) == target)[sprite].float().mean())
    return ce


def vision_loss(vision: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Vision logits [B,N,VISION_OUTPUTS] vs patches [B,N,PATCH_COLUMNS]: the sum of the color, shape, cell
    and size cross-entropies (cell and size only on patches that show a sprite); stats vision_*."""
    sprite = patches[..., 0] != len(COLOR_NAMES)
    stats: dict[str, float] = {}
    loss = sum(
        _patch_ce(logits, patches[..., column], sprite, f"vision_{name}", stats)
        for name, logits, column in vision_parts(vision.float())
    )
    return loss, stats


def patch_loss(dense: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """dense [B,N,PATCH_OUTPUTS] logits vs patches [B,N,PATCH_COLUMNS] (color, shape, referred, ...):
    color CE + shape CE + referred BCE; stats patch_*."""
    dense = dense.float()
    nc, ns = len(COLOR_NAMES) + 1, len(SHAPES) + 1
    sprite = patches[..., 0] != len(COLOR_NAMES)  # patches that show a sprite
    stats: dict[str, float] = {}
    loss = _patch_ce(dense[..., :nc], patches[..., 0], sprite, "patch_color", stats)
    loss = loss + _patch_ce(dense[..., nc : nc + ns], patches[..., 1], sprite, "patch_shape", stats)
    valid = patches[..., 2] != IGNORE
    if valid.any():
        referred = dense[..., nc + ns]
        target = patches[..., 2][valid].float()
        loss_ref = F.binary_cross_entropy_with_logits(referred[valid], target, pos_weight=referred.new_tensor(8.0))
        loss = loss + loss_ref
        stats["patch_referred_bce"] = float(loss_ref.detach())
        with torch.no_grad():
            positive = target > 0.5
            if positive.any():
                stats["acc/patch_referred"] = float(((referred[valid] > 0) == positive)[positive].float().mean())
    return loss, stats


class _InstructorState:
    """Checkpoint view of an instructor: its own (trainable) weights, never the frozen MiniLM."""

    def __init__(self, instructor: MiniVLMInstructor):
        self.instructor = instructor

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.instructor.own_state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True):
        own = self.instructor.own_state_dict()
        if strict and set(own) != set(state):
            missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise RuntimeError(f"instructor checkpoint mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return self.instructor.load_state_dict(state, strict=False)


def build_instructor(config: MiniVLMInstructorConfig) -> MiniVLMInstructor:
    """A fresh instructor whose MiniLM is float32 whatever the stored weights' precision."""
    instructor = MiniVLMInstructor(config)
    instructor.language_model.float()
    instructor.set_language_model_trainable(config.train_language_model)
    return instructor


def batch_inputs(batch: dict, device: torch.device) -> tuple[list[str], torch.Tensor, list[torch.Tensor | None]]:
    """(instructions, first frames [B,3,H,W] in [-1,1], references [3,h,w] or None) on `device`."""
    frames = to_unit(batch["frame"].to(device, non_blocking=True))
    refs = [None if r is None else to_unit(r.to(device, non_blocking=True)) for r in batch["reference"]]
    return batch["instruction"], frames, refs


# The run ---------------------------------------------------------------------------------------------------


class InstructorTrainingRun(TrainingRun):
    component = "instructor"
    unit = "samples"

    def accelerator_kwargs(self) -> list:
        from accelerate import DistributedDataParallelKwargs

        return [DistributedDataParallelKwargs(find_unused_parameters=True)]  # batches without a reference

    def build(self):
        cfg = self.config
        self.instructor = build_instructor(cfg.model)
        if cfg.init is not None:  # fusion layers the init lacks stay fresh (identity): its tokens are kept
            load_weights(self.instructor, cfg.init, fresh=("fusion",))
        self.spaces = grounding_label_spaces(cfg.max_clauses)
        self.heads = GroundingHeads(
            self.instructor.hidden_size,
            self.spaces,
            image_tokens=cfg.model.image_tokens if cfg.heads.dense_weight > 0 else 0,
            attention_heads=cfg.heads.attention_heads,
            mlp_ratio=cfg.heads.mlp_ratio,
            vision=cfg.heads.vision_weight > 0 or cfg.train_part == "vision",
        )
        self.model = GroundingModel(self.instructor, self.heads, cfg.heads.read_instruction_only, cfg.train_part).to(self.device)
        self.source = PairSource(cfg.data)
        return {"instructor": self.instructor, "heads": self.heads}

    def checkpoint_modules(self) -> dict:
        return {"instructor": _InstructorState(self.instructor), "heads": self.heads}

    def param_groups(self) -> list[dict]:
        lm = [p for p in self.instructor.language_model.parameters() if p.requires_grad]
        lm_ids = {id(p) for p in lm}
        rest = [p for m in (self.instructor, self.heads) for p in m.parameters() if p.requires_grad and id(p) not in lm_ids]
        decay = [p for p in rest if p.ndim >= 2]
        no_decay = [p for p in rest if p.ndim < 2]
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        if lm:
            groups.append({"params": lm, "lr": self.optim.language_model_lr})
        return [g for g in groups if g["params"]]

    def _loader(self, source: PairSource, start: int, stop: int, batch_size: int, rank: int = 0, world: int = 1):
        workers = auto_workers(self.train.num_workers)
        return DataLoader(
            GroundingExamples(source, self.config.max_clauses, self.config.patch_grid),
            batch_sampler=StepBatchSampler(batch_size, start, stop, rank, world),
            num_workers=workers,
            collate_fn=collate_grounding,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,
            worker_init_fn=ignore_stop_signals,
        )

    def make_loader(self, start: int, stop: int):
        return self._loader(self.source, start, stop, self.train.batch_size, self.rank, self.world)

    def compute_loss(self, batch):
        instructions, frames, refs = batch_inputs(batch, self.device)
        logits, dense, vision = self.model(instructions, frames, refs)
        if self.config.train_part == "vision":
            loss, stats = vision_loss(vision, batch["patches"].to(self.device))
            stats["loss"] = float(loss.detach())
            return loss, stats
        return grounding_loss(
            logits,
            dense,
            batch["labels"].to(self.device),
            batch["patches"].to(self.device),
            self.heads.names,
            self.config.heads.dense_weight,
            vision,
            self.config.heads.vision_weight,
        )

    def finish(self) -> dict:
        cfg = self.config
        self.instructor.eval()
        # 1. Held-out accuracy of every head.
        held_out = PairSource(cfg.data, seed=cfg.eval.seed, generate=True)
        steps = max(1, -(-cfg.eval.num_examples // cfg.eval.batch_size))
        loader = self._loader(held_out, 0, steps, cfg.eval.batch_size)
        heads = evaluate_heads(self.model, loader, self.device, self.heads.names, cfg.eval.num_examples)
        # 2. Export the instructor (frozen in the editor), then probe it (not after vision pre-training:
        # MiniLM has not seen the new image tokens yet).
        self.instructor.save_pretrained(self.run_dir / "instructor")
        summary = {
            "component": "instructor",
            "steps": self.steps_done,
            "init": cfg.init,
            "train_part": cfg.train_part,
            "held_out_seed": cfg.eval.seed,
            "heads": heads,
            "num_parameters": self.instructor.num_parameters(),
            "num_trainable": sum(p.numel() for p in self.instructor.parameters() if p.requires_grad),
        }
        if cfg.probe.enabled and cfg.train_part != "vision":
            from .probe import probe_report

            summary["probe"] = probe_report(
                self.instructor,
                data=cfg.data,
                num_train=cfg.probe.num_train,
                num_test=cfg.probe.num_test,
                seed=cfg.probe.seed,
                batch_size=cfg.probe.batch_size,
                l2=cfg.probe.l2,
                max_iter=cfg.probe.max_iter,
                baseline=cfg.probe.baseline,
                language_model_path=cfg.model.language_model_path,
                device=self.device,
                workers=auto_workers(self.train.num_workers),
            )
        write_json(self.run_dir / "eval.json", summary)
        if cfg.train_part == "vision":
            acc = heads["vision_accuracy"]
            self.log(
                "held-out vision accuracy on sprite patches: "
                + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
                + f"; wrote {self.run_dir / 'instructor'} (continue with init=that folder) and eval.json"
            )
            return summary
        line = (
            f"held-out accuracy: target color {heads['accuracy'].get('c0.target_color', float('nan')):.3f}, "
            f"target cell {heads['accuracy'].get('c0.target_cell', float('nan')):.3f}, "
            f"category {heads['accuracy'].get('c0.category', float('nan')):.3f}"
        )
        if "probe" in summary:
            p = summary["probe"]
            line += f"; probe color {p['instructor']['color']:.3f} / cell {p['instructor']['cell']:.3f}"
            if "text_only" in p:
                line += f" (text-only {p['text_only']['color']:.3f} / {p['text_only']['cell']:.3f})"
        self.log(line + f"; wrote {self.run_dir / 'instructor'} and eval.json")
        return summary


@torch.no_grad()
def evaluate_heads(model: GroundingModel, loader, device: torch.device, names: tuple[str, ...], limit: int) -> dict:
    """Held-out accuracy of every head (over the examples where its question applies), of the dense head's
    patch color and of the vision head (color, shape, cell, size; over patches that show a sprite)."""
    was_training = model.training
    model.eval()
    correct = {n: 0 for n in names}
    counts = {n: 0 for n in names}
    dense_correct, dense_count, seen = 0, 0, 0
    vision_correct, vision_count = {name: 0 for name, _, _ in VISION_PARTS}, 0
    nc = len(COLOR_NAMES) + 1
    for batch in loader:
        take = min(len(batch["instruction"]), limit - seen)
        if take <= 0:
            break
        batch = {k: v[:take] for k, v in batch.items()}
        instructions, frames, refs = batch_inputs(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, dense, vision = model(instructions, frames, refs)
        labels = batch["labels"].to(device)
        for i, logit in enumerate(logits):
            valid = labels[:, i] != IGNORE
            counts[names[i]] += int(valid.sum())
            correct[names[i]] += int((logit.argmax(-1)[valid] == labels[valid, i]).sum())
        patches = batch["patches"].to(device)
        sprite = patches[..., 0] != len(COLOR_NAMES)
        if dense is not None:
            dense_correct += int((dense[..., :nc].argmax(-1) == patches[..., 0])[sprite].sum())
            dense_count += int(sprite.sum())
        if vision is not None:
            for name, logits_part, column in vision_parts(vision):
                vision_correct[name] += int((logits_part.argmax(-1) == patches[..., column])[sprite].sum())
            vision_count += int(sprite.sum())
        seen += take
    model.train(was_training)
    accuracy = {n: correct[n] / counts[n] for n in names if counts[n]}
    out = {"accuracy": accuracy, "counts": {n: counts[n] for n in names if counts[n]}, "num_examples": seen}
    if dense_count:
        out["patch_color_accuracy"] = dense_correct / dense_count  # over patches that show a sprite
    if vision_count:
        out["vision_accuracy"] = {name: c / vision_count for name, c in vision_correct.items()}
    return out
