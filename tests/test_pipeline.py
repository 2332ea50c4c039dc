"""VivaPipeline on a tiny random editor: folders, input fitting, determinism, batching, defaults."""

import json

import numpy as np
import pytest
import torch

from viva.errors import VivaUserError
from viva.io import read_image, write_image, write_video
from viva.models.tiny import build_tiny_editor
from viva.pipeline import (
    PREVIEW_GAP,
    EditResult,
    VivaPipeline,
    load_editor,
    save_editor,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from two threads, and on a busy machine two spin-waiting threads crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    """A tiny VLM-instructor editor (first frame and reference reach the tokens)."""
    return VivaPipeline(build_tiny_editor(seed=0, vlm=True))


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)


def edit(pipe, video, instruction="make the red circle blue", **kwargs):
    kwargs.setdefault("num_inference_steps", 4)
    return pipe(video, instruction, **kwargs)


# ----------------------------------------------------------------------------------------------- folders


def test_save_load_round_trip_gives_bitwise_identical_edits(pipe, clip, reference, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "model")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["instructor"] == "MiniVLMInstructor" and index["editor"]["default_steps"] == 20
    loaded = VivaPipeline.from_pretrained(folder)
    a = edit(pipe, clip, reference_image=reference, seed=3)
    b = edit(loaded, clip, reference_image=reference, seed=3)
    assert a.frames.dtype == np.uint8
    np.testing.assert_array_equal(a.frames, b.frames)


def test_load_rejects_missing_folder_weights_and_mixed_components(tmp_path):
    with pytest.raises(VivaUserError, match="does not exist"):
        VivaPipeline.from_pretrained(tmp_path / "nothing")
    folder = save_editor(build_tiny_editor(seed=0), tmp_path / "model")
    (folder / "refiner" / "model.safetensors").unlink()
    with pytest.raises(VivaUserError, match="refiner/model.safetensors is missing"):
        load_editor(folder)
    # A denoiser from a model with another latent width does not fit this VAE.
    other = build_tiny_editor(seed=0)
    from viva.models.dit import MiniDiT, MiniDiTConfig

    other.denoiser = MiniDiT(MiniDiTConfig(latent_channels=8, hidden_size=32, depth=1, num_heads=2, cond_dim=32,
                                           rope_axes_dim=(4, 6, 6)))
    mixed = save_editor(other, tmp_path / "mixed")
    with pytest.raises(VivaUserError, match="incompatible components"):
        load_editor(mixed)


# ------------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("frames", [8, 1])
@pytest.mark.parametrize("with_reference", [False, True])
def test_shapes_for_clips_and_images_with_and_without_reference(pipe, clip, reference, frames, with_reference):
    video = clip[:frames] if frames > 1 else clip[0]  # an image is [H,W,3]
    result = edit(pipe, video, reference_image=reference if with_reference else None)
    assert isinstance(result, EditResult)
    assert result.frames.shape == (frames, 64, 64, 3) and result.frames.dtype == np.uint8
    assert result.source.shape == (frames, 64, 64, 3)
    if with_reference:
        assert result.reference.shape == (64, 64, 3)
        assert "reference resized 40x48 -> 64x64 (center crop)" in result.notes
    else:
        assert result.reference is None
    if frames == 1:
        assert "single image: edited as a 1-frame clip" in result.notes


def test_reference_and_instruction_change_the_edit(pipe, clip, reference):
    base = edit(pipe, clip).frames
    assert not np.array_equal(base, edit(pipe, clip, reference_image=reference).frames)
    assert not np.array_equal(base, edit(pipe, clip, "remove the square").frames)


