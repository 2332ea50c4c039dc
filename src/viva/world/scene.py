"""The scene graph of the procedural world: sprites, motions, backgrounds and global states.

Every quantity is resolution-free: positions and sizes are fractions of the frame (x to the right, y down,
both in [0, 1]; sizes are radii as a fraction of the frame's shorter side), and motion is a function of
clip time `t` in [0, 1] (first to last frame), so one scene renders at any resolution and frame count.
Scenes round-trip through JSON (`Scene.to_dict` / `Scene.from_dict`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

# Vocabulary ------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")

# Saturated sprite colors (RGB 0-255): well apart in hue so a detector can name them under blur and noise.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (240, 220, 20),
    "green": (30, 180, 40),
    "cyan": (20, 200, 220),
    "blue": (30, 60, 225),
    "purple": (140, 40, 200),
    "pink": (240, 80, 180),
}

# Low-saturation background colors, never confusable with a sprite color.
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "white": (225, 225, 222),
    "charcoal": (55, 55, 60),
    "beige": (200, 185, 150),
    "slate": (100, 115, 130),
    "olive": (120, 120, 90),
}

BACKGROUND_KINDS: tuple[str, ...] = ("solid", "gradient", "checker", "stripes", "noise")

SIZES: dict[str, float] = {"small": 0.085, "medium": 0.115, "large": 0.15}

PATTERNS: tuple[str, ...] = ("solid", "stripes", "checker", "dots")

MOTIONS: tuple[str, ...] = ("static", "linear", "bounce", "orbit")

GLOBAL_STATES: tuple[str, ...] = ("none", "night", "snow", "rain", "grayscale", "posterize")


def size_name(radius: float) -> str:
    """The named size closest to `radius`."""
    return min(SIZES, key=lambda name: abs(SIZES[name] - radius))


# Components ------------------------------------------------------------------------------------------


@dataclass
class Motion:
    """A trajectory `position(t)` for t in [0, 1].

    static: stays at `start`. linear: start + velocity * t. bounce: linear, reflected off the walls
    [margin, 1 - margin]. orbit: circle of `radius` around `start` starting at `phase`, `turns` per clip.
    """

    kind: str = "static"
    start: tuple[float, float] = (0.5, 0.5)
    velocity: tuple[float, float] = (0.0, 0.0)
    radius: float = 0.0
    phase: float = 0.0
    turns: float = 0.0

    def position(self, t: float, margin: float = 0.0) -> tuple[float, float]:
        x0, y0 = self.start
        if self.kind == "static":
            return (x0, y0)
        if self.kind == "linear":
            return (x0 + self.velocity[0] * t, y0 + self.velocity[1] * t)
        if self.kind == "bounce":
            return (_reflect(x0 + self.velocity[0] * t, margin), _reflect(y0 + self.velocity[1] * t, margin))
        if self.kind == "orbit":
            angle = self.phase + 2.0 * math.pi * self.turns * t
            return (x0 + self.radius * math.cos(angle), y0 + self.radius * math.sin(angle))
        raise ValueError(f"unknown motion kind {self.kind!r}; expected one of {MOTIONS}")


def _reflect(value: float, margin: float) -> float:
    """Fold `value` into [margin, 1 - margin] as a ball bouncing between two walls."""
    lo, hi = margin, 1.0 - margin
    span = hi - lo
    if span <= 0:
        return 0.5
    u = (value - lo) % (2.0 * span)
    return lo + (u if u <= span else 2.0 * span - u)


@dataclass
class Pattern:
    """A texture painted inside a sprite, in the sprite's own frame (it moves with the sprite).

    kind: solid | stripes | checker | dots. `color2` is the second paint; `frequency` is cycles across the
    sprite's diameter, `angle` in radians, `phase` in cycles. A patterned sprite is what reference images
    show: its look is not fully described by words.
    """

    kind: str = "solid"
    color2: tuple[int, int, int] = (255, 255, 255)
    frequency: float = 3.0
    angle: float = 0.0
    phase: float = 0.0


@dataclass
class Sprite:
    """One object. `color` names the main paint (a key of COLORS); `radius` is the half-extent."""

    id: int
    shape: str
    color: str
    radius: float
    motion: Motion = field(default_factory=Motion)
    pattern: Pattern = field(default_factory=Pattern)
    z: int = 0

    def position(self, t: float) -> tuple[float, float]:
        return self.motion.position(t, margin=self.radius)

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLORS[self.color]


@dataclass
class Background:
    """kind: solid | gradient (color -> color2, top to bottom) | checker | stripes | noise (seeded)."""

    kind: str = "solid"
    color: str = "gray"
    color2: str = "white"
    seed: int = 0


@dataclass
class Scene:
    """A clip's content: a background, sprites (drawn in increasing z), a global state, and a seed for
    particles (snow, rain). `fps` is the nominal frame rate used when the clip is written to a file."""

    sprites: list[Sprite] = field(default_factory=list)
    background: Background = field(default_factory=Background)
    global_state: str = "none"
    seed: int = 0
    fps: float = 8.0

    def sprite(self, sprite_id: int) -> Sprite:
        for sprite in self.sprites:
            if sprite.id == sprite_id:
                return sprite
        raise KeyError(f"scene has no sprite with id {sprite_id}")

    def next_id(self) -> int:
        return max((s.id for s in self.sprites), default=-1) + 1

    def copy(self) -> "Scene":
        return Scene.from_dict(self.to_dict())

    # JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        return cls(
            sprites=[sprite_from_dict(s) for s in data.get("sprites", [])],
            background=Background(**data.get("background", {})),
            global_state=data.get("global_state", "none"),
            seed=int(data.get("seed", 0)),
            fps=float(data.get("fps", 8.0)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Scene":
        return cls.from_dict(json.loads(text))


def sprite_from_dict(data: dict) -> Sprite:
    motion = dict(data.get("motion", {}))
    for key in ("start", "velocity"):
        if key in motion:
            motion[key] = tuple(motion[key])
    pattern = dict(data.get("pattern", {}))
    if "color2" in pattern:
        pattern["color2"] = tuple(pattern["color2"])
    return Sprite(
        id=int(data["id"]),
        shape=data["shape"],
        color=data["color"],
        radius=float(data["radius"]),
        motion=Motion(**motion),
        pattern=Pattern(**pattern),
        z=int(data.get("z", 0)),
    )
