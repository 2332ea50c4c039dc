"""Pair generation: `make_pair(seed, index, category, config)` -> EditPair, deterministic and independent.

A pair depends only on its arguments: its random stream is `numpy.random.default_rng([seed, index,
category code])`, so any worker can produce any index in any order. Steps:

1. choose the category (when None) and whether the pair is a 1-frame image pair;
2. sample a clean source scene (`sampling.sample_scene`) and one clause (2-3 for a hybrid) that is valid
   for it (`ops`); the target scene is `apply_program(source, program)`;
3. choose an unambiguous referring expression for every targeted sprite (`refer`), and phrase the
   instruction under the split's held-out rule (`grammar`);
4. render source and target once each (with per-sprite coverage), and build the edit mask.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..world.program import Clause, apply_clause
from ..world.render import render_float, render_reference, to_uint8
from ..world.scene import Scene
from .grammar import DEFAULT_HELDOUT_PHRASINGS, NoPhrasing, Phraser, instruction_text
from .ops import GLOBAL_CATEGORIES, Draft, OpContext, hybrid_categories, sample_program
from .pair import ALL_CATEGORIES, HYBRID, PRIMITIVE_CATEGORIES, EditPair
from .refer import phrase, ref_weight, unambiguous_refs
from .sampling import WEATHER_STATES, Geometry, layout_ok, pick, sample_scene

SPLITS: tuple[str, ...] = ("train", "heldout", "any")

# How often a source scene for a local edit already carries a weather state, and how often a weather
# edit goes the reverse way (from night/snow/rain back to a clear day).
P_SOURCE_WEATHER = 0.06
P_WEATHER_REVERSE = 0.35
# Mask: a pixel changed when a channel moves by more than this (0..255); a sprite covers a pixel above
# COVERAGE_THRESHOLD.
DIFF_THRESHOLD = 2
COVERAGE_THRESHOLD = 0.05
_DILATE = np.ones((1, 3, 3), dtype=bool)
_MAX_ATTEMPTS = 200
_PHRASE_TRIES = 8  # phrasings tried for the held-out split; the last half force held-out choices


@dataclass
class DataConfig:
    """What the generator makes. Goes into dataset manifests (`to_dict` / `from_dict`).

    height, width, num_frames: clip size. image_fraction: probability that a pair is a 1-frame image pair
    (same operations). categories: the categories `make_pair(..., category=None)` draws from (uniformly;
    "hybrid" may be listed). hybrid_fraction: probability that a category-None pair is a hybrid anyway
    (0: hybrids only when asked, as in the paper). split: "train" never uses held-out phrasings,
    "heldout" uses at least one in every instruction, "any" mixes freely. heldout_phrasings: template ids
    ("remove.5") and synonyms ("erase") kept out of training. reference_size: side of reference images.
    min_sprites, max_sprites: sprites in a source scene.
    """

    height: int = 64
    width: int = 64
    num_frames: int = 8
    image_fraction: float = 0.0
    categories: tuple[str, ...] = PRIMITIVE_CATEGORIES
    hybrid_fraction: float = 0.0
    split: str = "train"
    heldout_phrasings: tuple[str, ...] = DEFAULT_HELDOUT_PHRASINGS
    reference_size: int = 64
    min_sprites: int = 2
    max_sprites: int = 4

    def __post_init__(self) -> None:
        self.categories = tuple(self.categories)
        self.heldout_phrasings = tuple(self.heldout_phrasings)
        if not self.categories:
            raise ValueError("DataConfig.categories is empty; name at least one of " + ", ".join(ALL_CATEGORIES))
        unknown = [c for c in self.categories if c not in ALL_CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; expected some of {list(ALL_CATEGORIES)}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; expected one of {list(SPLITS)}")
        for name in ("image_fraction", "hybrid_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"DataConfig.{name} must be in [0, 1], got {value}")
        for name in ("height", "width", "num_frames", "reference_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DataConfig.{name} must be positive, got {getattr(self, name)}")
        if not 1 <= self.min_sprites <= self.max_sprites <= 6:
            raise ValueError(
                f"need 1 <= min_sprites <= max_sprites <= 6, got {self.min_sprites} and {self.max_sprites}"
            )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["categories"] = list(self.categories)
        data["heldout_phrasings"] = list(self.heldout_phrasings)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "DataConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown DataConfig fields {unknown}; expected some of {sorted(names)}")
        return cls(**data)


def _category_code(category: str | None) -> int:
    """A stable integer for the rng seed (0 for None); never Python's salted hash()."""
    return 0 if category is None else zlib.crc32(category.encode()) + 1


