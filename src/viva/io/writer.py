"""Writing clips to video files (mp4, mov, mkv, webm, avi, gif) with PyAV, atomically."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from fractions import Fraction
from itertools import chain
from pathlib import Path

import av
import numpy as np
from PIL import Image

from viva.errors import VivaUserError
from viva.io.atomic import atomic_output
from viva.io.container import error_reason
from viva.io.frames import check_frames
from viva.io.image import check_image_array
from viva.io.limits import check_fps


@dataclass(frozen=True)
class VideoFormat:
    """How a file extension is written: FFmpeg muxer, default encoder and muxer options."""

    muxer: str
    codec: str
    options: tuple[tuple[str, str], ...] = ()


_FASTSTART = (("movflags", "+faststart"),)  # index first: playable while downloading, truncation detectable
VIDEO_FORMATS = {
    ".mp4": VideoFormat("mp4", "libx264", _FASTSTART),
    ".mov": VideoFormat("mov", "libx264", _FASTSTART),
    ".mkv": VideoFormat("matroska", "libx264"),
    ".webm": VideoFormat("webm", "libvpx-vp9"),
    ".avi": VideoFormat("avi", "mpeg4"),
    ".gif": VideoFormat("gif", "gif"),
}
DEFAULT_CRF = {"libx264": 18, "libx264rgb": 18, "libx265": 22, "libvpx-vp9": 30, "libsvtav1": 30}
_SUBSAMPLED = ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "nv12")  # half-width chroma: even sizes


def _encoder_options(codec: str, crf: int | None) -> dict[str, str]:
    """Quality options for `codec`; `crf` applies to the CRF encoders of DEFAULT_CRF and is ignored by others."""
    crf = DEFAULT_CRF.get(codec) if crf is None else crf
    if codec == "libvpx-vp9":
        return {"crf": str(crf), "b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"}
    if codec == "libx265":
        return {"crf": str(crf), "x265-params": "log-level=error"}
    if codec in DEFAULT_CRF:
        return {"crf": str(crf)}
    if codec == "mpeg4":
        return {"flags": "+qscale", "global_quality": str(2 * 118)}  # -q:v 2 (118 = FF_QP2LAMBDA)
    return {}


def _pixel_format(codec: av.Codec) -> str:
    """yuv420p for lossy encoders that take it (plays everywhere); an RGB format for lossless-only ones."""
    names = [f.name for f in codec.video_formats or ()]
    rgb_first = codec.lossless and not codec.lossy
    preferred = ("rgb24", "bgr0", "gbrp", "yuv444p") if rgb_first else ("yuv420p", "yuvj420p", "rgb24")
    return next((name for name in preferred if name in names), names[0] if names else "yuv420p")


def _checked_frames(frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield uint8 [H,W,3] frames of one size; ValueError on the first malformed one."""
    if isinstance(frames, np.ndarray):
        check_frames(frames)
        yield from frames
        return
    shape = None
    for index, frame in enumerate(frames):
        check_image_array(frame, name=f"frame {index}")
        if shape is not None and frame.shape != shape:
            raise ValueError(f"frame {index} has shape {frame.shape} but frame 0 has {shape}; sizes must match")
        shape = frame.shape
        yield frame


def _pad_to(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h,w,3] -> [height,width,3] by repeating the last row and column (height >= h, width >= w)."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, height - h), (0, width - w), (0, 0)), mode="edge") if (h, w) != (height, width) else frame


def _gif_frame(frame: np.ndarray) -> av.VideoFrame:
    """uint8 [H,W,3] -> pal8 frame with its own 256-color palette (median cut, Floyd-Steinberg dither)."""
    image = Image.fromarray(frame).quantize(colors=256)
    rgb = np.zeros((256, 3), np.uint8)
    colors = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)[:256]
    rgb[: len(colors)] = colors
    argb = np.concatenate([np.full((256, 1), 255, np.uint8), rgb], axis=1)
    return av.VideoFrame.from_ndarray((np.asarray(image), argb), format="pal8")


