"""The on-disk format of edit-pair datasets: one place that defines it (writer and readers share it).

A dataset is a folder with `manifest.json` and shards `shard-000000.tar`, ... in the webdataset layout:
each shard is an uncompressed ustar archive whose members are grouped by sample key `f"{index:08d}"`:

    KEY.json      instruction, category, program (list of clause dicts), source_scene and target_scene
                  (Scene.to_dict), held_out, meta, key (EditPair.key), index, and `shapes` (array shapes)
    KEY.src.png   source clip, the T frames stacked vertically: RGB [T*H, W, 3]
    KEY.tgt.png   target clip, stacked the same way
    KEY.mask.png  edit mask, grayscale [T*H, W]
    KEY.ref.png   reference image [h, w, 3] (reference-based edits only)

Bytes are a pure function of the content: JSON with sorted keys, PNGs with a fixed compression level and
no metadata chunks, tar members in sorted order with mtime 0, uid/gid 0, empty owner names, mode 0o644.
`ShardReader` reads samples back by index without loading shards into memory. Nothing in this module
imports torch, so generator workers and the CLI stay light (`viva.data.dataset` adds the torch datasets).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import math
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import VivaUserError
from ..world.program import program_from_list, program_to_list
from ..world.scene import Scene
from .pair import EditPair

FORMAT_NAME = "viva-edit-pairs"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PNG_COMPRESS_LEVEL = 6

JSON_SUFFIX = "json"
SOURCE_SUFFIX = "src.png"
TARGET_SUFFIX = "tgt.png"
MASK_SUFFIX = "mask.png"
REFERENCE_SUFFIX = "ref.png"
SUFFIXES: tuple[str, ...] = (JSON_SUFFIX, SOURCE_SUFFIX, TARGET_SUFFIX, MASK_SUFFIX, REFERENCE_SUFFIX)
REQUIRED_SUFFIXES: tuple[str, ...] = (JSON_SUFFIX, SOURCE_SUFFIX, TARGET_SUFFIX, MASK_SUFFIX)


def sample_key(index: int) -> str:
    """The tar key of sample `index`: eight digits, so that name order is index order."""
    return f"{index:08d}"


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.tar"


# Arrays <-> PNG ------------------------------------------------------------------------------------


def encode_png(array: np.ndarray) -> bytes:
    """uint8 [H,W] (grayscale) or [H,W,3] (RGB) -> PNG bytes, deterministically (no metadata chunks)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected uint8 [H,W] or [H,W,3], got {array.dtype} {array.shape}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def decode_png(data: bytes, what: str = "image") -> np.ndarray:
    """PNG bytes -> uint8 [H,W] (grayscale) or [H,W,3] (RGB)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as e:
        raise VivaUserError(f"{what} is not a readable PNG ({e}); the dataset is corrupt, regenerate it") from None


def stack_frames(clip: np.ndarray) -> np.ndarray:
    """[T,H,W(,3)] -> [T*H,W(,3)]: the frames one above the other."""
    return clip.reshape((clip.shape[0] * clip.shape[1],) + clip.shape[2:])


def unstack_frames(image: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """[T*H,W(,3)] -> `shape` = [T,H,W(,3)], checking that the sizes agree."""
    if math.prod(shape) != image.size or image.shape[1:] != tuple(shape[2:]):
        raise VivaUserError(
            f"{what} is {image.shape}, which does not hold frames of shape {tuple(shape)}; "
            "the dataset is corrupt, regenerate it"
        )
    return image.reshape(shape)


# JSON -------------------------------------------------------------------------------------------------


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a sample's JSON")


def dump_json(obj) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default, allow_nan=False).encode()


# Samples ----------------------------------------------------------------------------------------------


def encode_sample(pair: EditPair, index: int | None = None) -> dict[str, bytes]:
    """An EditPair -> {suffix: bytes}, the members of one sample (without the "KEY." prefix)."""
    shapes = {
        "source": list(pair.source.shape),
        "target": list(pair.target.shape),
        "mask": list(pair.mask.shape),
    }
    if pair.reference is not None:
        shapes["reference"] = list(pair.reference.shape)
    record = {
        "key": pair.key,
        "index": index,
        "category": pair.category,
        "instruction": pair.instruction,
        "program": program_to_list(pair.program),
        "source_scene": pair.source_scene.to_dict(),
        "target_scene": pair.target_scene.to_dict(),
        "held_out": bool(pair.held_out),
        "meta": pair.meta,
        "shapes": shapes,
    }
    files = {
        JSON_SUFFIX: dump_json(record),
        SOURCE_SUFFIX: encode_png(stack_frames(pair.source)),
        TARGET_SUFFIX: encode_png(stack_frames(pair.target)),
        MASK_SUFFIX: encode_png(stack_frames(pair.mask)),
    }
    if pair.reference is not None:
        files[REFERENCE_SUFFIX] = encode_png(pair.reference)
    return files


def decode_record(data: bytes, what: str = "sample") -> dict:
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VivaUserError(f"{what} has unreadable JSON ({e}); the dataset is corrupt, regenerate it") from None
    if not isinstance(record, dict):
        raise VivaUserError(f"{what} JSON is not an object; the dataset is corrupt, regenerate it")
    return record


def decode_sample(files: dict[str, bytes], key: str | None = None) -> EditPair:
    """{suffix: bytes} of one sample (as written by `encode_sample`) -> EditPair.

    Keys may also be webdataset-style with a leading dot (".json") and may include "__key__"."""
    files = {k.lstrip("."): v for k, v in files.items()}
    key = key or files.get("__key__")
    what = f"sample {key}" if key else "sample"
    missing = [s for s in REQUIRED_SUFFIXES if s not in files]
    if missing:
        raise VivaUserError(f"{what} lacks {', '.join(missing)}; the dataset is corrupt, regenerate it")
    record = decode_record(files[JSON_SUFFIX], what)
    try:
        shapes = {name: tuple(int(n) for n in shape) for name, shape in record["shapes"].items()}
        source = unstack_frames(decode_png(files[SOURCE_SUFFIX], f"{what} source"), shapes["source"], f"{what} source")
        target = unstack_frames(decode_png(files[TARGET_SUFFIX], f"{what} target"), shapes["target"], f"{what} target")
        mask = unstack_frames(decode_png(files[MASK_SUFFIX], f"{what} mask"), shapes["mask"], f"{what} mask")
        reference = None
        if "reference" in shapes:
            if REFERENCE_SUFFIX not in files:
                raise VivaUserError(f"{what} lacks its reference image; the dataset is corrupt, regenerate it")
            reference = decode_png(files[REFERENCE_SUFFIX], f"{what} reference")
            if reference.shape != shapes["reference"]:
                raise VivaUserError(f"{what} reference has the wrong shape; the dataset is corrupt, regenerate it")
        return EditPair(
            key=record["key"] if record.get("key") is not None else (key or ""),
            category=record["category"],
            instruction=record["instruction"],
            program=program_from_list(record["program"]),
            source_scene=Scene.from_dict(record["source_scene"]),
            target_scene=Scene.from_dict(record["target_scene"]),
            source=source,
            target=target,
            mask=mask,
            reference=reference,
            held_out=bool(record.get("held_out", False)),
            meta=record.get("meta") or {},
        )
    except (KeyError, TypeError, ValueError) as e:
        raise VivaUserError(f"{what} has malformed JSON ({type(e).__name__}: {e}); regenerate the dataset") from None


# Tar shards -------------------------------------------------------------------------------------------


def write_tar(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    """[(key, {suffix: bytes})] -> the bytes of a deterministic ustar archive (members sorted by name)."""
    members = sorted((f"{key}.{suffix}", data) for key, files in samples for suffix, data in files.items())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def split_member_name(name: str) -> tuple[str, str]:
    """"00000012.src.png" -> ("00000012", "src.png") (webdataset: the key ends at the first dot)."""
    base = name.rsplit("/", 1)[-1]
    key, _, suffix = base.partition(".")
    return key, suffix


def index_tar(path: str | os.PathLike) -> dict[str, dict[str, tuple[int, int]]]:
    """{key: {suffix: (data offset, size)}} of a shard, in archive order, reading only the headers."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, suffix = split_member_name(member.name)
                out.setdefault(key, {})[suffix] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError) as e:
        raise VivaUserError(f"cannot read shard {path} ({e}); the dataset is corrupt, regenerate it") from None
    return out


