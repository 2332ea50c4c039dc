"""The verifier: does a clip (any frames: a model's output, blurred, noisy, off-color) carry out an edit
program on a source scene? It scores every clause in [0, 1], plus a "keep" clause for everything the
program leaves alone, and is the instruction-following reward and metric of the mini world.

    result = verify(source_scene, program, frames, reference=None)
    result.passed, result.score, result.scores  # {"remove[red circle]": 0.98, "keep": 1.0, ...}

How (all from the frames, the source scene and the program; the expected target scene is
`apply_program(source, program)`):

- Global state: the expected content is rendered without a global state, every state's color transform
  is applied to it (particles aside) and the frames are compared with each: over flat regions (pooled
  2x2, so a model's blur weighs little) after a fitted gain (a brightness shift must not change the
  answer), over sprite interiors, and by total colorfulness. Snow and rain also need their particles,
  found as small bright excesses over the temporal-median background (clips) or over the expected image
  (images), elongated for rain; their positions are never compared, so particles anywhere count. Pixels
  where an edit may or may not have happened are left out; a background edit is also explained with the
  source's background. The state with the lowest cost is the frames' state.
- Sprites: `detect` under that state. Sprites whose trajectory the program fixes (kept, recolored,
  resized, replaced) are matched per frame to detections of their color near their expected centre
  (greedy, best first; pieces of a sprite cut in two are joined, two touching sprites of one color seen as
  one detection are both found). Added sprites are free: any unmatched sprite of the right color and
  shape (and reference pattern), in the requested region.
- Background: the pixels no sprite covers (their median over frames: particles move away), away from the
  expected background's edges, against renders of the expected background and of alternatives (other
  kinds, other colors, the source's) in the frames' state with a fitted gain; a noise background may have
  any seed.
- Keep: every untouched sprite present where it should be, in its color and shape; nothing unexpected
  (sprite-sized detections nobody explains); the global state as it was unless the program changes it.

Scores are graded (closer to right scores higher) so that they work as rewards; `score` is the mean of the
clause scores; a clause passes at `threshold` (0.5) and the clip passes when every clause does. Under
grayscale, colors are gone: sprites are matched by luminance (and by the pixels they cover) where they
stand out from the background, and skipped where they do not (a green sprite on gray differs by 9/255).

The work that depends only on (source, program, frame size) is an `Expectation`, cached (LRU of 64):
verifying a group of samples of one prompt (Edit-GRPO) pays for it once.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field

import numpy as np

# The module, not the function `viva.world.detect` that the package namespace exports under its name.
D = importlib.import_module(f"{__package__}.detect")
from .program import REGIONS, Clause, apply_program, program_from_list
from .render import (
    NIGHT_GAIN,
    NIGHT_OFFSET,
    POSTERIZE_LEVELS,
    SNOW_COLOR,
    frame_times,
    render_background,
    render_float,
    render_reference,
)
from .scene import BACKGROUND_COLORS, BACKGROUND_KINDS, COLORS, GLOBAL_STATES, SHAPES, Background, Scene, Sprite

THRESHOLD = 0.5


# Results ---------------------------------------------------------------------------------------------


@dataclass
class ClauseScore:
    """One clause's verdict. `name` reads like "remove[red circle]"; `details` holds the measurements."""

    name: str
    op: str
    score: float
    passed: bool
    details: dict = field(default_factory=dict)


@dataclass
class VerifyResult:
    """Per-clause scores (the program's clauses in order, then "keep"), their mean `score`, and `passed`
    (every clause at or above the threshold). `global_state` is the state the frames were read in and
    `state_scores` how well each state explains them (1 = best)."""

    clauses: list[ClauseScore]
    score: float
    passed: bool
    global_state: str
    state_scores: dict[str, float]
    detections: D.DetectionResult | None = field(default=None, repr=False)

    @property
    def scores(self) -> dict[str, float]:
        return {c.name: c.score for c in self.clauses}

    def clause(self, name: str) -> ClauseScore:
        for c in self.clauses:
            if c.name == name:
                return c
        raise KeyError(name)

    def summary(self) -> str:
        parts = [f"{c.name}={c.score:.2f}{'' if c.passed else '!'}" for c in self.clauses]
        return f"{'PASS' if self.passed else 'FAIL'} {self.score:.2f} [{self.global_state}] " + " ".join(parts)


# Small helpers -----------------------------------------------------------------------------------------


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


def describe(sprite: Sprite) -> str:
    return f"{sprite.color} {sprite.shape}"


def pattern_factor(sprite: Sprite) -> float:
    """Expected membership mass per unit area of `sprite`: 1 for a solid sprite, less when its second
    paint is a darker (or duller) shade of the same hue."""
    if sprite.pattern.kind == "solid":
        return 1.0
    main = D.chroma_ab(np.asarray(COLORS[sprite.color]) / 255.0)
    second = D.chroma_ab(np.asarray(sprite.pattern.color2) / 255.0)
    shade = float(np.clip(np.dot(second, main) / np.dot(main, main), 0.0, 1.0))
    return 1.0 - (1.0 - shade) * _second_fraction(sprite)


_FRACTION_CACHE: dict = {}


def _second_fraction(sprite: Sprite) -> float:
    """Fraction of the sprite's area painted with its second color."""
    from .render import _pattern_mask, shape_sdf

    p = sprite.pattern
    key = (sprite.shape, p.kind, round(p.frequency, 4), round(p.angle, 4), round(p.phase, 4))
    if key not in _FRACTION_CACHE:
        lin = np.linspace(-1, 1, 81)
        u, v = np.meshgrid(lin, lin)
        inside = shape_sdf(sprite.shape, u, v) < 0
        second = _pattern_mask(p, u, v)
        _FRACTION_CACHE[key] = float(second[inside].mean()) if second is not None else 0.0
    return _FRACTION_CACHE[key]


def _luma(rgb) -> float:
    return float(np.dot(np.asarray(rgb, dtype=np.float64) / 255.0, D.LUMA))


def _sprite_luma(sprite: Sprite) -> float:
    base = _luma(COLORS[sprite.color])
    if sprite.pattern.kind == "solid":
        return base
    frac = _second_fraction(sprite)
    return (1 - frac) * base + frac * _luma(sprite.pattern.color2)


# Global state ----------------------------------------------------------------------------------------


def apply_state(planes: np.ndarray, state: str) -> np.ndarray:
    """A global state's color transform (particles aside) on clean planes [3,...] in 0..1."""
    if state == "none":
        return planes
    if state == "night":
        return planes * NIGHT_GAIN.reshape(3, *([1] * (planes.ndim - 1))) + NIGHT_OFFSET.reshape(
            3, *([1] * (planes.ndim - 1))
        )
    if state == "snow":
        return planes * 0.88 + (0.12 * SNOW_COLOR).reshape(3, *([1] * (planes.ndim - 1)))
    if state == "rain":
        return planes * 0.85
    if state == "grayscale":
        luma = planes[0] * D.LUMA[0] + planes[1] * D.LUMA[1] + planes[2] * D.LUMA[2]
        return np.broadcast_to(luma, planes.shape)
    if state == "posterize":
        value = np.maximum(np.maximum(planes[0], planes[1]), planes[2])
        levels = POSTERIZE_LEVELS - 1
        quant = np.maximum(np.round(value * levels), 1.0) / levels
        return planes * (quant / np.maximum(value, 1e-6))
    raise ValueError(f"unknown global state {state!r}")


def _pool(planes: np.ndarray) -> np.ndarray:
    """2x2 mean pooling of [..., H, W] (odd edges cropped); tiny frames are returned as they are."""
    h, w = planes.shape[-2:]
    if h < 16 or w < 16:
        return planes
    h2, w2 = h // 2 * 2, w // 2 * 2
    p = planes[..., :h2, :w2]
    return 0.25 * (p[..., 0::2, 0::2] + p[..., 1::2, 0::2] + p[..., 0::2, 1::2] + p[..., 1::2, 1::2])


def _box3(planes: np.ndarray) -> np.ndarray:
    """3x3 box blur (edges replicated) of [..., H, W] by shifted sums."""
    p = np.asarray(planes, dtype=np.float32)
    a = p.copy()
    a[..., 1:, :] += p[..., :-1, :]
    a[..., :-1, :] += p[..., 1:, :]
    a[..., 0, :] += p[..., 0, :]
    a[..., -1, :] += p[..., -1, :]
    b = a.copy()
    b[..., :, 1:] += a[..., :, :-1]
    b[..., :, :-1] += a[..., :, 1:]
    b[..., :, 0] += a[..., :, 0]
    b[..., :, -1] += a[..., :, -1]
    return b * np.float32(1.0 / 9.0)


def _mean_chroma(p: np.ndarray) -> float:
    """Mean chroma (max - min channel) of planes [3,...] (blur noisy frames first: noise adds chroma)."""
    return float((np.maximum(np.maximum(p[0], p[1]), p[2]) - np.minimum(np.minimum(p[0], p[1]), p[2])).mean())


