"""Mini-scale rewards, computed from the frames, the source clip, the source scene and the edit program
(never from a ground-truth target clip: hybrid prompts and held-out phrasings have none).

- `InstructionFollowing`: the world verifier's mean clause score and/or pass (0/1).
- `Preservation`: SSIM to the source outside the edit region (`edit_region`); after global edits (weather,
  style), whose colors are meant to change, SSIM to the source under the best-fitting color transform.
- `Quality`: temporal stability against the source, sharpness against the source, clean colors.

All three are in [0, 1] with 1 best (see docs/rewards.md for the definitions and the constants' reasons).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..world.program import REGIONS, Clause, apply_program
from ..world.render import frame_times, render_float
from ..world.scene import Scene, Sprite
from .base import RewardBatch, RewardOutput, to_float, to_uint8
from .verifier_pool import VerifierPool, group_jobs, verify_group

LUMA = (0.299, 0.587, 0.114)


# Instruction following ----------------------------------------------------------------------------------


class InstructionFollowing:
    """The world verifier as a reward. mode: "score" (mean clause score, graded, in [0, 1]), "pass" (1 when
    every clause passes) or "both" (their mean). Components "score" and "pass" are always reported.

    workers > 0 runs the verifier in a process pool of that size (spawned, started on first use, reused;
    `close()` stops it) with results identical to workers = 0 (in this process). Consecutive samples of
    one prompt (same scene, program, reference) are verified together so they share the verifier's cached
    expectation; groups are split when there are fewer groups than workers."""

    MODES = ("score", "pass", "both")

    def __init__(self, mode: str = "score", workers: int = 0, threshold: float = 0.5, context: str = "spawn"):
        if mode not in self.MODES:
            raise ValueError(f"InstructionFollowing mode must be one of {self.MODES}, got {mode!r}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.mode, self.threshold = mode, float(threshold)
        self.pool = VerifierPool(workers, context) if workers > 0 else None

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        batch.need("scenes", "programs", by="InstructionFollowing")
        frames = to_uint8(batch.outputs)
        references = batch.references if batch.references is not None else [None] * len(batch)
        jobs, _ = group_jobs(batch.scenes, batch.programs, frames, references, self.threshold)
        if self.pool is not None:
            jobs = _split(jobs, math.ceil(len(frames) / self.pool.workers))
            results = self.pool.map(jobs)
        else:
            results = [verify_group(job) for job in jobs]
        flat = [item for group in results for item in group]
        score = torch.tensor([s for s, _ in flat], dtype=torch.float32)
        passed = torch.tensor([float(p) for _, p in flat], dtype=torch.float32)
        total = {"score": score, "pass": passed, "both": 0.5 * (score + passed)}[self.mode]
        return RewardOutput(total=total, components={"score": score, "pass": passed})

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def __del__(self) -> None:  # pragma: no cover - best effort, never blocks
        try:
            if self.pool is not None:
                self.pool.close(wait=False)
        except Exception:
            pass


def _split(jobs: list, size: int) -> list:
    """Cut jobs holding more than `size` samples into pieces of at most `size` (load balance)."""
    out = []
    for scene, program, frames, reference, threshold in jobs:
        for i in range(0, len(frames), max(1, size)):
            out.append((scene, program, frames[i : i + size], reference, threshold))
    return out


# Edit region --------------------------------------------------------------------------------------------

# Disk around a sprite that an edit may change: radius MARGIN * r + PAD_PX pixels (the verifier's
# `_edited_pixels` uses the same, since a model's blur spreads past a sprite's edge). Added sprites may
# be drawn a bit bigger than the program's instance (the instruction need not name a size): ADD_MARGIN.
MARGIN, PAD_PX, ADD_MARGIN = 1.25, 2.5, 1.6


@dataclass
class EditRegion:
    """Where an edit program may change a clip of size T x H x W, from the source scene and the program.

    edited: bool [T,H,W], disks around every sprite a clause removes, replaces, recolors or resizes, at its
    places in the source and in the expected target. compare: bool [T,H,W], the pixels preservation is
    measured on before added sprites are placed: the complement of `edited`, or, after a background
    change, only the untouched sprites' interiors. adds: per added sprite (add, ref_add), its disk radius
    in pixels and the requested REGIONS cell (None: anywhere); its place is the model's choice, found per
    frame by `place_adds`. structural: a global clause (weather/style) changes colors everywhere, so
    preservation compares layout and content after a color fit (see `Preservation`).
    """

    edited: np.ndarray
    compare: np.ndarray
    adds: list[tuple[float, str | None]]
    structural: bool


def _disks(sprites: list[Sprite], times: np.ndarray, height: int, width: int, margin: float) -> np.ndarray:
    short = float(min(height, width))
    yy = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None]
    xx = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :]
    mask = np.zeros((len(times), height, width), dtype=bool)
    for sp in sprites:
        pos = np.array([sp.position(float(t)) for t in times], dtype=np.float32)
        cx = (pos[:, 0] * width)[:, None, None]
        cy = (pos[:, 1] * height)[:, None, None]
        r = margin * sp.radius * short + PAD_PX
        mask |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    return mask


def edit_region(scene: Scene, program: list[Clause], num_frames: int, height: int, width: int) -> EditRegion:
    """The `EditRegion` of `program` on `scene` for clips [num_frames, height, width] (see EditRegion)."""
    times = frame_times(num_frames)
    target = apply_program(scene, program)
    targets = {c.target for c in program if c.target is not None}
    new_ids = {c.sprite.id for c in program if c.op in ("replace", "ref_replace")}
    changed = [sp for sp in scene.sprites if sp.id in targets]
    changed += [sp for sp in target.sprites if sp.id in targets or sp.id in new_ids]
    edited = _disks(changed, times, height, width, MARGIN)
    short = float(min(height, width))
    adds = [(ADD_MARGIN * c.sprite.radius * short + PAD_PX, c.region) for c in program if c.op in ("add", "ref_add")]
    if any(c.op == "background" for c in program):
        # The background changes everywhere: only the untouched sprites' interiors must stay.
        _, coverage = render_float(scene, height, width, num_frames, with_coverage=True)
        kept = np.zeros((num_frames, height, width), dtype=bool)
        for sp in scene.sprites:
            if sp.id not in targets:
                kept |= coverage[sp.id] > 0.5
        compare = _erode(kept) & ~edited
    else:
        compare = ~edited
    return EditRegion(edited=edited, compare=compare, adds=adds, structural=any(c.op == "global" for c in program))


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion per frame of bool [T,H,W] (edges count as outside)."""
    p = np.pad(mask, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    out = np.ones_like(mask)
    h, w = mask.shape[1:]
    for dy in range(3):
        for dx in range(3):
            out &= p[:, dy : dy + h, dx : dx + w]
    return out


def place_adds(region: EditRegion, diff: torch.Tensor) -> np.ndarray:
    """bool [T,H,W]: the pixels preservation compares, after each added sprite is given, per frame, the
    disk (its radius, centre in its requested cell widened by the radius) where the output differs most
    from the source. diff: float [T,H,W], the per-pixel difference |output - source| (channel mean)."""
    compare = region.compare.copy()
    if not region.adds:
        return compare
    t, h, w = diff.shape
    d = diff.clone().float()
    yy = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xx = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    for radius, cell in region.adds:
        k = int(math.ceil(radius))
        ky = torch.arange(-k, k + 1, dtype=torch.float32)
        kernel = ((ky[:, None] ** 2 + ky[None, :] ** 2) <= radius * radius).float()
        energy = F.conv2d(d[:, None], kernel[None, None], padding=k)[:, 0]  # [T,H,W]: difference in the disk
        allowed = torch.ones(h, w, dtype=torch.bool)
        if cell is not None:
            col, row = REGIONS[cell]
            allowed = (
                (xx >= col * w / 3 - radius) & (xx <= (col + 1) * w / 3 + radius)
                & (yy >= row * h / 3 - radius) & (yy <= (row + 1) * h / 3 + radius)
            )
        energy = torch.where(allowed[None], energy, torch.full_like(energy, -1.0))
        best = energy.flatten(1).argmax(dim=1)
        cy = (best // w).float()[:, None, None] + 0.5
        cx = (best % w).float()[:, None, None] + 0.5
        disk = (yy[None] - cy) ** 2 + (xx[None] - cx) ** 2 <= radius * radius  # [T,H,W]
        compare &= ~disk.numpy()
        d = d.masked_fill(disk, 0.0)  # a second added sprite goes elsewhere
    return compare


# Image statistics ---------------------------------------------------------------------------------------


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """Normalized 1-D Gaussian [size]."""
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Per-channel 'same' filtering of x [B,C,H,W] (reflected edges) by a 2-D kernel [k,k], or by a 1-D
    kernel [k] applied along both axes (separable)."""
    c, k = x.shape[1], window.shape[-1]
    pad = k // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    if window.ndim == 1:
        xp = F.conv2d(xp, window.view(1, 1, k, 1).expand(c, 1, k, 1).contiguous(), groups=c)
        return F.conv2d(xp, window.view(1, 1, 1, k).expand(c, 1, 1, k).contiguous(), groups=c)
    return F.conv2d(xp, window.expand(c, 1, k, k).contiguous(), groups=c)


def ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None = None,
    window: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """SSIM per pixel of images x, y [B,C,H,W] in [0, 1] (Gaussian window; C1 = 0.01^2, C2 = 0.03^2),
    averaged over channels: [B,H,W]. mask [B,1,H,W] (0/1): local statistics use only masked pixels
    (normalized convolution), so changes outside the mask never leak into the score of pixels inside it.
    Identical images give 1."""
    m = min(x.shape[-2:])
    size = max(1, window if m >= window else (m if m % 2 else m - 1))  # odd, no bigger than the image
    win = _gaussian_window(size, sigma)
    x, y = x.float(), y.float()
    c1, c2 = 0.01**2, 0.03**2
    mask = torch.ones_like(x[:, :1]) if mask is None else mask.float()
    norm = _filter(mask, win).clamp_min(1e-12)

    def local(z: torch.Tensor) -> torch.Tensor:
        return _filter(z * mask, win) / norm

    # (No clamping of the variances: for identical images numerator and denominator are then the same
    # float expression and the ratio is exactly 1.)
    mx, my = local(x), local(y)
    vx, vy = local(x * x) - mx * mx, local(y * y) - my * my
    cov = local(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.clamp(-1.0, 1.0).mean(dim=1)


def luma(x: torch.Tensor) -> torch.Tensor:
    """Luma of frames [...,3] in [0, 1]: [...]."""
    return x[..., 0] * LUMA[0] + x[..., 1] * LUMA[1] + x[..., 2] * LUMA[2]


def median3(c: torch.Tensor) -> torch.Tensor:
    """3x3 median filter of [B,C,H,W] (replicated edges)."""
    b, ch, h, w = c.shape
    patches = F.unfold(F.pad(c, (1, 1, 1, 1), mode="replicate"), 3)  # [B, C*9, H*W]
    return patches.view(b, ch, 9, h * w).median(dim=2).values.view(b, ch, h, w)


def color_fit(src: torch.Tensor, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`src` [T,3,H,W] mapped by the affine color transform (3x3 matrix and offset, least squares over
    the `mask` [T,H,W] pixels) that best explains `out`, clipped to [0, 1]: what the source looks like
    under the output's global color change (night, grayscale, a tint; posterize approximately)."""
    a = src.permute(0, 2, 3, 1)[mask].double()  # [P,3]
    b = out.permute(0, 2, 3, 1)[mask].double()
    design = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)  # [P,4]
    coef = torch.linalg.lstsq(design, b).solution  # [4,3]
    pixels = src.permute(0, 2, 3, 1).double()  # [T,H,W,3]
    full = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)
    return (full @ coef).clamp(0.0, 1.0).float().permute(0, 3, 1, 2)


