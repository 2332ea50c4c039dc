"""A sprite detector for world frames that are not exact renders: blurred, noisy, off-color, any size.

It leans on how the world is built (see `scene.py`): sprites are saturated (HSV saturation >= 0.67 for every
palette color, and the darker second paint of a patterned sprite keeps the hue and the saturation), while
backgrounds, snow flakes and rain streaks are low-saturation (saturation <= 0.25). So, per frame:

1. Undo the known color transform of the global state (night: the affine NIGHT_GAIN / NIGHT_OFFSET; snow
   and rain: their dimming), giving approximately clean colors. Posterize keeps hue and saturation.
2. A pixel is *colored* when its chroma and saturation are high; it is named after the palette color
   nearest in hue (chroma-plane direction). Colored pixels form 8-connected components (under rain,
   after a one-pixel dilation: streaks cut sprites), each named after its main hue: a sprite's edge
   blended with the background may take a neighbouring hue and stays part of it, while a large piece of
   another hue, or any piece of a far hue, is a touching sprite of another color and is split off.
3. Each component gets a soft *mass*: the sum over it and a one-pixel ring of its membership
   f = (chroma projected on its palette direction) / (palette chroma), clipped to [0, 1]. Blur moves color
   around but keeps this sum, so mass and the f-weighted centre are blur-invariant; radius follows from
   mass and the shape's area (`radius` assumes a solid sprite; a patterned one has less mass).
4. Shape: the component's silhouette g = clip(f / q, 0, 1), q its inside level (mean - std of f over its
   interior, so a pattern's darker paint counts as inside), is resampled on a scale-free grid around its
   centre (unit: sqrt of its area) and correlated with templates of every shape, built from
   `render.shape_sdf` in the same frame at several blurs; a softmax of the best correlations gives shape
   probabilities.
5. Detections of one color are linked across frames into tracks (nearest centre, gated).

Grayscale frames have no color at all. There the detector finds sprites by luminance contrast against a
background (the `background` hint, e.g. the expected background render, fitted with a gain, sharp or
blurred, whichever explains a pixel; else the per-pixel temporal median of a clip), names every detection
"gray" and reports its luminance (and contrast) instead.
Sprites whose luminance is close to the background's (a green sprite on a gray background differs by
9/255) are invisible there: a limitation of the state, not of the detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .render import NIGHT_GAIN, NIGHT_OFFSET, SNOW_COLOR, shape_sdf
from .scene import COLORS, SHAPES

# Palette geometry ------------------------------------------------------------------------------------

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
GRAY = "gray"  # the color name of detections in grayscale frames
_SQ3_2 = math.sqrt(3.0) / 2.0


def chroma_ab(rgb: np.ndarray) -> np.ndarray:
    """Chroma-plane coordinates (a, b) of colors [..., 3] in 0..1: a = R - (G + B)/2, b = sqrt(3)/2 (G - B).
    The hue is the angle of (a, b); gray has (0, 0)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return np.stack([rgb[..., 0] - 0.5 * (rgb[..., 1] + rgb[..., 2]), _SQ3_2 * (rgb[..., 1] - rgb[..., 2])], -1)


_PALETTE = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float64) / 255.0
_PALETTE_AB = chroma_ab(_PALETTE)  # [8,2]
PALETTE_CHROMA = np.linalg.norm(_PALETTE_AB, axis=1)  # [8]
_PALETTE_DIR = (_PALETTE_AB / PALETTE_CHROMA[:, None]).T.astype(np.float32)  # [2,8] unit hue directions
_PALETTE_SCALE = (1.0 / PALETTE_CHROMA).astype(np.float32)
_HUES = np.degrees(np.arctan2(_PALETTE_AB[:, 1], _PALETTE_AB[:, 0]))
_HUE_GAP = np.abs((_HUES[:, None] - _HUES[None, :] + 180.0) % 360.0 - 180.0)  # [8,8] degrees
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# A pixel is colored (part of a sprite) above these (clean 0..1 units). Backgrounds: chroma <= 0.2,
# saturation <= 0.25; sprite paints: saturation >= 0.67, chroma >= 0.25 (the darker pattern paint of the
# least saturated colors included).
MIN_CHROMA = 0.16
MIN_SATURATION = 0.42
# The silhouette map g = clip(f / q) normalises membership by a component's inside level q, at least
# this (a pattern's darker paint has f ~0.45: it counts as inside).
SILHOUETTE_LEVEL = 0.4
# Grayscale: luminance contrast that marks a sprite pixel.
MIN_CONTRAST = 0.07