GAIN_RANGE = (0.8, 1.25)  # brightness changes the verifier forgives
_COST_CAP = 0.3
# Particle evidence: how much of the flat background must show particles for a state to count as
# snowing / raining, and how much cost missing (or unexpected) particles add.
PARTICLE_FULL = 0.02
PARTICLE_WEIGHT = 0.06
STREAK_ELONGATION = 0.1
CHROMA_WEIGHT = 0.5
SPRITE_WEIGHT = 0.15
GAIN_PENALTY = 0.1  # cost per unit |log gain|: a tie-breaker towards explanations needing no brightness change
STATE_TEMPERATURE = 0.012


CAST_RANGE = 0.08  # per-channel deviation from the common gain forgiven (a model's slight color cast)


def _fit_cost_cast(obs: np.ndarray, pred: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float]:
    """(cost, gain): truncated mean L1 over channels of obs - g_c * pred ([3,...] arrays, over `valid`),
    with a gain per channel g_c within CAST_RANGE of their mean `gain` (a slight color cast, white
    balance), `gain` fitted in GAIN_RANGE."""
    if valid is not None:
        obs = obs[:, valid]
        pred = pred[:, valid]
    o, p = obs.reshape(3, -1), pred.reshape(3, -1)
    den = np.maximum((p * p).sum(axis=1), 1e-9)
    per = (o * p).sum(axis=1) / den
    gain = min(max(float(per.mean()), GAIN_RANGE[0]), GAIN_RANGE[1])
    g = gain * (1.0 + np.clip(per / gain - 1.0, -CAST_RANGE, CAST_RANGE))
    r = np.abs(o - g[:, None] * p).sum(axis=0)
    return float(np.minimum(r, _COST_CAP).mean()) if r.size else 0.0, gain


def _flat_mask(clean: np.ndarray, tol: float = 0.03) -> np.ndarray:
    """Where the expected image is locally flat (3x3 luminance range below tol): [T,H,W] bool."""
    luma = clean[0] * D.LUMA[0] + clean[1] * D.LUMA[1] + clean[2] * D.LUMA[2]
    hi = _shift_reduce(luma, np.maximum)
    lo = _shift_reduce(luma, np.minimum)
    return (hi - lo) < tol


def _shift_reduce(x: np.ndarray, op) -> np.ndarray:
    out = x.copy()
    op(out[..., 1:, :], x[..., :-1, :], out=out[..., 1:, :])
    op(out[..., :-1, :], x[..., 1:, :], out=out[..., :-1, :])
    row = out.copy()
    op(out[..., :, 1:], row[..., :, :-1], out=out[..., :, 1:])
    op(out[..., :, :-1], row[..., :, 1:], out=out[..., :, :-1])
    return out


def _box_mean(x: np.ndarray, ry: int, rx: int) -> np.ndarray:
    """Mean over a (2ry+1) x (2rx+1) box of [T,H,W] (edges replicated)."""
    from scipy.ndimage import uniform_filter1d

    x = np.asarray(x, dtype=np.float32)
    if ry:
        x = uniform_filter1d(x, 2 * ry + 1, axis=1, mode="nearest")
    if rx:
        x = uniform_filter1d(x, 2 * rx + 1, axis=2, mode="nearest")
    return x


# Particles: a bright local excess of this much luminance (3x3 mean) is a particle pixel.
PARTICLE_CONTRAST = 0.035
LINE_CONTRAST = 0.04


class _ParticleModel:
    """What the expected image says about finding snow flakes and rain streaks (see `evidence`)."""

    def __init__(self, expected_clean: np.ndarray, exclude: np.ndarray | None):
        x_luma = expected_clean[0] * D.LUMA[0] + expected_clean[1] * D.LUMA[1] + expected_clean[2] * D.LUMA[2]
        self.num_frames = x_luma.shape[0]
        if self.num_frames >= 4:
            # Particles move every frame, the background does not: the temporal median is the background.
            mid = (self.num_frames - 1) // 2
            flat = np.abs(x_luma - np.partition(x_luma, mid, axis=0)[mid : mid + 1]) < 0.01  # (static: flat)
        else:
            from scipy import ndimage

            self.x_luma = x_luma
            self.x_soft = [ndimage.gaussian_filter(x_luma, (0, s, s)) for s in (1.0, 1.8)]
            flat = _flat_mask(expected_clean, 0.03)
        # Stay two pixels away from anything that is not flat (sprite edges, background pattern edges).
        flat = ~_dilate2(~flat)
        if exclude is not None:
            flat &= ~exclude
        self.flat = flat
        self.n_valid = int(flat.sum())
        bg = float(np.mean(x_luma[flat])) if self.n_valid else float(np.mean(x_luma))
        self.base = {"fraction": 0.0, "elongation": 0.0, "valid": self.n_valid / flat.size,
                     "snow_contrast": 0.9 * (0.97 - (0.88 * bg + 0.115)),
                     "rain_contrast": 0.65 * abs(0.76 - 0.85 * bg)}

    def evidence(self, planes: np.ndarray) -> dict:
        """Snow flakes and rain streaks, wherever they are: small bright excesses of luminance over the
        temporal-median background (clips) or over the expected image (sharp or blurred, whichever
        explains a pixel best, high-passed: images), counted over pixels where the expected image is flat.
        Returns the fraction of such pixels that show particles, how elongated (vertical streaks: rain)
        they are, and how visible flakes and streaks would be on this background at all."""
        out = dict(self.base)
        if self.n_valid < 50:
            return out
        luma = planes[0] * D.LUMA[0] + planes[1] * D.LUMA[1] + planes[2] * D.LUMA[2]  # [T,H,W]
        if self.num_frames >= 4:
            mid = (self.num_frames - 1) // 2
            resid = luma - np.partition(luma, mid, axis=0)[mid : mid + 1]
        else:
            x = self.x_luma[self.flat]
            gain = float(np.dot(luma[self.flat], x) / max(float(np.dot(x, x)), 1e-6))
            resid = luma - gain * self.x_luma
            for soft in self.x_soft:
                alt = luma - gain * soft
                resid = np.where(np.abs(alt) < np.abs(resid), alt, resid)
            resid = resid - _box_mean(resid, 3, 3)
        flat = self.flat
        spot = _box3(resid)
        line = _box_mean(resid, 2, 0)  # a thin, near-vertical rain streak
        dots = flat & (spot >= PARTICLE_CONTRAST)
        hits = dots | (flat & (line >= LINE_CONTRAST))
        n_hit = int(hits.sum())
        out["fraction"] = n_hit / self.n_valid
        if int(dots.sum()) >= 4:
            hits = dots  # elongation measured where the 3x3 mean peaks (centred on particles)
        if n_hit >= 4:
            vert = _box_mean(resid, 3, 0)[hits]
            horiz = _box_mean(resid, 0, 3)[hits]
            out["elongation"] = float((vert.mean() - horiz.mean()) / max(spot[hits].mean(), 1e-6))
        return out


def particle_evidence(planes: np.ndarray, expected_clean: np.ndarray, exclude: np.ndarray | None = None) -> dict:
    """`_ParticleModel(expected_clean, exclude).evidence(planes)`."""
    return _ParticleModel(expected_clean, exclude).evidence(planes)


def _dilate2(mask: np.ndarray) -> np.ndarray:
    return D._dilate(D._dilate(mask))