# Preservation -------------------------------------------------------------------------------------------


class Preservation:
    """Similarity of the output to the source where the program changes nothing (`edit_region`, then
    `place_adds`): mean SSIM over those pixels (RGB; masked local statistics, so the edit itself never
    leaks in). After a global clause (weather, style) colors change everywhere by design: both clips are
    3x3-median filtered (particles out) and the source is mapped by the affine color transform that best
    explains the output (`color_fit`) before the comparison, so what counts is layout and content.

    Components: "ssim" (= total), "psnr" (dB over the same pixels and images, capped at `max_psnr`),
    "compared" (fraction of pixels compared). With nothing to compare (a background change of a scene
    whose sprites all change) the score is 1. Negative SSIM means count as 0, so the total is in [0, 1]."""

    def __init__(self, max_psnr: float = 50.0) -> None:
        self.max_psnr = float(max_psnr)

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        batch.need("scenes", "programs", by="Preservation")
        out, src = to_float(batch.outputs), to_float(batch.sources)  # [N,T,H,W,3]
        n, t, h, w, _ = out.shape
        totals, psnrs, fractions = [], [], []
        for i in range(n):
            region = edit_region(batch.scenes[i], batch.programs[i], t, h, w)
            diff = (out[i] - src[i]).abs().mean(dim=-1)  # [T,H,W]
            keep = torch.from_numpy(place_adds(region, diff))
            fractions.append(float(keep.float().mean()))
            if not keep.any():
                totals.append(1.0)
                psnrs.append(self.max_psnr)
                continue
            x, y = out[i].permute(0, 3, 1, 2), src[i].permute(0, 3, 1, 2)  # [T,3,H,W]
            if region.structural:
                x, y = median3(x), color_fit(median3(y), median3(x), keep)
            smap = ssim_map(x, y, keep[:, None])  # [T,H,W]
            totals.append(max(0.0, float(smap[keep].mean())))
            mse = float(((x - y) ** 2).permute(0, 2, 3, 1)[keep].mean())
            psnrs.append(min(self.max_psnr, 10.0 * math.log10(1.0 / mse)) if mse > 0 else self.max_psnr)
        total = torch.tensor(totals, dtype=torch.float32)
        return RewardOutput(
            total=total,
            components={
                "ssim": total,
                "psnr": torch.tensor(psnrs, dtype=torch.float32),
                "compared": torch.tensor(fractions, dtype=torch.float32),
            },
        )