def read_members(path: str | os.PathLike, members: dict[str, tuple[int, int]]) -> dict[str, bytes]:
    """Read the given {suffix: (offset, size)} members of one sample from a shard."""
    out = {}
    with open(path, "rb") as f:
        for suffix, (offset, size) in sorted(members.items(), key=lambda item: item[1][0]):
            f.seek(offset)
            data = f.read(size)
            if len(data) != size:
                raise VivaUserError(f"shard {path} is truncated; the dataset is corrupt, regenerate it")
            out[suffix] = data
    return out


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Manifest ---------------------------------------------------------------------------------------------


def load_manifest(root: str | os.PathLike, verify: bool = False) -> dict:
    """Read and check `root/manifest.json`: every shard exists with the recorded size, and, with `verify`,
    the recorded sha256. Problems raise VivaUserError naming the fix."""
    root = Path(root)
    regenerate = f"regenerate it with: viva data generate --out {root} --overwrite"
    if not root.exists():
        raise VivaUserError(f"dataset folder {root} does not exist; create one with: viva data generate --out {root}")
    if not root.is_dir():
        raise VivaUserError(f"{root} is not a folder; give the folder written by viva data generate")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise VivaUserError(f"{root} is not a viva dataset (no {MANIFEST_NAME}); {regenerate}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VivaUserError(f"cannot read {path} ({e}); {regenerate}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise VivaUserError(f"{path} is not a viva edit-pair manifest; {regenerate}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise VivaUserError(
            f"{root} has format version {manifest.get('format_version')}, this viva reads {FORMAT_VERSION}; "
            + regenerate
        )
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        raise VivaUserError(f"{path} lists no shards; {regenerate}")
    for shard in shards:
        shard_path = root / shard["name"]
        if not shard_path.is_file():
            raise VivaUserError(f"shard {shard_path} is missing; {regenerate}")
        if shard_path.stat().st_size != shard["bytes"]:
            raise VivaUserError(f"shard {shard_path} has the wrong size (truncated or replaced); {regenerate}")
        if verify and sha256_file(shard_path) != shard["sha256"]:
            raise VivaUserError(f"shard {shard_path} fails its sha256 checksum (corrupt); {regenerate}")
    return manifest


# Reading ----------------------------------------------------------------------------------------------


class ShardReader:
    """Reads samples of a dataset folder by (shard, key) or index, without loading shards into memory: the
    manifest says which shard holds a sample; a shard's member offsets are read from its tar headers on
    first use and cached."""

    def __init__(self, root: str | os.PathLike, verify: bool = False):
        self.root = Path(root)
        self.manifest = load_manifest(self.root, verify=verify)
        self.shards: list[dict] = self.manifest["shards"]
        self._index: dict[int, dict[str, dict[str, tuple[int, int]]]] = {}
        self._keys: dict[int, list[str]] = {}
        self._starts = [s["first_index"] for s in self.shards]
        self._len = sum(s["num_samples"] for s in self.shards)

    def __len__(self) -> int:
        return self._len

    def locate(self, index: int) -> tuple[int, str]:
        """(shard, key) of sample `index` in [0, len): the shard whose first_index is the last one <= index
        (from the manifest, no I/O), then the key at that position in the shard."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self)} pairs")
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, self.keys(shard)[index - self._starts[shard]]

    def path(self, shard: int) -> Path:
        return self.root / self.shards[shard]["name"]

    def members(self, shard: int) -> dict[str, dict[str, tuple[int, int]]]:
        """{key: {suffix: (offset, size)}} of one shard (read from its tar headers once)."""
        if shard not in self._index:
            index = index_tar(self.path(shard))
            if len(index) != self.shards[shard]["num_samples"]:
                raise VivaUserError(
                    f"shard {self.path(shard)} holds {len(index)} samples, the manifest says "
                    f"{self.shards[shard]['num_samples']}; the dataset is corrupt, regenerate it"
                )
            self._index[shard] = index
            self._keys[shard] = list(index)
        return self._index[shard]

    def keys(self, shard: int) -> list[str]:
        """Sample keys of one shard, in archive order."""
        self.members(shard)
        return self._keys[shard]

    def read(self, shard: int, key: str, suffixes: Sequence[str] | None = None) -> dict[str, bytes]:
        members = self.members(shard)
        if key not in members:
            raise VivaUserError(f"shard {self.path(shard)} has no sample {key}; the dataset is corrupt, regenerate it")
        wanted = members[key] if suffixes is None else {s: members[key][s] for s in suffixes if s in members[key]}
        return read_members(self.path(shard), wanted)

    def pair(self, shard: int, key: str) -> EditPair:
        return decode_sample(self.read(shard, key), key=key)

    def pair_at(self, index: int) -> EditPair:
        """The EditPair of sample `index` (IndexError when out of range)."""
        return self.pair(*self.locate(index))

    def category(self, shard: int, key: str) -> str:
        """The category of one sample, reading only its JSON member."""
        return decode_record(self.read(shard, key, [JSON_SUFFIX])[JSON_SUFFIX], f"sample {key}")["category"]

    def shard_has(self, shard: int, categories: frozenset[str] | None) -> bool:
        """Whether a shard may hold samples of `categories` (from the manifest's per-shard counts)."""
        return categories is None or bool(categories & set(self.shards[shard].get("categories", categories)))