class _StateModel:
    """Every global state's rendering of the expected content, prepared for comparison with frames.

    expected_clean: the expected content without a global state [3,T,H,W]; background: its clean
    background [H,W,3] (to find the sprites' interiors, whose colors tell states apart where the
    background cannot: snow or posterize on white); exclude: [T,H,W] pixels to leave out (where an edit
    may or may not have happened)."""

    def __init__(self, expected_clean: np.ndarray, background: np.ndarray | None, exclude: np.ndarray | None):
        xp = _pool(expected_clean)
        keep = None if exclude is None else _pool(exclude[None].astype(np.float32))[0] == 0
        # Compare where the expected image is locally flat: edges (sprites, background patterns) would
        # weigh the observed blur (a model's, a degradation's) more than the colors that tell states apart.
        spread = np.max([_shift_reduce(c, np.maximum) - _shift_reduce(c, np.minimum) for c in xp], axis=0)
        flat = spread < 0.06
        if keep is not None:
            flat &= keep
        if flat.mean() < 0.1:  # a busy image: everything (outside the edits)
            flat = keep if keep is not None and keep.mean() >= 0.1 else np.ones(spread.shape, dtype=bool)
        self.flat = flat
        self.keep = keep if keep is not None and keep.mean() >= 0.1 else None
        post = _pool(apply_state(expected_clean, "posterize"))  # not linear: transform, then pool
        xb, post_b = _box3(xp), _box3(post)
        if self.keep is not None:
            xb, post_b = xb[:, self.keep], post_b[:, self.keep]
        xf = xp[:, flat]
        self.interior = None
        x_i = None
        if background is not None:
            bg = np.ascontiguousarray(np.moveaxis(np.asarray(background, dtype=np.float32), 2, 0))[:, None]
            sprite = np.abs(expected_clean - bg).sum(axis=0) > 0.1
            interior = ~_dilate2(~sprite)  # two pixels inside: blur does not reach
            if exclude is not None:
                interior &= ~exclude
            if interior.sum() >= 8:
                self.interior = interior
                x_i = expected_clean[:, interior]
        self.pred, self.pred_dot, self.pred_chroma, self.pred_inner = {}, {}, {}, {}
        for state in GLOBAL_STATES:
            # (color transforms commute with pooling and box blurs; posterize does not)
            pf = post[:, flat] if state == "posterize" else apply_state(xf, state)
            self.pred[state] = np.ascontiguousarray(pf).ravel()
            self.pred_dot[state] = float(np.dot(self.pred[state], self.pred[state]))
            self.pred_chroma[state] = _mean_chroma(post_b if state == "posterize" else apply_state(xb, state))
            if x_i is not None:
                self.pred_inner[state] = np.ascontiguousarray(apply_state(x_i, state))
        self.particles = _ParticleModel(expected_clean, exclude)

    def costs(self, planes: np.ndarray, pooled: np.ndarray, pooled_box: np.ndarray, particles: dict | None = None):
        """(cost per state, info) for frames `planes` [3,T,H,W] (`pooled`: `_pool(planes)`, `pooled_box`:
        `_box3(pooled)`). Lower is better; see the module docstring."""
        obs = np.ascontiguousarray(pooled[:, self.flat]).ravel()
        n = obs.size // 3
        ob = pooled_box if self.keep is None else pooled_box[:, self.keep]
        # Total colorfulness, seen vs expected: sprites are small, so a state that drains (grayscale) or
        # changes their color would hardly move a mean over pixels; this term does not dilute.
        chroma_obs = _mean_chroma(ob)
        obs_i = planes[:, self.interior] if self.interior is not None else None
        costs: dict[str, float] = {}
        gains: dict[str, float] = {}
        for state in GLOBAL_STATES:
            pred = self.pred[state]
            den = self.pred_dot[state]
            gain = float(np.dot(obs, pred)) / den if den > 1e-9 else 1.0
            gain = min(max(gain, GAIN_RANGE[0]), GAIN_RANGE[1])
            r = np.abs(obs - gain * pred).reshape(3, n).sum(axis=0)
            cost = float(np.minimum(r, _COST_CAP).mean()) if n else 0.0
            cost += GAIN_PENALTY * abs(math.log(gain))
            cost += CHROMA_WEIGHT * abs(chroma_obs - gain * self.pred_chroma[state])
            if obs_i is not None:
                ri = np.abs(obs_i - gain * self.pred_inner[state]).sum(axis=0)
                cost += SPRITE_WEIGHT * float(np.minimum(ri, 0.6).mean())
            costs[state], gains[state] = cost, gain
        info: dict = {"gains": gains, "base_costs": dict(costs)}
        ev = particles if particles is not None else self.particles.evidence(planes)
        info["particles"] = ev
        seen = min(1.0, ev["fraction"] / PARTICLE_FULL)
        streak = _sigmoid((ev["elongation"] - STREAK_ELONGATION) * 12.0)
        # How visible particles would be here (0 on a white background for rain, ~0 for snow). Without
        # other frames to tell moving particles from the background, faint ones are easily missed.
        lo, span = (0.06, 0.12) if planes.shape[1] >= 4 else (0.1, 0.15)
        v_snow = float(np.clip((ev["snow_contrast"] - lo) / span, 0.0, 1.0)) * min(1.0, ev["valid"] / 0.15)
        v_rain = float(np.clip((ev["rain_contrast"] - lo) / span, 0.0, 1.0)) * min(1.0, ev["valid"] / 0.15)
        info.update(seen=seen, streak=streak, v_snow=v_snow, v_rain=v_rain)
        for state in GLOBAL_STATES:
            if state == "snow":
                costs[state] += PARTICLE_WEIGHT * (v_snow * (1.0 - seen) + seen * streak)
            elif state == "rain":
                costs[state] += PARTICLE_WEIGHT * (v_rain * (1.0 - seen) + seen * (1.0 - streak))
            else:
                costs[state] += PARTICLE_WEIGHT * seen
        return costs, info


def state_costs(
    planes: np.ndarray,
    expected_clean: np.ndarray,
    background: np.ndarray | None = None,
    particles: dict | None = None,
    exclude: np.ndarray | None = None,
) -> tuple[dict[str, float], dict]:
    """Cost of each global state explaining frames `planes` [3,T,H,W] given the expected clean content
    (see `_StateModel`); `particles`: the frames' particle evidence if already known. Lower is better."""
    pooled = _pool(planes)
    return _StateModel(expected_clean, background, exclude).costs(planes, pooled, _box3(pooled), particles)


def state_scores_from_costs(costs: dict[str, float]) -> dict[str, float]:
    best = min(costs.values())
    return {s: math.exp(-(c - best) / STATE_TEMPERATURE) for s, c in costs.items()}


# Expected sprites --------------------------------------------------------------------------------------


@dataclass
class _Expect:
    """A sprite the frames should (or should no longer) show, with its trajectory in pixels."""

    sprite: Sprite
    role: str  # kept | recolor | resize | replace | add | old
    color: int  # palette index
    centers: np.ndarray  # [T,2] (x, y) pixels
    r_px: float
    mass: float  # expected membership mass (unoccluded)
    visible: np.ndarray  # [T] fraction not hidden by sprites drawn above it
    luma: float
    key: int = -1
    luma_range: tuple[float, float] = (0.0, 1.0)  # luminance of its paints (one for a solid sprite)


def _expect(sprite: Sprite, role: str, times: np.ndarray, height: int, width: int) -> _Expect:
    short = float(min(height, width))
    pos = np.array([sprite.position(float(t)) for t in times])
    centers = np.stack([pos[:, 0] * width, pos[:, 1] * height], axis=1)
    r_px = sprite.radius * short
    mass = D.shape_area(sprite.shape) * r_px * r_px * pattern_factor(sprite)
    return _Expect(
        sprite=sprite,
        role=role,
        color=D.COLOR_NAMES.index(sprite.color),
        centers=centers,
        r_px=r_px,
        mass=mass,
        visible=np.ones(len(times)),
        luma=_sprite_luma(sprite),
        luma_range=(_luma(COLORS[sprite.color]),
                    _luma(sprite.pattern.color2) if sprite.pattern.kind != "solid" else _luma(COLORS[sprite.color])),
    )


def _occlusion(expects: list[_Expect]) -> None:
    """Approximate visible fractions (sprites as disks of equal area; drawn in (z, id) order)."""
    order = sorted(expects, key=lambda e: (e.sprite.z, e.sprite.id))
    for i, low in enumerate(order):
        ra = math.sqrt(low.mass / max(pattern_factor(low.sprite), 1e-6) / math.pi)
        hidden = np.zeros(len(low.centers))
        for high in order[i + 1 :]:
            rb = math.sqrt(high.mass / max(pattern_factor(high.sprite), 1e-6) / math.pi)
            d = np.hypot(*(low.centers - high.centers).T)
            hidden += _disk_overlap(d, ra, rb) / (math.pi * ra * ra)
        low.visible = np.clip(1.0 - hidden, 0.0, 1.0)


def _disk_overlap(d: np.ndarray, r1: float, r2: float) -> np.ndarray:
    d = np.maximum(d, 1e-9)
    out = np.zeros_like(d)
    full = d <= abs(r1 - r2)
    out[full] = math.pi * min(r1, r2) ** 2
    part = (d < r1 + r2) & ~full
    if part.any():
        dp = d[part]
        a1 = r1 * r1 * np.arccos(np.clip((dp * dp + r1 * r1 - r2 * r2) / (2 * dp * r1), -1, 1))
        a2 = r2 * r2 * np.arccos(np.clip((dp * dp + r2 * r2 - r1 * r1) / (2 * dp * r2), -1, 1))
        a3 = 0.5 * np.sqrt(np.maximum((-dp + r1 + r2) * (dp + r1 - r2) * (dp - r1 + r2) * (dp + r1 + r2), 0))
        out[part] = a1 + a2 - a3
    return out


# The verifier ------------------------------------------------------------------------------------------