# Quality ------------------------------------------------------------------------------------------------

_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def temporal_change(x: torch.Tensor) -> torch.Tensor:
    """Typical frame-to-frame change of clips x [N,T,H,W,3] in [0, 1]: per pair of neighbouring frames the
    median over pixels of the channel-mean |frame_{t+1} - frame_t|, averaged over pairs: [N] (0 for 1-frame
    clips). The median ignores what moves (sprites, snow) and sees what changes everywhere (noise,
    flicker)."""
    if x.shape[1] < 2:
        return torch.zeros(x.shape[0])
    d = (x[:, 1:] - x[:, :-1]).abs().mean(dim=-1)  # [N,T-1,H,W]
    return d.flatten(2).median(dim=2).values.mean(dim=1)


def _blur(y: torch.Tensor) -> torch.Tensor:
    return _filter(y, _gaussian_window(5, 1.0))  # separable


def _laplace(y: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), _LAPLACE[None, None])


def detail(x: torch.Tensor) -> torch.Tensor:
    """Sharpness of clips x [N,T,H,W,3]: E[(Laplacian of median-filtered luma)^2] / E[(Laplacian of luma blurred by a
    sigma-1 Gaussian)^2], over all frames: [N]. Re-blurring a sharp clip removes much of its Laplacian
    energy, re-blurring a blurred one little, whatever the content and the contrast (a ratio)."""
    n, t, h, w, _ = x.shape
    y = median3(luma(x).reshape(n * t, 1, h, w))  # particles and pixel noise out; edges stay
    fine = _laplace(y).pow(2).view(n, -1).mean(dim=1)
    coarse = _laplace(_blur(y)).pow(2).view(n, -1).mean(dim=1)
    return fine / (coarse + 1e-8)


