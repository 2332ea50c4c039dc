"""Random source scenes: sprites, motions and backgrounds, laid out so that no two sprites ever touch.

Geometry is checked on a `Geometry`: the frame's aspect (sprite radii are fractions of the shorter side,
positions fractions of each axis) and the clip times at which a layout must hold. A layout is valid when
every sprite stays inside the frame and every two sprite centres are farther apart than the sum of their
radii plus `MARGIN` (in units of the shorter side) at every check time: the clip's frame times and a dense
grid, so that a scene stays clean however many frames it is rendered with.

All randomness comes from the `numpy.random.Generator` passed in; nothing here touches global state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..world.render import frame_times
from ..world.scene import (
    BACKGROUND_COLORS,
    BACKGROUND_KINDS,
    COLORS,
    SHAPES,
    SIZES,
    Background,
    Motion,
    Pattern,
    Scene,
    Sprite,
)

# Smallest gap between two sprites' outlines (centre distance minus both radii), shorter-side units.
MARGIN = 0.03
# Sprites do not quite touch the frame's edge either (static, linear and orbit motions).
EDGE = 0.01
# Motion kinds and how often a sampled sprite gets each.
MOTION_KINDS: tuple[str, ...] = ("static", "linear", "bounce", "orbit")
MOTION_WEIGHTS: tuple[float, ...] = (0.3, 0.3, 0.2, 0.2)
# Second paint of a patterned (reference) sprite: the main color darkened, so the hue stays the same.
PATTERN_SHADE = 0.45
PATTERN_KINDS: tuple[str, ...] = ("stripes", "checker", "dots")
# Weather states a source scene may carry for a local edit (rarely): see `sample_source_state`.
WEATHER_STATES: tuple[str, ...] = ("night", "snow", "rain")
STYLE_STATES: tuple[str, ...] = ("grayscale", "posterize")

_DENSE_TIMES = np.linspace(0.0, 1.0, 25)


def pick(rng: np.random.Generator, options, weights=None):
    """One element of the sequence `options` (uniform, or with relative `weights`)."""
    if weights is None:
        return options[int(rng.integers(len(options)))]
    cum = np.cumsum(weights)
    return options[int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))]


# Geometry --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Where layouts are checked. `sx`, `sy` turn a radius (shorter-side units) into a fraction of the
    width / height; `clip_times` are the rendered frame times (means over the clip use them),
    `check_times` the times at which sprites must stay apart and inside the frame."""

    sx: float
    sy: float
    clip_times: np.ndarray
    check_times: np.ndarray

    @classmethod
    def of(cls, height: int, width: int, num_frames: int, layout_frames: int | None = None) -> "Geometry":
        """`num_frames`: the clip rendered (1 for an image pair); `layout_frames`: the frame count whose
        frame times must also be clean (default `num_frames`)."""
        short = float(min(height, width))
        clip = frame_times(num_frames)
        extra = frame_times(layout_frames or num_frames)
        check = np.unique(np.concatenate([_DENSE_TIMES, clip, extra]))
        return cls(sx=short / width, sy=short / height, clip_times=clip, check_times=check)


def sprite_track(sprite: Sprite, times: np.ndarray) -> np.ndarray:
    """Centres of `sprite` at `times`: float64 [K,2] (x, y), the same values as `Sprite.position`."""
    m = sprite.motion
    x0, y0 = m.start
    if m.kind == "static":
        return np.tile(np.array([x0, y0], dtype=np.float64), (len(times), 1))
    if m.kind == "linear":
        return np.stack([x0 + m.velocity[0] * times, y0 + m.velocity[1] * times], axis=1)
    if m.kind == "bounce":
        r = sprite.radius
        return np.stack([_reflect(x0 + m.velocity[0] * times, r), _reflect(y0 + m.velocity[1] * times, r)], axis=1)
    if m.kind == "orbit":
        angle = m.phase + 2.0 * math.pi * m.turns * times
        return np.stack([x0 + m.radius * np.cos(angle), y0 + m.radius * np.sin(angle)], axis=1)
    raise ValueError(f"unknown motion kind {m.kind!r}")


def _reflect(value: np.ndarray, margin: float) -> np.ndarray:
    lo, hi = margin, 1.0 - margin
    span = hi - lo
    if span <= 0:
        return np.full_like(value, 0.5)
    u = np.mod(value - lo, 2.0 * span)
    return lo + np.where(u <= span, u, 2.0 * span - u)