class Expectation:
    """What the frames should show, from the source scene and the program alone (no frames): the target
    scene, its renders without a global state, the regions the edit touches, the sprites with their
    trajectories, prepared state models. Built once per (source, program, frame size) and cached: a group
    of samples of one prompt (Edit-GRPO) shares it."""

    def __init__(self, source: Scene, program: list[Clause], height: int, width: int, num_frames: int):
        self.source, self.program = source, program
        self.target = apply_program(source, program)
        self.H, self.W, self.T = height, width, num_frames
        self.short = float(min(height, width))
        self.times = frame_times(num_frames)

        # Global state. Where the program moves sprites (their places in the source and the target) the
        # frames may show either, so those pixels are left out; a background edit that may not have
        # happened is covered by explaining the frames with the source's background too, each state
        # keeping its better explanation.
        clean_target = dataclasses.replace(self.target, global_state="none")
        self.expected_clean = np.ascontiguousarray(np.moveaxis(render_float(clean_target, height, width, num_frames), 3, 0))
        self.bg_clean = render_background(self.target.background, height, width)
        self.bg_luma = self.bg_clean @ D.LUMA
        edited = self._edited_pixels()
        self.state_models = [_StateModel(self.expected_clean, self.bg_clean, edited)]
        if _bg_key(self.target.background) != _bg_key(source.background):
            bg_t = np.ascontiguousarray(np.moveaxis(self.bg_clean, 2, 0))[:, None]
            alt_bg = render_background(source.background, height, width)
            pure = np.abs(self.expected_clean - bg_t).sum(axis=0) < 1e-4  # background pixels
            alt_clean = np.where(pure[None], np.moveaxis(alt_bg, 2, 0)[:, None], self.expected_clean)
            self.state_models.append(_StateModel(alt_clean, alt_bg, edited))

        # Sprites: the target's, by role (the last clause that touches a sprite decides), and the source's.
        source_ids = {sp.id for sp in source.sprites}
        self.added_ids = {c.sprite.id for c in program if c.op in ("add", "ref_add")}
        touched = {c.target for c in program if c.target is not None}
        role_of: dict[int, str] = {}
        for c in program:
            if c.op in ("recolor", "resize") and c.target is not None:
                role_of[c.target] = "resize" if c.op == "resize" or role_of.get(c.target) == "resize" else c.op
            elif c.op in ("replace", "ref_replace"):
                role_of[c.sprite.id] = "replace" if c.op == "replace" else "ref_replace"
        self.expects: list[_Expect] = []
        for sp in self.target.sprites:
            if sp.id in self.added_ids:
                continue
            kept = sp.id in source_ids and sp.id not in touched
            e = _expect(sp, role_of.get(sp.id, "kept" if kept else "kept"), self.times, height, width)
            e.key = 1_000_000 + sp.id
            self.expects.append(e)
        self.added = {sp.id: _expect(sp, "add", self.times, height, width) for sp in self.target.sprites
                      if sp.id in self.added_ids}
        _occlusion(self.expects + list(self.added.values()))
        self.by_id = {e.sprite.id: e for e in self.expects}
        self.source_expects = {sp.id: _expect(sp, "old", self.times, height, width) for sp in source.sprites}
        _occlusion(list(self.source_expects.values()))
        # Old places of edited sprites (what remains there is the edit clauses' business, not keep's).
        self.old_places = [self.source_expects[c.target] for c in program if c.target is not None and c.op != "resize"]
        self.background_preds: dict[tuple, list] = {}  # (clause index, state) -> candidate renders

    def _edited_pixels(self) -> np.ndarray | None:
        """[T,H,W] bool: disks around every sprite a clause adds, removes or changes, where it is in the
        source and in the target; None when there is none."""
        ids = {c.target for c in self.program if c.target is not None}
        ids |= {c.sprite.id for c in self.program if c.sprite is not None}
        sprites = [sp for sp in self.source.sprites if sp.id in ids] + [sp for sp in self.target.sprites if sp.id in ids]
        if not sprites:
            return None
        yy = (np.arange(self.H, dtype=np.float32) + 0.5)[None, :, None]
        xx = (np.arange(self.W, dtype=np.float32) + 0.5)[None, None, :]
        mask = np.zeros((self.T, self.H, self.W), dtype=bool)
        for sp in sprites:
            pos = np.array([sp.position(float(t)) for t in self.times], dtype=np.float32)
            cx = (pos[:, 0] * self.W)[:, None, None]
            cy = (pos[:, 1] * self.H)[:, None, None]
            r = 1.25 * sp.radius * self.short + 2.5
            mask |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        return mask


_CACHE: dict[str, Expectation] = {}
CACHE_SIZE = 64


def clear_cache() -> None:
    """Forget cached expectations (see `Expectation`)."""
    _CACHE.clear()


def expectation(source: Scene, program: list[Clause], height: int, width: int, num_frames: int,
                cache: bool = True) -> Expectation:
    """The `Expectation` of (source, program) at a frame size, from the cache when it is there."""
    if not cache:
        return Expectation(source, program, height, width, num_frames)
    key = f"{source!r}|{program!r}|{height}x{width}x{num_frames}"  # dataclass reprs show every field
    exp = _CACHE.pop(key, None)
    if exp is None:
        exp = Expectation(source, program, height, width, num_frames)
    _CACHE[key] = exp  # most recently used last
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    return exp


class _Context:
    """One verification: the expectation, the frames, their global state, detections as arrays, and
    which expectation or clause owns each detection."""

    def __init__(self, exp: Expectation, planes: np.ndarray, reference):
        self.exp = exp
        self.source, self.program, self.target = exp.source, exp.program, exp.target
        self.planes = planes
        _, self.T, self.H, self.W = planes.shape
        self.short, self.times = exp.short, exp.times
        self.reference = reference
        self.bg_clean, self.bg_luma = exp.bg_clean, exp.bg_luma

        # 1. Global state: each state's best explanation over the expected contents.
        pooled = _pool(planes)
        pooled_box = _box3(pooled)
        self.costs, self.state_info = exp.state_models[0].costs(planes, pooled, pooled_box)
        for model in exp.state_models[1:]:
            alt, _ = model.costs(planes, pooled, pooled_box, self.state_info["particles"])
            self.costs = {k: min(v, alt[k]) for k, v in self.costs.items()}
        self.state_scores = state_scores_from_costs(self.costs)
        self.state = min(self.costs, key=self.costs.get)
        self.gray = self.state == "grayscale"

        # 2. Detections, as arrays.
        self.det = D.detect_planes(planes, self.state, background=self.bg_clean)
        dets = self.det.detections
        self.n = len(dets)
        self.dx = np.array([d.x * self.W for d in dets])
        self.dy = np.array([d.y * self.H for d in dets])
        self.dmass = np.array([d.mass for d in dets])
        self.dframe = np.array([d.frame for d in dets], dtype=np.int64)
        self.dcolor = np.array([-1 if d.color == D.GRAY else D.COLOR_NAMES.index(d.color) for d in dets], dtype=np.int64)
        self.dluma = np.array([d.luma for d in dets])
        self.dcontrast = np.array([d.contrast for d in dets])
        self.dprobs = np.stack([d.shape_probs for d in dets]) if dets else np.zeros((0, len(SHAPES)))
        self.dconf = np.array([d.confidence for d in dets])
        self.assigned = np.full(self.n, -1, dtype=np.int64)  # expectation key or clause index owning a det
        self.gain = self.state_info["gains"][self.state]
        self.min_px = D.min_component_pixels(self.H, self.W)

    # Color compatibility of detections with an expectation: 1 / 0 by palette name, or by luminance.
    def color_match(self, e: _Expect, color: int | None = None) -> np.ndarray:
        if not self.gray:
            return (self.dcolor == (e.color if color is None else color)).astype(np.float64)
        luma = e.luma if color is None else _luma(COLORS[D.COLOR_NAMES[color]])
        # Contrast with the background where the detection is, expected vs seen. Blur pulls a small
        # sprite's contrast towards 0, so less contrast is forgiven more than more.
        xs = np.clip(self.dx.astype(int), 0, self.W - 1)
        ys = np.clip(self.dy.astype(int), 0, self.H - 1)
        bg = self.bg_luma[ys, xs] * self.gain
        want = self.gain * luma - bg
        seen = self.dcontrast
        ratio = seen / np.where(np.abs(want) < 1e-3, 1e-3, want)
        low = np.clip((ratio - 0.3) / 0.3, 0.0, 1.0)
        high = np.exp(-0.5 * (np.maximum(seen * np.sign(want) - np.abs(want) * 1.2, 0.0) / 0.06) ** 2)
        # Or its own luminance is right (over a checker, "the background" is two things); a patterned
        # sprite may show either paint.
        lo, hi = (luma, luma) if color is not None else (min(e.luma_range), max(e.luma_range))
        off = np.maximum(self.gain * lo - self.dluma, 0.0) + np.maximum(self.dluma - self.gain * hi, 0.0)
        own = np.exp(-0.5 * (off / 0.06) ** 2)
        return np.maximum(low * high, own)

    def visible_in_gray(self, e: _Expect) -> np.ndarray:
        """[T] whether the sprite stands out from the background under grayscale (always True otherwise)."""
        if not self.gray:
            return np.ones(self.T, dtype=bool)
        xs = np.clip(e.centers[:, 0].astype(int), 0, self.W - 1)
        ys = np.clip(e.centers[:, 1].astype(int), 0, self.H - 1)
        bg = self.bg_clean[ys, xs] @ D.LUMA
        return np.abs(e.luma - bg) >= 0.1

    def pos_score(self, e: _Expect, tol_scale: float = 1.0) -> np.ndarray:
        """Gaussian closeness of each detection to e's centre in the detection's frame: [n]."""
        c = e.centers[self.dframe]
        d = np.hypot(self.dx - c[:, 0], self.dy - c[:, 1])
        tol = (0.45 * e.r_px + 1.5) * tol_scale
        return np.exp(-0.5 * (d / tol) ** 2)

    def size_score(self, e: _Expect, sigma: float | None) -> np.ndarray:
        if sigma is None:
            return np.ones(self.n)
        expected = np.maximum(e.mass * np.maximum(e.visible[self.dframe], 0.05), 1.0)
        return np.exp(-0.5 * (np.log(np.maximum(self.dmass, 1e-3) / expected) / sigma) ** 2)


SIZE_SIGMA = {"kept": 0.45, "recolor": 0.5, "resize": None, "replace": 0.7, "ref_replace": 0.7}