def _resolve(path: Path, codec: str | None) -> tuple[VideoFormat, av.Codec]:
    try:
        fmt = VIDEO_FORMATS[path.suffix.lower()]
    except KeyError:
        raise VivaUserError(
            f"cannot write {path}: unknown video extension {path.suffix!r}; use one of {', '.join(VIDEO_FORMATS)}"
        ) from None
    name = codec or fmt.codec
    try:
        encoder = av.Codec(name, "w")
    except (av.FFmpegError, ValueError):
        encoder = None
    if encoder is None or encoder.type != "video":
        raise VivaUserError(f"cannot write {path}: unknown video encoder {name!r}; try {fmt.codec!r}")
    return fmt, encoder


def _add_stream(
    out: av.container.OutputContainer, path: Path, codec: av.Codec, size: tuple[int, int], rate: Fraction,
    crf: int | None,
) -> av.VideoStream:
    """Add a video stream for frames of `size` (height, width), padded to even where the format needs it."""
    pix_fmt = "pal8" if codec.name == "gif" else _pixel_format(codec)
    height, width = (n + n % 2 for n in size) if pix_fmt in _SUBSAMPLED else size
    try:
        stream = out.add_stream(codec.name, rate=rate, options=_encoder_options(codec.name, crf))
    except ValueError as e:  # e.g. "'matroska' format does not support 'png' codec"
        raise VivaUserError(f"cannot write {path}: {e}; pick another codec or extension") from None
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    return stream


def _encode(out: av.container.OutputContainer, stream: av.VideoStream, frames: Iterator[np.ndarray]) -> None:
    """Encode uint8 [H,W,3] `frames` into `stream`, then flush the encoder."""
    is_gif = stream.pix_fmt == "pal8"
    for index, frame in enumerate(frames):
        frame = np.ascontiguousarray(_pad_to(frame, stream.height, stream.width))
        video_frame = _gif_frame(frame) if is_gif else av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts, video_frame.time_base = index, 1 / stream.codec_context.framerate
        out.mux(stream.encode(video_frame))
    out.mux(stream.encode(None))


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float = 8.0,
    codec: str | None = None,
    crf: int | None = None,
) -> Path:
    """Write uint8 frames [T,H,W,3] (or an iterable of [H,W,3]) to `path` atomically; return the path.

    The extension picks container and encoder (VIDEO_FORMATS): mp4/mov/mkv -> H.264 yuv420p, webm -> VP9,
    avi -> MPEG-4 part 2, gif -> per-frame 256-color palettes. `codec` overrides the encoder; `crf` sets
    the quality of CRF encoders (lower is better; default DEFAULT_CRF). yuv420p needs even sizes, so an odd
    height or width is padded by one repeated row or column. Nothing is left at `path` if writing fails.
    """
    path = Path(path)
    fmt, encoder = _resolve(path, codec)
    check_fps("fps", fps)
    if crf is not None and (isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 63):
        raise VivaUserError(f"crf must be a whole number from 0 (best) to 63, got {crf!r}")
    rate = Fraction(fps).limit_denominator(10_000)
    checked = _checked_frames(frames)
    first = next(checked, None)
    if first is None:
        raise ValueError(f"no frames to write to {path}")
    with atomic_output(path) as tmp:
        try:
            out = av.open(str(tmp), "w", format=fmt.muxer, options=dict(fmt.options))
        except (av.FFmpegError, OSError) as e:
            raise VivaUserError(f"cannot write {path}: {error_reason(e)}") from None
        try:
            stream = _add_stream(out, path, encoder, first.shape[:2], rate, crf)
            _encode(out, stream, chain([first], checked))
            out.close()
        except BaseException as error:
            with suppress(Exception):
                out.close()
            if isinstance(error, (av.FFmpegError, OSError)):
                raise VivaUserError(f"cannot write {path}: {error_reason(error)}") from None
            raise
    return path
