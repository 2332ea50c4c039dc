"""`viva train grpo`: shared per-prompt encodings, LoRA (validated targets, reference = LoRA off, merged
export), a real run from a tiny model folder (rewards, KL, clipping, held-out eval, export that `viva edit`
loads), exact resume, user errors, and two processes (gloo) ending with identical LoRA weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from viva.cli import main
from viva.errors import VivaUserError
from viva.flow import kl_to_reference, sample_with_logprobs, sigma_schedule, stochastic_step
from viva.train.grpo import parse_prompt_spec

# Tiny everything: 32x32 clips of 4 frames, a 2-block 32-wide DiT (viva.models.tiny), 4 denoising steps
# with an SDE window of 2, K = 2 prompts x G = 4 samples.
TINY_CONFIG = """
prompts: {max_sprites: 3}
rollout: {steps: 4, sde_window: 2, guidance_scale: 1.0, video_guidance_scale: 1.0}
grpo: {group_size: 4, updates_per_step: 2, clip_range: 1.0e-3, beta: 0.01}
lora: {rank: 4, alpha: 4}
eval: {per_category: 1, every: 2, categories: [color, add, hybrid]}
optim: {lr: 1.0e-3}
train: {steps: 4, batch_size: 2, log_every: 1, checkpoint_every: 2, num_workers: 0, tensorboard: false}
"""
PROMPTS = "world:categories=color,ref_add,hybrid_fraction=0.4,image_fraction=0.3"
TIMING = ("samples_per_s", "data_wait_fraction")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny model folder standing in for the SFT model, the tiny config file)."""
    from viva.models.tiny import save_tiny_editor

    root = tmp_path_factory.mktemp("grpo")
    model = save_tiny_editor(root / "sft", height=32, width=32, num_frames=4, default_steps=4)
    config = root / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    return model, config


def _train(setup, out: Path, *overrides: str, stop_at: int | None = None, prompts: str = PROMPTS) -> int:
    model, config = setup
    args = ["train", "grpo", "--init", str(model), "--prompts", prompts, "--config", str(config), "--out", str(out),
            "--no-progress", *overrides]
    if stop_at is not None:
        args += ["--stop-at", str(stop_at)]
    return main(args)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]


def _deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING and not k.endswith("_s")} for r in rows]


# Pieces ------------------------------------------------------------------------------------------------------


def test_prompt_spec():
    assert parse_prompt_spec("world") == {"root": None}
    spec = parse_prompt_spec("world:categories=add,color,hybrid,hybrid_fraction=0.3,split=heldout,seed=7")
    assert spec == {"root": None, "categories": ["add", "color", "hybrid"], "hybrid_fraction": 0.3,
                    "split": "heldout", "seed": 7}
    for bad, message in [("world:colour=red", "unknown key 'colour'"), ("world:hybrid_fraction=lots", "must be a number"),
                         ("/nonexistent/prompts", "no such dataset folder"), ("world:split", "is not key=value")]:
        with pytest.raises(VivaUserError, match=message):
            parse_prompt_spec(bad)