def min_component_pixels(height: int, width: int) -> float:
    """Smallest core (pixels) a detection may have: ~5 px at 64x64, scaling with the frame's area."""
    return max(3.0, 0.0012 * height * width)


# Shape templates -------------------------------------------------------------------------------------

_GRID_N = 17  # samples per side of the scale-free grid
_GRID_L = 1.25  # half-extent of the grid in units of sqrt(area)
_TEMPLATE_BLURS = (0.035, 0.07, 0.11, 0.16, 0.22)  # gaussian sigma in units of sqrt(area)


@dataclass(frozen=True)
class _ShapeGeometry:
    area: np.ndarray  # [S] area of each shape in unit-frame units (radius 1)
    centroid: np.ndarray  # [S,2] (x, y) centroid of each shape in the unit frame
    templates: np.ndarray  # [S, B, N*N] normalized (zero-mean, unit-norm) blurred silhouettes


def _build_shape_geometry() -> _ShapeGeometry:
    fine = 601
    lin = np.linspace(-1.3, 1.3, fine)
    step = lin[1] - lin[0]
    u, v = np.meshgrid(lin, lin)
    areas, cents = [], []
    for shape in SHAPES:
        inside = shape_sdf(shape, u, v) < 0
        areas.append(inside.sum() * step * step)
        cents.append((u[inside].mean(), v[inside].mean()))
    area = np.array(areas)
    cent = np.array(cents)
    # Templates on a fine scale-free grid, blurred, then sampled at the detection grid.
    sub = 6
    n_fine = (_GRID_N - 1) * sub + 1
    pad = 3 * sub * 2
    d = 2 * _GRID_L / (_GRID_N - 1) / sub
    lin2 = (np.arange(n_fine + 2 * pad) - pad - (n_fine - 1) / 2) * d
    uu, vv = np.meshgrid(lin2, lin2)
    templates = np.zeros((len(SHAPES), len(_TEMPLATE_BLURS), _GRID_N * _GRID_N))
    for si, shape in enumerate(SHAPES):
        k = math.sqrt(area[si])
        sd = shape_sdf(shape, uu * k + cent[si, 0], vv * k + cent[si, 1])
        cov = np.clip(0.5 - sd / (d * k), 0.0, 1.0)
        for bi, blur in enumerate(_TEMPLATE_BLURS):
            sm = ndimage.gaussian_filter(cov, blur / d)
            t = sm[pad : pad + n_fine : sub, pad : pad + n_fine : sub].ravel()
            t = t - t.mean()
            templates[si, bi] = t / np.linalg.norm(t)
    return _ShapeGeometry(area=area, centroid=cent, templates=templates.astype(np.float32))


_GEOMETRY: _ShapeGeometry | None = None


def shape_geometry() -> _ShapeGeometry:
    global _GEOMETRY
    if _GEOMETRY is None:
        _GEOMETRY = _build_shape_geometry()
    return _GEOMETRY


def shape_area(shape: str) -> float:
    """Area of `shape` at radius 1 (the unit frame): circle pi, square 2.69, ..."""
    return float(shape_geometry().area[SHAPES.index(shape)])


_GRID = np.linspace(-_GRID_L, _GRID_L, _GRID_N).astype(np.float32)
# Softmax temperature on template correlations (correlations of right vs. wrong shapes differ by ~0.05-0.2).
SHAPE_SHARPNESS = 40.0


# Results ---------------------------------------------------------------------------------------------


