"""viva.io on real files: round trips, sampling, resizing, bad inputs and atomic writes."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from viva.errors import VivaUserError
from viva.io import (
    VideoLimits,
    fit_to_model,
    probe_video,
    read_image,
    read_video,
    resize_center_crop,
    sample_frames,
    sample_indices,
    write_image,
    write_video,
)

T, H, W, FPS = 16, 48, 64, 8.0


def make_clip(num_frames: int = T, height: int = H, width: int = W, noise: bool = False) -> np.ndarray:
    """[T,H,W,3] uint8: a gradient background with a red and a green square moving in opposite directions."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[..., 2] = np.linspace(40, 160, width, dtype=np.uint8)
    for t in range(num_frames):
        x = 3 * t % (width - 12)
        frames[t, 8:20, x : x + 12] = (230, 30, 30)
        frames[t, 28:40, width - 12 - x : width - x] = (30, 200, 60)
    if noise:
        rng = np.random.default_rng(0)
        frames = np.clip(frames + rng.integers(-40, 40, frames.shape), 0, 255).astype(np.uint8)
    return frames


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def write_folder(folder: Path, frames: np.ndarray, ext: str) -> Path:
    """Frames as frame_0.ext ... frame_15.ext: unpadded numbers, so only a natural sort gets them right."""
    folder.mkdir()
    for index, frame in enumerate(frames):
        write_image(folder / f"frame_{index}.{ext}", frame)
    return folder


@contextmanager
def raises_user_error(*fragments: str) -> Iterator[None]:
    """Expect a one-line VivaUserError whose message contains every fragment (case-insensitive)."""
    with pytest.raises(VivaUserError) as info:
        yield
    message = str(info.value).lower()
    assert "\n" not in message
    for fragment in fragments:
        assert fragment.lower() in message, f"{fragment!r} not in {message!r}"


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return make_clip()


# ---------------------------------------------------------------------------------------------- round trips

ROUND_TRIPS = {  # extension: (codec read back, largest mean abs error)
    "mp4": ("h264", 4.0),
    "mov": ("h264", 4.0),
    "mkv": ("h264", 4.0),
    "webm": ("vp9", 6.0),
    "avi": ("mpeg4", 6.0),
    "gif": ("gif", 1.0),
}


@pytest.mark.parametrize("ext", ROUND_TRIPS)
def test_video_round_trip(tmp_path, clip, ext):
    codec, tolerance = ROUND_TRIPS[ext]
    path = write_video(tmp_path / f"clip.{ext}", clip, fps=FPS)
    frames, info = read_video(path)
    assert frames.shape == clip.shape and frames.dtype == np.uint8
    assert (info.num_frames, info.width, info.height, info.codec) == (T, W, H, codec)
    assert info.fps == pytest.approx(FPS, rel=0.01)
    assert info.duration == pytest.approx(T / FPS, abs=0.05)
    assert mae(frames, clip) < tolerance
    assert probe_video(path) == info


@pytest.mark.parametrize("ext, tolerance", [("png", 0.0), ("jpg", 4.0)])
def test_frame_folder_round_trip(tmp_path, clip, ext, tolerance):
    folder = write_folder(tmp_path / "frames", clip, ext)
    frames, info = read_video(folder)
    assert frames.shape == clip.shape
    assert (info.num_frames, info.fps, info.width, info.height, info.container) == (T, 8.0, W, H, "frames")
    assert mae(frames, clip) <= tolerance  # natural order: frame_10 after frame_9
    assert probe_video(folder, folder_fps=12).fps == 12


def test_single_image_is_a_one_frame_clip(tmp_path, clip):
    frames, info = read_video(write_image(tmp_path / "first.png", clip[0]))
    assert frames.shape == (1, H, W, 3) and info.num_frames == 1 and info.container == "image"
    np.testing.assert_array_equal(frames[0], clip[0])


def test_odd_sizes_are_padded_to_even(tmp_path, clip):
    odd = np.ascontiguousarray(clip[:, :47, :63])
    frames, info = read_video(write_video(tmp_path / "odd.mp4", odd, fps=12.5))
    assert (info.height, info.width, info.fps) == (48, 64, 12.5)
    assert mae(frames[:, :47, :63], odd) < 4.0