def test_seed_determinism_and_seeds_change_outputs(pipe, clip):
    a, b, c = (edit(pipe, clip, seed=s).frames for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_float_and_tensor_inputs_match_uint8(pipe, clip):
    expected = edit(pipe, clip).frames
    np.testing.assert_array_equal(edit(pipe, torch.from_numpy(clip)).frames, expected)
    np.testing.assert_array_equal(edit(pipe, torch.from_numpy(clip).float() / 255).frames, expected)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        edit(pipe, clip.astype(np.float32) / 127.5 - 1)


@pytest.mark.parametrize("instruction", ["", "   \n\t"])
def test_empty_instruction_is_a_user_error(pipe, clip, instruction):
    with pytest.raises(VivaUserError, match="instruction is empty"):
        pipe(clip, instruction)


def test_bad_reference_path_is_a_user_error(pipe, clip, tmp_path):
    with pytest.raises(VivaUserError, match="not found"):
        pipe(clip, "make it red", reference_image=tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(VivaUserError, match="not an image"):
        pipe(clip, "make it red", reference_image=bad)


# ------------------------------------------------------------------------------------------ input fitting


def test_hd_mp4_is_fitted_with_notes(pipe, tmp_path):
    path = tmp_path / "hd.mp4"
    ys, xs = np.mgrid[0:720, 0:1280]
    frames = np.zeros((30, 720, 1280, 3), np.uint8)  # smooth content: fast to encode
    for t in range(30):
        frames[t, ..., 0] = (xs // 5 + 4 * t) % 256
        frames[t, ..., 1] = ys // 3
        frames[t, 300:420, 40 * t : 40 * t + 120, 2] = 255
    write_video(path, frames, fps=30)
    result = edit(pipe, path)
    assert result.frames.shape == (8, 64, 64, 3)
    assert result.notes == ["sampled 8 of 30 frames evenly", "resized 1280x720 -> 64x64 (center crop)"]
    assert result.fps == pytest.approx(8.0)  # 8 frames over the clip's 1 s


def test_fps_sampling_short_clips_and_rgba_reference_file(pipe, tmp_path):
    rng = np.random.default_rng(3)
    long = rng.integers(0, 256, (30, 64, 64, 3), dtype=np.uint8)
    result = edit(pipe, long, source_fps=30, fps=10)
    assert result.notes == ["sampled 8 of 30 frames at 10 fps (source 30 fps)"] and result.fps == 10
    short = edit(pipe, long[:3])
    assert short.frames.shape[0] == 8 and "padded 3 -> 8 frames by repeating the last frame" in short.notes
    rgba = tmp_path / "ref.png"
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA").save(rgba)
    assert edit(pipe, long, reference_image=rgba).reference.shape == (64, 64, 3)


def test_model_size_comes_from_editor_config():
    small = VivaPipeline(build_tiny_editor(seed=0, height=32, width=48, num_frames=4))
    rng = np.random.default_rng(4)
    result = edit(small, rng.integers(0, 256, (10, 90, 160, 3), dtype=np.uint8))
    assert result.frames.shape == (4, 32, 48, 3)


# --------------------------------------------------------------------------------------- defaults, batch


def test_defaults_come_from_the_model_and_callback_counts_steps():
    small = VivaPipeline(build_tiny_editor(seed=0, default_steps=3, default_guidance_scale=2.0,
                                           default_video_guidance_scale=1.0))
    calls = []
    result = small(np.zeros((8, 64, 64, 3), np.uint8), "add a star", callback=lambda i, n: calls.append((i, n)))
    assert (result.num_inference_steps, result.guidance_scale, result.video_guidance_scale) == (3, 2.0, 1.0)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(VivaUserError, match="num_inference_steps"):
        small(np.zeros((8, 64, 64, 3), np.uint8), "add a star", num_inference_steps=0)


def test_edit_batch_matches_single_calls_in_order(pipe, clip, reference):
    videos = [clip, clip[0], clip[::-1], clip]
    instructions = ["make it red", "add a star", "remove the circle", "make it red"]
    references = [None, None, None, reference]
    results = pipe.edit_batch(videos, instructions, references, num_inference_steps=4, seed=5)
    assert [r.frames.shape[0] for r in results] == [8, 1, 8, 8]
    assert [r.instruction for r in results] == instructions
    for video, text, ref, result in zip(videos, instructions, references, results):
        single = edit(pipe, video, text, reference_image=ref, seed=5).frames
        # Same noise and conditions; batched matmuls may round differently in the last bit.
        assert np.abs(single.astype(int) - result.frames.astype(int)).max() <= 2
    # A stacked uint8 batch [B,T,H,W,3], one seed per item, in chunks of 1.
    stacked = pipe.edit_batch(np.stack([clip, clip]), ["a", "a"], seed=[0, 1], num_inference_steps=2, batch_size=1)
    assert not np.array_equal(stacked[0].frames, stacked[1].frames)


def test_preview_grid_layout(pipe, clip, reference, tmp_path):
    result = edit(pipe, clip, reference_image=reference)
    grid = result.preview()
    scale = 2  # 64 px cells are upscaled to 128
    assert grid.shape == (8 * 64 * scale + 9 * PREVIEW_GAP, 3 * 64 * scale + 4 * PREVIEW_GAP, 3)
    top, left = PREVIEW_GAP, PREVIEW_GAP + 64 * scale + PREVIEW_GAP
    np.testing.assert_array_equal(grid[top : top + 128 : 2, left : left + 128 : 2], result.frames[0])
    write_image(tmp_path / "p.png", grid)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), grid)
