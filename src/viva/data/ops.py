"""Sampling one valid edit clause per category, and hybrids of 2-3 compatible clauses.

Each sampler reads an `OpContext` (the source scene, the scene after the clauses drawn so far, the source
sprites already targeted, the next free sprite id) and returns a `Draft` (the clause and what the grammar
needs to phrase it) or None when the scene offers no valid edit of that kind. A drafted clause always
keeps the scene clean: distinct (color, shape) pairs, every sprite inside the frame and apart from every
other at every check time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..world.program import REGIONS, Clause, apply_clause, region_of
from ..world.scene import COLORS, SIZES, Motion, Pattern, Scene, Sprite, size_name, sprite_from_dict
from .pair import PRIMITIVE_CATEGORIES
from .sampling import (
    STYLE_STATES,
    WEATHER_STATES,
    Geometry,
    clear_of,
    combos,
    free_combos,
    inside,
    mean_position,
    pick,
    sample_background,
    sample_motion,
    sample_pattern,
    sprite_track,
)

GROW, SHRINK = 1.6, 0.6
# A sprite added at a region has its mean centre at least this far inside the region's cell.
REGION_INSET = 0.03
# Probabilities: an add names a region; an add names the new sprite's size (else it is medium).
P_REGION = 0.5
P_SIZE_NAMED = 0.6
P_REF_SIZE_NAMED = 0.35

LOCAL_CATEGORIES = ("remove", "replace", "color", "size", "ref_replace")  # need a target sprite
GLOBAL_CATEGORIES = ("weather", "style")
REFERENCE_CATEGORIES = ("ref_add", "ref_replace")


@dataclass
class Draft:
    """A sampled clause of one category, with the choices the grammar phrases (JSON-friendly `detail`:
    e.g. {"size": "small"} for an add that names its size, {"from": "snow", "to": "none"})."""

    category: str
    clause: Clause
    detail: dict = field(default_factory=dict)


@dataclass
class OpContext:
    rng: np.random.Generator
    geom: Geometry
    source: Scene
    current: Scene
    taken: set[int] = field(default_factory=set)
    next_id: int = 0

    def targets(self) -> list[Sprite]:
        """Source sprites still present and not yet touched by a clause."""
        source_ids = {s.id for s in self.source.sprites}
        return [s for s in self.current.sprites if s.id in source_ids and s.id not in self.taken]

    def other_combos(self, exclude: int | None = None) -> set[tuple[str, str]]:
        """(color, shape) pairs in use in the source and the current scene (without sprite `exclude`)."""
        return combos(self.source, exclude) | combos(self.current, exclude)

    def others(self, exclude: int | None = None) -> list[tuple[np.ndarray, float]]:
        return [(sprite_track(s, self.geom.check_times), s.radius) for s in self.current.sprites if s.id != exclude]

    def commit(self, draft: Draft) -> None:
        clause = draft.clause
        self.current = apply_clause(self.current, clause)
        if clause.target is not None:
            self.taken.add(clause.target)
        if clause.sprite is not None:
            self.next_id = max(self.next_id, clause.sprite.id + 1)


def _copy_motion(motion: Motion) -> Motion:
    return Motion(
        kind=motion.kind,
        start=tuple(motion.start),
        velocity=tuple(motion.velocity),
        radius=motion.radius,
        phase=motion.phase,
        turns=motion.turns,
    )


def _top_z(scene: Scene) -> int:
    return max((s.z for s in scene.sprites), default=-1) + 1


# New sprites ---------------------------------------------------------------------------------------


def _region_box(region: str, geom: Geometry) -> tuple[float, float, float, float]:
    col, row = REGIONS[region]
    return (col / 3 + REGION_INSET, (col + 1) / 3 - REGION_INSET, row / 3 + REGION_INSET, (row + 1) / 3 - REGION_INSET)


def _in_box(point: tuple[float, float], box) -> bool:
    return box[0] <= point[0] <= box[1] and box[2] <= point[1] <= box[3]


def _place_new(ctx: OpContext, sprite: Sprite, region: str | None, tries: int = 24) -> bool:
    """Give a new sprite a motion clear of the current scene (and, with a region, a mean centre inside
    that region's cell); False when no try fits."""
    others = ctx.others()
    box = _region_box(region, ctx.geom) if region else None
    for _ in range(tries):
        if box is None:
            motion = sample_motion(ctx.rng, sprite.radius, ctx.geom)
        else:
            kind = pick(ctx.rng, ("static", "linear", "orbit"), (0.6, 0.2, 0.2))
            motion = sample_motion(ctx.rng, sprite.radius, ctx.geom, kind=kind, box=box)
        sprite.motion = motion
        track = sprite_track(sprite, ctx.geom.check_times)
        if not inside(track, sprite.radius, ctx.geom) or not clear_of(track, sprite.radius, others, ctx.geom):
            continue
        if box is not None:
            centre = mean_position(sprite, ctx.geom.clip_times)
            if not _in_box(centre, box) or region_of(*centre) != region:
                continue
        return True
    return False


def _new_sprite(ctx: OpContext, patterned: bool, p_size_named: float, tries: int = 3):
    """A new sprite (fresh (color, shape), size named or medium, optionally at a region) placed clear of
    the current scene: (sprite, detail, region), or None when the scene has no room for it."""
    free = free_combos(ctx.other_combos())
    if not free:
        return None
    for _ in range(tries):
        color, shape = pick(ctx.rng, free)
        size = pick(ctx.rng, list(SIZES)) if ctx.rng.random() < p_size_named else None
        sprite = Sprite(
            id=ctx.next_id,
            shape=shape,
            color=color,
            radius=SIZES[size or "medium"],
            pattern=sample_pattern(ctx.rng, color) if patterned else Pattern(),
            z=_top_z(ctx.current),
        )
        region = pick(ctx.rng, list(REGIONS)) if ctx.rng.random() < P_REGION else None
        if _place_new(ctx, sprite, region):
            return sprite, ({"size": size} if size else {}), region
    return None


def sample_add(ctx: OpContext) -> Draft | None:
    made = _new_sprite(ctx, patterned=False, p_size_named=P_SIZE_NAMED)
    if made is None:
        return None
    sprite, detail, region = made
    return Draft("add", Clause("add", sprite=sprite, region=region), detail)


def sample_ref_add(ctx: OpContext) -> Draft | None:
    made = _new_sprite(ctx, patterned=True, p_size_named=P_REF_SIZE_NAMED)
    if made is None:
        return None
    sprite, detail, region = made
    return Draft("ref_add", Clause("ref_add", sprite=sprite, region=region), detail)


# Edits of a source sprite --------------------------------------------------------------------------


def sample_remove(ctx: OpContext) -> Draft | None:
    targets = ctx.targets()
    if not targets:
        return None
    return Draft("remove", Clause("remove", target=pick(ctx.rng, targets).id))


def _replacement(ctx: OpContext, target: Sprite, patterned: bool) -> Sprite | None:
    """A sprite with a new shape and/or color taking `target`'s place, size and motion."""
    taken = ctx.other_combos(exclude=target.id) | {(target.color, target.shape)}
    mode = pick(ctx.rng, ("shape", "color", "both"))
    if mode == "shape":
        free = free_combos(taken, color=target.color)
    elif mode == "color":
        free = free_combos(taken, shape=target.shape)
    else:
        free = [(c, s) for c, s in free_combos(taken) if c != target.color and s != target.shape]
    if not free:
        return None
    color, shape = pick(ctx.rng, free)
    return Sprite(
        id=ctx.next_id,
        shape=shape,
        color=color,
        radius=target.radius,
        motion=_copy_motion(target.motion),
        pattern=sample_pattern(ctx.rng, color) if patterned else Pattern(),
        z=target.z,
    )


def _sample_replace(ctx: OpContext, category: str, patterned: bool) -> Draft | None:
    targets = ctx.targets()
    if not targets:
        return None
    target = pick(ctx.rng, targets)
    new = _replacement(ctx, target, patterned)
    if new is None:
        return None
    return Draft(category, Clause(category, target=target.id, sprite=new))


def sample_replace(ctx: OpContext) -> Draft | None:
    return _sample_replace(ctx, "replace", patterned=False)


def sample_ref_replace(ctx: OpContext) -> Draft | None:
    return _sample_replace(ctx, "ref_replace", patterned=True)


def sample_color(ctx: OpContext) -> Draft | None:
    targets = ctx.targets()
    for _ in range(4):
        if not targets:
            return None
        target = pick(ctx.rng, targets)
        taken = ctx.other_combos(exclude=target.id)
        colors = [c for c in COLORS if c != target.color and (c, target.shape) not in taken]
        if colors:
            return Draft("color", Clause("recolor", target=target.id, color=pick(ctx.rng, colors)))
        targets = [t for t in targets if t.id != target.id]
    return None


def sample_size(ctx: OpContext) -> Draft | None:
    """Grow (x1.6) a small or medium sprite or shrink (x0.6) a medium or large one, keeping it inside the
    frame and clear of the others (a bouncing sprite's path changes with its radius: it is re-checked)."""
    targets = list(ctx.targets())
    while targets:
        target = pick(ctx.rng, targets)
        targets = [t for t in targets if t.id != target.id]
        name = size_name(target.radius)
        if name == "small" or target.radius < SIZES["small"]:
            scale = GROW
        elif name == "large" or target.radius > SIZES["large"]:
            scale = SHRINK
        else:
            scale = GROW if ctx.rng.random() < 0.5 else SHRINK
        resized = sprite_from_dict({**_sprite_dict(target), "radius": target.radius * scale})
        track = sprite_track(resized, ctx.geom.check_times)
        if inside(track, resized.radius, ctx.geom) and clear_of(track, resized.radius, ctx.others(target.id), ctx.geom):
            direction = "bigger" if scale > 1 else "smaller"
            return Draft("size", Clause("resize", target=target.id, scale=scale), {"direction": direction})
    return None


def _sprite_dict(sprite: Sprite) -> dict:
    return dataclasses.asdict(sprite)


# Scene-wide edits --------------------------------------------------------------------------------------


def sample_background_op(ctx: OpContext) -> Draft | None:
    old = ctx.current.background
    for _ in range(16):
        new = sample_background(ctx.rng)
        if new.kind != old.kind or new.color != old.color:
            return Draft("background", Clause("background", background=new))
    return None


def sample_weather(ctx: OpContext) -> Draft | None:
    """Night, snow or rain on a clear scene; or back to clear from one of them ("remove the snow")."""
    state = ctx.current.global_state
    if state in WEATHER_STATES:
        return Draft("weather", Clause("global", state="none"), {"from": state, "to": "none"})
    if state != "none":
        return None
    new = pick(ctx.rng, WEATHER_STATES)
    return Draft("weather", Clause("global", state=new), {"from": "none", "to": new})


def sample_style(ctx: OpContext) -> Draft | None:
    if ctx.current.global_state != "none":
        return None
    new = pick(ctx.rng, STYLE_STATES)
    return Draft("style", Clause("global", state=new), {"from": "none", "to": new})


SAMPLERS = {
    "add": sample_add,
    "remove": sample_remove,
    "replace": sample_replace,
    "color": sample_color,
    "size": sample_size,
    "background": sample_background_op,
    "weather": sample_weather,
    "style": sample_style,
    "ref_add": sample_ref_add,
    "ref_replace": sample_ref_replace,
}
assert set(SAMPLERS) == set(PRIMITIVE_CATEGORIES)


def sample_clause(category: str, ctx: OpContext) -> Draft | None:
    """A clause of a primitive `category` valid in `ctx.current` (not yet applied), or None."""
    return SAMPLERS[category](ctx)


# Hybrids -------------------------------------------------------------------------------------------------


def hybrid_categories(rng: np.random.Generator, categories: tuple[str, ...] = PRIMITIVE_CATEGORIES) -> list[str]:
    """2-3 primitive categories that compose: at most one global (weather/style) edit, one background
    edit and one reference edit (there is one reference image)."""
    count = 2 if rng.random() < 0.6 else 3
    chosen: list[str] = []
    for _ in range(1000):
        if len(chosen) == count:
            return chosen
        cat = pick(rng, categories)
        if cat in GLOBAL_CATEGORIES and any(c in GLOBAL_CATEGORIES for c in chosen):
            continue
        if cat == "background" and "background" in chosen:
            continue
        if cat in REFERENCE_CATEGORIES and any(c in REFERENCE_CATEGORIES for c in chosen):
            continue
        chosen.append(cat)
    if len(chosen) == count:
        return chosen
    raise ValueError(f"categories {list(categories)} cannot make a hybrid of {count} compatible clauses")


def sample_program(categories: list[str], ctx: OpContext) -> list[Draft] | None:
    """One clause per category, drawn in order against the scene after the previous ones (distinct
    targets, no clause touching a sprite another removes or replaces); None when one cannot be drawn."""
    drafts = []
    for category in categories:
        draft = sample_clause(category, ctx)
        if draft is None:
            return None
        ctx.commit(draft)
        drafts.append(draft)
    return drafts
