"""The procedural world: scene graph, renderer, edit programs, detector and verifier."""

from .program import Clause, apply_clause, apply_program, program_from_list, program_to_list
from .render import render, render_float, render_reference
from .scene import (
    BACKGROUND_COLORS,
    BACKGROUND_KINDS,
    COLORS,
    GLOBAL_STATES,
    MOTIONS,
    PATTERNS,
    SHAPES,
    SIZES,
    Background,
    Motion,
    Pattern,
    Scene,
    Sprite,
)
from .detect import Detection, DetectionResult, Track, detect, link_tracks
from .verify import ClauseScore, VerifyResult, verify