def chroma_noise(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute deviation of the chroma planes (Cb, Cr) of clips x [N,T,H,W,3] from their 3x3 median:
    [N]. Speckled colors raise it; flat paint, clean edges (a median keeps steps) and grayscale do not."""
    n, t, h, w, _ = x.shape
    yl = luma(x)
    cb = 0.564 * (x[..., 2] - yl)
    cr = 0.713 * (x[..., 0] - yl)
    c = torch.stack([cb, cr], dim=-1).reshape(n * t, h, w, 2).permute(0, 3, 1, 2)
    return (c - median3(c)).abs().mean(dim=(1, 2, 3)).view(n, t).mean(dim=1)


class Quality:
    """Quality of the output measured against the source's own statistics (an edit should look like the
    footage it came from), each part in [0, 1]:

    - "temporal" = exp(-max(0, change(out) - change(src) - temporal_tol) / temporal_tau), `temporal_change`
      = median pixel change between neighbouring frames (noise and flicker raise it; 1-frame clips score 1);
    - "sharpness" = min(1, detail(out) / (sharp_ratio * detail(src))) (`detail`: the share of Laplacian
      energy a re-blur removes; blur lowers it; sharp_ratio leaves room for edits that change content);
    - "color" = exp(-max(0, chroma_noise(out) - chroma_noise(src) - color_tol) / color_tau).

    total = the mean of the three; the source itself scores 1. With the defaults ground-truth world targets
    score 1, Gaussian noise of 4/255 about 0.55 (8/255: 0.4), a 1-pixel Gaussian blur about 0.8
    (benchmarks/reward_sanity.py)."""

    def __init__(
        self,
        temporal_tol: float = 0.002,
        temporal_tau: float = 0.015,
        sharp_ratio: float = 0.8,
        color_tol: float = 0.0015,
        color_tau: float = 0.005,
    ) -> None:
        self.temporal_tol, self.temporal_tau = temporal_tol, temporal_tau
        self.sharp_ratio = sharp_ratio
        self.color_tol, self.color_tau = color_tol, color_tau

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        out, src = to_float(batch.outputs), to_float(batch.sources)
        excess = (temporal_change(out) - temporal_change(src) - self.temporal_tol).clamp_min(0.0)
        temporal = torch.exp(-excess / self.temporal_tau)
        d_src = detail(src)
        ratio = detail(out) / (self.sharp_ratio * d_src).clamp_min(1e-8)
        sharp = torch.where(d_src > 1e-6, ratio.clamp(max=1.0), torch.ones_like(d_src))
        c_excess = (chroma_noise(out) - chroma_noise(src) - self.color_tol).clamp_min(0.0)
        color = torch.exp(-c_excess / self.color_tau)
        total = (temporal + sharp + color) / 3.0
        return RewardOutput(
            total=total.float(),
            components={"temporal": temporal.float(), "sharpness": sharp.float(), "color": color.float()},
        )


# Captions (for CLIP rewards on world batches) -----------------------------------------------------------

_STATE_WORDS = {
    "none": "",
    "night": " at night",
    "snow": " in falling snow",
    "rain": " in the rain",
    "grayscale": " in black and white",
    "posterize": " in a posterized style",
}


_PATTERN_WORDS = {"solid": "", "stripes": "striped ", "checker": "checkered ", "dots": "dotted "}


def scene_caption(scene: Scene) -> str:
    """A plain caption of a world scene, e.g. "a video of a red circle and a striped blue square on a gray
    and white checkered background at night"."""
    sprites = []
    for sp in sorted(scene.sprites, key=lambda s: (s.z, s.id)):
        pattern = _PATTERN_WORDS.get(sp.pattern.kind, "")
        sprites.append(f"a {pattern}{sp.color} {sp.shape}")
    if not sprites:
        things = "nothing"
    elif len(sprites) == 1:
        things = sprites[0]
    else:
        things = ", ".join(sprites[:-1]) + " and " + sprites[-1]
    bg = scene.background
    background = {
        "solid": f"a plain {bg.color}",
        "gradient": f"a {bg.color} to {bg.color2} gradient",
        "checker": f"a {bg.color} and {bg.color2} checkered",
        "stripes": f"a {bg.color} and {bg.color2} striped",
        "noise": f"a mottled {bg.color}",
    }.get(bg.kind, f"a {bg.color}")
    return f"a video of {things} on {background} background{_STATE_WORDS.get(scene.global_state, '')}"


def world_captions(batch: RewardBatch) -> tuple[list[str], list[str]]:
    """(source captions, target captions): the batch's own, else `scene_caption` of the source scenes and
    of `apply_program(scene, program)`."""
    if batch.source_captions is not None and batch.target_captions is not None:
        return list(batch.source_captions), list(batch.target_captions)
    if batch.scenes is None or batch.programs is None:
        raise ValueError(
            "CLIP rewards need RewardBatch.source_captions and target_captions (or world scenes and programs)"
        )
    src = [scene_caption(s) for s in batch.scenes]
    tgt = [scene_caption(apply_program(s, p)) for s, p in zip(batch.scenes, batch.programs)]
    return (list(batch.source_captions) if batch.source_captions is not None else src,
            list(batch.target_captions) if batch.target_captions is not None else tgt)
