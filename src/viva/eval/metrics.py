"""Per-case metrics of an edited clip against its bench case, and their per-category aggregates.

All clips are uint8 [T,H,W,3] (the output already fitted to the case's size); metrics work in 0..255
levels. Definitions (also in docs/metrics.md):

- passed / clause_score: the world verifier (`viva.world.verify`) on (source scene, program, output,
  reference): 1 when every clause (and "keep") scores >= 0.5, else 0; clause_score = mean clause score.
- pres_psnr / pres_ssim (preservation): output vs SOURCE over the pixels OUTSIDE the edit mask dilated by
  PRESERVE_DILATION px (a 5x5 square; it keeps the edited region's blurry rim out of the measure).
  None when that region is under MIN_REGION_FRACTION of the clip (weather/style edits change every pixel,
  background edits nearly every one).
- fid_psnr / fid_ssim (fidelity): output vs the ground-truth TARGET over every pixel; None without target.
- temporal: mean absolute frame-to-frame change of the output minus the source's (levels, see
  `temporal_change`); 0 = as steady as the source, > 0 flicker, < 0 frozen motion; None for 1 frame.
- quality: a proxy for clean, sharp renders: min(1, sharpness) * exp(-noise / 4), with sharpness (detail
  energy) and noise (speckle) measured relative to the clean render of the expected result (the target;
  the source when there is none). Content differences move it too (an identity output lacks the target's
  new sprite and its edges), so read it next to the pass rate and the baseline rows. See `quality`.

PSNR is capped at PSNR_CAP = 100 dB (identical pixels give 100, not inf, so results stay valid JSON).
SSIM is computed here (numpy/scipy): Gaussian window sigma 1.5 truncated at 3.5 sigma (11x11), K1 0.01,
K2 0.03, L 255, per channel and frame, reflecting borders; the map is averaged over channels and pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

PSNR_CAP = 100.0
PRESERVE_DILATION = 2  # px (Chebyshev): the edit mask grows by a 5x5 square before preservation is measured
MIN_REGION_FRACTION = 0.01
SSIM_SIGMA, SSIM_TRUNCATE = 1.5, 3.5
SSIM_K1, SSIM_K2, SSIM_L = 0.01, 0.03, 255.0
QUALITY_NOISE_SCALE = 4.0  # levels of extra speckle that cut quality by 1/e
_LUMA = np.array([0.299, 0.587, 0.114])

# (key, column label, format) of the aggregated metrics, in table order; "passed" aggregates to a rate.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("passed", "pass", "{:.1%}"),
    ("clause_score", "clause", "{:.3f}"),
    ("pres_psnr", "pres PSNR", "{:.1f}"),
    ("pres_ssim", "pres SSIM", "{:.3f}"),
    ("fid_psnr", "fid PSNR", "{:.1f}"),
    ("fid_ssim", "fid SSIM", "{:.3f}"),
    ("temporal", "temporal", "{:+.2f}"),
    ("quality", "quality", "{:.3f}"),
)


def _clip(frames: np.ndarray) -> np.ndarray:
    """uint8 or float [T,H,W,3] (or an image [H,W,3]) -> float64 [T,H,W,3] in 0..255 levels."""
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected a clip [T,H,W,3] or an image [H,W,3], got shape {x.shape}")
    return x.astype(np.float64)


def _region(region: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if region is None:
        return None
    region = np.asarray(region, dtype=bool)
    if region.ndim == 2:
        region = region[None]
    if region.shape != shape[:3]:
        raise ValueError(f"region {region.shape} does not match the clip's [T,H,W] {shape[:3]}")
    return region


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None, cap: float = PSNR_CAP) -> float | None:
    """PSNR in dB of clips a, b [T,H,W,3] (0..255) over every pixel, or over `region` bool [T,H,W]:
    10 log10(255^2 / MSE), the MSE over the region's pixels and all channels; capped at `cap` (so
    identical clips give `cap`). None when the region is empty."""
    x, y = _clip(a), _clip(b)
    if x.shape != y.shape:
        raise ValueError(f"clips differ in shape: {x.shape} and {y.shape}")
    sq = (x - y) ** 2
    region = _region(region, x.shape)
    if region is not None:
        if not region.any():
            return None
        sq = sq[region]
    mse = float(sq.mean())
    if mse <= 0.0:
        return float(cap)
    return float(min(cap, 10.0 * math.log10(255.0**2 / mse)))


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The SSIM map of clips a, b [T,H,W,3] -> float [T,H,W] (averaged over channels), each frame
    separately: local statistics from a Gaussian window (sigma 1.5, 11x11), C1 = (0.01 L)^2,
    C2 = (0.03 L)^2, L = 255, borders reflected. Identical clips give 1 everywhere."""
    x, y = _clip(a), _clip(b)
    if x.shape != y.shape:
        raise ValueError(f"clips differ in shape: {x.shape} and {y.shape}")

    def blur(z: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(z, sigma=(0, SSIM_SIGMA, SSIM_SIGMA, 0), truncate=SSIM_TRUNCATE, mode="reflect")

    c1, c2 = (SSIM_K1 * SSIM_L) ** 2, (SSIM_K2 * SSIM_L) ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(axis=-1)


def ssim(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float | None:
    """Mean SSIM of clips a, b [T,H,W,3] over every pixel or over `region` bool [T,H,W] (None if empty)."""
    s = ssim_map(a, b)
    region = _region(region, s.shape + (3,))
    if region is None:
        return float(s.mean())
    return float(s[region].mean()) if region.any() else None


def preservation_region(mask: np.ndarray, dilation: int = PRESERVE_DILATION) -> np.ndarray:
    """bool [T,H,W]: the pixels outside the edit mask (uint8/bool [T,H,W], nonzero = edited) grown by
    `dilation` px in every direction within each frame (a (2d+1) x (2d+1) square)."""
    edited = np.asarray(mask) > 0
    if edited.ndim == 2:
        edited = edited[None]
    if dilation > 0:
        edited = ndimage.binary_dilation(edited, structure=np.ones((1, 3, 3), bool), iterations=dilation)
    return ~edited


def preservation(source: np.ndarray, output: np.ndarray, mask: np.ndarray) -> tuple[float | None, float | None]:
    """(PSNR, SSIM) of `output` vs `source` [T,H,W,3] outside the dilated edit `mask` [T,H,W].

    PSNR: over the kept pixels only. SSIM: the output's edited region is first replaced by the source's
    (so that edited pixels never enter the windows), then the SSIM map is averaged over the kept pixels.
    (None, None) when the kept region is under MIN_REGION_FRACTION of the clip."""
    keep = preservation_region(mask)
    if keep.mean() < MIN_REGION_FRACTION:
        return None, None
    composite = np.where(keep[..., None], np.asarray(output), np.asarray(source))
    return psnr(source, output, keep), ssim(source, composite, keep)


def fidelity(target: np.ndarray | None, output: np.ndarray) -> tuple[float | None, float | None]:
    """(PSNR, SSIM) of `output` vs the ground-truth `target` [T,H,W,3] over all pixels; (None, None)
    without a target."""
    if target is None:
        return None, None
    return psnr(target, output), ssim(target, output)


def temporal_change(clip: np.ndarray) -> float | None:
    """Mean absolute frame-to-frame change of a clip [T,H,W,3] in levels:
    mean over t = 1..T-1 of mean over pixels and channels of |x_t - x_{t-1}|. None for T = 1."""
    x = _clip(clip)
    if len(x) < 2:
        return None
    return float(np.abs(np.diff(x, axis=0)).mean())


def temporal_delta(source: np.ndarray, output: np.ndarray) -> float | None:
    """temporal_change(output) - temporal_change(source), in levels (0 for an unchanged clip)."""
    a, b = temporal_change(output), temporal_change(source)
    return None if a is None or b is None else a - b


def _luma(clip: np.ndarray) -> np.ndarray:
    return _clip(clip) @ _LUMA


def sharpness(clip: np.ndarray) -> float:
    """Detail energy of the luma [T,H,W]: mean |y - G(y)|, G a Gaussian blur of sigma 1 px within each frame
    (levels). Blur lowers it (sigma-1 blur of a world render roughly halves it); noise raises it."""
    y = _luma(clip)
    return float(np.abs(y - ndimage.gaussian_filter(y, sigma=(0, 1.0, 1.0), mode="reflect")).mean())


def speckle(clip: np.ndarray) -> float:
    """Mean |luma - 3x3 median of the luma| per frame, in levels: near 0 for flat-colored renders with clean
    edges (a median keeps flat areas and straight edges), grows with pixel noise and ringing."""
    y = _luma(clip)
    return float(np.abs(y - ndimage.median_filter(y, size=(1, 3, 3), mode="reflect")).mean())


def quality(output: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The quality proxy of `output` against `reference` (the clean render of the expected result), both
    [T,H,W,3]: {"quality", "sharpness", "noise"} with
    sharpness = sharpness(output) / sharpness(reference) (blur < 1), noise = speckle(output) -
    speckle(reference) (levels; > 0 for noise or ringing), quality = min(1, sharpness) *
    exp(-max(0, noise) / QUALITY_NOISE_SCALE), in [0, 1]; 1 for the reference itself."""
    sharp = sharpness(output) / max(sharpness(reference), 1e-6)
    noise = speckle(output) - speckle(reference)
    score = min(1.0, sharp) * math.exp(-max(0.0, noise) / QUALITY_NOISE_SCALE)
    return {"quality": float(score), "sharpness": float(sharp), "noise": float(noise)}


def case_metrics(case, output: np.ndarray) -> dict:
    """Every metric of one edited clip. case: a `BenchCase`; output: uint8 [T,H,W,3] of the case's size.
    Returns a JSON-friendly dict (None where a metric does not apply; see the module docstring)."""
    from viva.world.verify import verify

    output = np.asarray(output)
    if output.shape != case.source.shape or output.dtype != np.uint8:
        raise ValueError(f"case {case.id}: output must be uint8 {case.source.shape}, got {output.dtype} {output.shape}")
    result = verify(case.source_scene, case.program, output, case.reference)
    pres_psnr, pres_ssim = preservation(case.source, output, case.mask)
    fid_psnr, fid_ssim = fidelity(case.target, output)
    reference = case.target if case.target is not None else case.source
    return {
        "passed": bool(result.passed),
        "clause_score": float(result.score),
        "clauses": {c.name: round(float(c.score), 6) for c in result.clauses},
        "pres_psnr": pres_psnr,
        "pres_ssim": pres_ssim,
        "fid_psnr": fid_psnr,
        "fid_ssim": fid_ssim,
        "temporal": temporal_delta(case.source, output),
        **quality(output, reference),
    }


def aggregate(records: Iterable[dict], categories: Sequence[str] | None = None) -> tuple[dict, dict]:
    """(per category, overall) summaries of per-case records (each with "category" and the METRICS keys):
    for every metric the mean over the cases where it applies (None where none does; "passed" gives the
    pass rate), "n" the number of cases and "counts" the number of cases each metric applies to.
    `categories` fixes the order (default: first seen)."""
    records = list(records)
    order = list(categories) if categories is not None else list(dict.fromkeys(r["category"] for r in records))

    def summary(rows: list[dict]) -> dict:
        out: dict = {"n": len(rows)}
        counts = {}
        for key, _, _ in METRICS:
            values = [float(r[key]) for r in rows if r.get(key) is not None]
            out[key] = float(np.mean(values)) if values else None
            counts[key] = len(values)
        out["counts"] = counts
        return out

    per = {c: summary([r for r in records if r["category"] == c]) for c in order}
    per = {c: s for c, s in per.items() if s["n"]}
    return per, summary(records)
