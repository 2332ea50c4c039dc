"""Video files (mp4, webm, mkv, mov, avi, gif, ...) read with PyAV."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from viva.errors import VivaUserError
from viva.io.clip import VideoInfo
from viva.io.image import check_input_file
from viva.io.limits import VideoLimits

_FIX = "check the file, or re-export it (e.g. with ffmpeg) as mp4 (h264)"
_TRUNCATION_TOLERANCE = 0.9  # a counted stream under 90% of its header's duration is truncated


def error_reason(error: BaseException) -> str:
    """The short reason FFmpeg or the OS gives, e.g. 'Invalid data found when processing input'."""
    return getattr(error, "strerror", None) or str(error)


def _parse_hms(text: str | None) -> float | None:
    """'00:00:02.000000000' (Matroska DURATION tag) -> 2.0 seconds."""
    match = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", (text or "").strip())
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


class ContainerReader:
    """The first video stream of a file PyAV can open; see `ClipReader`."""

    def __init__(self, path: str | Path, limits: VideoLimits) -> None:
        self.limits = limits
        self.path = check_input_file(path, limits, kind="video")
        self.container = self._open()
        self.broken: str | None = None
        self.end_time = 0.0
        self._count = 0  # frames decoded so far
        try:
            self.stream = self._video_stream()
            self._decoded = self.container.decode(self.stream)
            self._first = self._next_frame()  # decoded up front: it carries the display rotation
            if self._first is None:
                raise VivaUserError(
                    f"{self.path} has no decodable video frames ({self.broken or 'the stream is empty'}); {_FIX}"
                )
            self._turns = round((self._first.rotation or 0) / 90) % 4  # counterclockwise quarter turns
            self.info, self.declared = self._probe()
        except BaseException:
            self.container.close()
            raise

    def _next_frame(self) -> av.VideoFrame | None:
        """The next decoded frame; None at the end or at a decode error (then `broken` says why)."""
        try:
            frame = next(self._decoded)
        except StopIteration:
            return None
        except (av.FFmpegError, OSError) as e:
            self.broken = f"decoding failed after {self._count} frames ({error_reason(e)})"
            return None
        self._count += 1
        return frame

    def _open(self) -> av.container.InputContainer:
        try:
            return av.open(str(self.path), metadata_errors="ignore")
        except PermissionError:
            raise VivaUserError(f"cannot open {self.path}: permission denied; check the file's permissions") from None
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise VivaUserError(
                f"cannot read {self.path} as a video: it is not a video file or it is corrupt or truncated "
                f"({error_reason(e)}); {_FIX}"
            ) from None

    def _video_stream(self) -> av.VideoStream:
        streams = self.container.streams
        if not streams.video:
            kinds = ", ".join(sorted({s.type for s in streams})) or "none"
            raise VivaUserError(f"{self.path} has no video stream (streams: {kinds}); give a video file")
        stream = streams.video[0]
        if stream.codec_context is None or not stream.codec_context.name:
            raise VivaUserError(f"{self.path} uses a video codec this build cannot decode; {_FIX}")
        width, height = stream.width, stream.height
        if not width or not height:
            raise VivaUserError(f"{self.path} has no decodable video frames; {_FIX}")
        if not self.limits.fits(height, width):  # checked before decoding a frame; exact check once rotated
            self.limits.check_resolution(str(self.path), width, height)
        stream.thread_type = "AUTO"
        return stream

    def _header_duration(self) -> float | None:
        """Seconds the file says the video lasts, or None."""
        stream = self.stream
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        tagged = _parse_hms(stream.metadata.get("DURATION"))
        if tagged:
            return tagged
        if self.container.duration and len(self.container.streams) == 1:
            return self.container.duration / av.time_base
        return None

    def _fps(self, num_frames: int, duration: float | None) -> float:
        stream = self.stream
        rate = stream.average_rate
        guessed = stream.guessed_rate
        if self.container.format.name == "gif" and guessed and rate and abs(guessed / rate - 1) < 0.1:
            rate = guessed  # GIF delays are centiseconds, so the average of 12.5 fps reads as 12.25
        rate = rate or guessed or stream.base_rate
        if rate:
            return float(rate)
        if duration:
            return num_frames / duration
        raise VivaUserError(f"{self.path} does not say its frame rate; {_FIX}")

    def _count_packets(self) -> int:
        """Frames present in the file, counted by demuxing (no decoding)."""
        try:
            with av.open(str(self.path), metadata_errors="ignore") as container:
                stream = container.streams[self.stream.index]
                return sum(1 for packet in container.demux(stream) if packet.size)
        except av.FFmpegError as e:
            raise VivaUserError(f"{self.path} is corrupt or truncated ({error_reason(e)}); {_FIX}") from None

    def _probe(self) -> tuple[VideoInfo, int | None]:
        """VideoInfo, and the frame count the file declares (None if it declares none)."""
        header_duration = self._header_duration()
        indexed = self.stream.frames or 0  # mp4/mov/avi/gif keep a frame count; mkv/webm do not
        num_frames = indexed or self._count_packets()
        if num_frames == 0:
            raise VivaUserError(f"{self.path} has a video stream with zero frames; {_FIX}")
        fps = self._fps(num_frames, header_duration)
        if not indexed and header_duration:
            announced = header_duration * fps
            if num_frames < _TRUNCATION_TOLERANCE * announced - 1:
                raise VivaUserError(
                    f"{self.path} is truncated: it holds {num_frames} frames but its header says "
                    f"{header_duration:.2f} s (about {round(announced)} frames); {_FIX}"
                )
        width, height = self.stream.width, self.stream.height
        info = VideoInfo(
            path=self.path,
            fps=fps,
            width=height if self._turns % 2 else width,  # as displayed
            height=width if self._turns % 2 else height,
            num_frames=num_frames,
            duration=header_duration or num_frames / fps,
            codec=self.stream.codec_context.name,
            container=self._container_name(),
        )
        return info, indexed or None

    def _container_name(self) -> str:
        """The demuxer's name for this file: 'mp4' for x.mp4 although FFmpeg's demuxer is 'mov,mp4,...'."""
        names = self.container.format.name.split(",")
        extension = self.path.suffix.lower().lstrip(".")
        return extension if extension in names else names[0]

    def frames(self) -> Iterator[tuple[av.VideoFrame, float]]:
        """Decoded frames in display order with their time in seconds; stops at the first decode error."""
        last_time, last_duration = 0.0, 1 / self.info.fps
        frame, self._first = self._first, None
        while frame is not None:
            time = frame.time if frame.time is not None else (self._count - 1) / self.info.fps
            last_time = max(time, last_time)  # never step back in time on odd timestamps
            if frame.duration and frame.time_base:
                last_duration = float(frame.duration * frame.time_base)
            yield frame, last_time
            frame = self._next_frame()
        self.end_time = last_time + last_duration
        if self.broken is None and self.declared and self._count < self.declared:
            self.broken = f"decoded {self._count} of the {self.declared} frames it declares"

    def to_array(self, frame: av.VideoFrame) -> np.ndarray:
        """uint8 [H,W,3] RGB as displayed: rotated per the file's display matrix, rescaled if a frame's size differs."""
        width, height = self.stream.width, self.stream.height
        array = frame.to_ndarray(format="rgb24", width=width, height=height)
        return np.ascontiguousarray(np.rot90(array, self._turns)) if self._turns else array

    def close(self) -> None:
        self.container.close()
