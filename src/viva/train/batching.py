"""Homogeneous SFT batches: one kind per step, chosen from (seed, step), examples from (step, rank).

The editor appends the reference latent along time and images are 1-frame clips, so every batch must
agree in shape. A step's batch is one of four kinds:

    video       T = num_frames, no reference        image       T = 1, no reference
    video_ref   T = num_frames + reference image    image_ref   T = 1 + reference image

`choose_kind(seed, step, ...)` draws the kind from `step_generator(seed, step, 0, "kind")`: an image batch
with probability `image_prob` (PAPER.md section 2: 0.6), and a reference batch with the share reference
pairs have among the pairs of that frame count (so references are seen as often as the data has them).
Every rank of a multi-process run trains on the same kind at a step (equal step times); the examples
differ per rank.

Examples come from a `PairPool`:

- `GeneratedPairs`: made on the fly, `make_pair(data.seed, index, None, kind config)`, where the kind
  config asks for only 1-frame (or only video) pairs of only reference (or only non-reference)
  categories; step s, rank r of `world` gets indices `(s * world + r) * B + i` (modulo `max_pairs`
  when set), so no pair repeats unless asked to.
- `ShardPairs`: a dataset folder written by `viva data generate`, bucketed by kind (each sample's JSON
  record is read once at start); step s, rank r draws B pairs of its kind uniformly with replacement from
  `step_generator(seed, step, rank, "data")`.

Either way a batch is a pure function of (seed, step, rank): a resumed run draws the same batches, and a
DataLoader with any number of workers yields them in the same order. Only numpy / PIL / torch are
imported here (no PyAV, no diffusers).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from ..data.generate import DataConfig, make_pair
from ..data.ops import REFERENCE_CATEGORIES
from ..data.pair import HYBRID, EditPair
from ..errors import VivaUserError
from .runtime import step_generator

__all__ = [
    "BatchKind",
    "KINDS",
    "choose_kind",
    "PairPool",
    "GeneratedPairs",
    "ShardPairs",
    "SFTBatchSampler",
    "SFTExamples",
    "collate_sft",
    "example_from_pair",
    "pair_kind",
    "to_model_inputs",
]


@dataclass(frozen=True)
class BatchKind:
    """What all examples of a batch share: 1-frame (image) or not, with a reference image or not."""

    image: bool
    reference: bool

    @property
    def name(self) -> str:
        return ("image" if self.image else "video") + ("_ref" if self.reference else "")

    @property
    def code(self) -> int:
        return 2 * int(self.image) + int(self.reference)

    @classmethod
    def from_code(cls, code: int) -> "BatchKind":
        return cls(image=bool(code // 2), reference=bool(code % 2))


KINDS: tuple[BatchKind, ...] = tuple(BatchKind.from_code(c) for c in range(4))  # video, video_ref, image, image_ref


def choose_kind(seed: int, step: int, image_prob: float, reference_share: Sequence[float]) -> BatchKind:
    """The kind of step `step`'s batches (the same on every rank). reference_share[int(image)]: the share
    of reference pairs among video (0) / image (1) pairs."""
    u = torch.rand(2, generator=step_generator(seed, step, 0, "kind"), dtype=torch.float64).tolist()
    image = u[0] < image_prob
    return BatchKind(image=image, reference=u[1] < reference_share[int(image)])


class PairPool:
    """index -> EditPair of a given kind. Subclasses say which kinds they hold and how often references
    occur; they must be picklable (DataLoader workers get a copy)."""

    def reference_share(self, image: bool) -> float:
        raise NotImplementedError

    def size(self, kind: BatchKind) -> int | None:
        """How many distinct pairs of `kind` there are (None: endless); 0 when there are none."""
        raise NotImplementedError

    def pair(self, kind: BatchKind, index: int) -> EditPair:
        raise NotImplementedError

    def config(self) -> DataConfig:
        """The generation settings of the pairs (for held-out preview examples)."""
        raise NotImplementedError


class GeneratedPairs(PairPool):
    """Pairs made on the fly from (seed, index) with `config` (its image_fraction is ignored: the kind
    decides). max_pairs > 0 cycles through the first max_pairs indices of each kind (overfit / debug)."""

    def __init__(self, seed: int, config: DataConfig, max_pairs: int = 0):
        if HYBRID in config.categories or config.hybrid_fraction > 0:
            raise VivaUserError(
                "SFT trains on primitive edits (PAPER.md section 4): remove 'hybrid' from data.categories "
                "(hybrid instructions are for Edit-GRPO and the benchmark)"
            )
        self.seed = int(seed)
        self.base = config
        self.max_pairs = int(max_pairs)
        with_ref = tuple(c for c in config.categories if c in REFERENCE_CATEGORIES)
        without = tuple(c for c in config.categories if c not in REFERENCE_CATEGORIES)
        self._share = len(with_ref) / len(config.categories)
        self.configs: dict[BatchKind, DataConfig | None] = {}
        for kind in KINDS:
            categories = with_ref if kind.reference else without
            self.configs[kind] = (
                dataclasses.replace(config, categories=categories, image_fraction=1.0 if kind.image else 0.0)
                if categories
                else None
            )

    def reference_share(self, image: bool) -> float:
        return self._share

    def size(self, kind: BatchKind) -> int | None:
        if self.configs[kind] is None:
            return 0
        return self.max_pairs or None

    def pair(self, kind: BatchKind, index: int) -> EditPair:
        config = self.configs[kind]
        if config is None:
            raise ValueError(f"no {kind.name} pairs in categories {list(self.base.categories)}")
        if self.max_pairs:
            index %= self.max_pairs
        return make_pair(self.seed, int(index), None, config)

    def config(self) -> DataConfig:
        return self.base


def _scan_kinds(dataset, limit: int = 0) -> dict[BatchKind, list[int]]:
    """Dataset indices by kind, from each sample's JSON record (shapes) and tar members (reference)."""
    from ..data.format import JSON_SUFFIX, REFERENCE_SUFFIX

    reader = dataset.reader
    pools: dict[BatchKind, list[int]] = {kind: [] for kind in KINDS}
    total = len(dataset) if not limit else min(limit, len(dataset))
    index = 0
    for shard in range(len(reader.shards)):
        if index >= total:
            break
        members = reader.members(shard)
        with open(reader.path(shard), "rb") as f:
            for key in reader.keys(shard):
                if index >= total:
                    break
                offset, size = members[key][JSON_SUFFIX]
                f.seek(offset)
                try:
                    record = json.loads(f.read(size))
                    frames = int(record["shapes"]["source"][0])
                except (ValueError, KeyError, IndexError, TypeError):
                    raise VivaUserError(
                        f"sample {key} of {reader.path(shard)} has an unreadable record; the dataset is corrupt, "
                        "regenerate it"
                    ) from None
                kind = BatchKind(image=frames == 1, reference=REFERENCE_SUFFIX in members[key])
                pools[kind].append(index)
                index += 1
    return pools