def mean_position(sprite: Sprite, times: np.ndarray) -> tuple[float, float]:
    """The sprite's centre averaged over `times` (the clip's frame times)."""
    x, y = sprite_track(sprite, times).mean(axis=0)
    return float(x), float(y)


def inside(track: np.ndarray, radius: float, geom: Geometry, edge: float = 0.0) -> bool:
    """Whether a sprite of `radius` following `track` stays inside the frame (with `edge` to spare)."""
    rx, ry = radius * geom.sx + edge, radius * geom.sy + edge
    x, y = track[:, 0], track[:, 1]
    eps = 1e-9
    return bool(x.min() >= rx - eps and x.max() <= 1.0 - rx + eps and y.min() >= ry - eps and y.max() <= 1.0 - ry + eps)


def clear_of(track: np.ndarray, radius: float, others: list[tuple[np.ndarray, float]], geom: Geometry) -> bool:
    """Whether a sprite (`track`, `radius`) keeps more than MARGIN from each (track, radius) in `others`."""
    for other, r2 in others:
        dx = (track[:, 0] - other[:, 0]) / geom.sx
        dy = (track[:, 1] - other[:, 1]) / geom.sy
        limit = radius + r2 + MARGIN
        if float(np.min(dx * dx + dy * dy)) <= limit * limit:
            return False
    return True


def layout_ok(sprites: list[Sprite], geom: Geometry) -> bool:
    """Every sprite inside the frame and no two closer than their radii plus MARGIN, at every check time."""
    placed: list[tuple[np.ndarray, float]] = []
    for sprite in sprites:
        track = sprite_track(sprite, geom.check_times)
        if not inside(track, sprite.radius, geom) or not clear_of(track, sprite.radius, placed, geom):
            return False
        placed.append((track, sprite.radius))
    return True


# Sprites -------------------------------------------------------------------------------------------


def sample_motion(
    rng: np.random.Generator, radius: float, geom: Geometry, kind: str | None = None, box=None
) -> Motion:
    """A motion of modest speed that keeps a sprite of `radius` inside the frame.

    box: optional (x0, x1, y0, y1) range for the start point (e.g. a region cell); the caller checks the
    result (`inside`, region of the mean position).
    """
    kind = kind or pick(rng, MOTION_KINDS, MOTION_WEIGHTS)
    rx, ry = radius * geom.sx + EDGE, radius * geom.sy + EDGE
    lo_x, hi_x, lo_y, hi_y = rx, 1.0 - rx, ry, 1.0 - ry
    if box is not None:
        lo_x, hi_x = max(lo_x, box[0]), min(hi_x, box[1])
        lo_y, hi_y = max(lo_y, box[2]), min(hi_y, box[3])
    if kind == "static":
        return Motion("static", start=(_uniform(rng, lo_x, hi_x), _uniform(rng, lo_y, hi_y)))
    if kind == "linear":
        speed = rng.uniform(0.08, 0.3) if box is None else rng.uniform(0.04, 0.1)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        vx, vy = speed * math.cos(angle), speed * math.sin(angle)
        # Start so that start + velocity stays in range too (when the range allows it).
        sx0, sx1 = lo_x - min(vx, 0.0), hi_x - max(vx, 0.0)
        sy0, sy1 = lo_y - min(vy, 0.0), hi_y - max(vy, 0.0)
        if box is not None:  # centre the path on the box instead: its mean should fall inside
            sx0, sx1 = lo_x - vx / 2.0, hi_x - vx / 2.0
            sy0, sy1 = lo_y - vy / 2.0, hi_y - vy / 2.0
        return Motion("linear", start=(_uniform(rng, sx0, sx1), _uniform(rng, sy0, sy1)), velocity=(vx, vy))
    if kind == "bounce":
        speed = rng.uniform(0.25, 0.7)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        start = (_uniform(rng, radius * geom.sx, 1.0 - radius * geom.sx), _uniform(rng, radius * geom.sy, 1.0 - radius * geom.sy))
        if box is not None:
            start = (_uniform(rng, lo_x, hi_x), _uniform(rng, lo_y, hi_y))
        return Motion("bounce", start=start, velocity=(speed * math.cos(angle), speed * math.sin(angle)))
    if kind == "orbit":
        orbit = rng.uniform(0.03, 0.08)
        turns = rng.uniform(0.3, 1.0) * (1.0 if rng.random() < 0.5 else -1.0)
        start = (_uniform(rng, lo_x + orbit, hi_x - orbit), _uniform(rng, lo_y + orbit, hi_y - orbit))
        return Motion("orbit", start=start, radius=orbit, phase=rng.uniform(0.0, 2.0 * math.pi), turns=turns)
    raise ValueError(f"unknown motion kind {kind!r}")


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    if hi <= lo:
        return (lo + hi) / 2.0
    return float(rng.uniform(lo, hi))