def choose_category(rng: np.random.Generator, config: DataConfig) -> str:
    """The category of a pair asked for with category=None."""
    if config.hybrid_fraction > 0.0 and rng.random() < config.hybrid_fraction:
        return HYBRID
    return pick(rng, config.categories)


# Mask --------------------------------------------------------------------------------------------------


def touched_ids(program: list[Clause]) -> set[int]:
    """Ids of the sprites a program adds, removes or changes (source targets and new sprites)."""
    ids = {c.target for c in program if c.target is not None}
    ids |= {c.sprite.id for c in program if c.sprite is not None}
    return ids


def edit_mask(
    source: np.ndarray,
    target: np.ndarray,
    source_coverage: dict[int, np.ndarray],
    target_coverage: dict[int, np.ndarray],
    program: list[Clause],
) -> np.ndarray:
    """uint8 [T,H,W], 255 where the edit acts: pixels whose color changes (more than DIFF_THRESHOLD in a
    channel) and the coverage of every sprite the program adds, removes or changes, in either clip,
    dilated by one pixel. A global (weather/style) clause makes the whole frame the edit."""
    if any(c.op == "global" for c in program):
        return np.full(source.shape[:3], 255, dtype=np.uint8)
    changed = (np.abs(source.astype(np.int16) - target.astype(np.int16)) > DIFF_THRESHOLD).any(axis=-1)
    for sid in touched_ids(program):
        for coverage in (source_coverage, target_coverage):
            if sid in coverage:
                changed |= coverage[sid] > COVERAGE_THRESHOLD
    changed = ndimage.binary_dilation(changed, structure=_DILATE)
    return changed.astype(np.uint8) * 255


# Pairs ---------------------------------------------------------------------------------------------------


def make_pair(seed: int, index: int, category: str | None = None, config: DataConfig | None = None) -> EditPair:
    """The edit pair number `index` of the dataset `seed`: a pure function of (seed, index, category,
    config). category: one of ALL_CATEGORIES, or None to draw one from `config.categories`."""
    config = DataConfig() if config is None else config
    if category is not None and category not in ALL_CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {list(ALL_CATEGORIES)}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got {seed} and {index}")
    rng = np.random.default_rng([int(seed), int(index), _category_code(category)])
    if category is None:
        category = choose_category(rng, config)
    is_image = config.image_fraction > 0.0 and rng.random() < config.image_fraction
    num_frames = 1 if is_image else config.num_frames
    geom = Geometry.of(config.height, config.width, num_frames, layout_frames=config.num_frames)
    heldout = frozenset(config.heldout_phrasings)
    for _ in range(_MAX_ATTEMPTS):
        pair = _attempt(rng, category, config, geom, heldout, num_frames, is_image)
        if pair is not None:
            pair.key = f"{index:08d}"
            pair.meta.update(seed=int(seed), index=int(index))
            return pair
    hint = ""
    if config.split == "heldout":
        hint = f"; does any of heldout_phrasings {list(config.heldout_phrasings)} fit a {category} instruction?"
    raise RuntimeError(f"could not generate a {category} pair for seed {seed}, index {index}{hint}")


