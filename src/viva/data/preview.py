"""Previews of edit pairs for people: a PNG grid (source | target | mask | reference, one row per frame)
or an animated GIF (source | target | mask side by side), upscaled with nearest neighbour, with the
category and the instruction written above."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import VivaUserError
from .pair import EditPair

BACKGROUND = (24, 24, 28)
TEXT = (235, 235, 235)
LABEL = (150, 200, 255)
GAP = 4  # pixels between cells
MARGIN = 6


FONT_SIZE = 13


@functools.lru_cache(maxsize=1)
def _font():
    """PIL's built-in font (a scalable one when FreeType is available, else the bitmap one)."""
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _text_width(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def _line_height(font) -> int:
    _, top, _, bottom = font.getbbox("Ag|")
    return int(bottom - top) + 4


def wrap_text(text: str, font, width: int) -> list[str]:
    """Greedy word wrap of `text` into lines at most `width` pixels wide (long words are cut)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            while _text_width(font, word) > width and len(word) > 1:  # a word wider than the line
                cut = max(1, next((n for n in range(len(word), 0, -1) if _text_width(font, word[:n]) <= width), 1))
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:cut])
                word = word[cut:]
            candidate = f"{line} {word}".strip()
            if _text_width(font, candidate) <= width or not line:
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def fit_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (nearest) to fit inside height x width keeping the aspect ratio, centred on BACKGROUND."""
    h, w = image.shape[:2]
    factor = min(height / h, width / w)
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.NEAREST))
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = BACKGROUND
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def frame_rows(num_frames: int, max_rows: int) -> list[int]:
    """The frames shown as rows: all of them, or `max_rows` evenly spaced ones (first and last included)."""
    if num_frames <= max_rows:
        return list(range(num_frames))
    return sorted({int(round(i)) for i in np.linspace(0, num_frames - 1, max_rows)})


def _header(pair: EditPair, width: int, extra: str = "") -> np.ndarray:
    """The text block above a pair's grid: category label (+ `extra`), then the wrapped instruction."""
    label = f"[{pair.category}]" + (" held-out phrasing" if pair.held_out else "") + (f"  {extra}" if extra else "")
    return text_block(label, pair.instruction, width)


def text_block(label: str, text: str, width: int) -> np.ndarray:
    """uint8 [H', width, 3]: `label` on the first line (in the label colour), then `text` word-wrapped."""
    font = _font()
    lines = wrap_text(text, font, width - 2 * MARGIN)
    line_h = _line_height(font)
    height = MARGIN + line_h * (1 + len(lines)) + MARGIN
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, MARGIN), label, fill=LABEL, font=font)
    for i, line in enumerate(lines):
        draw.text((MARGIN, MARGIN + line_h * (i + 1)), line, fill=TEXT, font=font)
    return np.asarray(image)


def title_row(names: list[str], cell_w: int) -> np.ndarray:
    font = _font()
    width = len(names) * cell_w + (len(names) + 1) * GAP
    image = Image.new("RGB", (width, _line_height(font) + GAP), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for i, name in enumerate(names):
        x = GAP + i * (cell_w + GAP) + max(0, (cell_w - _text_width(font, name)) // 2)
        draw.text((x, 2), name, fill=LABEL, font=font)
    return np.asarray(image)


def grid_image(rows: list[list[np.ndarray]], cell_h: int, cell_w: int) -> np.ndarray:
    """Cells [cell_h, cell_w, 3] arranged in rows with GAP pixels around them."""
    ncols = max(len(r) for r in rows)
    height = len(rows) * cell_h + (len(rows) + 1) * GAP
    width = ncols * cell_w + (ncols + 1) * GAP
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = BACKGROUND
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            y, x = GAP + r * (cell_h + GAP), GAP + c * (cell_w + GAP)
            out[y : y + cell_h, x : x + cell_w] = cell
    return out


def stack_images(parts: list[np.ndarray]) -> np.ndarray:
    width = max(p.shape[1] for p in parts)
    padded = []
    for p in parts:
        if p.shape[1] < width:
            pad = np.empty((p.shape[0], width - p.shape[1], 3), dtype=np.uint8)
            pad[:] = BACKGROUND
            p = np.concatenate([p, pad], axis=1)
        padded.append(p)
    return np.concatenate(padded, axis=0)


def render_preview(pair: EditPair, scale: int = 3, max_rows: int = 8) -> np.ndarray:
    """A preview image of `pair`: uint8 [H', W', 3].

    Columns: source | target | mask | reference (if any, in the first row); one row per frame (at most
    `max_rows` evenly spaced frames); every cell upscaled `scale` times; the category and the wrapped
    instruction above, column titles below them."""
    t, h, w = pair.source.shape[:3]
    cell_h, cell_w = h * scale, w * scale
    names = ["source", "target", "mask"] + (["reference"] if pair.reference is not None else [])
    rows = []
    for i, f in enumerate(frame_rows(t, max_rows)):
        row = [upscale(pair.source[f], scale), upscale(pair.target[f], scale), upscale(_rgb(pair.mask[f]), scale)]
        if pair.reference is not None:
            if i == 0:
                row.append(fit_image(pair.reference, cell_h, cell_w))
            else:
                row.append(np.full((cell_h, cell_w, 3), BACKGROUND, dtype=np.uint8))
        rows.append(row)
    grid = grid_image(rows, cell_h, cell_w)
    return stack_images([_header(pair, grid.shape[1]), title_row(names, cell_w), grid])


def render_preview_frames(pair: EditPair, scale: int = 3) -> np.ndarray:
    """Animation frames of `pair`: uint8 [T, H', W', 3], each source | target | mask of one frame with the
    header (category, instruction and the frame number, so that no two frames are identical)."""
    t, h, w = pair.source.shape[:3]
    names = ["source", "target", "mask"]
    frames = []
    for f in range(t):
        row = [upscale(pair.source[f], scale), upscale(pair.target[f], scale), upscale(_rgb(pair.mask[f]), scale)]
        grid = grid_image([row], h * scale, w * scale)
        header = _header(pair, grid.shape[1], extra=f"frame {f + 1}/{t}")
        frames.append(stack_images([header, title_row(names, w * scale), grid]))
    height = max(fr.shape[0] for fr in frames)
    return np.stack([np.pad(fr, ((0, height - fr.shape[0]), (0, 0), (0, 0))) for fr in frames])


def _fallback_write_image(path: Path, image: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fallback_write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    images = [Image.fromarray(frame) for frame in frames]
    try:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_preview(pair: EditPair, path: str | os.PathLike, scale: int = 3, fps: float | None = None) -> Path:
    """Write the preview of `pair` atomically: a PNG grid, or an animated GIF when `path` ends in .gif."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".gif"):
        raise VivaUserError(f"cannot write preview {path}: use a .png (grid) or .gif (animation) file name")
    if path.is_dir():
        raise VivaUserError(f"cannot write preview {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VivaUserError(f"cannot create folder {path.parent}: {e.strerror or e}") from None
    try:
        from ..io import write_image, write_video
    except ImportError:  # viva.io not available: write atomically here
        write_image = write_video = None
    try:
        if suffix == ".png":
            image = render_preview(pair, scale=scale)
            (write_image or _fallback_write_image)(path, image)
        else:
            frames = render_preview_frames(pair, scale=scale)
            rate = float(fps or pair.source_scene.fps or 8.0)
            (write_video or _fallback_write_gif)(path, frames, rate)
    except OSError as e:
        raise VivaUserError(f"cannot write preview {path}: {e.strerror or e}") from None
    return path