def sample_pattern(rng: np.random.Generator, color: str) -> Pattern:
    """A texture for a reference sprite: stripes, checker or dots in a darker shade of `color`."""
    shade = tuple(int(round(c * PATTERN_SHADE)) for c in COLORS[color])
    return Pattern(
        kind=pick(rng, PATTERN_KINDS),
        color2=shade,
        frequency=float(rng.uniform(2.5, 4.0)),
        angle=float(rng.uniform(0.0, math.pi)),
        phase=float(rng.uniform(0.0, 1.0)),
    )


def free_combos(taken: set[tuple[str, str]], color: str | None = None, shape: str | None = None) -> list[tuple[str, str]]:
    """(color, shape) pairs not in `taken`, optionally with a fixed color or shape."""
    colors = [color] if color else list(COLORS)
    shapes = [shape] if shape else list(SHAPES)
    return [(c, s) for c in colors for s in shapes if (c, s) not in taken]


def place_sprite(
    rng: np.random.Generator,
    sprite: Sprite,
    others: list[tuple[np.ndarray, float]],
    geom: Geometry,
    tries: int = 20,
    kind: str | None = None,
) -> np.ndarray | None:
    """Give `sprite` a motion clear of `others` (in place); returns its track at the check times, or None
    when no try fits."""
    for _ in range(tries):
        sprite.motion = sample_motion(rng, sprite.radius, geom, kind=kind)
        track = sprite_track(sprite, geom.check_times)
        if inside(track, sprite.radius, geom) and clear_of(track, sprite.radius, others, geom):
            return track
    return None


# Backgrounds and scenes ----------------------------------------------------------------------------


def sample_background(rng: np.random.Generator, kind: str | None = None) -> Background:
    """A random background of any kind in two different low-saturation colors."""
    names = list(BACKGROUND_COLORS)
    color = pick(rng, names)
    color2 = pick(rng, [n for n in names if n != color])
    return Background(
        kind=kind or pick(rng, BACKGROUND_KINDS), color=color, color2=color2, seed=int(rng.integers(1 << 30))
    )


def sample_scene(
    rng: np.random.Generator,
    geom: Geometry,
    num_sprites: int,
    global_state: str = "none",
    tries: int = 40,
) -> Scene:
    """A source scene: `num_sprites` solid sprites with distinct (color, shape), sizes from SIZES and
    motions that never bring two of them within MARGIN; a random background. With many large sprites a
    layout may not fit: after `tries` restarts the scene is built with fewer sprites (at least one)."""
    background = sample_background(rng)
    seed = int(rng.integers(1 << 30))
    size_names = list(SIZES)
    while True:
        for _ in range(tries):
            sprites: list[Sprite] = []
            placed: list[tuple[np.ndarray, float]] = []
            taken: set[tuple[str, str]] = set()
            for sid in range(num_sprites):
                color, shape = pick(rng, free_combos(taken))
                sprite = Sprite(id=sid, shape=shape, color=color, radius=SIZES[pick(rng, size_names)])
                track = place_sprite(rng, sprite, placed, geom)
                if track is None:
                    break
                sprites.append(sprite)
                placed.append((track, sprite.radius))
                taken.add((color, shape))
            if len(sprites) == num_sprites:
                for z, i in enumerate(rng.permutation(num_sprites)):
                    sprites[int(i)].z = z
                return Scene(sprites=sprites, background=background, global_state=global_state, seed=seed)
        if num_sprites <= 1:
            raise RuntimeError("could not lay out a single sprite")  # pragma: no cover - cannot happen
        num_sprites -= 1


def combos(scene: Scene, exclude: int | None = None) -> set[tuple[str, str]]:
    """The (color, shape) pairs of a scene's sprites (without sprite `exclude`)."""
    return {(s.color, s.shape) for s in scene.sprites if s.id != exclude}
