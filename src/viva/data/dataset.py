"""PyTorch datasets over edit-pair shards written by `viva.data.shards.generate_dataset`.

- `EditPairDataset(root)`: map-style. Sample i is found from the manifest (which shard holds it) and read
  from the tar by member offset; a shard's member offsets are read from its headers on first use and
  cached. Nothing else is held in memory.
- `EditPairIterable(root)`: streaming. Shards are split across DataLoader workers and distributed ranks
  (torch.distributed when initialised, else the RANK / WORLD_SIZE environment variables), read
  sequentially, and shuffled per epoch (shard order, then a shuffle buffer) deterministically from
  (seed, epoch).

Items are dicts: "source" / "target" uint8 tensors [T,H,W,3], "mask" uint8 [T,H,W], "reference" uint8
[h,w,3] or None, "instruction", "category", "program" (list of clause dicts), "key", "held_out". Batch them
with `collate_pairs` (the default collate cannot stack None references).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..errors import VivaUserError
from ..world.program import program_to_list
from .format import ShardReader, decode_sample, encode_sample
from .pair import ALL_CATEGORIES, EditPair

__all__ = [
    "EditPairDataset",
    "EditPairIterable",
    "ShardReader",
    "collate_pairs",
    "decode_sample",
    "encode_sample",
    "pair_to_item",
]


def pair_to_item(pair: EditPair) -> dict:
    """An EditPair -> the dict a dataset yields (tensors share memory with the arrays)."""
    return {
        "source": torch.from_numpy(np.ascontiguousarray(pair.source)),
        "target": torch.from_numpy(np.ascontiguousarray(pair.target)),
        "mask": torch.from_numpy(np.ascontiguousarray(pair.mask)),
        "reference": None if pair.reference is None else torch.from_numpy(np.ascontiguousarray(pair.reference)),
        "instruction": pair.instruction,
        "category": pair.category,
        "program": program_to_list(pair.program),
        "key": pair.key,
        "held_out": pair.held_out,
    }


def collate_pairs(items: Sequence[dict]) -> dict:
    """Batch items: tensors of equal shape are stacked (source, target, mask); references stay a list
    (None where a pair has none), as do strings and programs."""
    batch: dict = {}
    for name in items[0]:
        values = [item[name] for item in items]
        if name != "reference" and all(isinstance(v, torch.Tensor) for v in values):
            shapes = {tuple(v.shape) for v in values}
            batch[name] = torch.stack(values) if len(shapes) == 1 else values
        else:
            batch[name] = values
    return batch


def _check_filter(categories: Iterable[str] | str | None) -> frozenset[str] | None:
    if categories is None:
        return None
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    names = frozenset(categories)
    unknown = sorted(names - set(ALL_CATEGORIES))
    if unknown or not names:
        raise VivaUserError(f"unknown category filter {unknown or '(empty)'}; choose from {', '.join(ALL_CATEGORIES)}")
    return names


class EditPairDataset(Dataset):
    """Map-style dataset over every sample of a dataset folder (optionally only some categories).

    `verify=True` checks every shard's sha256 first. `dataset.pair(i)` returns the EditPair itself."""

    def __init__(
        self, root: str | os.PathLike, categories: Iterable[str] | str | None = None, verify: bool = False
    ):
        self.reader = ShardReader(root, verify=verify)
        self.root = self.reader.root
        self.manifest = self.reader.manifest
        self.categories = _check_filter(categories)
        self._selected: list[tuple[int, str]] | None = None
        if self.categories is not None:
            self._selected = [
                (shard, key)
                for shard in range(len(self.reader.shards))
                if self.reader.shard_has(shard, self.categories)
                for key in self.reader.keys(shard)
                if self.reader.category(shard, key) in self.categories
            ]

    def __len__(self) -> int:
        return len(self.reader) if self._selected is None else len(self._selected)

    def locate(self, index: int) -> tuple[int, str]:
        """(shard, key) of item `index` (negative counts from the end); IndexError when out of range."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} pairs")
        index %= n
        if self._selected is not None:
            return self._selected[index]
        return self.reader.locate(index)

    def pair(self, index: int) -> EditPair:
        return self.reader.pair(*self.locate(index))

    def __getitem__(self, index: int) -> dict:
        return pair_to_item(self.pair(index))


def distributed_info() -> tuple[int, int]:
    """(rank, world size): from torch.distributed if initialised, else RANK / WORLD_SIZE (default 0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise VivaUserError("RANK and WORLD_SIZE must be whole numbers") from None
    if world < 1 or not 0 <= rank < world:
        raise VivaUserError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


class EditPairIterable(IterableDataset):
    """Streaming dataset: each (rank, DataLoader worker) reads its own shards, in an order reshuffled every
    epoch (call `set_epoch`), through a shuffle buffer of `buffer_size` samples.

    With at least as many shards as consumers (ranks x workers), shards are dealt round-robin; with fewer,
    samples are dealt round-robin instead, so no consumer is idle and every sample is read exactly once
    per epoch. Per-consumer counts may differ by up to one shard; for DDP, make shards plentiful or cap
    steps per epoch. `rank` / `world_size` override the detected values; `verify=True` checks every shard's
    sha256 first."""

    def __init__(
        self,
        root: str | os.PathLike,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = 256,
        categories: Iterable[str] | str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        verify: bool = False,
    ):
        super().__init__()
        self.reader = ShardReader(root, verify=verify)
        self.root = self.reader.root
        self.manifest = self.reader.manifest
        self.shuffle = shuffle
        self.seed = int(seed)
        self.buffer_size = max(1, int(buffer_size))
        self.categories = _check_filter(categories)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _consumer(self) -> tuple[int, int]:
        """(this consumer's id, number of consumers) over ranks x DataLoader workers."""
        rank, world = distributed_info()
        rank = rank if self.rank is None else self.rank
        world = world if self.world_size is None else self.world_size
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        return rank * workers + worker, world * workers

    def _shard_order(self) -> list[int]:
        shards = [s for s in range(len(self.reader.shards)) if self.reader.shard_has(s, self.categories)]
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(shards)  # same order on every consumer
        return shards

    def _assigned(self) -> Iterator[tuple[int, str]]:
        """(shard, key) of this consumer's samples, in reading order."""
        consumer, consumers = self._consumer()
        shards = self._shard_order()
        if len(shards) >= consumers:
            for shard in shards[consumer::consumers]:
                for key in self.reader.keys(shard):
                    yield shard, key
        else:
            position = 0
            for shard in shards:
                for key in self.reader.keys(shard):
                    if position % consumers == consumer:
                        yield shard, key
                    position += 1

    def _samples(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        """(key, encoded members) of this consumer's samples that pass the category filter."""
        for shard, key in self._assigned():
            if self.categories is not None and self.reader.category(shard, key) not in self.categories:
                continue
            yield key, self.reader.read(shard, key)

    def __iter__(self) -> Iterator[dict]:
        # The shuffle buffer holds encoded samples (PNG bytes, a few times smaller than decoded arrays).
        samples = self._samples()
        if not self.shuffle:
            for key, files in samples:
                yield pair_to_item(decode_sample(files, key=key))
            return
        consumer, _ = self._consumer()
        rng = np.random.default_rng([self.seed, self.epoch, consumer, 1])
        buffer: list[tuple[str, dict[str, bytes]]] = []
        for sample in samples:
            if len(buffer) < self.buffer_size:
                buffer.append(sample)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], sample = sample, buffer[j]
            yield pair_to_item(decode_sample(sample[1], key=sample[0]))
        order = rng.permutation(len(buffer))
        for j in order:
            key, files = buffer[j]
            yield pair_to_item(decode_sample(files, key=key))