def _match_known(ctx: _Context, expects: list[_Expect]) -> dict[int, dict]:
    """Assign detections to sprites with fixed trajectories, per frame, best pairs first, then add the
    pieces of a sprite (a rain streak can cut one in two; under grayscale, a checker background's edges
    do) found within its footprint. Returns per key: {"pos": [T] position score of the (combined)
    detection (0 if none), "mass": [T] matched mass, "dets": [T] lists of detection indices}."""
    pairs = []
    for e in expects:
        sigma = SIZE_SIGMA.get(e.role, 0.5)
        if ctx.gray and sigma is not None:
            sigma = 1.2  # pieces
        q = ctx.pos_score(e, 1.5 if ctx.gray else 1.0) * ctx.color_match(e) * ctx.size_score(e, sigma)
        for j in np.flatnonzero(q > 0.02):
            pairs.append((q[j], e.key, int(j)))
    pairs.sort(key=lambda p: -p[0])
    out = {e.key: {"pos": np.zeros(ctx.T), "mass": np.zeros(ctx.T), "dets": [[] for _ in range(ctx.T)]} for e in expects}
    taken: set[tuple[int, int]] = set()
    for q, key, j in pairs:
        t = int(ctx.dframe[j])
        if ctx.assigned[j] >= 0 or (key, t) in taken:
            continue
        taken.add((key, t))
        ctx.assigned[j] = key
        out[key]["dets"][t].append(j)
    for e in expects:
        col = np.ones(ctx.n, dtype=bool) if ctx.gray else ctx.color_match(e) > 0.5
        m = out[e.key]
        for t in range(ctx.T):
            if not m["dets"][t]:
                continue
            c = e.centers[t]
            near = (ctx.dframe == t) & (ctx.assigned < 0) & col
            near &= np.hypot(ctx.dx - c[0], ctx.dy - c[1]) <= e.r_px + 2.0
            for j in np.flatnonzero(near):
                ctx.assigned[j] = e.key
                m["dets"][t].append(int(j))
            idx = m["dets"][t]
            mass = ctx.dmass[idx]
            m["mass"][t] = mass.sum()
            x = float(np.dot(mass, ctx.dx[idx]) / max(mass.sum(), 1e-9))
            y = float(np.dot(mass, ctx.dy[idx]) / max(mass.sum(), 1e-9))
            tol = 0.45 * e.r_px + 1.5
            m["pos"][t] = math.exp(-0.5 * (math.hypot(x - c[0], y - c[1]) / tol) ** 2)
    _merged(ctx, expects, out)
    if ctx.gray:
        _gray_coverage(ctx, expects, out)
    return out


def _merged(ctx: _Context, expects: list[_Expect], out: dict) -> None:
    """Two sprites of one color that (nearly) touch can show as one detection, matched to one of them:
    the other one is present too when the detection's mass and centre fit the pair's."""
    owner_of: dict[int, list[_Expect]] = {}
    for e in expects:
        for idx in out[e.key]["dets"]:
            for j in idx[:1]:
                owner_of.setdefault(j, []).append(e)
    for e in expects:
        m = out[e.key]
        col = ctx.color_match(e) > 0.5
        for t in range(ctx.T):
            if m["dets"][t] or e.visible[t] < 0.2:
                continue
            best = None
            for j in np.flatnonzero((ctx.dframe == t) & col & (ctx.assigned >= 0)):
                group = owner_of.get(int(j), [])
                if not group:
                    continue
                members = group + [e]
                masses = np.array([g.mass * g.visible[t] for g in members])
                total = float(masses.sum())
                cx = float(np.dot(masses, [g.centers[t, 0] for g in members]) / total)
                cy = float(np.dot(masses, [g.centers[t, 1] for g in members]) / total)
                tol = 0.45 * math.sqrt(total / math.pi) + 1.5
                pos = math.exp(-0.5 * (math.hypot(ctx.dx[j] - cx, ctx.dy[j] - cy) / tol) ** 2)
                ratio = ctx.dmass[j] / total
                if pos > 0.3 and 0.6 <= ratio <= 1.5 and (best is None or pos > best[0]):
                    best = (pos, int(j), members)
            if best is None:
                continue
            pos, j, members = best
            for g in members:
                gm = out[g.key]
                gm["pos"][t] = pos
                if j not in gm["dets"][t]:
                    gm["dets"][t].append(j)
                gm["mass"][t] = 0.0  # its own size is unknown here
            owner_of[j] = members
    # A sprite matched to a detection that also holds an added sprite of its color (touching it where the
    # program puts it): its position is the pair's. The added one is found by `_find_new` in the excess.
    for e in expects:
        m = out[e.key]
        for t in range(ctx.T):
            if len(m["dets"][t]) != 1 or m["pos"][t] > 0.8:
                continue
            j = m["dets"][t][0]
            mine = e.mass * e.visible[t]
            if ctx.dmass[j] < 1.2 * mine:
                continue
            for a in ctx.exp.added.values():
                if a.color != e.color:
                    continue
                total = mine + a.mass * a.visible[t]
                cx = (mine * e.centers[t, 0] + a.mass * a.visible[t] * a.centers[t, 0]) / total
                cy = (mine * e.centers[t, 1] + a.mass * a.visible[t] * a.centers[t, 1]) / total
                tol = 0.45 * math.sqrt(total / math.pi) + 1.5
                pos = math.exp(-0.5 * (math.hypot(ctx.dx[j] - cx, ctx.dy[j] - cy) / tol) ** 2)
                if 0.6 <= ctx.dmass[j] / total <= 1.5 and pos > m["pos"][t]:
                    m["pos"][t] = pos
                    m["mass"][t] = 0.0


def _gray_coverage(ctx: _Context, expects: list[_Expect], out: dict) -> None:
    """Under grayscale, sprites of similar luminance merge into one detection and a checker background
    cuts them into pieces, so a detection's centre says little. There a sprite's presence per frame is
    the fraction of its expected core (a disk of 0.6 of its radius) covered by detected pixels of its
    luminance; the detections there count as its."""
    owner = ctx.det.owner
    luma = ctx.det.clean[0] * D.LUMA[0] + ctx.det.clean[1] * D.LUMA[1] + ctx.det.clean[2] * D.LUMA[2]
    for e in expects:
        m = out[e.key]
        r = max(0.6 * math.sqrt(e.mass / max(pattern_factor(e.sprite), 1e-6) / math.pi), 1.0)
        lo, hi = min(e.luma_range) * ctx.gain - 0.08, max(e.luma_range) * ctx.gain + 0.08
        k = int(math.ceil(r))
        dy, dx = np.mgrid[-k : k + 1, -k : k + 1]
        disk = dx * dx + dy * dy <= r * r
        for t in range(ctx.T):
            cx, cy = int(e.centers[t, 0]), int(e.centers[t, 1])
            ys, xs = cy + dy[disk], cx + dx[disk]
            ok = (ys >= 0) & (ys < ctx.H) & (xs >= 0) & (xs < ctx.W)
            if not ok.any():
                continue
            ys, xs = ys[ok], xs[ok]
            own = owner[t, ys, xs]
            lum = luma[t, ys, xs]
            good = (own > 0) & (lum >= lo) & (lum <= hi)
            m["pos"][t] = max(m["pos"][t], float(good.mean()))
            for j in np.unique(own[good]) - 1:
                if ctx.assigned[j] < 0:
                    ctx.assigned[j] = e.key
                    m["dets"][t].append(int(j))
                    m["mass"][t] += ctx.dmass[j]


def _consistent(ctx: _Context, js: list[int], e: _Expect | None) -> int:
    """The detection that shows a matched sprite whole in one frame, or -1: a sprite seen in pieces, or
    merged with a neighbour of the same luminance (grayscale), has no reliable outline or look."""
    if not js:
        return -1
    masses = ctx.dmass[js]
    if masses.max() < 0.75 * masses.sum():
        return -1
    j = js[int(np.argmax(masses))]
    if e is not None:
        t = int(ctx.dframe[j])
        if math.hypot(ctx.dx[j] - e.centers[t, 0], ctx.dy[j] - e.centers[t, 1]) > 0.4 * e.r_px + 1.0:
            return -1  # its centre is off: merged with a neighbour, or cut
        if ctx.gray and not 0.5 <= ctx.dmass[j] / max(e.mass, 1e-6) <= 1.8:
            return -1
    return j


def _shape_factor(ctx: _Context, dets: list[list[int]], shape: str, versus: str | None = None,
                  e: _Expect | None = None) -> float:
    """How well the matched detections look like `shape`: its probability relative to the best shape's
    (or, with `versus`, relative to that one shape), confidence-weighted over frames; 1 when nothing
    was matched (presence carries that) or no frame shows the sprite whole."""
    idx = [j for j in (_consistent(ctx, js, e) for js in dets) if j >= 0]
    if not idx:
        return 1.0
    w = ctx.dconf[idx] + 1e-3
    p = (ctx.dprobs[idx] * w[:, None]).sum(0) / w.sum()
    pe = p[SHAPES.index(shape)]
    if versus is not None and versus != shape:
        po = p[SHAPES.index(versus)]
        return float(np.clip((pe / (pe + po + 1e-9) - 0.2) / 0.5, 0.0, 1.0))
    return float(min(1.0, pe / (p.max() + 1e-9) / 0.8))