class ShardPairs(PairPool):
    """Pairs of a dataset folder (`viva data generate`), bucketed by kind; max_pairs > 0 keeps only the
    first max_pairs samples."""

    def __init__(self, root: str | os.PathLike, max_pairs: int = 0):
        from ..data.dataset import EditPairDataset

        self.root = str(root)
        self._dataset = EditPairDataset(self.root)
        if len(self._dataset) == 0:
            raise VivaUserError(f"dataset {self.root} holds no pairs; generate some with `viva data generate`")
        stored = self._dataset.manifest.get("config") or {}
        try:
            self._config = DataConfig.from_dict(stored) if stored else DataConfig()
        except (TypeError, ValueError) as e:
            raise VivaUserError(f"dataset {self.root} has an unreadable config in its manifest ({e}); regenerate it") from None
        self.pools = _scan_kinds(self._dataset, max_pairs)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_dataset"] = None  # each worker opens its own readers
        return state

    def _open(self):
        if self._dataset is None:
            from ..data.dataset import EditPairDataset

            self._dataset = EditPairDataset(self.root)
        return self._dataset

    def reference_share(self, image: bool) -> float:
        with_ref = len(self.pools[BatchKind(image, True)])
        total = with_ref + len(self.pools[BatchKind(image, False)])
        return with_ref / total if total else 0.0

    def size(self, kind: BatchKind) -> int | None:
        return len(self.pools[kind])

    def pair(self, kind: BatchKind, index: int) -> EditPair:
        pool = self.pools[kind]
        return self._open().pair(pool[int(index) % len(pool)])

    def config(self) -> DataConfig:
        return self._config

    def counts(self) -> dict[str, int]:
        return {kind.name: len(pool) for kind, pool in self.pools.items()}


