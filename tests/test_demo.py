"""`viva demo` and what it stands on: the bundled sample clips (with their ground truth), the bundled
default model (float16 weights, <= 60 MB) and `viva edit` falling back to it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from viva.demo import demo_preview, run_demo
from viva.io import read_image, read_video
from viva.models.tiny import build_tiny_editor, save_tiny_editor
from viva.pipeline import default_model_path, load_editor, save_editor
from viva.samples import SAMPLES_DIR, load_samples
from viva.world import Scene, apply_program, program_from_list, render

MB = 2**20


def viva(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "viva", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


def test_bundled_samples_are_tiny_and_carry_their_ground_truth():
    """Each clip is the render of its stored source scene (up to H.264 loss), and the verifier fails the
    unedited clip but passes the render of the stored program applied to the scene: the ground truth the
    demo scores with matches the pictures."""
    samples = load_samples()
    assert [s.name for s in samples] == ["recolor", "remove", "add_from_reference", "replace", "hybrid"]
    assert sum(p.stat().st_size for p in SAMPLES_DIR.iterdir()) < 64 * 1024
    assert samples[2].reference is not None and json.loads((SAMPLES_DIR / "samples.json").read_text())
    for sample in samples:
        frames, info = read_video(sample.video)
        assert frames.shape == (8, 64, 64, 3) and info.fps == pytest.approx(8.0)
        scene = Scene.from_dict(sample.world["scene"])
        assert psnr(frames, render(scene)) > 27, sample.name  # H.264 at 64x64: 30-40 dB; another scene: < 20
        assert not sample.verify(frames).passed, sample.name
        target = render(apply_program(scene, program_from_list(sample.world["program"])))
        assert sample.verify(target).passed, sample.name
    assert samples[-1].world["category"] == "hybrid" and len(samples[-1].world["program"]) >= 2


def test_bundled_model_ships_float16_under_60_mb_and_loads():
    model = default_model_path()
    assert model is not None, "the bundled default model is missing from viva/assets/model"
    size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert size <= 60 * MB, f"{size / MB:.1f} MB"
    for part in ("vae", "instructor", "refiner", "denoiser"):
        assert json.loads((model / part / "config.json").read_text())["_weights_dtype"] == "float16"
    editor = load_editor(model)
    assert all(p.dtype == torch.float32 for p in editor.parameters())  # stored float16, computed float32
    assert (model / "README.md").is_file()  # the model card


def test_float16_storage_halves_the_files_and_keeps_the_edit(tmp_path):
    editor = build_tiny_editor(seed=0, vlm=True)
    save_editor(editor, tmp_path / "fp32")
    save_editor(editor, tmp_path / "fp16", dtype=torch.float16)

    def size(folder):
        return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))

    assert size(tmp_path / "fp16") < 0.55 * size(tmp_path / "fp32")
    a, b = load_editor(tmp_path / "fp32"), load_editor(tmp_path / "fp16")
    rounded = 0
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert pb.dtype == torch.float32
        assert torch.allclose(pa, pb, rtol=1e-3, atol=1e-4), name
        rounded += not torch.equal(pa, pb)
    assert rounded > 0  # the weights really went through float16


def test_bundle_script_ships_float16_with_a_decoder_fine_tuned_vae(tmp_path):
    """scripts/bundle_default_model.py: float16 folder + model card; --vae swaps in a VAE whose decoder
    differs but whose encoder is the model's, and refuses (exit 2, one line, nothing written) a VAE whose
    encoder differs."""
    root = default_model_path().parents[3]  # the repository (src/viva/assets/model)
    editor = build_tiny_editor(seed=0, vlm=True)
    save_editor(editor, tmp_path / "model")
    tuned = load_editor(tmp_path / "model").vae
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if name.startswith("decoder."):
                param.add_(0.01)
    tuned.save_pretrained(tmp_path / "vae_dec")
    script = [sys.executable, str(root / "scripts" / "bundle_default_model.py"), str(tmp_path / "model"),
              "--runs", str(tmp_path / "runs"), "--stages", "vae,vae_dec"]
    out = tmp_path / "bundled"
    result = subprocess.run([*script, "--vae", str(tmp_path / "vae_dec"), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "vae" / "config.json").read_text())["_weights_dtype"] == "float16"
    shipped = load_editor(out).vae.state_dict()
    want = tuned.state_dict()
    assert all(torch.allclose(shipped[k], want[k], atol=1e-3) for k in want)
    assert "decoder fine-tune" in (out / "README.md").read_text()
    with torch.no_grad():
        for param in tuned.encoder.parameters():
            param.add_(0.01)
    tuned.save_pretrained(tmp_path / "vae_other")
    refused = tmp_path / "refused"
    result = subprocess.run([*script, "--vae", str(tmp_path / "vae_other"), "--out", str(refused)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "not a decoder fine-tune" in result.stderr
    assert result.stderr.count("\n") == 1 and not refused.exists()


def test_demo_edits_every_sample_and_writes_videos_and_a_preview(tmp_path):
    save_tiny_editor(tmp_path / "model", seed=0, vlm=True)
    out = viva("demo", "--model", "model", "--out", "demo", "--steps", "2", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    samples = load_samples()
    for sample in samples:
        frames, info = read_video(tmp_path / "demo" / f"{sample.name}.mp4")
        assert frames.shape == (8, 64, 64, 3) and info.fps == pytest.approx(8.0)
        line = next(line for line in out.stdout.splitlines() if line.strip().startswith(f"{sample.name}:"))
        assert "verifier" in line and sample.instruction in line, line
    preview = read_image(tmp_path / "demo" / "preview.png")
    assert preview.shape[1] >= 8 * 128 and preview.shape[0] >= len(samples) * 2 * 128
    assert "wrote 5 edited clips" in out.stdout and "preview.png" in out.stdout
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == sorted(
        [f"{s.name}.mp4" for s in samples] + ["preview.png"]
    )  # no temporary files left behind


def test_demo_preview_layout():
    """Rows: source frames (+ reference cell) above edited frames, every frame at 2x."""
    samples = load_samples()[2:3]  # the reference-based add
    source, _ = read_video(samples[0].video)
    from viva.demo import DemoEdit

    reference = read_image(samples[0].reference)
    edit = DemoEdit(samples[0], 255 - source, source, reference, 0.1, False, 0.25)
    image = demo_preview([edit])
    assert image.shape[1] == 9 * 128 + 10 * 4  # 8 frames + the reference, 4 px gaps
    grid = image[-(2 * 128 + 3 * 4):]  # the two rows of cells under the text
    assert np.array_equal(grid[4 : 4 + 128 : 2, 4 : 4 + 128 : 2], source[0])
    assert np.array_equal(grid[8 + 128 : 8 + 256 : 2, 4 : 4 + 128 : 2], 255 - source[0])


def test_demo_bad_input_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "afile").write_text("x")
    out = viva("demo", "--out", "afile", "--no-progress", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: --out afile is a file"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = viva("demo", "--model", "nowhere", "--out", "demo", "--no-progress", cwd=tmp_path)
    assert out.returncode == 2 and "model folder nowhere does not exist" in out.stderr, out.stderr
    assert not (tmp_path / "demo").exists()


def test_edit_without_model_uses_the_bundled_one(tmp_path):
    sample = load_samples()[0]
    out = viva("edit", str(sample.video), "-i", sample.instruction, "-o", "out.mp4", "--steps", "2",
               "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "bundled default model" in out.stdout
    assert read_video(tmp_path / "out.mp4")[0].shape == (8, 64, 64, 3)


def test_run_demo_in_process_returns_verdicts(tmp_path):
    save_tiny_editor(tmp_path / "model", seed=1)
    edits = run_demo(tmp_path / "demo", tmp_path / "model", samples=load_samples()[:2], steps=1)
    assert [e.sample.name for e in edits] == ["recolor", "remove"]
    assert all(isinstance(e.passed, bool) and 0.0 <= e.score <= 1.0 for e in edits)