def _presence(match: dict, e: _Expect, ctx: _Context) -> tuple[float, np.ndarray]:
    """Mean per-frame position score over the frames where e should be visible; and the weights."""
    w = np.clip((e.visible - 0.2) / 0.5, 0.0, 1.0) * ctx.visible_in_gray(e)
    if w.sum() < 1e-6:
        return 1.0, w
    return float((match["pos"] * w).sum() / w.sum()), w


def _near_presence(ctx: _Context, e: _Expect, color: int | None = None, shape: str | None = None) -> float:
    """How much an UNASSIGNED detection of e's color (and shape) is still found along e's trajectory:
    the mean over frames of the best position x shape x size score."""
    free = ctx.assigned < 0
    if not free.any():
        return 0.0
    q = ctx.pos_score(e) * ctx.color_match(e, color) * free
    q *= ctx.size_score(e, 0.8)
    if shape is not None and ctx.n:
        p = ctx.dprobs
        q *= np.minimum(1.0, p[:, SHAPES.index(shape)] / (p.max(axis=1) + 1e-9) / 0.8)
    w = np.clip((e.visible - 0.2) / 0.5, 0.0, 1.0) * ctx.visible_in_gray(e)
    if w.sum() < 1e-6:
        return 0.0
    per_frame = np.zeros(ctx.T)
    np.maximum.at(per_frame, ctx.dframe, q)
    return float((per_frame * w).sum() / w.sum())


def _region_score(x: float, y: float, region: str | None) -> float:
    if not region:
        return 1.0
    col, row = REGIONS[region]
    dx = max(col / 3.0 - x, 0.0, x - (col + 1) / 3.0)
    dy = max(row / 3.0 - y, 0.0, y - (row + 1) / 3.0)
    return math.exp(-0.5 * (math.hypot(dx, dy) / 0.035) ** 2)


def _candidates(ctx: _Context, free: np.ndarray, radius_px: float) -> list[np.ndarray]:
    """Candidate sprites among the free detections: each detection alone, or under grayscale (where a
    checker background or a pattern cuts sprites into pieces) groups of detections of one frame within
    `radius_px` of the group's largest piece."""
    idx = np.flatnonzero(free)
    if not ctx.gray:
        return [np.array([j]) for j in idx]
    groups = []
    left = set(int(j) for j in idx)
    for j in idx[np.argsort(-ctx.dmass[idx])]:
        j = int(j)
        if j not in left:
            continue
        near = [k for k in left if ctx.dframe[k] == ctx.dframe[j]
                and math.hypot(ctx.dx[k] - ctx.dx[j], ctx.dy[k] - ctx.dy[j]) <= radius_px]
        left -= set(near)
        groups.append(np.array(sorted(near)))
    return groups


def _excess(ctx: _Context, e: _Expect) -> list[tuple]:
    """What detections matched to a known sprite of e's color hold beyond it (an added sprite touching
    it merges with it): [(detection, excess mass, excess centre x, y px)] where the excess is sprite-sized."""
    out = []
    for j in np.flatnonzero(ctx.assigned >= 1_000_000):
        known = ctx.exp.by_id.get(int(ctx.assigned[j]) - 1_000_000)
        if known is None or known.color != e.color:
            continue
        t = int(ctx.dframe[j])
        mine = known.mass * known.visible[t]
        rest = float(ctx.dmass[j]) - mine
        if rest < 0.4 * e.mass:
            continue
        x = (ctx.dmass[j] * ctx.dx[j] - mine * known.centers[t, 0]) / rest
        y = (ctx.dmass[j] * ctx.dy[j] - mine * known.centers[t, 1]) / rest
        out.append((int(j), rest, float(x), float(y)))
    return out


def _find_new(ctx: _Context, sprite: Sprite, region: str | None, owner: int):
    """The unassigned detections that could be a newly added `sprite` (its color, its shape, roughly its
    size), the best candidate per frame, kept when they agree on one place; they get assigned to `owner`.
    Returns (score details, views [(frame, silhouette x px, y px, silhouette mass, detection or -1)])."""
    e = _expect(sprite, "add", ctx.times, ctx.H, ctx.W)
    details, views = _search_new(ctx, e, region, owner)
    if ctx.gray and ctx.visible_in_gray(e).mean() < 0.5:
        # Under grayscale it would hardly stand out from the background where the program puts it: there
        # is nothing to check (what was found is still its, not unexpected).
        return {"presence": 1.0, "shape": 1.0, "region": 1.0, "size": 1.0, "unverifiable": True}, views
    return details, views


def _search_new(ctx: _Context, e: _Expect, region: str | None, owner: int):
    sprite = e.sprite
    p = ctx.dprobs
    si = SHAPES.index(sprite.shape)
    geo = D.shape_geometry()
    col_det = ctx.color_match(e)
    # Candidates: (frame, members to assign, mass, x, y, color score, shape score or None (unknown)).
    cands = []
    for members in _candidates(ctx, ctx.assigned < 0, e.r_px + 2.0):
        mass = ctx.dmass[members]
        total = float(mass.sum())
        x = float(np.dot(mass, ctx.dx[members]) / max(total, 1e-9))
        y = float(np.dot(mass, ctx.dy[members]) / max(total, 1e-9))
        col = float(np.dot(mass, col_det[members]) / max(total, 1e-9))
        if len(members) == 1:
            j = members[0]
            shape_f = float(min(1.0, p[j, si] / (p[j].max() + 1e-9) / 0.8))
        else:  # pieces (grayscale): each has a luminance of the sprite's; no outline to judge
            shape_f = None
        cands.append((int(ctx.dframe[members[0]]), members, total, x, y, col, shape_f))
    for j, total, x, y in _excess(ctx, e):
        cands.append((int(ctx.dframe[j]), np.array([], dtype=np.int64), total, x, y, float(col_det[j]), None))
    best: dict[int, tuple] = {}
    for t, members, total, x, y, col, shape_f in cands:
        # Size is loose: an instruction may or may not name one.
        ratio = math.log(max(total, 1e-3) / e.mass)
        size_f = math.exp(-0.5 * (max(abs(ratio) - 0.5, 0.0) / 0.5) ** 2)
        big = total >= max(2.0 * ctx.min_px, 0.2 * e.mass)
        q = col * (0.25 + 0.75 * (1.0 if shape_f is None else shape_f)) * size_f * big
        if q > 0.05 and (t not in best or q > best[t][0]):
            best[t] = (q, members, x, y, col, shape_f, size_f)
    empty = {"presence": 0.0, "shape": 0.0, "region": 0.0, "size": 0.0}
    if not best:
        return empty, []
    chosen = sorted(best.items())
    # Keep the candidates that agree with the majority position (one sprite, not scattered blobs).
    mx = float(np.median([c[2] for _, c in chosen]))
    my = float(np.median([c[3] for _, c in chosen]))
    chosen = [(t, c) for t, c in chosen if math.hypot(c[2] - mx, c[3] - my) <= 0.35 * ctx.short]
    views = []
    for t, (q, members, x, y, col, shape_f, size_f) in chosen:
        for j in members:
            ctx.assigned[j] = owner
        if len(members) == 1:
            views.extend(_det_views(ctx, [int(members[0])]))
        else:  # its expected size at the place found
            views.append((t, x, y, geo.area[si] * e.r_px * e.r_px, -1))
    # Shape: confidence-weighted probabilities of the candidates that show an outline.
    singles = [int(c[1][0]) for _, c in chosen if c[5] is not None]
    if singles:
        w = ctx.dconf[singles] + 1e-3
        probs = (p[singles] * w[:, None]).sum(0) / w.sum()
        shape_score = float(min(1.0, probs[si] / (probs.max() + 1e-9) / 0.8))
    else:
        shape_score = 1.0
    x = float(np.mean([c[2] for _, c in chosen]) / ctx.W)
    y = float(np.mean([c[3] for _, c in chosen]) / ctx.H)
    presence = float(sum(c[4] for _, c in chosen) / ctx.T)
    return (
        {"presence": presence, "shape": shape_score, "region": _region_score(x, y, region),
         "size": float(np.mean([c[6] for _, c in chosen])), "x": x, "y": y},
        views,
    )


# Pattern (reference ops) --------------------------------------------------------------------------------


_PAT_N = 15


def _canonical_samples(planes, t, cx, cy, r_px, sprite: Sprite, blur_px: float, luma: bool = False):
    """The sprite's look sampled on a grid in its own unit frame, centred at (cx, cy) px (the shape's
    centre, not its centroid) with radius r_px: membership (chroma along its hue / palette chroma), or
    luminance with `luma`. Returns ([N*N] values, [N*N] inside-the-shape mask)."""
    from scipy import ndimage

    from .render import shape_sdf

    lin = np.linspace(-0.9, 0.9, _PAT_N)
    u, v = np.meshgrid(lin, lin)
    inside = (shape_sdf(sprite.shape, u, v) < -0.12).ravel()
    ys = cy + v.ravel() * r_px - 0.5
    xs = cx + u.ravel() * r_px - 0.5
    vals = []
    for ch in range(3):
        img = planes[ch, t]
        if blur_px > 0.3:
            img = ndimage.gaussian_filter(img, blur_px)
        vals.append(ndimage.map_coordinates(img, [ys, xs], order=1, mode="nearest"))
    rgb = np.stack(vals, -1)
    if luma:
        return rgb @ D.LUMA, inside
    k = D.COLOR_NAMES.index(sprite.color)
    ab = D.chroma_ab(rgb)
    return (ab[:, 0] * D._PALETTE_DIR[0, k] + ab[:, 1] * D._PALETTE_DIR[1, k]) * D._PALETTE_SCALE[k], inside