def test_codec_override_lossless(tmp_path, clip):
    frames, info = read_video(write_video(tmp_path / "clip.mkv", clip[:, ::2, ::3], codec="ffv1"))
    assert info.codec == "ffv1"
    np.testing.assert_array_equal(frames, clip[:, ::2, ::3])  # RGB pixel format for lossless encoders


def test_write_accepts_an_iterable_of_frames(tmp_path, clip):
    frames, _ = read_video(write_video(tmp_path / "gen.gif", (frame for frame in clip)))
    assert mae(frames, clip) < 1.0


# ---------------------------------------------------------------------------------------------- sampling


def test_sample_indices_rules():
    np.testing.assert_array_equal(sample_indices(16, 8), np.arange(16))
    np.testing.assert_array_equal(sample_indices(16, 8, num_frames=4), [0, 5, 10, 15])  # evenly, ends kept
    np.testing.assert_array_equal(sample_indices(16, 8, target_fps=4), np.arange(0, 16, 2))
    np.testing.assert_array_equal(sample_indices(16, 8, num_frames=3, target_fps=4), [0, 2, 4])  # first N
    np.testing.assert_array_equal(sample_indices(16, 8, target_fps=3), [0, 3, 5, 8, 11, 13])  # nearest in time
    np.testing.assert_array_equal(sample_indices(4, 8, target_fps=16), [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(sample_indices(300, 30, num_frames=8, target_fps=8), [0, 4, 7, 11, 15, 19, 22, 26])
    assert len(sample_indices(16, 8, num_frames=20, target_fps=8)) == 16  # clip ends first


def test_read_video_sampling_matches_sample_frames(tmp_path, clip):
    """read_video selects (by decoded timestamps) exactly what sample_frames selects in memory."""
    path = write_video(tmp_path / "clip.gif", clip, fps=FPS)  # lossless for these colors
    for kwargs in ({"num_frames": 4}, {"fps": 4.0}, {"fps": 3.0}, {"num_frames": 3, "fps": 4.0}, {"fps": 16.0}):
        frames, _ = read_video(path, **kwargs)
        expected = sample_frames(clip, FPS, kwargs.get("num_frames"), kwargs.get("fps"))
        assert frames.shape == expected.shape, kwargs
        assert mae(frames, expected) < 1.0, kwargs
    frames, _ = read_video(path, max_frames=5)
    assert mae(frames, clip[:5]) < 1.0


def test_resize_center_crop():
    frames = np.zeros((2, 90, 160, 3), np.uint8)  # 16:9: red | green (the central 90x90 square) | blue
    frames[:, :, :35] = (255, 0, 0)
    frames[:, :, 35:125] = (0, 255, 0)
    frames[:, :, 125:] = (0, 0, 255)
    out = resize_center_crop(frames, 32, 32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    assert (out[:, :, 1:31] == (0, 255, 0)).all()  # only the central square survives
    tall = resize_center_crop(frames, 64, 16)
    assert tall.shape == (2, 64, 16, 3)
    assert resize_center_crop(frames, 90, 160) is frames


def test_fit_to_model_long_hd_clip():
    big = np.broadcast_to(make_clip(1, 1080, 1920), (300, 1080, 1920, 3))  # 300 frames, no 1.8 GB copy
    frames, notes = fit_to_model(big, fps=30, height=64, width=64, num_frames=8, target_fps=8)
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    assert notes == ["sampled 8 of 300 frames at 8 fps (source 30 fps)", "resized 1920x1080 -> 64x64 (center crop)"]


def test_fit_to_model_pads_short_clips_and_leaves_fitting_ones_alone(clip):
    frames, notes = fit_to_model(clip[:5], fps=8, height=H, width=W, num_frames=8)
    assert frames.shape == (8, H, W, 3)
    assert notes == ["padded 5 -> 8 frames by repeating the last frame"]
    assert (frames[5:] == clip[4]).all()
    frames, notes = fit_to_model(clip, fps=8, height=24, width=32, num_frames=4)
    assert frames.shape == (4, 24, 32, 3)
    assert notes == ["sampled 4 of 16 frames evenly", "resized 64x48 -> 32x24"]
    frames, notes = fit_to_model(clip, fps=8, height=H, width=W, num_frames=T, target_fps=8)
    assert notes == [] and frames is clip


# ---------------------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with raises_user_error("not found", "missing.mp4"):
        read_video(tmp_path / "missing.mp4")
    with raises_user_error("not found"):
        read_image(tmp_path / "missing.png")


def test_folder_without_frames(tmp_path):
    (tmp_path / "notes.txt").write_text("no frames here")
    with raises_user_error("holds no frames", "png"):
        read_video(tmp_path)


def test_not_a_video(tmp_path):
    path = tmp_path / "fake.mp4"
    path.write_text("this is a text file, not a video\n" * 20)
    with raises_user_error("not a video file", "fake.mp4"):
        read_video(path)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with raises_user_error("empty (0 bytes)"):
        probe_video(tmp_path / "empty.mp4")


def test_audio_only_file_has_no_video(tmp_path):
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with raises_user_error("no video stream", "audio"):
        read_video(path)


def test_zero_decodable_frames(tmp_path, clip):
    data = bytearray(write_video(tmp_path / "clip.mp4", clip).read_bytes())
    start = data.index(b"mdat") + 4  # keep the index, wipe every frame
    data[start:] = bytes(len(data) - start)
    (tmp_path / "wiped.mp4").write_bytes(data)
    with raises_user_error("no decodable video frames", "invalid data"):
        read_video(tmp_path / "wiped.mp4", num_frames=1, fps=8)


@pytest.fixture(scope="module")
def truncated_mp4(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("truncated")
    data = write_video(folder / "full.mp4", make_clip(64, noise=True)).read_bytes()
    (folder / "half.mp4").write_bytes(data[: len(data) // 2])
    return folder / "half.mp4"


def test_truncated_mp4_is_an_error(truncated_mp4):
    with raises_user_error("truncated or corrupt", "of the 64 frames"):
        read_video(truncated_mp4)
    with raises_user_error("truncated or corrupt"):
        read_video(truncated_mp4, num_frames=8)  # evenly spaced needs the lost last frame


def test_truncated_mp4_serves_requests_that_end_before_the_damage(truncated_mp4):
    frames, info = read_video(truncated_mp4, num_frames=4, fps=8)
    assert frames.shape == (4, H, W, 3) and info.num_frames == 64
    np.testing.assert_array_equal(frames, read_video(truncated_mp4.with_name("full.mp4"), max_frames=4)[0])


def test_truncated_mkv_is_an_error(tmp_path):
    data = write_video(tmp_path / "full.mkv", make_clip(64, noise=True)).read_bytes()
    (tmp_path / "half.mkv").write_bytes(data[: len(data) // 2])
    with raises_user_error("truncated", "header says"):
        probe_video(tmp_path / "half.mkv")


def test_resolution_over_the_limit(tmp_path, clip):
    small = VideoLimits(max_width=32, max_height=32)
    video = write_video(tmp_path / "clip.webm", clip)
    folder = write_folder(tmp_path / "frames", clip[:2], "png")
    for path in (video, folder, folder / "frame_0.png"):
        with raises_user_error("64x48", "size limit of 32x32", "VideoLimits.max_width"):
            read_video(path, limits=small)
    with raises_user_error("size limit"):
        read_image(folder / "frame_0.png", limits=small)


def test_other_limits(tmp_path, clip):
    path = write_video(tmp_path / "clip.mp4", clip)
    with raises_user_error("VideoLimits.max_file_bytes"):
        read_video(path, limits=VideoLimits(max_file_bytes=100))
    with raises_user_error("would return 16 frames", "VideoLimits.max_frames"):
        read_video(path, limits=VideoLimits(max_frames=10))
    assert read_video(path, num_frames=10, limits=VideoLimits(max_frames=10))[0].shape[0] == 10
    with raises_user_error("VideoLimits.max_decoded_bytes"):
        read_video(path, limits=VideoLimits(max_decoded_bytes=10_000))
    with raises_user_error("would return 200000 frames"):
        read_video(path, fps=100_000)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"num_frames": 0}, "at least 1"),
        ({"num_frames": -1}, "at least 1"),
        ({"num_frames": 10**9}, "over the limit of 10000"),
        ({"num_frames": 2.5}, "whole number"),
        ({"fps": 0}, "positive"),
        ({"fps": -8}, "positive"),
        ({"fps": math.nan}, "positive"),
        ({"max_frames": 0}, "at least 1"),
        ({"folder_fps": 0}, "positive"),
    ],
)
def test_absurd_requests(tmp_path_factory, kwargs, fragment):
    path = tmp_path_factory.getbasetemp() / "request.gif"
    if not path.exists():
        write_video(path, make_clip(4))
    with raises_user_error(fragment):
        read_video(path, **kwargs)


def test_absurd_frame_op_arguments(clip):
    with raises_user_error("num_frames", "at least 1"):
        sample_frames(clip, 8, num_frames=0)
    with raises_user_error("target_fps", "positive"):
        fit_to_model(clip, fps=8, height=8, width=8, num_frames=4, target_fps=-1)
    with raises_user_error("width"):
        resize_center_crop(clip, 8, 0)


def test_folder_frames_of_different_sizes(tmp_path, clip):
    folder = write_folder(tmp_path / "frames", clip[:3], "png")
    write_image(folder / "frame_1.png", clip[1, :40])
    with raises_user_error("frame_1.png", "share one size"):
        read_video(folder)


def test_bad_images(tmp_path, clip):
    (tmp_path / "text.png").write_text("not an image")
    with raises_user_error("not an image"):
        read_image(tmp_path / "text.png")
    data = write_image(tmp_path / "full.png", make_clip(1, noise=True)[0]).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with raises_user_error("corrupt or truncated"):
        read_image(tmp_path / "cut.png")


def test_bad_output_names(tmp_path, clip):
    with raises_user_error("unknown video extension", ".mp4"):
        write_video(tmp_path / "clip.xyz", clip)
    with raises_user_error("unknown video encoder"):
        write_video(tmp_path / "clip.mp4", clip, codec="no-such-codec")
    with raises_user_error("does not support 'png' codec"):
        write_video(tmp_path / "clip.mkv", clip, codec="png")  # fails after the temporary file exists
    with raises_user_error("unknown image extension"):
        write_image(tmp_path / "frame.tif", clip[0])
    with raises_user_error("does not exist"):
        write_video(tmp_path / "no" / "such" / "clip.mp4", clip)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- atomic writes


def test_failed_writes_leave_the_old_file_untouched(tmp_path, clip):
    path = write_video(tmp_path / "clip.mp4", clip)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="uint8"):
        write_video(path, clip.astype(np.float32) / 255)  # rejected before any output exists
    broken = [clip[0], clip[1], clip[2], clip[3, :40]]  # fails mid-encode, after frames were written
    with pytest.raises(ValueError, match="frame 3"):
        write_video(path, broken)
    with pytest.raises(ValueError, match="no frames"):
        write_video(path, [])
    assert path.read_bytes() == before
    image = write_image(tmp_path / "frame.png", clip[0])
    with pytest.raises(ValueError, match=r"\[H,W,3\]"):
        write_image(image, clip)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "frame.png"]  # no temp files


def test_successful_write_replaces_the_old_file(tmp_path, clip):
    path = write_video(tmp_path / "clip.gif", clip)
    write_video(path, clip[:4])
    assert probe_video(path).num_frames == 4
    assert [p.name for p in tmp_path.iterdir()] == ["clip.gif"]


# ---------------------------------------------------------------------------------------------- images


def test_image_round_trip_and_modes(tmp_path, clip):
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "a.png", clip[0])), clip[0])
    assert mae(read_image(write_image(tmp_path / "a.jpg", clip[0])), clip[0]) < 4
    assert mae(read_image(write_image(tmp_path / "a.webp", clip[0])), clip[0]) < 6

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    flat = read_image(tmp_path / "rgba.png")
    assert flat.shape == (4, 4, 3)
    assert (flat[:2] == (255, 0, 0)).all() and (flat[2:] == (255, 255, 255)).all()  # on white
    assert (read_image(tmp_path / "rgba.png", background=(0, 0, 0))[2:] == 0).all()

    Image.fromarray(np.full((3, 5), 77, np.uint8), "L").save(tmp_path / "gray.png")
    assert (read_image(tmp_path / "gray.png") == 77).all()
    Image.fromarray(np.full((3, 5), 200 * 256, np.uint16)).save(tmp_path / "gray16.png")
    assert read_image(tmp_path / "gray16.png").shape == (3, 5, 3)


def test_display_rotation_is_applied(tmp_path, clip):
    """A phone video stored landscape with a 90 degree display matrix reads as portrait, as players show it."""
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.set_display_rotation(90)  # counterclockwise
        for index, frame in enumerate(clip[:2]):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    frames, info = read_video(path)
    assert (info.width, info.height) == (H, W) and frames.shape == (2, W, H, 3)
    assert mae(frames, np.rot90(clip[:2], 1, axes=(1, 2))) < 4.0