@torch.no_grad()
def test_shared_encodings_equal_per_sample_reencoding():
    """Encoding P prompts once and sharing them with their G samples (instructor, VAE, and the refiner at
    every step) gives what encoding every sample on its own gives, with guidance and a reference image."""
    from viva.models.tiny import build_tiny_editor

    editor = build_tiny_editor(seed=3, vlm=True, height=32, width=32, num_frames=4)
    P, G = 2, 3
    g = torch.Generator().manual_seed(0)
    source = torch.rand(P, 3, 4, 32, 32, generator=g) * 2 - 1
    reference = torch.rand(P, 3, 32, 32, generator=g) * 2 - 1
    instructions = ["make the red circle blue", "add the shape of the reference at the top left"]
    shared = editor.encode_condition(instructions, source, reference)
    each = editor.encode_condition([t for t in instructions for _ in range(G)], source.repeat_interleave(G, 0),
                                   reference.repeat_interleave(G, 0))
    fn_shared = editor.guided_velocity_fn(shared, 3.0, 1.5, group_size=G)
    fn_each = editor.guided_velocity_fn(each, 3.0, 1.5)
    _, C, _, h, w = shared.source.shape
    x = torch.randn(P * G, C, 4, h, w, generator=g)
    sigma = torch.full((P * G,), 0.6)
    v = fn_shared(x, sigma)
    assert v.abs().mean() > 1e-3  # the tiny model is not trivially zero
    torch.testing.assert_close(v, fn_each(x, sigma), rtol=1e-4, atol=1e-5)
    sigmas = sigma_schedule(4)
    a, rec_a = sample_with_logprobs(fn_shared, x, sigmas, 0.7, sde_window=2, generator=torch.Generator().manual_seed(1))
    b, rec_b = sample_with_logprobs(fn_each, x, sigmas, 0.7, sde_window=2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for ra, rb in zip(rec_a, rec_b):
        assert ra.sde == rb.sde
        if ra.sde:
            torch.testing.assert_close(ra.log_prob, rb.log_prob, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not 2 prompts x group_size 2"):
        editor.velocity(x, shared, sigma, group_size=2)


@torch.no_grad()
def test_lora_reference_kl_and_merge():
    """A fresh LoRA changes nothing (KL exactly 0); trained adapters do, and switched off the policy is the
    reference again (KL exactly 0); merging into the weights gives the LoRA-enabled outputs."""
    from viva.models.tiny import build_tiny_editor
    from viva.train.lora import DenoiserLoRA, LoraSettings

    editor = build_tiny_editor(seed=1, height=32, width=32, num_frames=4)
    before = {k: v.clone() for k, v in editor.denoiser.state_dict().items()}
    lora = DenoiserLoRA(editor.denoiser, LoraSettings(rank=2, alpha=4, targets=("to_qkv", "fc2", "blocks.1.cross_attn.to_q")))
    assert "blocks.1.cross_attn.to_q" in lora.layers and "blocks.0.cross_attn.to_q" not in lora.layers
    trainable = {n for n, p in editor.denoiser.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in editor.denoiser.named_parameters() if "lora_" in n} and len(trainable) == 2 * 5
    g = torch.Generator().manual_seed(0)
    cond = editor.encode_condition(["make it night"], torch.rand(1, 3, 4, 32, 32, generator=g) * 2 - 1)
    fn = editor.guided_velocity_fn(cond, 1.0, 1.0, group_size=2)
    x = torch.randn(2, 4, 4, 4, 4, generator=g)
    sigma = torch.full((2,), 0.8)

    def step_mean():
        return stochastic_step("sde", x, fn(x, sigma), 0.8, 0.6, 0.7, noise=torch.zeros_like(x))

    def kl_now():
        policy = step_mean()
        with lora.disabled():
            reference = step_mean()
        return kl_to_reference(policy.mean, reference.mean, policy.std)

    assert torch.equal(kl_now(), torch.zeros(2))
    for p in lora.parameters():
        p.add_(0.2 * torch.randn(p.shape, generator=g))
    assert (kl_now() > 0).all()
    with lora.disabled():
        assert torch.equal(kl_now(), torch.zeros(2))
    enabled = fn(x, sigma)
    merged = lora.merge()
    assert merged is editor.denoiser and not any("lora_" in k for k in merged.state_dict())
    assert merged.state_dict().keys() == before.keys()
    torch.testing.assert_close(fn(x, sigma), enabled, rtol=1e-4, atol=1e-5)


# Runs --------------------------------------------------------------------------------------------------------


def test_run_end_to_end_exports_a_merged_model_viva_edit_loads(setup, tmp_path):
    run = tmp_path / "run"
    code = _train(setup, run, "grpo.updates_per_step=1", "export.adapter=true")
    assert code == 0
    rows = _metrics(run)
    train_rows = [r for r in rows if "reward" in r]
    eval_rows = [r for r in rows if "eval/pass" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert [r["step"] for r in eval_rows] == [0, 2, 4]  # before, every 2 steps, the exported model
    expected = {"reward", "reward_std", "reward/if", "reward/if/pass", "reward/keep", "reward/keep/psnr",
                "reward/quality", "kl", "clip_fraction", "ratio_max_dev", "policy_loss", "adv_mean", "adv_std",
                "adv_abs_max", "groups_skipped", "grad_norm", "samples_per_s"}
    assert all(expected <= set(r) for r in train_rows), expected - set(train_rows[0])
    assert {"eval/pass_primitive", "eval/pass_hybrid", "eval/pass/color", "eval/keep_psnr", "eval/quality"} <= set(eval_rows[0])
    # Step 1 starts from zero adapters and is exactly on-policy: KL 0, ratio 1, nothing clipped.
    first = train_rows[0]
    assert first["kl"] == 0.0 and first["ratio_max_dev"] == 0.0 and first["clip_fraction"] == 0.0
    assert any(r["kl"] > 0 for r in train_rows[1:])  # the adapters have moved away from the reference
    assert all(abs(r["adv_mean"]) < 1e-3 for r in train_rows if r["groups_skipped"] < 1)
    report = json.loads((run / "eval.json").read_text())
    assert report["before"]["eval/pass"] == eval_rows[0]["eval/pass"] and "eval/keep_psnr" in report["change"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["lora_parameters"] > 0

    # The export: a full model folder, the EMA LoRA merged into the DiT (no adapter tensors left) ...
    from viva.pipeline import load_editor
    from viva.train.lora import DenoiserLoRA, LoraSettings

    exported = load_editor(run / "model")
    init = load_editor(setup[0])
    weights = load_file(str(run / "model" / "denoiser" / "model.safetensors"))
    assert weights.keys() == load_file(str(setup[0] / "denoiser" / "model.safetensors")).keys()
    assert not torch.equal(weights["blocks.0.mlp.fc1.weight"], init.denoiser.state_dict()["blocks.0.mlp.fc1.weight"])
    # ... equal to the SFT model with the (unmerged) adapter switched on.
    lora = DenoiserLoRA(init.denoiser, LoraSettings(rank=4, alpha=4))
    lora.load_adapter(run / "adapter")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cond = exported.encode_condition(["make the red circle blue"], torch.rand(1, 3, 4, 32, 32, generator=g) * 2 - 1)
        x, sigma = torch.randn(1, 4, 4, 4, 4, generator=g), torch.tensor([0.5])
        torch.testing.assert_close(exported.velocity(x, cond, sigma), init.velocity(x, cond, sigma), rtol=1e-4, atol=1e-5)

    # `viva edit --model RUN/model` uses it.
    from viva.io import write_video

    clip = tmp_path / "in.mp4"
    write_video(clip, np.full((4, 32, 32, 3), 90, np.uint8), fps=8)
    assert main(["edit", str(clip), "-i", "make it night", "-o", str(tmp_path / "out.mp4"), "--model", str(run / "model"),
                 "--steps", "2", "--no-progress"]) == 0
    assert (tmp_path / "out.mp4").stat().st_size > 0


def test_resume_reproduces_an_uninterrupted_run_exactly(setup, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(setup, straight, "eval.per_category=0") == 0
    assert _train(setup, resumed, "eval.per_category=0", stop_at=2) == 0
    assert not (resumed / "model").exists()
    assert _train(setup, resumed, "eval.per_category=0") == 0
    a, b = _metrics(straight), _metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert _deterministic(a) == _deterministic(b)
    assert any(r["clip_fraction"] > 0 or r["ratio_max_dev"] > 0 for r in a)  # the second update is off-policy
    wa, wb = (load_file(str(r / "model" / "denoiser" / "model.safetensors")) for r in (straight, resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # A resumed run must keep its config (only run-time keys may change).
    assert _train(setup, resumed, "eval.per_category=0", "grpo.beta=0.5", "train.steps=6") == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["lora.targets=[to_qkv,attention_out]"], "lora.targets 'attention_out' match no linear layer"),
        (["lora.rank=0"], "lora.rank must be >= 1"),
        (["grpo.group_size=1"], "grpo.group_size must be at least 2"),
        (["rollout.sde_window=9"], "window size must be in [1, 4]"),
        (["--prompts", "world:categories=teleport"], "unknown categories"),
        (["--prompts", "world:colour=red"], "unknown key 'colour'"),
        (["--init", "/nonexistent/sft"], "model folder /nonexistent/sft does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(setup, tmp_path, capsys, args, message):
    model, config = setup
    flags = {"--init": str(model), "--prompts": PROMPTS}
    overrides = []
    rest = list(args)
    while rest:
        item = rest.pop(0)
        if item in flags:
            flags[item] = rest.pop(0)
        else:
            overrides.append(item)
    argv = ["train", "grpo", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]
    for flag, value in flags.items():
        argv += [flag, value]
    assert main(argv + overrides) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_two_processes_keep_identical_lora_weights(setup, tmp_path):
    """`torchrun --nproc_per_node 2` on CPU (gloo): each rank rolls out other prompts, DDP all-reduces the
    LoRA gradients, so after a few steps both ranks hold the same adapters, which differ from the initial."""
    model, config = setup
    run = tmp_path / "run"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "viva", "train", "grpo", "--init", str(model),
         "--prompts", PROMPTS, "--config", str(config), "--out", str(run), "--no-progress", "train.steps=3",
         "grpo.batch_std=true", "eval.per_category=0"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr
    records = [[json.loads(x) for x in (run / "sync" / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    final = [[x for x in rank if x["step"] == 3][-1]["sha256"] for rank in records]
    initial = [[x for x in rank if x["initial"]][0]["sha256"] for rank in records]
    assert final[0] == final[1]
    assert initial[0] == initial[1] != final[0]
    rows = [r for r in _metrics(run) if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["groups_skipped"] < 1
    assert (run / "model" / "model_index.json").is_file()
