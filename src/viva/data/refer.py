"""Referring expressions: which descriptions pick out exactly one sprite, their words, and a resolver.

A `Ref` is a description: optional color, shape and size attributes, and optionally an extreme among the
sprites that match them (biggest / smallest; left / right / top / bottom by the mean position over the
clip). `resolve` returns the ids a Ref picks in a scene, so a Ref is unambiguous when that is exactly one
id. Superlatives only count when they hold by a clear margin (`SIZE_RATIO`, `POSITION_MARGIN`); a near tie
resolves to all of the close candidates, i.e. ambiguous.

`resolve_expression(text, scene)` parses a generated phrase back into a Ref (any synonym of the grammar)
and resolves it: the round trip that tests use to check that instructions name their targets
unambiguously.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..world.render import frame_times
from ..world.scene import Scene, Sprite, size_name
from .grammar import (
    COLOR_WORDS,
    NOUNS,
    POSITION_BEFORE_NOUN,
    POSITION_WORDS,
    SHAPE_WORDS,
    SIZE_WORDS,
    SUPERLATIVE_WORDS,
    Phraser,
)
from .sampling import mean_position

# A superlative size holds when the extreme radius beats every other by this factor (SIZES are ~1.3 apart).
SIZE_RATIO = 1.2
# A position extreme holds when the extreme mean centre is this much (frame fraction) beyond every other.
POSITION_MARGIN = 0.12

EXTREMES: tuple[str, ...] = ("biggest", "smallest", "left", "right", "top", "bottom")


@dataclass(frozen=True)
class Ref:
    color: str | None = None
    shape: str | None = None
    size: str | None = None
    extreme: str | None = None

    @property
    def kind(self) -> str:
        parts = [n for n in ("size", "color", "shape") if getattr(self, n)]
        if self.extreme:
            parts.append(self.extreme)
        return "+".join(parts)


# Resolution ------------------------------------------------------------------------------------------


def resolve(ref: Ref, scene: Scene, times: np.ndarray) -> list[int]:
    """Ids of the sprites of `scene` that `ref` picks (mean positions over `times`): one id when the
    description is unambiguous, several when it is not, none when nothing matches."""
    cands = [
        s
        for s in scene.sprites
        if (ref.color is None or s.color == ref.color)
        and (ref.shape is None or s.shape == ref.shape)
        and (ref.size is None or size_name(s.radius) == ref.size)
    ]
    if ref.extreme is None or len(cands) <= 1:
        return [s.id for s in cands]
    if ref.extreme in ("biggest", "smallest"):
        sign = 1.0 if ref.extreme == "biggest" else -1.0
        logs = {s.id: sign * np.log(s.radius) for s in cands}
        best = max(logs.values())
        return sorted(i for i, v in logs.items() if v > best - np.log(SIZE_RATIO))
    axis, sign = {"left": (0, -1.0), "right": (0, 1.0), "top": (1, -1.0), "bottom": (1, 1.0)}[ref.extreme]
    values = {s.id: sign * mean_position(s, times)[axis] for s in cands}
    best = max(values.values())
    return sorted(i for i, v in values.items() if v > best - POSITION_MARGIN)


def unambiguous_refs(sprite: Sprite, scenes: list[Scene], times: np.ndarray) -> list[Ref]:
    """Descriptions of `sprite` that pick exactly it in every one of `scenes` (in which it must appear as
    it is). Color + shape is always among them when (color, shape) pairs are distinct. Size adjectives
    are used for small and large sprites only ("the medium-sized one" is not how people point)."""
    size = size_name(sprite.radius)
    options = [
        Ref(color=sprite.color),
        Ref(shape=sprite.shape),
        Ref(color=sprite.color, shape=sprite.shape),
    ]
    if size != "medium":
        options += [
            Ref(size=size, shape=sprite.shape),
            Ref(size=size, color=sprite.color),
            Ref(size=size, color=sprite.color, shape=sprite.shape),
        ]
    options += [Ref(extreme=e) for e in EXTREMES]
    return [ref for ref in options if all(resolve(ref, scene, times) == [sprite.id] for scene in scenes)]


def ref_weight(ref: Ref) -> float:
    """How often a valid description is chosen: short ones and superlatives more than long ones."""
    attributes = sum(x is not None for x in (ref.color, ref.shape, ref.size))
    if ref.extreme is not None:
        return 2.0
    return {1: 3.0, 2: 2.0 if ref.size is None else 1.5, 3: 1.0}[attributes]


# Words ---------------------------------------------------------------------------------------------------


def phrase(ph: Phraser, ref: Ref) -> str:
    """The words of a description: 'the red one', 'the small blue square', 'the biggest object',
    'the shape on the left'."""
    if ref.extreme in SUPERLATIVE_WORDS:
        return f"the {ph.word(SUPERLATIVE_WORDS[ref.extreme])} {ph.word(NOUNS)}"
    if ref.extreme is not None:
        words = ph.word(POSITION_WORDS[ref.extreme])
        noun = ph.word(NOUNS)
        return f"the {words} {noun}" if words in POSITION_BEFORE_NOUN else f"the {noun} {words}"
    parts = []
    if ref.size:
        parts.append(ph.word(SIZE_WORDS[ref.size]))
    if ref.color:
        parts.append(ph.word(COLOR_WORDS[ref.color]))
    parts.append(ph.word(SHAPE_WORDS[ref.shape]) if ref.shape else ph.word(NOUNS))
    return "the " + " ".join(parts)


def _lexicon(table: dict[str, tuple[str, ...]]) -> list[tuple[re.Pattern, str]]:
    pairs = [(word, key) for key, words in table.items() for word in words]
    pairs.sort(key=lambda p: -len(p[0]))  # longest first: "plus sign" before anything shorter
    return [(re.compile(r"\b" + re.escape(word) + r"\b"), key) for word, key in pairs]


_COLORS = _lexicon(COLOR_WORDS)
_SHAPES = _lexicon(SHAPE_WORDS)
_SIZES = _lexicon({**SIZE_WORDS, "medium": SIZE_WORDS["medium"] + ("medium",)})
_EXTREMES = _lexicon(
    {
        **SUPERLATIVE_WORDS,
        "left": POSITION_WORDS["left"] + ("left",),
        "right": POSITION_WORDS["right"] + ("right",),
        "top": POSITION_WORDS["top"] + ("top", "uppermost"),
        "bottom": POSITION_WORDS["bottom"] + ("bottom",),
    }
)


def _find(lexicon: list[tuple[re.Pattern, str]], text: str) -> str | None:
    found = {key for pattern, key in lexicon if pattern.search(text)}
    if len(found) > 1:
        raise ValueError(f"referring expression {text!r} names several of {sorted(found)}")
    return found.pop() if found else None


def parse_expression(text: str) -> Ref:
    """A referring expression's words back into a Ref (inverse of `phrase`, any synonym)."""
    text = text.lower()
    return Ref(
        color=_find(_COLORS, text),
        shape=_find(_SHAPES, text),
        size=_find(_SIZES, text),
        extreme=_find(_EXTREMES, text),
    )


def resolve_expression(text: str, scene: Scene, num_frames: int = 8) -> list[int]:
    """Ids of the sprites of `scene` that the referring expression `text` picks (mean positions over a
    clip of `num_frames` frames). Exactly one id means the expression is unambiguous."""
    return resolve(parse_expression(text), scene, frame_times(num_frames))