def _attempt(rng, category, config, geom, heldout, num_frames, is_image) -> EditPair | None:
    # 1. Categories of the clauses and the source's global state.
    categories = hybrid_categories(rng) if category == HYBRID else [category]
    if "weather" in categories:
        state = pick(rng, WEATHER_STATES) if rng.random() < P_WEATHER_REVERSE else "none"
    elif any(c in GLOBAL_CATEGORIES for c in categories):
        state = "none"
    else:
        state = pick(rng, WEATHER_STATES) if rng.random() < P_SOURCE_WEATHER else "none"
    needs_target = sum(c in ("remove", "replace", "color", "size", "ref_replace") for c in categories)
    low = max(config.min_sprites, needs_target)
    num_sprites = int(rng.integers(low, max(low, config.max_sprites) + 1))

    # 2. Source scene and program.
    source = sample_scene(rng, geom, num_sprites, global_state=state)
    if len(source.sprites) < needs_target:
        return None
    ctx = OpContext(rng=rng, geom=geom, source=source, current=source, next_id=source.next_id())
    drafts = sample_program(categories, ctx)
    if drafts is None:
        return None
    program = [d.clause for d in drafts]
    target = ctx.current  # == apply_program(source, program): the clauses applied in order
    if not layout_ok(target.sprites, geom):  # pragma: no cover - every sampler keeps layouts clean
        return None

    # 3. Referring expressions (unambiguous in the source with every added sprite, and in the scene the
    #    clause applies to) and the instruction.
    refs, ref_meta = _choose_refs(rng, drafts, source, geom)
    if refs is None:
        return None
    text, ph, said = _phrase(rng, drafts, refs, is_image, config.split, heldout)
    if text is None:
        return None
    for item in ref_meta:
        item["text"] = said[item["clause"]]

    # 4. Renders and mask.
    h, w = config.height, config.width
    src_float, src_cov = render_float(source, h, w, num_frames, with_coverage=True)
    tgt_float, tgt_cov = render_float(target, h, w, num_frames, with_coverage=True)
    src, tgt = to_uint8(src_float), to_uint8(tgt_float)
    if np.array_equal(src, tgt):
        return None
    mask = edit_mask(src, tgt, src_cov, tgt_cov, program)
    reference = None
    for clause in program:
        if clause.op in ("ref_add", "ref_replace"):
            reference = render_reference(clause.sprite, config.reference_size)

    used = list(dict.fromkeys(ph.used))
    heldout_used = [p for p in used if p in heldout]
    meta = {
        "num_frames": num_frames,
        "image": bool(is_image),
        "split": config.split,
        "clauses": [{"category": d.category, **d.detail} for d in drafts],
        "refs": ref_meta,
        "phrasings": used,
        "templates": [p for p in used if "." in p],
        "heldout_phrasings": heldout_used,
    }
    return EditPair(
        key="",
        category=category,
        instruction=text,
        program=program,
        source_scene=source,
        target_scene=target,
        source=src,
        target=tgt,
        mask=mask,
        reference=reference,
        held_out=bool(heldout_used),
        meta=meta,
    )


def _choose_refs(rng, drafts: list[Draft], source: Scene, geom: Geometry):
    """A random unambiguous description per targeted clause: (Ref or None per clause, meta list).

    A description must pick its sprite in the source scene together with every sprite the program adds
    (so "the biggest one" never means a newcomer) and in the scene the clause applies to (after the
    clauses before it, for hybrids)."""
    added = [d.clause.sprite for d in drafts if d.clause.op in ("add", "ref_add")]
    union = Scene(sprites=list(source.sprites) + added) if added else source
    scene = source
    refs, meta = [], []
    for i, draft in enumerate(drafts):
        clause = draft.clause
        if clause.target is None:
            refs.append(None)
        else:
            scenes = [union] if scene is union else [union, scene]
            options = unambiguous_refs(scene.sprite(clause.target), scenes, geom.clip_times)
            if not options:
                return None, None
            ref = pick(rng, options, [ref_weight(r) for r in options])
            refs.append(ref)
            meta.append({"clause": i, "target": int(clause.target), "kind": ref.kind})
        if i + 1 < len(drafts):
            scene = apply_clause(scene, clause)
    return refs, meta


def _phrase(rng, drafts, refs, is_image, split, heldout):
    """(instruction text, Phraser, {clause index: referring expression text}); (None, None, None) when
    the held-out split cannot be met."""
    for attempt in range(_PHRASE_TRIES if split == "heldout" else 1):
        ph = Phraser(rng, heldout, split, force=attempt >= _PHRASE_TRIES // 2)
        said: dict[int, str] = {}

        def lazy(i, ref, ph=ph, said=said):
            if ref is None:
                return None

            def say() -> str:
                said[i] = phrase(ph, ref)
                return said[i]

            return say

        try:
            text = instruction_text(ph, drafts, [lazy(i, r) for i, r in enumerate(refs)], is_image)
        except NoPhrasing as e:
            raise ValueError(f"DataConfig.heldout_phrasings: {e}") from None
        if split != "heldout" or ph.heldout_used:
            return text, ph, said
    return None, None, None
