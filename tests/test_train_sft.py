"""`viva train sft`: homogeneous batches, a real run that exports a loadable model, exact resume, SIGTERM,
two processes (gloo) with synchronised weights, config errors, and a loss that goes down."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from viva.cli import main
from viva.train.checkpoint import latest_checkpoint
from viva.data.generate import DataConfig
from viva.train.batching import (
    KINDS,
    BatchKind,
    GeneratedPairs,
    SFTBatchSampler,
    SFTExamples,
    ShardPairs,
    choose_kind,
    collate_sft,
    to_model_inputs,
)

# Tiny everything: 32x32 clips of 4 frames, a 2-block 32-wide DiT, a random tiny VAE, MiniLM (text only).
TINY_CONFIG = """
data: {height: 32, width: 32, num_frames: 4, max_sprites: 3}
model:
  vae: new
  instructor: new
  instructor_kind: text
  new_vae: {latent_channels: 4, base_channels: 8, channel_mult: [1, 1, 2], encoder_blocks: 1, decoder_blocks: 1,
            mid_blocks: 0, norm_groups: 4}
  new_instructor:
    max_text_tokens: 16
    projector_hidden: 32
    vision: {image_size: 32, patch_size: 8, width: 32, depth: 1, heads: 2}
  refiner: {depth: 1, num_heads: 2}
  denoiser: {hidden_size: 32, depth: 2, num_heads: 2, cond_dim: 32, rope_axes_dim: [4, 6, 6]}
optim: {lr: 1.0e-3, warmup_steps: 2}
train: {steps: 6, batch_size: 3, log_every: 1, checkpoint_every: 3, sample_every: 0, sample_steps: 2,
        num_workers: 0, tensorboard: false}