def _det_views(ctx: _Context, dets: list[int]) -> list[tuple]:
    out = []
    for j in dets:
        d = ctx.det.detections[j]
        out.append((d.frame, d.sx * ctx.W, d.sy * ctx.H, d.silhouette_mass, j))
    return out


def _match_views(ctx: _Context, m: dict, e: _Expect) -> list[tuple]:
    """Views (see `_find_new`) of a matched known sprite, one per frame where it was found: its
    detection when that shows it whole, else its expected place and size."""
    views = []
    geo = D.shape_geometry()
    si = SHAPES.index(e.sprite.shape)
    for t, idx in enumerate(m["dets"]):
        if not idx:
            continue
        j = _consistent(ctx, idx, e)
        if j >= 0:
            views.extend(_det_views(ctx, [j]))
            continue
        cx, cy = e.centers[t]
        views.append((t, cx + geo.centroid[si, 0] * e.r_px, cy + geo.centroid[si, 1] * e.r_px,
                      geo.area[si] * e.r_px * e.r_px, -1))
    return views


def _pattern_score(ctx: _Context, sprite: Sprite, views: list[tuple]) -> dict:
    """How well the detections' look matches the patterned `sprite` of the reference image: correlation of
    their membership pattern (luminance under grayscale) with the reference's, in the sprite's own frame;
    and their darkness (mass per silhouette area: a pattern's darker paint lowers it, a solid sprite
    keeps it near 1; not under grayscale)."""
    if not views:
        return {"pattern": 0.0, "corr": 0.0, "dark": 0.0}
    ref = ctx.reference
    if ref is None:
        ref = render_reference(sprite)
    ref_planes = D.to_planes(ref)  # [3,1,h,w]
    rh, rw = ref_planes.shape[2:]
    r_ref = 0.36 * min(rh, rw)
    geo = D.shape_geometry()
    si = SHAPES.index(sprite.shape)
    cent = geo.centroid[si]
    views = views[:8]
    radii = [math.sqrt(max(v[3], 1.0) / geo.area[si]) for v in views]
    # The reference, blurred down to the frames' scale (a pixel there spans r_ref / r_px pixels here).
    blur_ref = 0.7 * r_ref / max(float(np.median(radii)), 1.0)
    f_ref, inside = _canonical_samples(ref_planes, 0, rw / 2.0, rh / 2.0, r_ref, sprite, blur_ref, ctx.gray)
    b = f_ref[inside] - f_ref[inside].mean()
    corrs, darks = [], []
    for (t, sx, sy, _, j), r_px in zip(views, radii):
        cx = sx - cent[0] * r_px
        cy = sy - cent[1] * r_px
        f_obs, _ = _canonical_samples(ctx.det.clean, t, cx, cy, r_px, sprite, 0.0, ctx.gray)
        a = f_obs[inside] - f_obs[inside].mean()
        den = math.sqrt(float((a * a).sum() * (b * b).sum()))
        corrs.append(float((a * b).sum() / den) if den > 1e-9 else 0.0)
        if j >= 0:
            det = ctx.det.detections[j]
            darks.append(det.mass / max(det.silhouette_mass, 1.0))
    corr = float(np.mean(corrs))
    dark = float(np.median(darks)) if darks else 1.0
    # Darkness: 1 at the pattern's expected level, 0 at a solid sprite's (~0.97).
    solid = 0.97
    if sprite.pattern.kind == "solid":
        return {"pattern": float(np.clip((dark - 0.75) / 0.2, 0.0, 1.0)), "corr": corr, "dark": dark}
    corr_score = float(np.clip((corr - 0.05) / 0.3, 0.0, 1.0))
    if ctx.gray:
        return {"pattern": corr_score, "corr": corr, "dark": dark}
    dark_score = float(np.clip((solid - dark) / max(solid - pattern_factor(sprite) - 0.02, 0.05), 0.0, 1.0))
    return {"pattern": 0.5 * dark_score + 0.5 * corr_score, "corr": corr, "dark": dark}


# Background --------------------------------------------------------------------------------------------


def _bg_key(bg: Background) -> tuple:
    """What a background looks like (a solid one has no second color)."""
    return (bg.kind, bg.color, bg.color2 if bg.kind != "solid" else "")


def _background_candidates(expected: Background, source: Background) -> list[Background]:
    """The expected background first, then alternatives: the source's, the other kinds in the same
    colors, one color changed, the colors swapped."""
    cands = [expected]
    seen = {_bg_key(expected)}

    def add(bg: Background):
        if _bg_key(bg) not in seen:
            seen.add(_bg_key(bg))
            cands.append(bg)

    add(source)
    for kind in BACKGROUND_KINDS:
        add(Background(kind, expected.color, expected.color2, expected.seed))
    for name in BACKGROUND_COLORS:
        if name != expected.color2:
            add(Background(expected.kind, name, expected.color2, expected.seed))
        if name != expected.color:
            add(Background(expected.kind, expected.color, name, expected.seed))
    add(Background(expected.kind, expected.color2, expected.color, expected.seed))
    return cands


# A background clause passes when the expected background explains the frames at least about as well
# as every alternative (ties pass: under grayscale, e.g., olive and slate look the same).
BG_MARGIN = 0.004
BG_TEMPERATURE = 0.004
BG_MAX_COST = 0.12


