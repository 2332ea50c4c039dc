"""Writing edit-pair datasets as webdataset shards, locally (a process pool) or on Ray.

`generate_dataset` cuts the index range [0, num) into shards of `shard_size` samples (independently of the
number of workers); each shard is generated as a whole by one worker, which returns its tar bytes, and the
parent writes it. Sample `index` is always `make_pair(seed, index, None, config)` and the archive bytes are
canonical (see `viva.data.format`), so the files are byte-identical for any number of workers, with or
without Ray.

Atomicity: everything is built in a hidden sibling folder `.NAME.tmp-PID-XXXX` next to `out_dir` (each shard
written under a temporary name, then renamed), and renamed to `out_dir` only once the manifest is written.
A failed or interrupted run removes its temporary folder and never leaves a partial dataset at `out_dir`;
with `overwrite=True` an existing dataset is replaced only after the new one is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
from collections import Counter
from collections.abc import Iterator, Sequence
from numbers import Integral
from pathlib import Path

from .. import __version__
from ..errors import VivaUserError
from . import GENERATOR_VERSION
from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    dump_json,
    encode_sample,
    sample_key,
    shard_name,
    write_tar,
)
from .pair import ALL_CATEGORIES

RAY_HINT = "install it with: pip install 'viva[ray]'"

# A shard task: (shard number, first index, stop index, seed, DataConfig as a dict).
ShardTask = tuple[int, int, int, int, dict]
# A shard result: (shard number, tar bytes, statistics).
ShardResult = tuple[int, bytes, dict]


def build_shard(task: ShardTask) -> ShardResult:
    """Generate samples [start, stop) and return (shard, tar bytes, stats). Runs in worker processes."""
    from .generate import DataConfig, make_pair

    shard, start, stop, seed, config_dict = task
    config = DataConfig.from_dict(config_dict)
    samples = []
    categories: Counter[str] = Counter()
    images = held_out = 0
    for index in range(start, stop):
        try:
            pair = make_pair(seed, index, None, config)
        except (RuntimeError, ValueError) as e:  # e.g. a frame too small for the scene's sprites
            raise VivaUserError(f"cannot generate pair {index}: {e}; change the generation options") from None
        samples.append((sample_key(index), encode_sample(pair, index)))
        categories[pair.category] += 1
        images += int(pair.source.shape[0] == 1)
        held_out += int(bool(pair.held_out))
    stats = {
        "num_samples": stop - start,
        "categories": dict(sorted(categories.items())),
        "images": images,
        "videos": stop - start - images,
        "held_out": held_out,
    }
    return shard, write_tar(samples), stats


def _ignore_sigint() -> None:
    # Pool workers leave Ctrl-C to the parent, which terminates them and cleans up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# Checks -----------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise VivaUserError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise VivaUserError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_categories(categories: Sequence[str] | str | None) -> list[str] | None:
    """Validate category names (a list or a comma-separated string); None keeps the config's."""
    if categories is None:
        return None
    if isinstance(categories, str):
        categories = [c for c in (part.strip() for part in categories.split(",")) if c]
    names = list(dict.fromkeys(categories))
    if not names:
        raise VivaUserError(f"no categories given; choose from {', '.join(ALL_CATEGORIES)}")
    unknown = [c for c in names if c not in ALL_CATEGORIES]
    if unknown:
        raise VivaUserError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(ALL_CATEGORIES)}"
        )
    return names


def _is_dataset_or_empty(path: Path) -> bool:
    return path.is_dir() and ((path / MANIFEST_NAME).is_file() or not any(path.iterdir()))


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not overwrite:
        raise VivaUserError(f"{out_dir} already exists; pass --overwrite to replace it or choose another --out")
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise VivaUserError(f"{out_dir} exists and is not a folder; remove it or choose another --out")
    if not _is_dataset_or_empty(out_dir):
        raise VivaUserError(
            f"refusing to overwrite {out_dir}: it is not a viva dataset (no {MANIFEST_NAME}) and not empty; "
            "choose another --out"
        )


# Writing ----------------------------------------------------------------------------------------------


def _write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary name in the same folder, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise VivaUserError(f"cannot write {path}: {e.strerror or e}; check free space and permissions") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _tasks(num: int, shard_size: int, seed: int, config_dict: dict) -> list[ShardTask]:
    return [
        (shard, start, min(start + shard_size, num), seed, config_dict)
        for shard, start in enumerate(range(0, num, shard_size))
    ]


