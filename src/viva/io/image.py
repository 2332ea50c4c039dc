"""Reading and writing single RGB images (PNG, JPEG, WebP) with PIL."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from viva.errors import VivaUserError
from viva.io.atomic import atomic_output
from viva.io.limits import VideoLimits

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
WHITE = (255, 255, 255)
EXIF_ORIENTATION = 0x0112


def check_input_file(path: str | os.PathLike, limits: VideoLimits, kind: str = "file") -> Path:
    """Return `path` as a Path after checking that it is an existing, non-empty file within size limits."""
    path = Path(path)
    if not path.exists():
        raise VivaUserError(f"{kind} not found: {path}; check the path")
    if not path.is_file():
        raise VivaUserError(f"{path} is not a file; give the path of a {kind}")
    size = path.stat().st_size
    if size == 0:
        raise VivaUserError(f"{path} is empty (0 bytes); give a valid {kind}")
    limits.check_file_size(str(path), size)
    return path


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """PIL image of any mode -> uint8 [H,W,3]; transparency is flattened onto `background`."""
    if image.mode.startswith("I;16"):  # 16-bit grayscale PNG: keep the high byte
        gray = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode in ("I", "F"):
        gray = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (*background, 255))
        flat.alpha_composite(rgba)
        image = flat
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


@contextmanager
def pil_errors(path: Path) -> Iterator[None]:
    """Turn whatever PIL raises while opening or decoding `path` into one clear VivaUserError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise VivaUserError(f"{path} has too many pixels to be a safe image; downscale it first") from None
    except UnidentifiedImageError:
        raise VivaUserError(f"{path} is not an image PIL can read; give a PNG, JPEG or WebP file") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL signals truncated/corrupt data with these
        raise VivaUserError(f"{path} is a corrupt or truncated image ({e}); re-export it") from None


def image_size(path: str | os.PathLike, limits: VideoLimits = VideoLimits()) -> tuple[int, int]:
    """(width, height) of an image file, read from its header only; checked against `limits`."""
    path = check_input_file(path, limits, kind="image")
    with pil_errors(path), Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # these orientations swap the axes
            width, height = height, width
    limits.check_resolution(str(path), width, height)
    return width, height


def read_image(
    path: str | os.PathLike, limits: VideoLimits = VideoLimits(), background: tuple[int, int, int] = WHITE
) -> np.ndarray:
    """Read an image file as uint8 [H,W,3] RGB.

    EXIF orientation is applied; transparent pixels are flattened onto `background` (white by default);
    grayscale and palette images are expanded to RGB. Bad or oversized files raise `VivaUserError`.
    """
    path = check_input_file(path, limits, kind="image")
    with pil_errors(path), Image.open(path) as image:
        limits.check_resolution(str(path), *image.size)
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image), background)


def check_image_array(image: np.ndarray, name: str = "image") -> None:
    """Raise ValueError unless `image` is a uint8 [H,W,3] array (a programming error, not a user error)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(
            f"{name} must be a uint8 array [H,W,3], got {got}; "
            "convert floats in [0,1] with (x * 255).round().clip(0, 255).astype(np.uint8)"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {image.shape}")


def image_format(path: Path) -> str:
    """PIL format name for `path`'s extension, or a VivaUserError naming the supported ones."""
    try:
        return IMAGE_FORMATS[path.suffix.lower()]
    except KeyError:
        raise VivaUserError(
            f"cannot write {path}: unknown image extension {path.suffix!r}; use one of {', '.join(IMAGE_FORMATS)}"
        ) from None


def write_image(path: str | os.PathLike, image: np.ndarray, quality: int = 95) -> Path:
    """Write uint8 [H,W,3] `image` atomically; the format comes from the extension (png, jpg, jpeg, webp)."""
    path = Path(path)
    fmt = image_format(path)
    check_image_array(image)
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    with atomic_output(path) as tmp:
        try:
            Image.fromarray(np.ascontiguousarray(image)).save(tmp, format=fmt, **options)
        except OSError as e:
            raise VivaUserError(f"cannot write {path}: {e}") from None
    return path