def _masked_median(planes: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel median over frames of planes [3,T,H,W] where mask [T,H,W]; (image [3,H,W], valid [H,W])."""
    n = mask.sum(axis=0)
    if planes.shape[1] == 1:
        return planes[:, 0], n > 0
    vals = np.sort(np.where(mask[None], planes, np.inf), axis=1)
    k = np.maximum(n - 1, 0) // 2
    med = np.take_along_axis(vals, np.broadcast_to(k[None, None], (3, 1) + k.shape), axis=1)[:, 0]
    return np.where(n[None] > 0, med, 0.0), n > 0


def _background_clause(ctx: _Context, expected: Background) -> dict:
    """Score of the frames' background being `expected` rather than an alternative: the pixels no sprite
    covers (their median over frames: particles move away), compared where they are locally flat
    (blurred edges of a checker would weigh blur more than colors), with a fitted gain, against renders
    of the candidates in the frames' global state."""
    keep = ~D._dilate(ctx.det.owner > 0)
    obs, valid = _masked_median(ctx.planes, keep)
    obs = _pool(obs[:, None])[:, 0]
    valid = _pool(valid[None].astype(np.float32))[0] > 0.99
    state = ctx.state
    key = (_bg_key(expected), state)
    if key not in ctx.exp.background_preds:
        cands = _background_candidates(expected, ctx.source.background)
        preds = []
        for bg in cands:
            img = np.ascontiguousarray(np.moveaxis(render_background(bg, ctx.H, ctx.W), 2, 0))[:, None]
            preds.append(_pool(apply_state(img, state))[:, 0])
        # Away from the expected background's edges (checker cells, stripes): there, blur decides.
        p0 = preds[0][:, None]
        edges = np.max([_shift_reduce(c, np.maximum) - _shift_reduce(c, np.minimum) for c in p0], axis=0)[0]
        ctx.exp.background_preds[key] = (cands, preds, edges < 0.03)
    cands, preds, smooth = ctx.exp.background_preds[key]
    flat = valid & smooth
    if flat.sum() >= 0.05 * flat.size:
        valid = flat
    costs = []
    for bg, pred in zip(cands, preds):
        cost, _ = _fit_cost_cast(obs, pred, valid)
        if bg.kind == "noise":
            cost = min(cost, _free_noise_cost(obs, bg, state, valid) + 0.004)
        costs.append(cost)
    exp_cost = costs[0]
    alt = min(costs[1:]) if len(costs) > 1 else exp_cost + 1.0
    score = _sigmoid((alt - exp_cost + BG_MARGIN) / BG_TEMPERATURE)
    # ... and when it explains them well at all (a tie between bad explanations is no pass).
    score *= _sigmoid((BG_MAX_COST - exp_cost) / 0.02)
    best = cands[int(np.argmin(costs))]
    return {"score": score, "cost": exp_cost, "best_alternative": alt, "best": " ".join(_bg_key(best)).strip()}


def _free_noise_cost(obs: np.ndarray, bg: Background, state: str, valid: np.ndarray) -> float:
    """Cost of a mottled background in bg's two colors whatever its noise seed: the blend weight is read
    from the frames (projection on the color1 -> color2 line, smoothed to the noise's scale), and a weight
    map that varies only from top to bottom (a gradient or stripes, not noise) is penalized."""
    from scipy import ndimage

    c1 = apply_state(np.asarray(BACKGROUND_COLORS[bg.color], np.float32).reshape(3, 1, 1) / 255.0, state)
    c2 = apply_state(np.asarray(BACKGROUND_COLORS[bg.color2], np.float32).reshape(3, 1, 1) / 255.0, state)
    d = c2 - c1
    den = float((d * d).sum())
    if den < 1e-4:
        return 1.0
    w = ((obs - c1) * d).sum(axis=0) / den
    h, wd = w.shape
    w = ndimage.gaussian_filter(np.clip(w, 0.0, 1.0), max(h, wd) / 12.0, mode="nearest")
    pred = c1 + w[None] * d
    cost, _ = _fit_cost_cast(obs, pred, valid)
    hvar = float(np.mean(np.std(w, axis=1)))
    return cost + 0.05 * (1.0 - min(1.0, hvar / 0.06))


# Main entry ----------------------------------------------------------------------------------------------


def verify(
    source_scene: Scene,
    program: list[Clause] | list[dict],
    frames: np.ndarray,
    reference: np.ndarray | None = None,
    threshold: float = THRESHOLD,
    cache: bool = True,
) -> VerifyResult:
    """Score how well `frames` (uint8 [T,H,W,3] or an image [H,W,3]; float in 0..1 accepted) carry out
    `program` (Clauses, or their dicts) on `source_scene`. `reference`: the reference image of a ref_add /
    ref_replace clause (else it is rendered from the clause's sprite). `cache`: keep the expectation of
    this (source, program, size) for the next call (see `Expectation`). See the module docstring."""
    if program and isinstance(program[0], dict):
        program = program_from_list(program)  # type: ignore[arg-type]
    planes = D.to_planes(frames)
    _, num_frames, height, width = planes.shape
    exp = expectation(source_scene, program, height, width, num_frames, cache)
    ctx = _Context(exp, planes, reference)
    matches = _match_known(ctx, exp.expects)
    results: list[ClauseScore] = []
    for ci, clause in enumerate(program):
        results.append(_clause_score(ctx, clause, ci, exp.by_id, matches, threshold))
    results.append(_keep_score(ctx, exp.expects, matches, program, threshold))
    return VerifyResult(
        clauses=results,
        score=float(np.mean([c.score for c in results])),
        passed=all(c.passed for c in results),
        global_state=ctx.state,
        state_scores=ctx.state_scores,
        detections=ctx.det,
    )


def _source_expect(ctx: _Context, sprite_id: int) -> _Expect:
    return ctx.exp.source_expects[sprite_id]


def _clause_score(ctx: _Context, clause: Clause, ci: int, by_id, matches, threshold: float) -> ClauseScore:
    op = clause.op
    details: dict = {}
    if op == "global":
        name = f"global[{clause.state}]"
        score = ctx.state_scores.get(clause.state, 0.0)
        details = {"estimated": ctx.state, "costs": {k: round(v, 4) for k, v in ctx.costs.items()}}
    elif op == "background":
        bg = clause.background
        name = f"background[{bg.kind} {bg.color}" + (f"/{bg.color2}]" if bg.kind != "solid" else "]")
        details = _background_clause(ctx, bg)
        score = details["score"]
    elif op in ("add", "ref_add"):
        s = clause.sprite
        where = f" @{clause.region}" if clause.region else ""
        extra = f" {s.pattern.kind}" if op == "ref_add" else ""
        name = f"{op}[{describe(s)}{extra}{where}]"
        details, views = _find_new(ctx, s, clause.region, owner=-(ci + 2))
        score = details["presence"] * details["shape"] * details["region"] * (0.5 + 0.5 * details["size"])
        if op == "ref_add" and not details.get("unverifiable"):
            pat = _pattern_score(ctx, s, views)
            details.update(pat)
            score *= 0.3 + 0.7 * pat["pattern"]
    elif op == "remove":
        old = _source_expect(ctx, clause.target)
        name = f"remove[{describe(old.sprite)}]"
        still = _near_presence(ctx, old, shape=old.sprite.shape)
        details = {"remaining": still}
        score = 1.0 - still
    elif op in ("replace", "ref_replace"):
        old = _source_expect(ctx, clause.target)
        new = by_id[clause.sprite.id]
        extra = f" {new.sprite.pattern.kind}" if op == "ref_replace" else ""
        name = f"{op}[{describe(old.sprite)}->{describe(new.sprite)}{extra}]"
        m = matches[new.key]
        presence, _ = _presence(m, new, ctx)
        same_color = old.sprite.color == new.sprite.color or ctx.gray
        if same_color:
            shape_f = _shape_factor(ctx, m["dets"], new.sprite.shape, versus=old.sprite.shape, e=new)
        else:
            shape_f = _shape_factor(ctx, m["dets"], new.sprite.shape, e=new)
        still = 0.0 if same_color else _near_presence(ctx, old, shape=old.sprite.shape)
        details = {"presence": presence, "shape": shape_f, "old_remaining": still}
        score = presence * shape_f * (1.0 - still)
        if ctx.gray and ctx.visible_in_gray(new).mean() < 0.5:
            details["unverifiable"] = True  # it would not stand out from the background under grayscale
        elif op == "ref_replace":
            pat = _pattern_score(ctx, new.sprite, _match_views(ctx, m, new))
            details.update(pat)
            if same_color and old.sprite.shape == new.sprite.shape:
                score = presence * (1.0 - still) * pat["pattern"]
            else:
                score *= 0.3 + 0.7 * pat["pattern"]
    elif op == "recolor":
        new = by_id[clause.target]
        old = _source_expect(ctx, clause.target)
        name = f"recolor[{describe(old.sprite)}->{clause.color}]"
        m = matches[new.key]
        presence, _ = _presence(m, new, ctx)
        shape_f = _shape_factor(ctx, m["dets"], new.sprite.shape, e=new)
        still = _near_presence(ctx, old, color=old.color)
        details = {"presence": presence, "shape": shape_f, "old_color_remaining": still}
        score = presence * shape_f * (1.0 - still)
    elif op == "resize":
        new = by_id[clause.target]
        old = _source_expect(ctx, clause.target)
        name = f"resize[{describe(old.sprite)} x{clause.scale:g}]"
        m = matches[new.key]
        presence, _ = _presence(m, new, ctx)
        shape_f = _shape_factor(ctx, m["dets"], new.sprite.shape)  # (its mass is what changes)
        # Radius ratio from the matched mass, over frames where both sizes would be fully visible.
        w = (m["mass"] > 0) & (new.visible > 0.9) & (old.visible > 0.9)
        if not w.any():
            w = m["mass"] > 0
        if w.any():
            ratio = math.sqrt(float(np.median(m["mass"][w])) / (old.mass * pattern_factor(new.sprite) / pattern_factor(old.sprite)))
            scale = float(clause.scale)
            u = math.log(max(ratio, 1e-3)) / math.log(scale) if abs(math.log(scale)) > 1e-6 else 1.0
            size = min(_sigmoid((u - 0.5) * 10.0), _sigmoid((2.0 - u) * 6.0))
        else:
            ratio, u, size = 0.0, 0.0, 0.0
        details = {"presence": presence, "shape": shape_f, "ratio": ratio, "progress": u}
        score = presence * shape_f * size
    else:  # pragma: no cover - Clause validates ops
        raise ValueError(op)
    score = float(np.clip(score, 0.0, 1.0))
    return ClauseScore(name=name, op=op, score=score, passed=score >= threshold, details=details)


def _keep_score(ctx: _Context, expects: list[_Expect], matches, program: list[Clause], threshold: float) -> ClauseScore:
    per_sprite = {}
    for e in expects:
        if e.role != "kept":
            continue
        m = matches[e.key]
        presence, w = _presence(m, e, ctx)
        shape_f = _shape_factor(ctx, m["dets"], e.sprite.shape, e=e)
        per_sprite[describe(e.sprite)] = presence * (0.5 + 0.5 * shape_f)
    sprites_ok = min(per_sprite.values()) if per_sprite else 1.0
    # Nothing unexpected: unassigned detections that are sprite-sized, away from the edited sprites'
    # old places (what remains there is the edit clauses' business).
    old_places = ctx.exp.old_places
    masses = [e.mass for e in expects] + [o.mass for o in old_places]
    ref_mass = float(np.median(masses)) if masses else D.shape_area("circle") * (0.1 * ctx.short) ** 2
    small = max(2.0 * ctx.min_px, 0.25 * min(masses) if masses else 0.0)
    free = (ctx.assigned == -1) & (ctx.dmass >= small)
    for o in old_places:
        free &= ctx.pos_score(o, tol_scale=2.0) < 0.3
    extra = np.zeros(ctx.T)
    np.add.at(extra, ctx.dframe[free], ctx.dmass[free])
    unexpected = float(np.mean(np.minimum(1.0, extra / ref_mass)))
    # The global state should stay as it is unless the program changes it.
    state_f = 1.0
    if not any(c.op == "global" for c in program):
        state_f = 0.4 + 0.6 * ctx.state_scores.get(ctx.target.global_state, 0.0)
    score = sprites_ok * (1.0 - unexpected) * state_f
    details = {"sprites": per_sprite, "unexpected": unexpected, "state": state_f}
    return ClauseScore(name="keep", op="keep", score=float(np.clip(score, 0, 1)), passed=score >= threshold, details=details)