def _run_local(tasks: list[ShardTask], workers: int) -> Iterator[ShardResult]:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield build_shard(task)
        return
    context = multiprocessing.get_context("spawn")  # fork is unsafe with threads (torch, Ray) in the parent
    pool = context.Pool(min(workers, len(tasks)), initializer=_ignore_sigint)
    try:
        yield from pool.imap_unordered(build_shard, tasks, chunksize=1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise VivaUserError(f"--ray needs the ray package, which is not installed; {RAY_HINT}") from None
    return ray


@contextlib.contextmanager
def _ray_session(workers: int, address: str | None) -> Iterator[object]:
    """The ray module, initialised: a local instance of `workers` CPUs, or connected to `address`. Shut
    down on exit if started here (an already initialised Ray is used as it is and left running)."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    options = dict(log_to_driver=False, logging_level=logging.ERROR)
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise VivaUserError(f"cannot start or connect to {where}: {' '.join(str(e).split())}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _run_ray(ray, tasks: list[ShardTask], workers: int) -> Iterator[ShardResult]:
    """Shards as Ray tasks (at most 2 x workers in flight, so results do not pile up in the object store)."""
    remote = ray.remote(num_cpus=1)(build_shard)
    todo = list(tasks)
    pending: list = []
    try:
        while todo or pending:
            while todo and len(pending) < max(2 * workers, 2):
                pending.append(remote.remote(todo.pop(0)))
            done, pending = ray.wait(pending, num_returns=1)
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, VivaUserError):  # the task's own error, without Ray's traceback
                    raise VivaUserError(str(e.cause)) from None
                raise
            yield result
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="shard", desc="generating", disable=not enabled, dynamic_ncols=True)


def generate_dataset(
    out_dir: str | os.PathLike,
    num: int,
    seed: int,
    workers: int = 1,
    categories: Sequence[str] | str | None = None,
    config=None,
    shard_size: int = 256,
    ray: bool = False,
    ray_address: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Generate `num` edit pairs with `seed` into `out_dir` as tar shards plus `manifest.json`.

    Args:
        out_dir: the dataset folder to create (its parent is created if needed).
        num: number of pairs, indices 0..num-1.
        seed: the dataset seed; pair `index` is `make_pair(seed, index, None, config)`.
        workers: processes (or Ray CPUs) generating shards in parallel; never changes the output.
        categories: category names to sample from (overrides `config.categories`).
        config: a `viva.data.generate.DataConfig` (default: DataConfig()).
        shard_size: samples per shard (the last shard may be smaller).
        ray: generate shards as Ray tasks on a local Ray instance of `workers` CPUs.
        ray_address: connect to this existing Ray cluster instead (implies `ray`).
        overwrite: replace an existing dataset at `out_dir` (only once the new one is complete).
        progress: show a progress bar over shards.

    Returns the manifest (also written to `out_dir/manifest.json`).
    """
    from .generate import DataConfig

    num = _check_int("num", num, 1)
    seed = _check_int("seed", seed, 0)
    workers = _check_int("workers", workers, 1)
    shard_size = _check_int("shard_size", shard_size, 1)
    names = check_categories(categories)
    config = DataConfig() if config is None else config
    if names is not None:
        config = dataclasses.replace(config, categories=tuple(names))
    config_dict = config.to_dict()
    use_ray = bool(ray or ray_address)
    if use_ray:
        _import_ray()  # fail before any work when the extra is missing

    out_dir = Path(out_dir).expanduser().absolute()
    _check_out_dir(out_dir, overwrite)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp_dir.mkdir()
    except OSError as e:
        raise VivaUserError(f"cannot create {out_dir}: {e.strerror or e}; choose a writable --out") from None

    try:
        tasks = _tasks(num, shard_size, seed, config_dict)
        shards: dict[int, dict] = {}
        with contextlib.ExitStack() as stack:
            if use_ray:
                results = _run_ray(stack.enter_context(_ray_session(workers, ray_address)), tasks, workers)
            else:
                results = _run_local(tasks, workers)
            stack.callback(results.close)  # stop workers / cancel tasks before Ray shuts down
            bar = stack.enter_context(_progress(len(tasks), progress))
            for shard, data, stats in results:
                name = shard_name(shard)
                _write_file(tmp_dir / name, data)
                shards[shard] = {
                    "name": name,
                    "first_index": tasks[shard][1],
                    "bytes": len(data),
                    "sha256": _sha256(data),
                    **stats,
                }
                bar.update(1)
        manifest = _manifest(seed, num, shard_size, config_dict, [shards[i] for i in range(len(tasks))])
        _write_file(tmp_dir / MANIFEST_NAME, dump_json(manifest) + b"\n")
        try:
            _move_into_place(tmp_dir, out_dir, overwrite)
        except OSError as e:
            raise VivaUserError(f"cannot move the new dataset into {out_dir}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # gone already after a successful rename
    return manifest


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _manifest(seed: int, num: int, shard_size: int, config_dict: dict, shards: list[dict]) -> dict:
    counts: Counter[str] = Counter()
    for shard in shards:
        counts.update(shard["categories"])
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "generator_version": GENERATOR_VERSION,
        "viva_version": __version__,
        "seed": seed,
        "num": num,
        "shard_size": shard_size,
        "config": config_dict,
        "categories": list(config_dict.get("categories") or []),
        "counts": dict(sorted(counts.items())),
        "images": sum(s["images"] for s in shards),
        "videos": sum(s["videos"] for s in shards),
        "held_out": sum(s["held_out"] for s in shards),
        "shards": shards,
        "note": (
            f"Edit pairs made by viva {__version__} (generator v{GENERATOR_VERSION}); sample KEY is "
            f"make_pair(seed, int(KEY), None, config). The files depend only on seed, num, shard_size and config."
        ),
    }


def _move_into_place(tmp_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished `tmp_dir` to `out_dir`, replacing an old dataset there only now."""
    _fsync_dir(tmp_dir)
    old = None
    if out_dir.exists():
        _check_out_dir(out_dir, overwrite)  # re-check: something may have appeared meanwhile
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(out_dir, old)
    try:
        os.replace(tmp_dir, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    _fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