class SFTBatchSampler(Sampler):
    """Batches for steps [start, stop) of rank `rank` of `world`: lists of (step, kind code, pool index)."""

    def __init__(
        self,
        pool: PairPool,
        batch_size: int,
        start: int,
        stop: int,
        seed: int,
        image_prob: float,
        rank: int = 0,
        world: int = 1,
    ):
        self.pool = pool
        self.batch_size = int(batch_size)
        self.start, self.stop = int(start), int(stop)
        self.seed = int(seed)
        self.image_prob = float(image_prob)
        self.rank, self.world = int(rank), int(world)
        self.shares = (pool.reference_share(False), pool.reference_share(True))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def kind(self, step: int) -> BatchKind:
        return choose_kind(self.seed, step, self.image_prob, self.shares)

    def indices(self, step: int, kind: BatchKind) -> list[int]:
        size = self.pool.size(kind)
        if size is None:  # endless: consecutive fresh indices, disjoint across steps and ranks
            base = (step * self.world + self.rank) * self.batch_size
            return list(range(base, base + self.batch_size))
        if size == 0:
            raise RuntimeError(f"step {step} needs {kind.name} pairs but the data has none")
        g = step_generator(self.seed, step, self.rank, "data")
        return torch.randint(size, (self.batch_size,), generator=g).tolist()

    def __iter__(self):
        for step in range(self.start, self.stop):
            kind = self.kind(step)
            yield [(step, kind.code, index) for index in self.indices(step, kind)]


class SFTExamples(Dataset):
    """(step, kind code, index) -> {"step", "kind", "source" uint8 [T,H,W,3], "target", "mask" uint8
    [T,H,W], "reference" uint8 [h,w,3] or None, "instruction", "key"}."""

    def __init__(self, pool: PairPool):
        self.pool = pool

    def __len__(self) -> int:  # the sampler decides what is read
        return 2**62

    def __getitem__(self, item: tuple[int, int, int]) -> dict:
        step, code, index = item
        kind = BatchKind.from_code(code)
        pair = self.pool.pair(kind, index)
        if pair_kind(pair) != kind:
            raise RuntimeError(f"pair {pair.key} is not a {kind.name} pair")  # a bug, not a user error
        return example_from_pair(pair, step)


def pair_kind(pair: EditPair) -> BatchKind:
    return BatchKind(image=pair.source.shape[0] == 1, reference=pair.reference is not None)


def example_from_pair(pair: EditPair, step: int = 0) -> dict:
    """One example of `collate_sft`'s input (see SFTExamples)."""
    return {
        "step": int(step),
        "kind": pair_kind(pair).code,
        "source": torch.from_numpy(np.ascontiguousarray(pair.source)),
        "target": torch.from_numpy(np.ascontiguousarray(pair.target)),
        "mask": torch.from_numpy(np.ascontiguousarray(pair.mask)),
        "reference": None if pair.reference is None else torch.from_numpy(np.ascontiguousarray(pair.reference)),
        "instruction": pair.instruction,
        "key": f"{pair.meta.get('seed', '')}/{pair.meta.get('index', pair.key)}",
    }


def collate_sft(items: Sequence[dict]) -> dict:
    """Stack a homogeneous batch: uint8 source / target [B,T,H,W,3], mask [B,T,H,W], reference
    [B,h,w,3] or None; step and kind (ints), instructions and keys (lists)."""
    steps = {it["step"] for it in items}
    kinds = {it["kind"] for it in items}
    if len(steps) != 1 or len(kinds) != 1:
        raise ValueError("a batch must hold examples of one step and one kind")
    references = [it["reference"] for it in items]
    return {
        "step": steps.pop(),
        "kind": kinds.pop(),
        "source": torch.stack([it["source"] for it in items]),
        "target": torch.stack([it["target"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "reference": None if references[0] is None else torch.stack(references),
        "instruction": [it["instruction"] for it in items],
        "key": [it["key"] for it in items],
    }


def _to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1]."""
    return frames.float().movedim(-1, -3) * (2.0 / 255.0) - 1.0


def to_model_inputs(
    batch: dict, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A collated batch -> (source, target) float [B,3,T,H,W] in [-1,1], mask float [B,T,H,W] in {0,1},
    reference float [B,3,H,W] in [-1,1] (resized to the clip size when it differs) or None. The uint8
    tensors are moved first (4x less to copy), then converted on `device`."""
    device = torch.device(device)
    non_blocking = device.type == "cuda"
    source = _to_unit(batch["source"].to(device, non_blocking=non_blocking)).transpose(1, 2)
    target = _to_unit(batch["target"].to(device, non_blocking=non_blocking)).transpose(1, 2)
    mask = (batch["mask"].to(device, non_blocking=non_blocking) > 127).float()
    reference = batch.get("reference")
    if reference is not None:
        reference = _to_unit(reference.to(device, non_blocking=non_blocking))
        size = tuple(source.shape[-2:])
        if tuple(reference.shape[-2:]) != size:
            reference = F.interpolate(reference, size=size, mode="bilinear", antialias=True, align_corners=False)
    return source.contiguous(), target.contiguous(), mask, reference