@dataclass
class Detection:
    """One sprite seen in one frame.

    x, y: centre in [0, 1] (fraction of width / height, pixel centres at (i + 0.5) / size); radius: in the
    scene's units (fraction of the shorter side), from `mass` and the best shape's area, assuming a solid
    sprite; mass: soft colored area in pixels (blur-invariant; a patterned sprite's darker paint counts
    ~0.45); area: pixels of its colored core; shape_probs: probability per SHAPES entry; color_score: mean
    hue agreement with the palette color (1 = exact); luma: mean luminance of the core in the frame as
    given (for grayscale frames: of its most contrasted pixels); confidence in [0, 1]; border: whether it
    touches the frame's edge."""

    frame: int
    color: str
    shape: str
    x: float
    y: float
    radius: float
    mass: float
    area: float
    shape_probs: np.ndarray
    color_score: float
    luma: float
    confidence: float
    border: bool = False
    index: int = -1  # position in DetectionResult.detections
    contrast: float = 0.0  # grayscale only: luminance minus the background's (signed)
    silhouette_mass: float = 0.0  # area (px) of the silhouette g, both paints of a pattern counted
    sx: float = 0.0  # silhouette centre in [0, 1] (the f-weighted x, y lean to a pattern's bright paint)
    sy: float = 0.0

    def shape_prob(self, shape: str) -> float:
        return float(self.shape_probs[SHAPES.index(shape)])


@dataclass
class Track:
    """Detections of one color linked across frames (at most one per frame)."""

    color: str
    detections: list[Detection]

    @property
    def frames(self) -> list[int]:
        return [d.frame for d in self.detections]

    @property
    def centers(self) -> np.ndarray:
        return np.array([[d.x, d.y] for d in self.detections])

    @property
    def mean_center(self) -> tuple[float, float]:
        c = self.centers.mean(axis=0)
        return float(c[0]), float(c[1])

    @property
    def shape_probs(self) -> np.ndarray:
        """Mean shape probabilities over the track, weighting detections by confidence."""
        w = np.array([d.confidence for d in self.detections]) + 1e-6
        return (np.stack([d.shape_probs for d in self.detections]) * w[:, None]).sum(0) / w.sum()

    @property
    def shape(self) -> str:
        return SHAPES[int(np.argmax(self.shape_probs))]

    @property
    def radius(self) -> float:
        return float(np.median([d.radius for d in self.detections]))

    @property
    def mass(self) -> float:
        return float(np.median([d.mass for d in self.detections]))


@dataclass
class DetectionResult:
    """All detections of a clip. `per_frame[t]` lists frame t's detections; `tracks` link them."""

    detections: list[Detection]
    per_frame: list[list[Detection]]
    tracks: list[Track]
    global_state: str
    height: int
    width: int
    # Pixel maps (for the verifier): owner[t, y, x] = 1 + index of the detection whose core or ring
    # holds the pixel, else 0; membership = that detection's f there.
    owner: np.ndarray = field(repr=False, default=None)
    membership: np.ndarray = field(repr=False, default=None)
    clean: np.ndarray = field(repr=False, default=None)  # [3,T,H,W] color-corrected planes

    @property
    def num_frames(self) -> int:
        return len(self.per_frame)


# Color handling --------------------------------------------------------------------------------------


def to_planes(frames: np.ndarray) -> np.ndarray:
    """uint8 (or float 0..1) frames [T,H,W,3] or an image [H,W,3] -> float32 planes [3,T,H,W] in 0..1."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T,H,W,3] or an image [H,W,3], got shape {frames.shape}")
    planes = np.ascontiguousarray(np.moveaxis(frames, 3, 0))  # contiguous planes: every later op is faster
    if planes.dtype == np.uint8:
        return planes.astype(np.float32) * np.float32(1.0 / 255.0)
    return planes.astype(np.float32, copy=False)


def undo_global_state(planes: np.ndarray, state: str) -> np.ndarray:
    """Approximately clean colors [3,T,H,W] from frames in `state` (the affine part of its transform)."""
    if state == "night":
        return (planes - NIGHT_OFFSET[:, None, None, None]) / NIGHT_GAIN[:, None, None, None]
    if state == "snow":
        return (planes - (0.12 * SNOW_COLOR)[:, None, None, None]) * np.float32(1.0 / 0.88)
    if state == "rain":
        return planes * np.float32(1.0 / 0.85)
    return planes


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 dilation of a bool [T,H,W] per frame (numpy shifts; much faster than ndimage here)."""
    out = mask.copy()
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    row = out.copy()
    out[:, :, 1:] |= row[:, :, :-1]
    out[:, :, :-1] |= row[:, :, 1:]
    return out


