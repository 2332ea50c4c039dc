"""The world bench: a fixed, versioned set of edit cases of the procedural world, made from fixed seeds.

    bench = world_bench(cases=50)              # 9 categories x 50 cases, generated once per process
    case = bench.cases[0]                      # BenchCase: id "add-0000", source, target, mask, program, ...
    export_bench(bench, "bench/")              # sources as mp4, references as png, manifest.jsonl

Categories mirror VIE-Bench: add, remove, replace, attribute (color and size changes, alternating),
global (background, weather, style, in turn), ref_add, ref_replace, hybrid (2-3 clauses), and
heldout_phrasing: primitive edits of every kind in turn, each phrased with at least one synonym or template
kept out of training (`DataConfig.heldout_phrasings`). The other categories use training phrasings only,
so they measure new scenes, and heldout_phrasing measures new words on top.

Case `i` of category `c` is `make_pair(BENCH_SEED + k, i, op, DataConfig(64x64, 8 frames, split))`, k the
position of `c` in BENCH_CATEGORIES and `op` its i-th primitive kind (`CATEGORY_MEMBERS`). A case therefore
depends only on (BENCH_VERSION, category, i): `--cases 5` is the first 5 cases of the full bench, and any
change of the generator that alters cases must bump BENCH_VERSION. The seeds are far from the training
data's (seed 0, category drawn per pair), so bench scenes are held out. Every case has a ground-truth target.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from viva.data.generate import DataConfig, make_pair
from viva.data.pair import HYBRID, PRIMITIVE_CATEGORIES
from viva.errors import VivaUserError
from viva.io.atomic import replace_dir
from viva.world.program import Clause
from viva.world.scene import Scene

BENCH_NAME = "world"
BENCH_VERSION = 1
BENCH_SEED = 5_000_005
DEFAULT_CASES = 50  # per category
BENCH_HEIGHT = BENCH_WIDTH = 64
BENCH_FRAMES = 8
BENCH_FPS = 8.0  # the frame rate exported clips are written at

HELDOUT = "heldout_phrasing"
# Bench category -> the primitive data categories its cases cycle through (case i uses member i % len).
CATEGORY_MEMBERS: dict[str, tuple[str, ...]] = {
    "add": ("add",),
    "remove": ("remove",),
    "replace": ("replace",),
    "attribute": ("color", "size"),
    "global": ("background", "weather", "style"),
    "ref_add": ("ref_add",),
    "ref_replace": ("ref_replace",),
    "hybrid": (HYBRID,),
    HELDOUT: PRIMITIVE_CATEGORIES,
}
BENCH_CATEGORIES: tuple[str, ...] = tuple(CATEGORY_MEMBERS)
PRIMITIVE_BENCH_CATEGORIES: tuple[str, ...] = tuple(c for c in BENCH_CATEGORIES if c not in (HYBRID, HELDOUT))
_CACHE_SIZE = 2048  # cases kept in memory (~230 KB each at 64x64x8)


@dataclass
class BenchCase:
    """One bench case. source / target: uint8 [T,H,W,3]; mask: uint8 [T,H,W], 255 where the edit acts
    (the generator's mask: changed pixels and touched sprites, dilated 1 px; everything for weather/style);
    reference: uint8 [h,w,3] for reference-based edits, else None. op_category: the primitive data
    category ("color", "weather", ..., or "hybrid"); clause_categories: one per program clause.
    source_scene + program: what `viva.world.verify` needs."""

    id: str
    category: str
    op_category: str
    clause_categories: list[str]
    instruction: str
    source: np.ndarray
    target: np.ndarray | None
    mask: np.ndarray
    reference: np.ndarray | None
    source_scene: Scene
    program: list[Clause]
    held_out: bool = False
    seed: int = 0
    index: int = 0
    meta: dict = field(default_factory=dict)

    def manifest_entry(self) -> dict:
        """The JSON-friendly description of the case (no arrays)."""
        T, H, W = self.source.shape[:3]
        return {
            "id": self.id,
            "category": self.category,
            "op_category": self.op_category,
            "clause_categories": list(self.clause_categories),
            "instruction": self.instruction,
            "held_out": self.held_out,
            "num_frames": T,
            "height": H,
            "width": W,
            "has_reference": self.reference is not None,
            "seed": self.seed,
            "index": self.index,
        }


def case_id(category: str, index: int) -> str:
    return f"{category}-{index:04d}"


def check_bench_categories(categories) -> tuple[str, ...]:
    """None -> every category; a comma-separated string or a list -> those (in bench order), checked."""
    if categories is None:
        return BENCH_CATEGORIES
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    categories = list(dict.fromkeys(categories))
    unknown = [c for c in categories if c not in BENCH_CATEGORIES]
    if unknown or not categories:
        what = f"unknown bench categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}" if unknown else "no categories"
        raise VivaUserError(f"{what}; choose from {', '.join(BENCH_CATEGORIES)}")
    return tuple(c for c in BENCH_CATEGORIES if c in categories)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def make_case(category: str, index: int) -> BenchCase:
    """Case `index` of bench `category` (deterministic; cached in memory)."""
    if category not in CATEGORY_MEMBERS:
        raise ValueError(f"unknown bench category {category!r}; expected one of {list(BENCH_CATEGORIES)}")
    members = CATEGORY_MEMBERS[category]
    op = members[index % len(members)]
    seed = BENCH_SEED + BENCH_CATEGORIES.index(category)
    config = DataConfig(
        height=BENCH_HEIGHT,
        width=BENCH_WIDTH,
        num_frames=BENCH_FRAMES,
        categories=PRIMITIVE_CATEGORIES,
        split="heldout" if category == HELDOUT else "train",
    )
    pair = make_pair(seed, index, op, config)
    for array in (pair.source, pair.target, pair.mask, pair.reference):
        if array is not None:
            array.setflags(write=False)  # cached and shared: nobody may edit them in place
    return BenchCase(
        id=case_id(category, index),
        category=category,
        op_category=pair.category,
        clause_categories=[c["category"] for c in pair.meta["clauses"]],
        instruction=pair.instruction,
        source=pair.source,
        target=pair.target,
        mask=pair.mask,
        reference=pair.reference,
        source_scene=pair.source_scene,
        program=pair.program,
        held_out=pair.held_out,
        seed=seed,
        index=index,
        meta={"phrasings": pair.meta.get("phrasings", []), "heldout_phrasings": pair.meta.get("heldout_phrasings", [])},
    )


class WorldBench:
    """The first `cases_per_category` cases of each chosen category, in bench order (category by
    category). Cases are generated on first access and cached in memory (`make_case`)."""

    name = BENCH_NAME
    version = BENCH_VERSION

    def __init__(self, cases_per_category: int = DEFAULT_CASES, categories=None):
        if isinstance(cases_per_category, bool) or not isinstance(cases_per_category, int) or cases_per_category < 1:
            raise VivaUserError(f"--cases must be a whole number >= 1, got {cases_per_category!r}")
        self.cases_per_category = cases_per_category
        self.categories = check_bench_categories(categories)
        self.keys = [(c, i) for c in self.categories for i in range(cases_per_category)]
        self.ids = [case_id(c, i) for c, i in self.keys]
        self._cases: list[BenchCase] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def cases(self) -> list[BenchCase]:
        if self._cases is None:
            self._cases = [make_case(c, i) for c, i in self.keys]
        return self._cases

    def iter_cases(self, skip=()):
        """Yield the cases whose id is not in `skip`, in bench order, generating only those."""
        for (c, i), cid in zip(self.keys, self.ids):
            if cid not in skip:
                yield make_case(c, i)

    def spec(self) -> dict:
        """What identifies the bench in results (name, version, seed, size, selection)."""
        return {
            "name": self.name,
            "version": self.version,
            "seed": BENCH_SEED,
            "height": BENCH_HEIGHT,
            "width": BENCH_WIDTH,
            "num_frames": BENCH_FRAMES,
            "cases_per_category": self.cases_per_category,
            "categories": list(self.categories),
            "num_cases": len(self),
        }


def world_bench(cases: int = DEFAULT_CASES, categories=None) -> WorldBench:
    """The world bench (see the module docstring); `cases` per category, `categories` None = all."""
    return WorldBench(cases, categories)


def load_bench(name: str = BENCH_NAME, cases: int = DEFAULT_CASES, categories=None) -> WorldBench:
    """A bench by name (only "world" so far)."""
    if name != BENCH_NAME:
        raise VivaUserError(f"unknown bench {name!r}; available: {BENCH_NAME}")
    return world_bench(cases, categories)


# Export -------------------------------------------------------------------------------------------------

MANIFEST_NAME = "manifest.jsonl"
JUDGE_MANIFEST_NAME = "judge.jsonl"
BENCH_INFO_NAME = "bench.json"


def write_frames(folder: Path, frames: np.ndarray) -> None:
    """Frames as lossless PNGs folder/0000.png, 0001.png, ... (a new folder; a `viva.io` frame folder)."""
    from viva.io import write_image

    folder.mkdir()
    for t, frame in enumerate(frames):
        write_image(folder / f"{t:04d}.png", frame)


def export_bench(bench: WorldBench, folder: str | os.PathLike, targets: bool = False, overwrite: bool = False,
                 progress: bool = False) -> Path:
    """Write the bench's inputs so that another system can edit them (atomically: a temporary folder
    renamed at the end). Layout:

        FOLDER/bench.json                 the bench spec (name, version, seed, size, selection)
        FOLDER/manifest.jsonl             one line per case: id, category, op_category, instruction,
                                          video ("sources/<id>.mp4"), frames ("source_frames/<id>"),
                                          reference ("references/<id>.png" or null), num_frames, height,
                                          width, fps, held_out
        FOLDER/sources/<id>.mp4           the source clip (H.264 yuv420p at BENCH_FPS: chroma subsampling
                                          costs 64x64 world clips ~30 dB PSNR)
        FOLDER/judge.jsonl                the same cases as a VLM-judge manifest (`viva judge`; id, video,
                                          instruction, reference, category, meta: op_category, held_out)
        FOLDER/source_frames/<id>/0000.png ...  the same clip, lossless (manifest key "frames")
        FOLDER/references/<id>.png        the reference image of reference-based cases
        FOLDER/targets/<id>/0000.png ...  (targets=True) the ground-truth target frames, lossless; this
                                          folder is itself a valid `viva eval --outputs` folder

    Another system writes one result per case id into an outputs folder (see `viva.eval.editors.OutputsEditor`).
    """
    from viva.io import write_image, write_video

    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise VivaUserError(f"cannot export the bench to {target}: it is a file; give a folder path")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise VivaUserError(f"cannot export the bench to {target}: the folder is not empty; pick another or pass --overwrite")
        if not (target / MANIFEST_NAME).is_file() or not (target / BENCH_INFO_NAME).is_file():
            raise VivaUserError(f"will not overwrite {target}: it is not an exported bench (no {MANIFEST_NAME}); pick another folder")
    parent = target.parent
    if not parent.is_dir():
        raise VivaUserError(f"cannot export the bench to {target}: folder {parent} does not exist; create it first")
    tmp = parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        for sub in ("sources", "source_frames", "references") + (("targets",) if targets else ()):
            (tmp / sub).mkdir()
        lines, judge_lines = [], []
        cases = bench.cases
        if progress:
            from tqdm.auto import tqdm

            cases = tqdm(cases, desc="export", unit="case", dynamic_ncols=True)
        for case in cases:
            entry = case.manifest_entry()
            write_video(tmp / "sources" / f"{case.id}.mp4", case.source, fps=BENCH_FPS)
            entry["video"] = f"sources/{case.id}.mp4"
            write_frames(tmp / "source_frames" / case.id, case.source)
            entry["frames"] = f"source_frames/{case.id}"
            entry["reference"] = None
            if case.reference is not None:
                write_image(tmp / "references" / f"{case.id}.png", case.reference)
                entry["reference"] = f"references/{case.id}.png"
            if targets and case.target is not None:
                write_frames(tmp / "targets" / case.id, case.target)
                entry["target"] = f"targets/{case.id}"
            entry["fps"] = BENCH_FPS
            lines.append(json.dumps(entry, sort_keys=True))
            judge_lines.append(json.dumps({
                **{k: entry[k] for k in ("id", "video", "instruction", "reference", "category")},
                "meta": {"op_category": case.op_category, "held_out": case.held_out},
            }))
        (tmp / MANIFEST_NAME).write_text("\n".join(lines) + "\n")
        (tmp / JUDGE_MANIFEST_NAME).write_text("\n".join(judge_lines) + "\n")
        (tmp / BENCH_INFO_NAME).write_text(json.dumps(bench.spec(), indent=2) + "\n")
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
