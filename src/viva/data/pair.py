"""One editing example: source and target clips of a scene, the edit mask, the instruction and its program."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..world.program import Clause
from ..world.scene import Scene

# Primitive categories (each maps to one op of viva.world.program.OPS) and the hybrid category.
CATEGORY_OPS: dict[str, str] = {
    "add": "add",
    "remove": "remove",
    "replace": "replace",
    "color": "recolor",
    "size": "resize",
    "background": "background",
    "weather": "global",  # night, snow, rain
    "style": "global",  # grayscale, posterize
    "ref_add": "ref_add",
    "ref_replace": "ref_replace",
}
PRIMITIVE_CATEGORIES: tuple[str, ...] = tuple(CATEGORY_OPS)
HYBRID = "hybrid"
ALL_CATEGORIES: tuple[str, ...] = PRIMITIVE_CATEGORIES + (HYBRID,)


@dataclass
class EditPair:
    """A generated example. Clips are uint8 [T,H,W,3] (T = 1 for image pairs); `mask` is uint8 [T,H,W]
    with 255 where the edit changes the frame (dilated) and 0 elsewhere; `reference` is uint8 [h,w,3] for
    reference-based edits, else None."""

    key: str
    category: str
    instruction: str
    program: list[Clause]
    source_scene: Scene
    target_scene: Scene
    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    reference: np.ndarray | None = None
    held_out: bool = False
    meta: dict = field(default_factory=dict)