def _dilate_labels(lab: np.ndarray) -> np.ndarray:
    """3x3 max-dilation of an int label map [T,H,W] (positive labels spread into zeros)."""
    out = lab.copy()
    np.maximum(out[:, 1:], lab[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :-1], lab[:, 1:], out=out[:, :-1])
    row = out.copy()
    np.maximum(out[:, :, 1:], row[:, :, :-1], out=out[:, :, 1:])
    np.maximum(out[:, :, :-1], row[:, :, 1:], out=out[:, :, :-1])
    return out


_STRUCT = np.zeros((3, 3, 3), dtype=bool)
_STRUCT[1] = True  # 8-connected within a frame, never across frames


# Detection -------------------------------------------------------------------------------------------


def detect(
    frames: np.ndarray,
    global_state: str = "none",
    background: np.ndarray | None = None,
    link: bool = True,
) -> DetectionResult:
    """Detect sprites in `frames` (uint8 [T,H,W,3] or [H,W,3]; float in 0..1 also accepted).

    global_state: the state the frames are in (its color transform is undone before colors are named).
    background: optional clean background image [H,W,3] (0..1 float or uint8) in state "none"; used only
    for grayscale frames (else the temporal median of the clip is the background).
    """
    return detect_planes(to_planes(frames), global_state, background, link)