"""
SMALL_DATA = DataConfig(height=32, width=32, num_frames=4, max_sprites=3)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sft_config") / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


def _train(config: Path, out: Path, *overrides: str, stop_at: int | None = None) -> int:
    """`viva train sft` in this process (faster than a subprocess: torch and MiniLM are loaded once)."""
    args = ["train", "sft", "--config", str(config), "--out", str(out), "--no-progress", *overrides]
    if stop_at is not None:
        args += ["--stop-at", str(stop_at)]
    return main(args)


def _cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "viva", *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v for part in ("refiner", "denoiser") for k, v in load_file(str(folder / part / "model.safetensors")).items()}


# Batches ---------------------------------------------------------------------------------------------------


def test_batch_kind_mix_follows_image_prob_and_reference_share():
    kinds = [choose_kind(7, step, 0.6, (0.2, 0.3)) for step in range(4000)]
    images = [k for k in kinds if k.image]
    videos = [k for k in kinds if not k.image]
    assert abs(len(images) / len(kinds) - 0.6) < 0.03
    assert abs(sum(k.reference for k in videos) / len(videos) - 0.2) < 0.04
    assert abs(sum(k.reference for k in images) / len(images) - 0.3) < 0.04
    assert kinds == [choose_kind(7, step, 0.6, (0.2, 0.3)) for step in range(4000)]  # a function of (seed, step)
    assert {BatchKind.from_code(k.code) for k in KINDS} == set(KINDS)


def test_generated_batches_are_homogeneous_deterministic_and_differ_per_rank():
    pool = GeneratedPairs(0, SMALL_DATA)
    assert pool.reference_share(True) == pool.reference_share(False) == 0.2  # 2 of the 10 primitive categories
    examples = SFTExamples(pool)

    def batches(rank: int, start: int = 0):
        sampler = SFTBatchSampler(pool, 2, start, 6, seed=3, image_prob=0.5, rank=rank, world=2)
        return list(sampler)

    rank0, rank1 = batches(0), batches(1)
    assert rank0 == batches(0) and batches(0, start=4) == rank0[4:]  # resuming at step 4 draws the same
    assert [b[0][:2] for b in rank0] == [b[0][:2] for b in rank1]  # same step and kind on every rank ...
    assert all({i for _, _, i in a}.isdisjoint(i for _, _, i in b) for a, b in zip(rank0, rank1))  # ... other pairs
    seen = set()
    for items in rank0:
        batch = collate_sft([examples[item] for item in items])
        kind = BatchKind.from_code(batch["kind"])
        seen.add(kind.image)
        source, target, mask, reference = to_model_inputs(batch, "cpu")
        frames = 1 if kind.image else 4
        assert source.shape == target.shape == (2, 3, frames, 32, 32)
        assert source.min() >= -1 and source.max() <= 1 and source.dtype == torch.float32
        assert mask.shape == (2, frames, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert (reference is not None) == kind.reference
        if reference is not None:
            assert reference.shape == (2, 3, 32, 32)  # resized to the clip size (references are 64x64)
    assert seen == {True, False}


def test_shard_pool_buckets_pairs_by_kind(tmp_path):
    from viva.data.shards import generate_dataset

    config = DataConfig(height=32, width=32, num_frames=4, max_sprites=3, image_fraction=0.5,
                        categories=("color", "ref_add"))
    generate_dataset(tmp_path / "pairs", num=12, seed=0, config=config, shard_size=5, progress=False)
    pool = ShardPairs(tmp_path / "pairs")
    assert sum(pool.counts().values()) == 12
    for kind in KINDS:
        for index in range(pool.size(kind)):
            pair = pool.pair(kind, index)
            assert (pair.source.shape[0] == 1, pair.reference is not None) == (kind.image, kind.reference)
    image_refs = pool.size(BatchKind(True, True))
    assert pool.reference_share(True) == image_refs / (image_refs + pool.size(BatchKind(True, False)))
    assert sum(ShardPairs(tmp_path / "pairs", max_pairs=5).counts().values()) == 5


# Runs ------------------------------------------------------------------------------------------------------


def test_run_exports_a_model_that_loads_and_edits(config_file, tmp_path):
    """A real subprocess with the (tiny) VLM instructor: config, logs, previews, checkpoints and RUN/model."""
    run = tmp_path / "run"
    result = _cli("train", "sft", "--config", str(config_file), "--out", str(run), "--no-progress",
                  "model.instructor_kind=vlm", "train.steps=3", "train.sample_every=3", "train.tensorboard=true")
    assert result.returncode == 0, result.stderr
    assert f"wrote {run / 'model'}" in result.stdout
    config = (run / "config.yaml").read_text()
    assert "latent_channels: 4" in config and "height: 32" in config  # resolved from the VAE and the data
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all({"loss", "lr", "grad_norm", "samples_per_s"} <= set(r) for r in rows)
    assert (run / "samples" / "step-00000003.png").stat().st_size > 1000
    assert any((run / "tb").iterdir())

    from viva.pipeline import load_editor

    editor = load_editor(run / "model")
    assert type(editor.instructor).__name__ == "MiniVLMInstructor"
    source = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        cond = editor.encode_condition(["make the red circle blue"], source)
        latents = editor.sample(cond, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
        video = editor.decode(latents)
    assert video.shape == (1, 3, 4, 32, 32) and torch.isfinite(video).all()
    # The export holds the EMA weights of the last checkpoint.
    ema = load_file(str(run / "checkpoints" / "step-00000003" / "ema.safetensors"))
    exported = _weights(run / "model")
    assert all(torch.equal(ema[k], exported[k]) for k in ema)


def test_resume_reproduces_an_uninterrupted_run_exactly(config_file, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(config_file, straight) == 0
    assert _train(config_file, resumed, stop_at=3) == 0
    assert not (resumed / "model").exists()
    # --export writes the partial model of the newest checkpoint without training or checkpointing further.
    assert _train(config_file, resumed, "--export", stop_at=3) == 0
    assert json.loads((resumed / "summary.json").read_text())["steps"] == 3
    ema = load_file(str(resumed / "checkpoints" / "step-00000003" / "ema.safetensors"))
    partial = _weights(resumed / "model")
    assert all(torch.equal(ema[k], partial[k]) for k in ema)
    assert sorted(p.name for p in (resumed / "checkpoints").glob("step-*")) == ["step-00000003"]
    assert _train(config_file, resumed) == 0
    a, b = _metrics(straight), _metrics(resumed)
    assert [r["step"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]
    wa, wb = _weights(straight / "model"), _weights(resumed / "model")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _wait_for_steps(proc: subprocess.Popen, run: Path, steps: int, timeout: float) -> None:
    """Wait until the training subprocess has logged `steps` steps (log_every 1) and is still running."""
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= steps):
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)


def test_sigterm_saves_a_checkpoint_exits_143_and_resumes(config_file, tmp_path):
    """SIGTERM to the whole process group (as `timeout` or a job scheduler sends it), a DataLoader worker
    included: the worker ignores it, the main process checkpoints and exits 143."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "viva", "train", "sft", "--config", str(config_file), "--out", str(run),
            "--no-progress", "train.steps=500", "train.checkpoint_every=1000", "train.num_workers=1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_steps(proc, run, 2, timeout=60)
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr
    assert "stopped by signal" in stderr
    step = json.loads((latest_checkpoint(run) / "state.json").read_text())["step"]
    assert 2 <= step < 500
    assert _train(config_file, run, "train.steps=500", "train.checkpoint_every=1000", stop_at=step + 2) == 0
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{step + 2:08d}"
    assert [r["step"] for r in _metrics(run)] == list(range(1, step + 3))


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_two_processes_keep_identical_weights(config_file, tmp_path):
    """`torchrun --nproc_per_node 2` on CPU (gloo): each rank trains on other pairs, DDP all-reduces the
    gradients, so after a few steps both ranks hold the same weights, which differ from the initial ones."""
    run = tmp_path / "run"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "viva", "train", "sft", "--config", str(config_file),
         "--out", str(run), "--no-progress", "train.steps=3"],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr
    records = [[json.loads(x) for x in (run / "sync" / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    final = [[x for x in rank if x["step"] == 3][-1]["sha256"] for rank in records]
    initial = [[x for x in rank if x["initial"]][0]["sha256"] for rank in records]
    assert final[0] == final[1]
    assert initial[0] == initial[1] != final[0]
    assert (run / "model" / "model_index.json").is_file()


def _torchrun(config_file: Path, run: Path, *args: str) -> subprocess.CompletedProcess:
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "viva", "train", "sft", "--config", str(config_file),
         "--out", str(run), "--no-progress", *args],
        capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _sync(run: Path, step: int) -> list[str]:
    """Each rank's digest of its full trainable weights at `step`."""
    records = [[json.loads(x) for x in (run / "sync" / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    return [[x for x in rank if x["step"] == step][-1]["sha256"] for rank in records]


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_fsdp_two_processes_shard_train_and_resume_like_ddp(config_file, tmp_path):
    """`train.fsdp=true` under torchrun (gloo): the refiner and DiT are sharded (FSDP2), both ranks end with
    the same full weights, checkpoints and the export hold full tensors, a preview is drawn, and a run
    checkpointed under DDP at step 2 resumes under FSDP to the very weights of the uninterrupted FSDP run
    (sharded AdamW moments and EMA restored from full tensors)."""
    fsdp, mixed = tmp_path / "fsdp", tmp_path / "mixed"
    result = _torchrun(config_file, fsdp, "train.steps=3", "train.fsdp=true", "train.sample_every=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FSDP: trainable modules sharded over 2 processes" in result.stderr
    digests = _sync(fsdp, 3)
    assert digests[0] == digests[1] != _sync(fsdp, 0)[0]
    assert (fsdp / "samples" / "step-00000003.png").is_file()
    exported = _weights(fsdp / "model")
    checkpoint = load_file(str(fsdp / "checkpoints" / "step-00000003" / "ema.safetensors"))
    assert set(checkpoint) <= set(exported)
    for key, value in checkpoint.items():  # full shapes, and the export is the EMA
        assert torch.equal(exported[key].float(), value), key

    result = _torchrun(config_file, mixed, "train.steps=3", "--stop-at", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FSDP" not in result.stderr
    result = _torchrun(config_file, mixed, "train.steps=3", "train.fsdp=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stderr and "FSDP: trainable" in result.stderr
    assert _sync(mixed, 3) == digests
    resumed = _weights(mixed / "model")
    assert all(torch.equal(resumed[k], exported[k]) for k in exported)


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_sigterm_to_one_rank_stops_both_after_the_same_step(config_file, tmp_path):
    """A signal that reaches one rank only (here rank 1 of an FSDP run) stops every rank after the same
    step: the stop flag is all-reduced each step, so the checkpoint gathers match instead of hanging; the
    checkpoint then resumes."""
    import psutil

    run = tmp_path / "run"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    args = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "viva", "train", "sft", "--config", str(config_file),
            "--out", str(run), "--no-progress", "train.steps=500", "train.checkpoint_every=1000", "train.fsdp=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _wait_for_steps(proc, run, 2, timeout=90)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
        assert len(workers) == 1
        workers[0].send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "stopped by signal" in stderr, stderr[-3000:]
    step = json.loads((latest_checkpoint(run) / "state.json").read_text())["step"]
    assert 2 <= step < 500
    resumed = _torchrun(config_file, run, "train.steps=500", "train.checkpoint_every=1000", "train.fsdp=true",
                        "--stop-at", str(step + 1))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run} from step {step}" in resumed.stderr
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{step + 1:08d}"


def test_fsdp_in_one_process_is_a_note(config_file, tmp_path, capsys):
    assert _train(config_file, tmp_path / "one", "train.steps=1", "train.fsdp=true") == 0
    assert "train.fsdp: one process, nothing to shard" in capsys.readouterr().err
    assert (tmp_path / "one" / "model" / "model_index.json").is_file()


def test_offloaded_encoders_train_the_same(config_file, tmp_path, capsys):
    """model.offload_frozen=true keeps the VAE and instructor in CPU memory (visiting the device per use):
    the same losses and weights as without; model.instructor_dtype is refused for the mini instructor."""
    assert _train(config_file, tmp_path / "plain", "train.steps=2") == 0
    assert _train(config_file, tmp_path / "offload", "train.steps=2", "model.offload_frozen=true") == 0
    assert [r["loss"] for r in _metrics(tmp_path / "plain")] == [r["loss"] for r in _metrics(tmp_path / "offload")]
    a, b = _weights(tmp_path / "plain" / "model"), _weights(tmp_path / "offload" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert _train(config_file, tmp_path / "bf16", "model.instructor_dtype=bfloat16") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.instructor_dtype is for model.preset" in err[0]
    assert not (tmp_path / "bf16").exists()


def test_loss_decreases_on_a_small_fixed_set(config_file, tmp_path):
    run = tmp_path / "run"
    code = _train(config_file, run, "train.steps=30", "train.checkpoint_every=100", "train.batch_size=4",
                  "data.image_prob=1", "data.max_pairs=4", "data.categories=[color]", "train.ema_decay=0",
                  "optim.lr=3e-3", "optim.warmup_steps=0", "optim.schedule=constant")
    assert code == 0
    losses = [r["loss"] for r in _metrics(run)]
    assert len(losses) == 30
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.75 * first, losses


def test_trains_on_a_dataset_folder(config_file, tmp_path):
    from viva.data.shards import generate_dataset

    config = DataConfig(height=32, width=32, num_frames=4, max_sprites=3, image_fraction=0.5)
    generate_dataset(tmp_path / "pairs", num=10, seed=0, config=config, shard_size=10, progress=False)
    run = tmp_path / "run"
    assert _train(config_file, run, f"data.root={tmp_path / 'pairs'}", "train.steps=2") == 0
    assert len(_metrics(run)) == 2 and (run / "model" / "model_index.json").is_file()


def test_trains_from_vae_and_instructor_folders(config_file, tmp_path, monkeypatch):
    """The real setup: frozen encoders loaded from the folders the VAE and instructor trainers write; a
    MiniLM location given for this machine is not written into the exported model."""
    from viva.models.instructor import MiniVLMInstructor, MiniVLMInstructorConfig, minilm_path
    from viva.models.vae import MiniVAE, MiniVAEConfig
    from viva.models.vision import VisionConfig

    monkeypatch.delenv("VIVA_MINILM_PATH", raising=False)  # restored after the test (the run sets it)
    lm = str(minilm_path())
    MiniVAE(MiniVAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 2), norm_groups=4)).save_pretrained(tmp_path / "vae")
    vision = VisionConfig(image_size=32, patch_size=8, width=32, depth=1, heads=2)
    MiniVLMInstructor(MiniVLMInstructorConfig(vision=vision, projector_hidden=32, max_text_tokens=16,
                                              language_model_path=lm)).save_pretrained(tmp_path / "instructor")
    run = tmp_path / "run"
    assert _train(config_file, run, f"model.vae={tmp_path / 'vae'}", f"model.instructor={tmp_path / 'instructor'}",
                  "model.instructor_kind=vlm", f"model.language_model_path={lm}", "train.steps=2") == 0
    exported = json.loads((run / "model" / "instructor" / "config.json").read_text())
    assert exported["_class_name"] == "MiniVLMInstructor" and exported["language_model_path"] is None
    assert torch.equal(load_file(str(run / "model" / "vae" / "model.safetensors"))["encoder.conv_in.weight"],
                       load_file(str(tmp_path / "vae" / "model.safetensors"))["encoder.conv_in.weight"])
    # A folder of the wrong kind is a one-line error.
    assert _train(config_file, tmp_path / "bad", f"model.instructor={tmp_path / 'vae'}", "model.instructor_kind=vlm") == 2


def test_init_starts_from_a_saved_editor(config_file, tmp_path):
    """model.init=RUN/model: the refiner and DiT start from that editor (its configs win over the run's),
    so a second schedule continues where the first ended instead of starting from random weights."""
    first = tmp_path / "first"
    assert _train(config_file, first, "train.steps=2") == 0
    start = _weights(first / "model")
    second = tmp_path / "second"
    assert _train(config_file, second, f"model.init={first / 'model'}", "model.denoiser.depth=3", "train.steps=1",
                  "optim.lr=1e-12", "train.ema_decay=0") == 0
    after = _weights(second / "model")
    assert after.keys() == start.keys()  # depth 2 as in the init, not the run's 3
    assert all(torch.allclose(after[k], start[k], atol=1e-6) for k in start)
    fresh = tmp_path / "fresh"
    assert _train(config_file, fresh, "train.steps=1", "optim.lr=1e-12", "train.ema_decay=0") == 0
    assert not all(torch.allclose(_weights(fresh / "model")[k], start[k], atol=1e-6) for k in start)


# Errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stepz=3", "unknown config key(s) train.stepz"),
        ("data.image_prob=1.5", "data.image_prob must be in [0, 1]"),
        ("optim.lr=fast", "optim.lr must be a number"),
        ("model.vae=/nonexistent/vae", "model.vae folder /nonexistent/vae does not exist"),
        ("model.instructor_kind=clip", "model.instructor_kind must be vlm or text"),
        ("data.categories=[hybrid]", "SFT trains on primitive edits"),
        ("data.height=36", "do not patchify"),
        ("model.init=/nonexistent/editor", "model.init /nonexistent/editor is not an editor folder"),
        ("model.preset=lucy-edit model.weights=/tmp model.init=/tmp", "model.init is for the mini editor"),
        ("--export", "--export needs --stop-at STEP"),
    ],
)
def test_bad_config_is_one_line_exit_2(config_file, tmp_path, capsys, override, message):
    assert _train(config_file, tmp_path / "run", *override.split()) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_bad_config_subprocess_exit_2(tmp_path):
    result = _cli("train", "sft", "--out", str(tmp_path / "run"), "train.steps=0")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "train.steps" in result.stderr and "Traceback" not in result.stderr
