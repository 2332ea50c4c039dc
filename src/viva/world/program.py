"""Edit programs: the machine-readable meaning of an instruction, and how it changes a scene.

A program is a list of `Clause`s (one for a primitive instruction, 2-3 for a hybrid one). Applying it to
the source scene gives the target scene exactly; the verifier reads the same program to score a model's
output clause by clause.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .scene import Background, Scene, Sprite, sprite_from_dict

OPS: tuple[str, ...] = (
    "add",  # sprite: a new sprite; region: where the instruction asks for it (None: anywhere)
    "remove",  # target: id of a source sprite
    "replace",  # target, sprite: the new sprite takes the target's place and motion
    "recolor",  # target, color
    "resize",  # target, scale (radius multiplier)
    "background",  # background: the new background
    "global",  # state: one of GLOBAL_STATES (night, snow, rain, grayscale, posterize; "none" clears)
    "ref_add",  # sprite: a patterned sprite shown in the reference image
    "ref_replace",  # target, sprite: replaced by the patterned sprite of the reference image
)

REFERENCE_OPS: tuple[str, ...] = ("ref_add", "ref_replace")

# Coarse places an instruction can name ("add a red star at the top left"): cells of a 3x3 grid, as
# (column, row) in 0..2. A sprite is in a region when its mean centre over the clip lies in that cell.
REGIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}


def region_of(x: float, y: float) -> str:
    """The REGIONS cell that contains the point (x, y) in [0,1]^2."""
    cell = (min(int(x * 3), 2), min(int(y * 3), 2))
    return next(name for name, c in REGIONS.items() if c == cell)


@dataclass
class Clause:
    """One primitive edit. Only the fields its `op` uses are set (see OPS)."""

    op: str
    target: int | None = None
    sprite: Sprite | None = None
    color: str | None = None
    scale: float | None = None
    background: Background | None = None
    state: str | None = None
    region: str | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown edit op {self.op!r}; expected one of {OPS}")

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "Clause":
        data = dict(data)
        if data.get("sprite") is not None:
            data["sprite"] = sprite_from_dict(data["sprite"])
        if data.get("background") is not None:
            data["background"] = Background(**data["background"])
        return cls(**data)


def program_to_list(program: list[Clause]) -> list[dict]:
    return [clause.to_dict() for clause in program]


def program_from_list(items: list[dict]) -> list[Clause]:
    return [Clause.from_dict(item) for item in items]


def apply_clause(scene: Scene, clause: Clause) -> Scene:
    """The scene after one clause (a new Scene; `scene` is not modified)."""
    out = scene.copy()
    op = clause.op
    if op in ("add", "ref_add"):
        out.sprites.append(_copy_sprite(clause.sprite))
    elif op == "remove":
        out.sprites = [s for s in out.sprites if s.id != clause.target]
    elif op in ("replace", "ref_replace"):
        old = out.sprite(clause.target)
        new = _copy_sprite(clause.sprite)
        out.sprites[out.sprites.index(old)] = new
    elif op == "recolor":
        sprite = out.sprite(clause.target)
        sprite.color = clause.color
    elif op == "resize":
        sprite = out.sprite(clause.target)
        sprite.radius = sprite.radius * float(clause.scale)
    elif op == "background":
        out.background = Background(**dataclasses.asdict(clause.background))
    elif op == "global":
        out.global_state = clause.state
    return out


def apply_program(scene: Scene, program: list[Clause]) -> Scene:
    """The target scene: the clauses applied in order."""
    for clause in program:
        scene = apply_clause(scene, clause)
    return scene


def touched_sprite_ids(program: list[Clause]) -> set[int]:
    """Ids of source sprites that some clause removes, replaces or changes."""
    return {c.target for c in program if c.target is not None}


def _copy_sprite(sprite: Sprite) -> Sprite:
    return sprite_from_dict(dataclasses.asdict(sprite))