def detect_planes(
    planes: np.ndarray, global_state: str = "none", background: np.ndarray | None = None, link: bool = True
) -> DetectionResult:
    """`detect` on float32 planes [3,T,H,W] in 0..1 (see `to_planes`)."""
    _, num_frames, height, width = planes.shape
    if global_state == "grayscale":
        return _detect_gray(planes, background, link)
    clean = undo_global_state(planes, global_state)
    r, g, b = clean[0], clean[1], clean[2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    chroma = mx - mn
    colored = (chroma >= MIN_CHROMA) & (chroma >= MIN_SATURATION * np.maximum(mx, 0.05))
    flat = np.flatnonzero(colored)
    shape3 = colored.shape
    min_px = min_component_pixels(height, width)
    if flat.size == 0:
        return _result([], num_frames, height, width, global_state, link, np.zeros(shape3, np.int32), None, clean)
    rf, gf, bf = r.ravel(), g.ravel(), b.ravel()
    ab = np.stack([rf[flat] - 0.5 * (gf[flat] + bf[flat]), _SQ3_2 * (gf[flat] - bf[flat])], axis=1)
    dots = ab @ _PALETTE_DIR  # [n, 8]
    hue = np.argmax(dots, axis=1)
    cos = dots[np.arange(len(flat)), hue] / np.maximum(np.hypot(ab[:, 0], ab[:, 1]), 1e-6)

    # Components of colored pixels (one labelling for all colors), each named after its main hue: the
    # few pixels of another hue at a sprite's edge (a dark red edge over beige looks orange) belong to it.
    # A component where a second hue is large too is two sprites touching: split by hue.
    lab_mask = _dilate(colored) if global_state == "rain" else colored  # rain streaks cut sprites in two
    lab, n_comp = ndimage.label(lab_mask, _STRUCT)
    comp_flat = lab.ravel()[flat]
    hist = np.bincount(comp_flat * 8 + hue, minlength=(n_comp + 1) * 8).reshape(n_comp + 1, 8)
    total = hist.sum(axis=1)
    color_of = np.argmax(hist, axis=1)
    far = _HUE_GAP[color_of] > 45.0  # [n+1, 8]: hues that blending cannot produce from the main one
    need = np.where(far, 2.0 * min_px, np.maximum(min_px, 0.25 * total)[:, None])
    need[np.arange(n_comp + 1), color_of] = np.inf
    mixed = np.flatnonzero((hist >= need).any(axis=1) & (np.arange(n_comp + 1) > 0))
    if len(mixed):
        comp_flat, color_of, n_comp = _split_mixed(lab, flat, hue, comp_flat, color_of, n_comp, mixed, min_px)
    comp = np.zeros(shape3, dtype=np.int32)
    comp.ravel()[flat] = comp_flat
    core_count = np.bincount(comp_flat, minlength=n_comp + 1).astype(np.float64)
    cos_sum = np.bincount(comp_flat, weights=cos, minlength=n_comp + 1)
    keep = core_count >= min_px
    keep[0] = False
    if not keep[1:].any():
        return _result([], num_frames, height, width, global_state, link, np.zeros(shape3, np.int32), None, clean)
    remap = np.zeros(n_comp + 1, dtype=np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1)
    comp = remap[comp]
    color_of = color_of[keep]
    core_count = core_count[keep]
    cos_mean = cos_sum[keep] / core_count
    n_comp = len(color_of)

    # Support = core + a one-pixel ring (not taken by another core); soft membership f there.
    owner = _dilate_labels(comp)
    owner[(comp > 0) & (owner != comp)] = 0  # cores keep their own id
    owner = np.where(comp > 0, comp, owner)
    sup = np.flatnonzero(owner)
    own = owner.ravel()[sup] - 1
    k_sup = color_of[own]
    a_sup = rf[sup] - 0.5 * (gf[sup] + bf[sup])
    b_sup = _SQ3_2 * (gf[sup] - bf[sup])
    f = np.clip((a_sup * _PALETTE_DIR[0, k_sup] + b_sup * _PALETTE_DIR[1, k_sup]) * _PALETTE_SCALE[k_sup], 0.0, 1.0)
    membership = np.zeros(shape3, dtype=np.float32)
    membership.ravel()[sup] = f

    mass, cx, cy, frame_of, border, gx, gy, gmass, probs = _geometry(membership, comp, owner, sup, own, f, n_comp)
    names = [COLOR_NAMES[k] for k in color_of]
    luma_plane = planes[0] * LUMA[0] + planes[1] * LUMA[1] + planes[2] * LUMA[2]
    core_idx = np.flatnonzero(comp)
    luma = np.bincount(comp.ravel()[core_idx] - 1, weights=luma_plane.ravel()[core_idx], minlength=n_comp)
    luma = luma / np.maximum(core_count, 1)
    dets = _make_detections(
        names, probs, frame_of, cx, cy, mass, core_count, cos_mean, luma, border, height, width, min_px, gx, gy, gmass
    )
    return _result(dets, num_frames, height, width, global_state, link, owner, membership, clean)


def _geometry(membership, comp, owner, sup, own, f, n_comp):
    """Per component, from its support pixels `sup` (flat indices into [T,H,W]; `own` their component,
    `f` their membership): mass, membership-weighted centre (cx, cy, pixels), frame, border contact (any
    support pixel on the frame's edge), silhouette-weighted centre (gx, gy) and mass, shape probabilities."""
    _, height, width = membership.shape
    hw = height * width
    y_sup = (sup % hw) // width + 0.5
    x_sup = sup % width + 0.5
    mass = np.bincount(own, weights=f, minlength=n_comp)
    msafe = np.maximum(mass, 1e-6)
    cx = np.bincount(own, weights=f * x_sup, minlength=n_comp) / msafe
    cy = np.bincount(own, weights=f * y_sup, minlength=n_comp) / msafe
    frame_of = np.zeros(n_comp, dtype=np.int64)
    frame_of[own] = sup // hw
    gmap, gmass = _silhouette(membership, comp, owner, sup, own, f, n_comp)
    on_edge = (y_sup < 1.0) | (y_sup > height - 1.0) | (x_sup < 1.0) | (x_sup > width - 1.0)
    border = np.bincount(own, weights=on_edge.astype(np.float64), minlength=n_comp) > 0
    gsup = gmap.ravel()[sup]
    gsafe = np.maximum(gmass, 1e-6)
    gx = np.bincount(own, weights=gsup * x_sup, minlength=n_comp) / gsafe
    gy = np.bincount(own, weights=gsup * y_sup, minlength=n_comp) / gsafe
    probs = _shape_probs(gmap, owner, frame_of, gx, gy, gmass)
    return mass, cx, cy, frame_of, border, gx, gy, gmass, probs


def _silhouette(membership, comp, owner, sup, own, f, n_comp):
    """The silhouette map g = clip(f / q) and its sum per component, with q the low end of a component's
    inside membership (mean - std over its interior: ~1 for a solid sprite, ~0.45 for a sharp pattern
    whose dark paint has f ~0.45, ~0.6 for a blurred one), so both paints count as inside."""
    interior = comp.copy()
    interior[:, 1:] *= comp[:, :-1] == comp[:, 1:]
    interior[:, :-1] *= comp[:, 1:] == comp[:, :-1]
    interior[:, :, 1:] *= comp[:, :, :-1] == comp[:, :, 1:]
    interior[:, :, :-1] *= comp[:, :, 1:] == comp[:, :, :-1]
    inside = interior.ravel()[sup] > 0
    core = comp.ravel()[sup] > 0
    # Interior pixels when a component has enough of them, else its whole core.
    n_in = np.bincount(own, weights=inside.astype(np.float64), minlength=n_comp)
    use = np.where(n_in[own] >= 4, inside, core).astype(np.float64)
    cnt = np.maximum(np.bincount(own, weights=use, minlength=n_comp), 1.0)
    mean = np.bincount(own, weights=use * f, minlength=n_comp) / cnt
    var = np.bincount(own, weights=use * f * f, minlength=n_comp) / cnt - mean * mean
    q = np.clip(mean - np.sqrt(np.maximum(var, 0.0)), SILHOUETTE_LEVEL, 1.0)
    g = np.clip(f / q[own], 0.0, 1.0)
    gmap = np.zeros(membership.shape, dtype=np.float32)
    gmap.ravel()[sup] = g
    return gmap, np.bincount(own, weights=g, minlength=n_comp)


def _split_mixed(lab, flat, hue, comp_flat, color_of, n_comp, mixed, min_px):
    """Split components holding two large hues (touching sprites of different colors) by hue: each
    8-connected piece of another hue that is large (at least 0.35 of the main hue's pixels) or of a far
    hue becomes its own component; smaller pieces of a near hue (a sprite's edge blended with the
    background) stay."""
    color_of = list(color_of)
    comp_flat = comp_flat.copy()
    for m in mixed:
        sel = np.flatnonzero(comp_flat == m)
        main = int((hue[sel] == color_of[m]).sum())
        for h in np.unique(hue[sel]):
            if h == color_of[m]:
                continue
            pix = sel[hue[sel] == h]
            if len(pix) < min_px:
                continue
            part = np.zeros(lab.shape, dtype=bool)
            part.ravel()[flat[pix]] = True
            sub, k = ndimage.label(part, _STRUCT)
            ids = sub.ravel()[flat[pix]]
            sizes = np.bincount(ids, minlength=k + 1)
            # Blending with the background shifts a hue to a neighbouring palette hue at most: a piece of a
            # far hue is another sprite however small.
            far = _HUE_GAP[color_of[m], h] > 45.0
            big = np.flatnonzero(sizes >= (2 * min_px if far else max(min_px, 0.35 * main)))
            big = big[big > 0]
            for piece in big:
                comp_flat[pix[ids == piece]] = n_comp + 1
                color_of.append(int(h))
                n_comp += 1
    return comp_flat, np.array(color_of), n_comp


def _shape_probs(gmap, owner, frame_of, cx, cy, gmass) -> np.ndarray:
    """Shape probabilities [n, S] of components from their silhouettes (see module docstring)."""
    n = len(cx)
    geo = shape_geometry()
    s = np.sqrt(np.maximum(gmass, 1.0)).astype(np.float32)
    gy, gx = np.meshgrid(_GRID, _GRID, indexing="ij")
    ys = cy[:, None, None].astype(np.float32) + gy[None] * s[:, None, None] - 0.5
    xs = cx[:, None, None].astype(np.float32) + gx[None] * s[:, None, None] - 0.5
    # Bilinear samples of the silhouette (zero outside the frame), kept where the pixel belongs to this
    # component or to none (a neighbour's silhouette must not leak in).
    _, height, width = gmap.shape
    ts = np.broadcast_to(frame_of[:, None, None], ys.shape).ravel()
    ys, xs = ys.ravel(), xs.ravel()
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    fy, fx = ys - y0, xs - x0
    padded = np.pad(gmap, ((0, 0), (1, 1), (1, 1)))
    yi = np.clip(y0 + 1, 0, height)
    xi = np.clip(x0 + 1, 0, width)
    base = (ts * (height + 2) + yi) * (width + 2) + xi
    flat = padded.ravel()
    vals = (flat[base] * (1 - fy) * (1 - fx) + flat[base + 1] * (1 - fy) * fx
            + flat[base + width + 2] * fy * (1 - fx) + flat[base + width + 3] * fy * fx)
    outside = (y0 < -1) | (y0 >= height) | (x0 < -1) | (x0 >= width)
    who = owner[ts, np.clip(np.round(ys).astype(np.int64), 0, height - 1), np.clip(np.round(xs).astype(np.int64), 0, width - 1)]
    ids = np.repeat(np.arange(1, n + 1), _GRID_N * _GRID_N)
    vals = np.where(((who == ids) | (who == 0)) & ~outside, vals, 0.0).reshape(n, -1).astype(np.float32)
    vals -= vals.mean(axis=1, keepdims=True)
    vals /= np.maximum(np.linalg.norm(vals, axis=1, keepdims=True), 1e-6)
    corr = (vals @ geo.templates.reshape(-1, _GRID_N * _GRID_N).T).reshape(n, len(SHAPES), -1).max(axis=2)
    z = SHAPE_SHARPNESS * (corr - corr.max(axis=1, keepdims=True))
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _make_detections(names, probs, frame_of, cx, cy, mass, area, color_score, luma, border, height, width, min_px, gx, gy, gmass):
    geo = shape_geometry()
    short = float(min(height, width))
    best = np.argmax(probs, axis=1)
    radius = np.sqrt(np.maximum(mass, 0.0) / geo.area[best]) / short
    conf = np.clip(color_score, 0, 1) * np.clip(area / (3.0 * min_px), 0, 1)
    dets = []
    for j in range(len(names)):
        dets.append(
            Detection(
                frame=int(frame_of[j]),
                color=names[j],
                shape=SHAPES[best[j]],
                x=float(cx[j] / width),
                y=float(cy[j] / height),
                radius=float(radius[j]),
                mass=float(mass[j]),
                area=float(area[j]),
                shape_probs=probs[j],
                color_score=float(color_score[j]),
                luma=float(luma[j]),
                confidence=float(conf[j]),
                border=bool(border[j]),
                index=j,
                silhouette_mass=float(gmass[j]),
                sx=float(gx[j] / width),
                sy=float(gy[j] / height),
            )
        )
    return dets


def _result(dets, num_frames, height, width, state, link, owner, membership, clean) -> DetectionResult:
    per_frame: list[list[Detection]] = [[] for _ in range(num_frames)]
    for d in dets:
        per_frame[d.frame].append(d)
    tracks = link_tracks(per_frame, height, width) if link else []
    if membership is None:
        membership = np.zeros(owner.shape, dtype=np.float32)
    return DetectionResult(dets, per_frame, tracks, state, height, width, owner, membership, clean)


# Grayscale -------------------------------------------------------------------------------------------


def _detect_gray(planes: np.ndarray, background, link: bool) -> DetectionResult:
    _, num_frames, height, width = planes.shape
    luma = planes[0] * LUMA[0] + planes[1] * LUMA[1] + planes[2] * LUMA[2]  # [T,H,W]
    if background is not None:
        bg = np.asarray(background, dtype=np.float32)
        if bg.dtype == np.uint8 or bg.max() > 1.5:
            bg = bg / 255.0
        bg_luma = bg @ LUMA  # [H,W]
        gain = float(np.median(luma / np.maximum(bg_luma, 0.02)))
        gain = float(np.clip(gain, 0.7, 1.4))
        ref = gain * bg_luma[None]
    elif num_frames >= 3:
        ref = np.median(luma, axis=0, keepdims=True)
    else:
        size = max(3, int(0.45 * min(height, width)) | 1)
        ref = ndimage.median_filter(luma, size=(1, size, size))
    diff = luma - ref
    if background is not None:
        # A blurred frame (a model's output, a degradation) differs from a sharp background along the
        # background's own edges (checker cells, stripes): a pixel is background when the sharp or a
        # blurred version of it explains it.
        for sigma in (1.0, 1.8):
            soft = luma - ndimage.gaussian_filter(ref[0], sigma)[None]
            diff = np.where(np.abs(soft) < np.abs(diff), soft, diff)
    thresh = MIN_CONTRAST
    min_px = min_component_pixels(height, width)
    # One mask for brighter and darker pixels alike: a sprite over a checker can be brighter than one
    # cell and darker than the next.
    lab, n_comp = ndimage.label(np.abs(diff) >= thresh, _STRUCT)
    comp = lab.astype(np.int32)
    if n_comp == 0:
        return _result([], num_frames, height, width, "grayscale", link, comp, None, planes)
    idx = np.flatnonzero(comp)
    cid = comp.ravel()[idx]
    count = np.bincount(cid, minlength=n_comp + 1).astype(np.float64)
    keep = count >= min_px
    keep[0] = False
    remap = np.zeros(n_comp + 1, dtype=np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1)
    comp = remap[comp]
    n_comp = int(keep.sum())
    if n_comp == 0:
        return _result([], num_frames, height, width, "grayscale", link, comp, None, planes)
    count = count[keep]
    adiff = np.abs(diff)
    peak = np.asarray(ndimage.maximum(adiff, comp, np.arange(1, n_comp + 1)), dtype=np.float64)
    owner = _dilate_labels(comp)
    owner = np.where(comp > 0, comp, owner)
    sup = np.flatnonzero(owner)
    own = owner.ravel()[sup] - 1
    f = np.clip(adiff.ravel()[sup] / np.maximum(0.85 * peak[own], MIN_CONTRAST), 0.0, 1.0)
    membership = np.zeros(luma.shape, dtype=np.float32)
    membership.ravel()[sup] = f
    mass, cx, cy, frame_of, border, gx, gy, gmass, probs = _geometry(membership, comp, owner, sup, own, f, n_comp)
    # The sprite's own luminance: the mean over its most contrasted core pixels (a small blurred sprite's
    # core is mostly blended with the background).
    core = np.flatnonzero(comp)
    cid = comp.ravel()[core] - 1
    strong = (adiff.ravel()[core] >= 0.7 * peak[cid]).astype(np.float64)
    nstrong = np.maximum(np.bincount(cid, weights=strong, minlength=n_comp), 1.0)
    lsum = np.bincount(cid, weights=strong * luma.ravel()[core], minlength=n_comp)
    csum = np.bincount(cid, weights=strong * diff.ravel()[core], minlength=n_comp)
    dets = _make_detections(
        [GRAY] * n_comp, probs, frame_of, cx, cy, mass, count, np.ones(n_comp), lsum / nstrong, border,
        height, width, min_px, gx, gy, gmass,
    )
    for d, c in zip(dets, csum / nstrong):
        d.contrast = float(c)
    return _result(dets, num_frames, height, width, "grayscale", link, owner, membership, planes)


# Tracks ----------------------------------------------------------------------------------------------

# Largest move (fraction of the shorter side) between consecutive frames of a track.
TRACK_GATE = 0.25


def link_tracks(per_frame: list[list[Detection]], height: int, width: int, gate: float = TRACK_GATE) -> list[Track]:
    """Link detections into tracks: frame by frame, each detection joins the nearest open track of its
    color (last seen at most two frames before, within `gate` per frame elapsed), pairs taken in order of
    distance; unmatched detections start new tracks."""
    short = float(min(height, width))
    tracks: list[Track] = []
    last: list[tuple[int, float, float]] = []  # per track: (frame, x px, y px)
    for t, dets in enumerate(per_frame):
        pairs = []
        for i, d in enumerate(dets):
            px, py = d.x * width, d.y * height
            for j, (tf, tx, ty) in enumerate(last):
                gap = t - tf
                if gap < 1 or gap > 2 or tracks[j].color != d.color:
                    continue
                dist = math.hypot(px - tx, py - ty) / short
                if dist <= gate * gap:
                    pairs.append((dist, i, j))
        pairs.sort()
        used_d, used_t = set(), set()
        for dist, i, j in pairs:
            if i in used_d or j in used_t:
                continue
            used_d.add(i)
            used_t.add(j)
            tracks[j].detections.append(dets[i])
            last[j] = (t, dets[i].x * width, dets[i].y * height)
        for i, d in enumerate(dets):
            if i not in used_d:
                tracks.append(Track(color=d.color, detections=[d]))
                last.append((t, d.x * width, d.y * height))
    return tracks
