"""Deterministic, anti-aliased renderer of world scenes at any resolution and frame count.

Shapes are signed distance functions in the sprite's unit frame (the shape fits [-1, 1]^2); a pixel's
coverage is `clip(0.5 - distance_in_pixels, 0, 1)`, which anti-aliases edges. Each sprite is drawn in a
small window around it, vectorised over all frames at once, into a padded frame buffer.
"""

from __future__ import annotations

import math

import numpy as np

from .scene import BACKGROUND_COLORS, COLORS, Background, Pattern, Scene, Sprite

_SQRT2 = math.sqrt(2.0)


def frame_times(num_frames: int) -> np.ndarray:
    """Clip time t in [0, 1] of each frame: [T]."""
    if num_frames <= 1:
        return np.zeros(max(num_frames, 1), dtype=np.float64)
    return np.linspace(0.0, 1.0, num_frames)


# Shapes ----------------------------------------------------------------------------------------------


def _convex_sdf(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Distance (negative inside) to a convex polygon given counter-clockwise in image coords."""
    dist = None
    n = len(vertices)
    for i in range(n):
        (x0, y0), (x1, y1) = vertices[i], vertices[(i + 1) % n]
        ex, ey = x1 - x0, y1 - y0
        length = math.hypot(ex, ey)
        nx, ny = ey / length, -ex / length  # outward normal for this winding
        d = (u - x0) * nx + (v - y0) * ny
        dist = d if dist is None else np.maximum(dist, d)
    return dist


_TRIANGLE = np.array([(0.0, -0.95), (1.0, 0.8), (-1.0, 0.8)])
_STAR_INNER = 0.45
_STAR_SECTOR = math.pi / 5.0  # 36 degrees
_STAR_A = np.array([1.0, 0.0])
_STAR_B = _STAR_INNER * np.array([math.cos(_STAR_SECTOR), math.sin(_STAR_SECTOR)])
_STAR_EDGE = (_STAR_B - _STAR_A) / np.linalg.norm(_STAR_B - _STAR_A)


def shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance in unit-frame units (negative inside) of `shape` at points (u, v)."""
    if shape == "circle":
        return np.sqrt(u * u + v * v) - 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.82
    if shape == "diamond":
        return (np.abs(u) + np.abs(v) - 1.0) / _SQRT2
    if shape == "triangle":
        return _convex_sdf(u, v, _TRIANGLE)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return np.minimum(np.maximum(au - 1.0, av - 0.34), np.maximum(au - 0.34, av - 1.0))
    if shape == "star":
        # Fold the plane into one half-spike sector (one spike points up), then take the signed distance
        # to the edge from the spike's tip A to the inner vertex B.
        rho = np.sqrt(u * u + v * v)
        theta = np.arctan2(u, -v) % (2.0 * _STAR_SECTOR)
        theta = np.where(theta > _STAR_SECTOR, 2.0 * _STAR_SECTOR - theta, theta)
        px, py = rho * np.cos(theta) - _STAR_A[0], rho * np.sin(theta) - _STAR_A[1]
        return px * _STAR_EDGE[1] - py * _STAR_EDGE[0]
    raise ValueError(f"unknown shape {shape!r}")


# Sprites ---------------------------------------------------------------------------------------------


def _pattern_mask(pattern: Pattern, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Where the second paint shows (bool, same shape as u), or None for a solid sprite."""
    if pattern.kind == "solid":
        return None
    ca, sa = math.cos(pattern.angle), math.sin(pattern.angle)
    s = (u * ca + v * sa + 1.0) * 0.5 * pattern.frequency + pattern.phase
    r = (-u * sa + v * ca + 1.0) * 0.5 * pattern.frequency + pattern.phase
    if pattern.kind == "stripes":
        return (s % 1.0) >= 0.5
    if pattern.kind == "checker":
        return ((np.floor(s) + np.floor(r)) % 2) == 1
    if pattern.kind == "dots":
        ds, dr = (s % 1.0) - 0.5, (r % 1.0) - 0.5
        return ds * ds + dr * dr < 0.09
    raise ValueError(f"unknown pattern {pattern.kind!r}")


def _sprite_windows(sprite: Sprite, times: np.ndarray, height: int, width: int, pad: int):
    """Coverage and color of `sprite` in a square window per frame.

    Returns (coverage [T,k,k] float32, color [T,k,k,3] float32 in 0..1, origin [T,2] int (row, col) in the
    padded buffer).
    """
    scale = min(height, width)
    r_px = sprite.radius * scale
    k = int(math.ceil(2.0 * r_px)) + 3
    centers = np.array([sprite.position(float(t)) for t in times])  # [T,2] (x, y) in [0,1]
    cx = centers[:, 0] * width  # pixel units, pixel centres at i + 0.5
    cy = centers[:, 1] * height
    col0 = np.floor(cx - k / 2.0).astype(np.int64)
    row0 = np.floor(cy - k / 2.0).astype(np.int64)
    grid = np.arange(k, dtype=np.float64) + 0.5
    px = col0[:, None] + grid[None, :] - cx[:, None]  # [T,k]
    py = row0[:, None] + grid[None, :] - cy[:, None]
    u = np.broadcast_to(px[:, None, :] / r_px, (len(times), k, k))
    v = np.broadcast_to(py[:, :, None] / r_px, (len(times), k, k))
    dist_px = shape_sdf(sprite.shape, u, v) * r_px
    coverage = np.clip(0.5 - dist_px, 0.0, 1.0).astype(np.float32)
    base = np.asarray(COLORS[sprite.color], dtype=np.float32) / 255.0
    color = np.broadcast_to(base, (len(times), k, k, 3))
    second = _pattern_mask(sprite.pattern, u, v)
    if second is not None:
        alt = np.asarray(sprite.pattern.color2, dtype=np.float32) / 255.0
        color = np.where(second[..., None], alt, color)
    origin = np.stack([row0 + pad, col0 + pad], axis=1)
    return coverage, color, origin


# Backgrounds and global states -------------------------------------------------------------------------


def render_background(background: Background, height: int, width: int) -> np.ndarray:
    """The background image: float32 [H,W,3] in 0..1."""
    c1 = np.asarray(BACKGROUND_COLORS[background.color], dtype=np.float32) / 255.0
    c2 = np.asarray(BACKGROUND_COLORS[background.color2], dtype=np.float32) / 255.0
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width
    kind = background.kind
    if kind == "solid":
        weight = np.zeros((height, width), dtype=np.float32)
    elif kind == "gradient":
        weight = np.broadcast_to(ys[:, None], (height, width))
    elif kind == "checker":
        weight = ((np.floor(ys * 8)[:, None] + np.floor(xs * 8)[None, :]) % 2).astype(np.float32)
    elif kind == "stripes":
        weight = np.broadcast_to((np.floor(ys * 10) % 2)[:, None], (height, width)).astype(np.float32)
    elif kind == "noise":
        weight = _smooth_noise(background.seed, height, width)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return c1 + weight[..., None] * (c2 - c1)


def _smooth_noise(seed: int, height: int, width: int, cells: int = 6) -> np.ndarray:
    """Resolution-free value noise in [0,1]: a seeded cells x cells grid, bilinearly upsampled. [H,W]."""
    grid = np.random.default_rng(seed).random((cells + 1, cells + 1)).astype(np.float32)
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height * cells
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width * cells
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    g00, g01 = grid[y0][:, x0], grid[y0][:, x0 + 1]
    g10, g11 = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx) + g11 * fy * fx).astype(
        np.float32
    )


NIGHT_GAIN = np.array([0.42, 0.48, 0.72], dtype=np.float32)
NIGHT_OFFSET = np.array([0.0, 0.02, 0.08], dtype=np.float32)
SNOW_COLOR = np.array([0.95, 0.97, 1.0], dtype=np.float32)
RAIN_COLOR = np.array([0.72, 0.76, 0.86], dtype=np.float32)
POSTERIZE_LEVELS = 4


def _particles(scene: Scene, times: np.ndarray, height: int, width: int, kind: str) -> np.ndarray:
    """Alpha of snow flakes or rain streaks per frame: float32 [T,H,W] in 0..1."""
    rng = np.random.default_rng((scene.seed, 7 if kind == "snow" else 11))
    scale = min(height, width)
    count = 45 if kind == "snow" else 35
    x0, y0 = rng.random(count), rng.random(count)
    speed = rng.uniform(0.25, 0.45, count) if kind == "snow" else rng.uniform(0.9, 1.3, count)
    drift = rng.uniform(-0.05, 0.05, count) if kind == "snow" else np.full(count, 0.18)
    alpha = np.zeros((len(times), height, width), dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
    for i, t in enumerate(times):
        px = ((x0 + drift * t) % 1.0) * width
        py = ((y0 + speed * t) % 1.0) * height
        if kind == "snow":
            r = max(0.7, 0.014 * scale)
            d = np.sqrt((xs[None] - px[:, None, None]) ** 2 + (ys[None] - py[:, None, None]) ** 2) - r
        else:  # rain: short slanted segments from (px, py) back along the fall direction
            length = 0.09 * scale
            dx, dy = -0.18, -1.0
            norm = math.hypot(dx, dy)
            dx, dy = dx / norm, dy / norm
            rx, ry = xs[None] - px[:, None, None], ys[None] - py[:, None, None]
            along = np.clip(rx * dx + ry * dy, 0.0, length)
            d = np.sqrt((rx - along * dx) ** 2 + (ry - along * dy) ** 2) - max(0.35, 0.006 * scale)
        alpha[i] = np.clip(0.5 - d, 0.0, 1.0).max(axis=0)
    return alpha * (0.9 if kind == "snow" else 0.65)


def apply_global_state(frames: np.ndarray, scene: Scene, times: np.ndarray) -> np.ndarray:
    """Apply the scene's global state to composited frames float32 [T,H,W,3] in 0..1 (in place ok)."""
    state = scene.global_state
    if state == "none":
        return frames
    if state == "night":
        return frames * NIGHT_GAIN + NIGHT_OFFSET
    if state in ("snow", "rain"):
        height, width = frames.shape[1:3]
        alpha = _particles(scene, times, height, width, state)[..., None]
        color = SNOW_COLOR if state == "snow" else RAIN_COLOR
        base = frames * 0.88 + 0.12 * color if state == "snow" else frames * 0.85
        return base * (1.0 - alpha) + color * alpha
    if state == "grayscale":
        luma = frames @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.repeat(luma[..., None], 3, axis=-1)
    if state == "posterize":
        # Quantise brightness (the max channel) to a few levels, keeping hue and saturation: banding
        # without inventing colors.
        value = frames.max(axis=-1, keepdims=True)
        levels = POSTERIZE_LEVELS - 1
        quantised = np.maximum(np.round(value * levels), 1.0) / levels
        return frames * (quantised / np.maximum(value, 1e-6))
    raise ValueError(f"unknown global state {state!r}")


# Public API ------------------------------------------------------------------------------------------


def render_float(
    scene: Scene, height: int = 64, width: int = 64, num_frames: int = 8, with_coverage: bool = False
):
    """Render `scene` to float32 frames [T,H,W,3] in 0..1 (before quantisation).

    With `with_coverage`, also returns {sprite id: visible coverage float32 [T,H,W]} (occlusion by sprites
    drawn above is subtracted).
    """
    if height < 1 or width < 1 or num_frames < 1:
        raise ValueError(f"render size must be positive, got {num_frames}x{height}x{width}")
    times = frame_times(num_frames)
    scale = min(height, width)
    max_r = max((s.radius for s in scene.sprites), default=0.0)
    pad = int(math.ceil(2.0 * max_r * scale)) + 4
    hp, wp = height + 2 * pad, width + 2 * pad
    frames = np.zeros((num_frames, hp, wp, 3), dtype=np.float32)  # zeros: the pad is cropped, but garbage there warns
    frames[:, pad : pad + height, pad : pad + width] = render_background(scene.background, height, width)
    coverages: dict[int, np.ndarray] = {}
    for sprite in sorted(scene.sprites, key=lambda s: (s.z, s.id)):
        cov, color, origin = _sprite_windows(sprite, times, height, width, pad)
        k = cov.shape[1]
        full = np.zeros((num_frames, hp, wp), dtype=np.float32) if with_coverage else None
        for i in range(num_frames):
            r0 = int(np.clip(origin[i, 0], 0, hp - k))
            c0 = int(np.clip(origin[i, 1], 0, wp - k))
            a = cov[i][..., None]
            window = frames[i, r0 : r0 + k, c0 : c0 + k]
            window *= 1.0 - a
            window += a * color[i]
            if with_coverage:
                for other in coverages.values():
                    other[i, r0 : r0 + k, c0 : c0 + k] *= 1.0 - cov[i]
                full[i, r0 : r0 + k, c0 : c0 + k] = cov[i]
        if with_coverage:
            coverages[sprite.id] = full
    frames = frames[:, pad : pad + height, pad : pad + width]
    frames = np.clip(apply_global_state(frames, scene, times), 0.0, 1.0)
    if with_coverage:
        return frames, {sid: c[:, pad : pad + height, pad : pad + width] for sid, c in coverages.items()}
    return frames


def render(scene: Scene, height: int = 64, width: int = 64, num_frames: int = 8) -> np.ndarray:
    """Render `scene` to uint8 RGB frames [T,H,W,3]."""
    return to_uint8(render_float(scene, height, width, num_frames))


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return (frames * 255.0 + 0.5).astype(np.uint8)


REFERENCE_BACKGROUND = "white"


def render_reference(sprite: Sprite, size: int = 64) -> np.ndarray:
    """The reference image of a sprite shown on its own, centred, large, on a plain background:
    uint8 [H,W,3]. Motion is ignored."""
    from .scene import Motion, Scene, Sprite as _Sprite

    alone = _Sprite(
        id=0, shape=sprite.shape, color=sprite.color, radius=0.36, motion=Motion(), pattern=sprite.pattern
    )
    scene = Scene(sprites=[alone], background=Background(kind="solid", color=REFERENCE_BACKGROUND))
    return render(scene, size, size, 1)[0]
