"""World data for the trainers, made on the fly from (seed, index) or read from a shard folder.

Every sample is a pure function of its global index, so a training step's batch is a pure function of
(seed, step): `StepBatchSampler` hands step s the indices `[(s * world + rank) * B, ... + B)`. A DataLoader
with any number of workers then yields the same batches in the same order, and a run resumed at step s
draws exactly the batches an uninterrupted run would have drawn.

- `PairSource(config)`: index -> `EditPair`, from `make_pair(seed, index)` or from the shards of
  `config.root` (index modulo the dataset's size). Picklable, so DataLoader workers build their own.
- `VAEFrames`: index -> uint8 frames [F,H,W,3] of one pair (source and target frames, and its reference
  image when it has one): what the frame-wise MiniVAE trains on.
- `GroundingExamples`: index -> the instructor's inputs (instruction, source's first frame, reference)
  and its grounding labels (`grounding_labels`, per-patch `patch_labels`), batched by `collate_grounding`.

Only numpy/scipy/torch are imported here (no PyAV, no diffusers): these run on training machines that
have neither.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..data.generate import DataConfig, make_pair
from ..data.pair import HYBRID, PRIMITIVE_CATEGORIES, EditPair
from ..errors import VivaUserError
from ..world.program import REGIONS, region_of
from ..world.render import shape_sdf
from ..world.scene import BACKGROUND_COLORS, BACKGROUND_KINDS, COLORS, GLOBAL_STATES, PATTERNS, SHAPES, SIZES, size_name

__all__ = [
    "WorldDataConfig",
    "PairSource",
    "StepBatchSampler",
    "VAEFrames",
    "pair_frames",
    "GroundingExamples",
    "grounding_label_spaces",
    "grounding_labels",
    "patch_labels",
    "PATCH_COLUMNS",
    "collate_grounding",
    "to_unit",
    "auto_workers",
]


@dataclass
class WorldDataConfig:
    """Where training pairs come from.

    root: a dataset folder written by `viva data generate` (None: pairs are generated on the fly from
    `seed`, with the DataConfig fields below; with a root, the dataset's own generation settings apply).
    The other fields are those of `viva.data.generate.DataConfig`.
    """

    root: str | None = None
    seed: int = 0
    height: int = 64
    width: int = 64
    num_frames: int = 8
    image_fraction: float = 0.4
    categories: tuple[str, ...] = PRIMITIVE_CATEGORIES
    hybrid_fraction: float = 0.0
    split: str = "train"
    min_sprites: int = 2
    max_sprites: int = 4

    def __post_init__(self) -> None:
        coerce_numbers(self)
        self.categories = tuple(self.categories)
        if self.seed < 0:
            raise ValueError(f"data.seed must be non-negative, got {self.seed}")
        self.data_config()  # validate now: a bad value fails before any training starts

    def data_config(self) -> DataConfig:
        return DataConfig(
            height=self.height,
            width=self.width,
            num_frames=self.num_frames,
            image_fraction=self.image_fraction,
            categories=self.categories,
            hybrid_fraction=self.hybrid_fraction,
            split=self.split,
            min_sprites=self.min_sprites,
            max_sprites=self.max_sprites,
        )

    @property
    def has_hybrids(self) -> bool:
        return self.hybrid_fraction > 0.0 or HYBRID in self.categories


class PairSource:
    """index -> EditPair: generated from (seed, index) or read from the shard folder `config.root`.

    `seed` overrides the config's seed (held-out evaluation uses another seed). Held-out evaluation always
    generates on the fly, with the shard folder's own generation settings when the config has a root."""

    def __init__(self, config: WorldDataConfig, seed: int | None = None, generate: bool | None = None):
        self.root = config.root
        self.seed = config.seed if seed is None else int(seed)
        self.generate = self.root is None if generate is None else generate
        self.config = config.data_config()
        self._dataset = None
        if self.root is not None:
            dataset = self._open()
            if len(dataset) == 0:
                raise VivaUserError(f"dataset {self.root} holds no pairs; generate some with `viva data generate`")
            stored = dataset.manifest.get("config")
            if stored:
                self.config = DataConfig.from_dict(stored)
            if self.generate:
                self._dataset = None  # not needed; workers never open the shards
        if self.generate and self.seed < 0:
            raise VivaUserError(f"seed must be non-negative, got {self.seed}")

    def _open(self):
        if self._dataset is None:
            from ..data.dataset import EditPairDataset

            self._dataset = EditPairDataset(self.root)
        return self._dataset

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_dataset"] = None  # each worker opens its own readers
        return state

    def __call__(self, index: int) -> EditPair:
        if self.generate:
            return make_pair(self.seed, int(index), None, self.config)
        dataset = self._open()
        return dataset.pair(int(index) % len(dataset))


class StepBatchSampler(Sampler):
    """Batches of global sample indices for steps [start, stop): step s, rank r of `world` gets
    `range((s * world + r) * batch_size, ... + batch_size)`. A pure function of the step."""

    def __init__(self, batch_size: int, start: int, stop: int, rank: int = 0, world: int = 1, offset: int = 0):
        self.batch_size = int(batch_size)
        self.start, self.stop = int(start), int(stop)
        self.rank, self.world = int(rank), int(world)
        self.offset = int(offset)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            base = self.offset + (step * self.world + self.rank) * self.batch_size
            yield list(range(base, base + self.batch_size))


def coerce_numbers(config) -> None:
    """Turn numeric strings in a dataclass's int / float fields into numbers, in place: YAML 1.1 reads
    `1e-3` (no dot) as a string, so `optim.lr=1e-3` on the command line would otherwise fail."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints.get(f.name)
        if isinstance(value, str) and hint in (int, float):
            try:
                setattr(config, f.name, hint(float(value)) if hint is int and float(value).is_integer() else hint(value))
            except ValueError:
                raise ValueError(f"{f.name} must be a number, got {value!r}") from None


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: workers ignore SIGTERM / SIGINT. A stop sent to the whole process
    group (`timeout`, a job scheduler, Ctrl-C) must reach the main process only, which finishes its step,
    writes a checkpoint and then shuts the workers down; a worker killed first would crash the run."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def auto_workers(requested: int) -> int:
    """DataLoader workers: `requested` when >= 0; -1 picks min(14, cores - 2) (0 on a 2-core machine)."""
    if requested >= 0:
        return int(requested)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(14, cores - 2))


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1] (on the tensor's device)."""
    x = frames.float().movedim(-1, -3)
    return x * (2.0 / 255.0) - 1.0


# VAE frames ----------------------------------------------------------------------------------------------


def pair_frames(pair: EditPair, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` frames of a pair, uint8 [count,H,W,3]: ceil(count/2) from the source and the rest from the
    target (distinct frames where the clip has enough), the last slot replaced by the reference image when
    the pair has one of the clips' size."""
    n_src = (count + 1) // 2
    n_tgt = count - n_src
    out = []
    for clip, n in ((pair.source, n_src), (pair.target, n_tgt)):
        if n:
            idx = rng.choice(clip.shape[0], size=n, replace=clip.shape[0] < n)
            out.append(clip[np.sort(idx)])
    frames = np.concatenate(out, axis=0)
    ref = pair.reference
    if ref is not None and count >= 2 and ref.shape == frames.shape[1:]:
        frames[-1] = ref
    return np.ascontiguousarray(frames)


class VAEFrames(Dataset):
    """index -> uint8 tensor [frames_per_pair,H,W,3] of pair `index` (see `pair_frames`)."""

    def __init__(self, source: PairSource, frames_per_pair: int = 4):
        if frames_per_pair < 1:
            raise VivaUserError(f"data.frames_per_pair must be at least 1, got {frames_per_pair}")
        self.source = source
        self.frames_per_pair = int(frames_per_pair)

    def __len__(self) -> int:  # an endless stream; the sampler decides what is read
        return 2**62

    def __getitem__(self, index: int) -> torch.Tensor:
        pair = self.source(index)
        rng = np.random.default_rng([self.source.seed, int(index), 0x5AE])
        return torch.from_numpy(pair_frames(pair, self.frames_per_pair, rng))


# Grounding labels -------------------------------------------------------------------------------------------

IGNORE = -100
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
REGION_NAMES: tuple[str, ...] = tuple(REGIONS)  # row-major 3x3 cells: "top left" = 0 ... "bottom right" = 8
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUND_COLORS)
CATEGORY_CLASSES: tuple[str, ...] = PRIMITIVE_CATEGORIES + ("none",)
PATCH_COVER = 0.25  # a patch belongs to a sprite covering at least this fraction of it
PATCH_COLUMNS = 5  # patch_labels: color, shape, referred, cell of the sprite's centre, size class


def clause_label_spaces() -> dict[str, tuple[str, ...]]:
    """The questions asked about every clause of an instruction, and their answers."""
    return {
        "category": CATEGORY_CLASSES,  # which primitive edit ("none": no such clause)
        "target_color": COLOR_NAMES,  # the referred (target) sprite, as it is in the first frame
        "target_shape": SHAPES,
        "target_cell": REGION_NAMES,  # 3x3 cell of its centre in the first frame
        "target_size": SIZE_NAMES,
        "new_color": COLOR_NAMES,  # add / replace: the new sprite's; color: the new color
        "new_shape": SHAPES,
        "region": REGION_NAMES + ("anywhere",),  # add: the named region
        "resize": ("bigger", "smaller"),
        "state": GLOBAL_STATES,  # weather / style: the state asked for ("none": clear)
        "bg_kind": BACKGROUND_KINDS,
        "bg_color": BACKGROUND_NAMES,
    }


def grounding_label_spaces(max_clauses: int = 1) -> dict[str, tuple[str, ...]]:
    """Every classification head of instructor pre-training: `c{k}.{question}` for clauses k <
    max_clauses, then the reference image's questions."""
    spaces: dict[str, tuple[str, ...]] = {}
    for k in range(max_clauses):
        for name, classes in clause_label_spaces().items():
            spaces[f"c{k}.{name}"] = classes
    spaces["ref.present"] = ("no", "yes")
    spaces["ref.color"] = COLOR_NAMES
    spaces["ref.shape"] = SHAPES
    spaces["ref.pattern"] = PATTERNS
    return spaces


def cell_index(x: float, y: float) -> int:
    """Row-major 3x3 cell (0..8) of a point in [0,1]^2."""
    return REGION_NAMES.index(region_of(x, y))


def grounding_labels(pair: EditPair, max_clauses: int = 1) -> dict[str, int]:
    """Answers (class indices, IGNORE where a question does not apply) of `grounding_label_spaces` for a
    pair: what each clause does, to which sprite (its color, shape, first-frame cell and size), with what
    (new color/shape, region, direction, state, background) and what the reference image shows."""
    spaces = grounding_label_spaces(max_clauses)
    labels = {name: IGNORE for name in spaces}
    clauses = pair.meta.get("clauses") or [{"category": pair.category}]
    for k in range(max_clauses):
        p = f"c{k}."
        if k >= len(pair.program):
            labels[p + "category"] = CATEGORY_CLASSES.index("none")
            continue
        clause = pair.program[k]
        category = clauses[k].get("category", pair.category) if k < len(clauses) else pair.category
        labels[p + "category"] = CATEGORY_CLASSES.index(category)
        if clause.target is not None:
            sprite = pair.source_scene.sprite(clause.target)
            labels[p + "target_color"] = COLOR_NAMES.index(sprite.color)
            labels[p + "target_shape"] = SHAPES.index(sprite.shape)
            labels[p + "target_cell"] = cell_index(*sprite.position(0.0))
            labels[p + "target_size"] = SIZE_NAMES.index(size_name(sprite.radius))
        if clause.sprite is not None:
            labels[p + "new_color"] = COLOR_NAMES.index(clause.sprite.color)
            labels[p + "new_shape"] = SHAPES.index(clause.sprite.shape)
        if clause.op == "recolor":
            labels[p + "new_color"] = COLOR_NAMES.index(clause.color)
        if clause.op in ("add", "ref_add"):
            names = spaces[p + "region"]
            labels[p + "region"] = names.index(clause.region or "anywhere")
        if clause.op == "resize":
            labels[p + "resize"] = 0 if float(clause.scale) > 1.0 else 1
        if clause.op == "global":
            labels[p + "state"] = GLOBAL_STATES.index(clause.state)
        if clause.op == "background":
            labels[p + "bg_kind"] = BACKGROUND_KINDS.index(clause.background.kind)
            labels[p + "bg_color"] = BACKGROUND_NAMES.index(clause.background.color)
    shown = next((c.sprite for c in pair.program if c.op in ("ref_add", "ref_replace")), None)
    labels["ref.present"] = int(pair.reference is not None)
    if pair.reference is not None and shown is not None:
        labels["ref.color"] = COLOR_NAMES.index(shown.color)
        labels["ref.shape"] = SHAPES.index(shown.shape)
        labels["ref.pattern"] = PATTERNS.index(shown.pattern.kind)
    return labels


def patch_labels(pair: EditPair, grid: int = 8) -> np.ndarray:
    """int64 [grid*grid, PATCH_COLUMNS]: for each image patch of the source's first frame (row-major, the
    instructor's token grid), about the sprite that covers most of it (at least PATCH_COVER of 4x4 sample
    points, occlusion respected): its color (0..7, 8 = background) and shape (0..5, 6 = background),
    whether it is the one the first clause refers to (1/0; IGNORE when the clause has no target), the 3x3
    cell of its centre and its size class (IGNORE on background patches)."""
    height, width = pair.source.shape[1:3]
    scale = float(min(height, width))
    sub = (np.arange(4) + 0.5) / 4.0
    cells = np.arange(grid)
    xs = ((cells[:, None] + sub[None, :]) / grid).reshape(-1)  # [grid*4] point x (fractions)
    px = np.broadcast_to(xs[None, :], (grid * 4, grid * 4))
    py = np.broadcast_to(xs[:, None], (grid * 4, grid * 4))
    owner = np.full(px.shape, -1, dtype=np.int64)  # index into sprites of the top-most sprite at each point
    sprites = sorted(pair.source_scene.sprites, key=lambda sp: (sp.z, sp.id))
    for k, sprite in enumerate(sprites):
        cx, cy = sprite.position(0.0)
        u = (px - cx) * width / (sprite.radius * scale)
        v = (py - cy) * height / (sprite.radius * scale)
        owner[shape_sdf(sprite.shape, u, v) < 0.0] = k
    owner = owner.reshape(grid, 4, grid, 4).transpose(0, 2, 1, 3).reshape(grid * grid, 16)
    target = pair.program[0].target if pair.program else None
    out = np.empty((grid * grid, PATCH_COLUMNS), dtype=np.int64)
    out[:, 0] = len(COLOR_NAMES)
    out[:, 1] = len(SHAPES)
    out[:, 2] = 0 if target is not None else IGNORE
    out[:, 3:] = IGNORE
    for patch in range(grid * grid):
        counts = np.bincount(owner[patch] + 1, minlength=len(sprites) + 1)[1:]
        if counts.size and counts.max() >= PATCH_COVER * 16:
            sprite = sprites[int(counts.argmax())]
            out[patch, 0] = COLOR_NAMES.index(sprite.color)
            out[patch, 1] = SHAPES.index(sprite.shape)
            out[patch, 3] = cell_index(*sprite.position(0.0))
            out[patch, 4] = SIZE_NAMES.index(size_name(sprite.radius))
            if target is not None:
                out[patch, 2] = int(sprite.id == target)
    return out


class GroundingExamples(Dataset):
    """index -> {"instruction", "frame" uint8 [H,W,3] (the source's first frame), "reference" uint8
    [h,w,3] or None, "labels" int64 [heads], "patches" int64 [grid*grid, PATCH_COLUMNS] (`patch_labels`), "key"}."""

    def __init__(self, source: PairSource, max_clauses: int = 1, grid: int = 8):
        self.source = source
        self.max_clauses = int(max_clauses)
        self.grid = int(grid)
        self.names = tuple(grounding_label_spaces(self.max_clauses))

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> dict:
        return example_from_pair(self.source(index), self.max_clauses, self.names, self.grid)


def example_from_pair(pair: EditPair, max_clauses: int = 1, names: Sequence[str] | None = None, grid: int = 8) -> dict:
    labels = grounding_labels(pair, max_clauses)
    names = names or tuple(labels)
    return {
        "instruction": pair.instruction,
        "frame": torch.from_numpy(np.ascontiguousarray(pair.source[0])),
        "reference": None if pair.reference is None else torch.from_numpy(np.ascontiguousarray(pair.reference)),
        "labels": torch.tensor([labels[n] for n in names], dtype=torch.long),
        "patches": torch.from_numpy(patch_labels(pair, grid)),
        "key": f"{pair.meta.get('seed', '')}/{pair.meta.get('index', pair.key)}",
    }


def collate_grounding(items: Sequence[dict]) -> dict:
    """Stack frames, labels and dense targets; references and strings stay lists."""
    return {
        "instruction": [it["instruction"] for it in items],
        "frame": torch.stack([it["frame"] for it in items]),
        "reference": [it["reference"] for it in items],
        "labels": torch.stack([it["labels"] for it in items]),
        "patches": torch.stack([it["patches"] for it in items]),
        "key": [it["key"] for it in items],
    }

