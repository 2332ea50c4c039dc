"""`viva train vae`: a real run that writes a loadable VAE, exact resume, SIGTERM, config errors; the shared
run harness and world data underneath (LR schedule, step batches, frame selection)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from viva.cli import main
from viva.data.generate import DataConfig, make_pair
from viva.models.vae import MiniVAE
from viva.train.config import load_config
from viva.train.harness import OptimConfig, lr_factor
from viva.train.vae import VAETrainConfig
from viva.train.world_data import StepBatchSampler, pair_frames

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not suffer from a busy machine's spinning threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A few-thousand-parameter VAE, 2 pairs x 2 frames per step, float32: a step takes milliseconds on CPU.
TINY = [
    "model.base_channels=8",
    "model.channel_mult=[1,1,1]",
    "model.decoder_blocks=1",
    "model.norm_groups=4",
    "train.batch_size=2",
    "data.frames_per_pair=2",
    "train.num_workers=0",
    "train.mixed_precision=fp32",
    "train.log_every=1",
    "train.tensorboard=false",
    "optim.warmup_steps=2",
    "eval.num_pairs=2",
    "eval.scale_batches=1",
]


def viva(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "viva", *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def losses(run: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["psnr"]) for r in rows]


def test_train_vae_subprocess_writes_a_loadable_vae(tmp_path):
    run = tmp_path / "run"
    result = viva("train", "vae", "--config", "configs/vae_mini.yaml", "--out", run, "--no-progress", *TINY, "train.steps=3")
    assert result.returncode == 0, result.stderr
    assert "held-out PSNR" in result.stderr
    assert [s for s, _, _ in losses(run)] == [1, 2, 3]
    saved = load_config(VAETrainConfig, run / "config.yaml")
    assert saved.train.steps == 3 and saved.model.base_channels == 8
    report = json.loads((run / "eval.json").read_text())
    assert report["num_clips"] >= 4 and np.isfinite(report["psnr"]) and report["psnr_target"] == 32.0
    assert np.isfinite(report["psnr_clips"])  # source and target clips without the reference images
    assert report["scaling_factor"] > 0
    vae = MiniVAE.from_pretrained(run / "vae")
    assert vae.config.scaling_factor == pytest.approx(report["scaling_factor"])
    x = torch.rand(1, 3, 2, 64, 64) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        y = vae.decode(z)
    assert z.shape == (1, 16, 2, 8, 8) and y.shape == x.shape


def test_decoder_fine_tune_keeps_the_latent_space(tmp_path, capsys):
    """init=DIR train_part=decoder: the encoder's weights and the latent shift/scale are the init's (so an
    editor trained on its latents stays valid), the decoder changes, and the model config is the init's."""
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert main(["train", "vae", "--no-progress", "--out", str(base), *TINY, "train.steps=2"]) == 0
    args = ["train", "vae", "--no-progress", "--out", str(tuned), *TINY, "train.steps=3", "optim.lr=1e-2"]
    assert main([*args, f"init={base / 'vae'}", "train_part=decoder"]) == 0
    a, b = load_file(base / "vae" / "model.safetensors"), load_file(tuned / "vae" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    before, after = MiniVAE.from_pretrained(base / "vae"), MiniVAE.from_pretrained(tuned / "vae")
    assert (after.shift_factor, after.scaling_factor) == (before.shift_factor, before.scaling_factor)
    x = torch.rand(1, 3, 2, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(before.encode(x), after.encode(x))
    report = json.loads((tuned / "eval.json").read_text())
    assert report["train_part"] == "decoder" and report["init"] == str(base / "vae")
    assert load_config(VAETrainConfig, tuned / "config.yaml").model.base_channels == 8
    capsys.readouterr()
    # Decoder-only needs an init; an init that is no VAE folder is one line.
    for extra, fragment in ((["train_part=decoder"], "give init=DIR"), ([f"init={tmp_path}"], "not a saved MiniVAE")):
        assert main(["train", "vae", "--out", str(tmp_path / "bad"), *TINY, *extra]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "bad").exists()


def test_resume_is_exact_and_config_changes_are_refused(tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    overrides = [*TINY, "train.steps=6", "train.checkpoint_every=100"]
    assert main(["train", "vae", "--no-progress", "--out", str(straight), *overrides]) == 0
    assert main(["train", "vae", "--no-progress", "--out", str(resumed), "--stop-at", "3", *overrides]) == 0
    assert "stopped at step 3 of 6" in capsys.readouterr().err
    assert not (resumed / "vae").exists() and [s for s, _, _ in losses(resumed)] == [1, 2, 3]
    # A different config is refused (one line, exit 2); run-time keys (workers) may change.
    assert main(["train", "vae", "--no-progress", "--out", str(resumed), *overrides, "optim.lr=2e-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another config" in err[0] and "optim.lr" in err[0]
    # A run started before a config field existed resumes when the field is at its default (old behaviour),
    # and is refused when it is not.
    stored = (resumed / "config.yaml").read_text()
    assert "  edge_weight: 0.0\n" in stored
    (resumed / "config.yaml").write_text(stored.replace("  edge_weight: 0.0\n", ""))
    assert main(["train", "vae", "--no-progress", "--out", str(resumed), *overrides, "loss.edge_weight=0.5"]) == 2
    assert "loss.edge_weight (None -> 0.5)" in capsys.readouterr().err
    assert main(["train", "vae", "--no-progress", "--out", str(resumed), *overrides, "train.num_workers=1"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert losses(resumed) == losses(straight)
    for name in ("checkpoints/step-00000006/trainable.safetensors", "checkpoints/step-00000006/optimizer.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "vae" / "model.safetensors").read_bytes() == (resumed / "vae" / "model.safetensors").read_bytes()
    assert json.loads((straight / "eval.json").read_text())["psnr"] == json.loads((resumed / "eval.json").read_text())["psnr"]


def test_a_run_folder_in_use_is_refused(tmp_path, capsys):
    """Another process holding RUN/.lock (a running training) makes a second one on the same folder a
    one-line error that touches nothing; once it is gone the run goes ahead."""
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "f.write('4242\\n'); f.flush(); print('held', flush=True); time.sleep(120)", str(run / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", "vae", "--no-progress", "--out", str(run), *TINY]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "in use by another training run (process 4242)" in err[0], err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "vae", "--no-progress", "--out", str(run), *TINY]) == 0
    assert (run / "vae").is_dir() and (run / ".lock").read_text().strip() == str(os.getpid())


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    """SIGTERM to the whole process group (as `timeout` or a scheduler sends it), data workers included."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "viva", "train", "vae", "--out", str(run), "--no-progress", *TINY,
         "train.steps=100000", "train.num_workers=1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        metrics = run / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "stopped by signal" in err and "Traceback" not in err
    logged = len(metrics.read_text().splitlines())
    latest = (run / "checkpoints" / "latest").read_text().strip()
    folder = run / "checkpoints" / latest
    state = json.loads((folder / "state.json").read_text())
    assert state["step"] >= logged >= 2
    assert {p.name for p in folder.iterdir()} == {"state.json", "trainable.safetensors", "optimizer.safetensors"}
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert not (run / "vae").exists()


def test_config_errors_are_one_line(tmp_path, capsys):
    for args, fragment in (
        (["model.nope=1"], "unknown config key(s) model.nope"),
        (["--config", str(tmp_path / "missing.yaml")], "does not exist"),
        (["train.mixed_precision=fp8"], "mixed_precision"),
        (["eval.seed=0"], "eval.seed must differ"),
        (["train.steps"], "key=value"),
    ):
        assert main(["train", "vae", "--out", str(tmp_path / "r"), *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not (tmp_path / "r").exists()


def test_overrides_may_follow_options(tmp_path, capsys):
    """KEY=VALUE overrides before and after an option both count; a stray non-override is one line."""
    run = tmp_path / "run"
    assert main(["train", "vae", "--out", str(run), *TINY[:5], "--no-progress", *TINY[5:], "train.steps=1"]) == 0
    saved = load_config(VAETrainConfig, run / "config.yaml")
    assert saved.train.steps == 1 and saved.model.base_channels == 8 and saved.eval.num_pairs == 2
    capsys.readouterr()
    assert main(["train", "vae", "--out", str(tmp_path / "r2"), "--no-progress", "train.steps=1", "--bogus"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unrecognized arguments: --bogus" in lines[0]
    assert not (tmp_path / "r2").exists()


def test_configs_are_the_defaults():
    from viva.train.instructor import InstructorTrainConfig

    assert load_config(VAETrainConfig, ROOT / "configs/vae_mini.yaml") == VAETrainConfig()
    assert load_config(InstructorTrainConfig, ROOT / "configs/instructor_mini.yaml") == InstructorTrainConfig()
    # YAML 1.1 reads 1e-3 as a string; numeric fields accept it anyway.
    assert load_config(VAETrainConfig, None, ["optim.lr=1e-3", "train.steps=1e3"]).optim.lr == 1e-3


def test_lr_schedule():
    optim = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 100, optim) == pytest.approx(0.1)
    assert lr_factor(9, 100, optim) == pytest.approx(1.0)
    assert lr_factor(10, 100, optim) == pytest.approx(1.0)
    assert lr_factor(55, 100, optim) == pytest.approx(0.55)
    assert lr_factor(99, 100, optim) == pytest.approx(0.1, abs=1e-3)
    const = OptimConfig(lr=1.0, warmup_steps=0, schedule="constant")
    assert lr_factor(0, 10, const) == lr_factor(9, 10, const) == 1.0


def test_step_batches_and_pair_frames():
    sampler = StepBatchSampler(batch_size=3, start=2, stop=4, rank=1, world=2)
    assert list(sampler) == [[15, 16, 17], [21, 22, 23]] and len(sampler) == 2
    config = DataConfig(image_fraction=0.5)
    for index in range(6):
        pair = make_pair(0, index, None, config)
        a = pair_frames(pair, 4, np.random.default_rng([0, index]))
        b = pair_frames(pair, 4, np.random.default_rng([0, index]))
        assert a.shape == (4, 64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
        if pair.reference is not None:
            assert np.array_equal(a[-1], pair.reference)
