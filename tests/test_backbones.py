"""Full-scale backbone adapters on tiny random configs of the REAL diffusers / transformers classes:
equivalence with diffusers' WanPipeline and LucyEditPipeline, an edit and an SFT step, clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffusers import FlowMatchEulerDiscreteScheduler, LucyEditPipeline, WanPipeline, WanTransformer3DModel  # noqa: E402

from viva.errors import VivaUserError  # noqa: E402
from viva.flow import euler_sample  # noqa: E402
from viva.models.backbones import load_preset, widen_patch_embedding  # noqa: E402
from viva.models.backbones.tiny import TEXT_DIM, Z, save_tiny_preset, tiny_wan_parts  # noqa: E402
from viva.models.backbones.tiny import save_tiny_qwen  # noqa: E402
from viva.models.editor import Condition, sampling_sigmas  # noqa: E402

MAX_LEN = 12
SIZE, FRAMES = 32, 5  # 32x32 pixels, 5 frames -> latents [4, 2, 4, 4]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def tiny_parts(in_channels: int, seed: int = 0):
    return tiny_wan_parts(in_channels, seed)


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    pipe = WanPipeline(**tiny_parts(in_channels=Z))
    folder = tmp_path_factory.mktemp("wan") / "Wan-T2V-tiny"
    pipe.save_pretrained(folder)
    return pipe, folder


@pytest.fixture(scope="module")
def lucy_folder(tmp_path_factory):
    pipe = LucyEditPipeline(**tiny_parts(in_channels=2 * Z, seed=1))
    folder = tmp_path_factory.mktemp("lucy") / "Lucy-Edit-tiny"
    pipe.save_pretrained(folder)
    return pipe, folder


def test_widen_patch_embedding_keeps_the_model():
    torch.manual_seed(0)
    t = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=Z,
                              out_channels=Z, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=1).eval()
    x, text, ts = torch.randn(1, Z, 2, 4, 4), torch.randn(1, 3, TEXT_DIM), torch.tensor([500.0])
    with torch.no_grad():
        before = t(x, ts, text, return_dict=False)[0]
        widen_patch_embedding(t)
        after = t(torch.cat([x, torch.randn_like(x)], 1), ts, text, return_dict=False)[0]
    assert t.config.in_channels == 2 * Z and t.config.out_channels == Z
    assert t.patch_embedding.weight[:, Z:].abs().max() == 0
    assert torch.equal(before, after)


def test_wan_t2v_matches_wan_pipeline(wan_folder):
    pipe, folder = wan_folder
    editor = load_preset("wan-t2v", folder, height=SIZE, width=SIZE, num_frames=FRAMES, max_sequence_length=MAX_LEN)
    prompt, steps, scale = "make the  car &amp; red", 4, 4.0
    noise = torch.randn((1, Z, 2, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # diffusers: text prompt through its UMT5, CFG against an all-zero negative (viva's null instruction).
        neg = torch.zeros(1, MAX_LEN, TEXT_DIM)
        ref_latents = pipe(prompt=prompt, negative_prompt_embeds=neg, height=SIZE, width=SIZE, num_frames=FRAMES,
                           num_inference_steps=steps, guidance_scale=scale, latents=noise.clone(),
                           max_sequence_length=MAX_LEN, output_type="latent").frames
        ref_video = pipe(prompt=prompt, negative_prompt_embeds=neg, height=SIZE, width=SIZE, num_frames=FRAMES,
                         num_inference_steps=steps, guidance_scale=scale, latents=noise.clone(),
                         max_sequence_length=MAX_LEN, output_type="pt").frames  # [B,T,3,H,W] in [0,1]
        # viva: the same prompt through our instructor, any source (its channels start at zero weight).
        out = editor.instructor([prompt])
        source = torch.randn(1, Z, 2, SIZE // 8, SIZE // 8)
        cond = Condition(out.tokens, out.mask, source, num_frames=FRAMES, has_reference=False)
        fn = editor.guided_velocity_fn(cond, guidance_scale=scale, video_guidance_scale=1.0)
        latents = euler_sample(fn, noise.clone(), editor.sigmas(steps))
        video = (editor.decode(latents) + 1) / 2
    with torch.no_grad():  # the prompt matters
        other = editor.instructor(["a dog"])
        cond = Condition(other.tokens, other.mask, source, num_frames=FRAMES, has_reference=False)
        blind = euler_sample(editor.guided_velocity_fn(cond, scale, 1.0), noise.clone(), editor.sigmas(steps))
    assert rel_err(blind, ref_latents) > 1e-3
    err_latents = rel_err(latents, ref_latents)
    err_video = rel_err(video.permute(0, 2, 1, 3, 4), ref_video)
    print(f"wan-t2v vs WanPipeline: latents rel err {err_latents:.2e}, video rel err {err_video:.2e}")
    assert err_latents <= 1e-4 and err_video <= 1e-4


def test_sampling_sigmas_match_the_diffusers_scheduler():
    s = FlowMatchEulerDiscreteScheduler(shift=5.0)
    s.set_timesteps(7)
    assert torch.equal(sampling_sigmas(7, 5.0, "diffusers"), s.sigmas.float())


def test_lucy_edit_matches_lucy_edit_pipeline(lucy_folder):
    pipe, folder = lucy_folder
    editor = load_preset("lucy-edit", folder, height=SIZE, width=SIZE, num_frames=FRAMES, max_sequence_length=MAX_LEN)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    steps, scale = 4, 3.0
    noise = torch.randn((1, Z, 2, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = editor.instructor(["turn the dog into a cat"])  # LucyEditPipeline's own cleaning needs ftfy
        prompt_embeds = out.tokens
        neg = torch.zeros_like(prompt_embeds)
        video_in = torch.from_numpy(frames).permute(0, 3, 1, 2).float()[None] / 255.0  # [1,T,3,H,W] in [0,1]
        kwargs = dict(video=video_in, prompt_embeds=prompt_embeds, negative_prompt_embeds=neg, height=SIZE, width=SIZE,
                      num_frames=FRAMES, num_inference_steps=steps, guidance_scale=scale)
        ref_latents = pipe(**kwargs, latents=noise.clone(), output_type="latent").frames
        ref_video = pipe(**kwargs, latents=noise.clone(), output_type="pt").frames
        # viva: the editor's own encode_condition (VAE mode, normalised) + two-scale CFG (video scale 1).
        pixels = torch.from_numpy(frames).permute(3, 0, 1, 2).float()[None] / 127.5 - 1.0
        cond = editor.encode_condition(["turn the dog into a cat"], pixels)
        fn = editor.guided_velocity_fn(cond, guidance_scale=scale, video_guidance_scale=1.0)
        latents = euler_sample(fn, noise.clone(), editor.sigmas(steps))
        video = (editor.decode(latents) + 1) / 2
        # The source video matters (so the match above is not a coincidence of an ignored condition).
        cond.source = torch.zeros_like(cond.source)
        blind = euler_sample(editor.guided_velocity_fn(cond, scale, 1.0), noise.clone(), editor.sigmas(steps))
    assert rel_err(blind, ref_latents) > 1e-2
    err_latents = rel_err(latents, ref_latents)
    err_video = rel_err(video.permute(0, 2, 1, 3, 4), ref_video)
    print(f"lucy-edit vs LucyEditPipeline: latents rel err {err_latents:.2e}, video rel err {err_video:.2e}")
    assert err_latents <= 1e-4 and err_video <= 1e-4


def test_lucy_edit_through_viva_pipeline_matches_diffusers(lucy_folder):
    """`VivaPipeline` (what `viva edit` runs) on the lucy-edit preset gives LucyEditPipeline's frames."""
    from viva.pipeline import VivaPipeline

    pipe, folder = lucy_folder
    editor = load_preset("lucy-edit", folder, height=SIZE, width=SIZE, num_frames=FRAMES, max_sequence_length=MAX_LEN)
    frames = np.random.default_rng(1).integers(0, 256, size=(FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    result = VivaPipeline(editor)(frames, "make the car blue", num_inference_steps=3, guidance_scale=2.0, seed=7)
    assert result.frames.shape == (FRAMES, SIZE, SIZE, 3) and result.frames.dtype == np.uint8
    with torch.no_grad():
        embeds = editor.instructor(["make the car blue"]).tokens
        video_in = torch.from_numpy(frames).permute(0, 3, 1, 2).float()[None] / 255.0
        ref = pipe(video=video_in, prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), height=SIZE,
                   width=SIZE, num_frames=FRAMES, num_inference_steps=3, guidance_scale=2.0,
                   generator=torch.Generator().manual_seed(7), output_type="np").frames[0]
    assert np.abs(result.frames.astype(np.float64) - np.round(ref * 255)).max() <= 1  # uint8 rounding only


def _batch(editor, generator):
    pixels = torch.rand((2, 3, FRAMES, SIZE, SIZE), generator=generator) * 2 - 1
    target = torch.rand((2, 3, FRAMES, SIZE, SIZE), generator=generator) * 2 - 1
    mask = (torch.rand((2, FRAMES, SIZE, SIZE), generator=generator) > 0.5).float()
    cond = editor.encode_condition(["make the car red", "add a dog"], pixels)
    return cond, editor.encode_video(target), mask


@pytest.mark.parametrize("preset", ["wan-t2v", "lucy-edit"])
def test_sft_step_trains_the_backbone(preset, wan_folder, lucy_folder):
    from viva.train.sft import SFTObjective

    folder = (wan_folder if preset == "wan-t2v" else lucy_folder)[1]
    editor = load_preset(preset, folder, height=SIZE, width=SIZE, num_frames=FRAMES, max_sequence_length=MAX_LEN)
    editor.denoiser.gradient_checkpointing = True
    objective = SFTObjective(editor).train()
    params = [p for p in objective.parameters() if p.requires_grad]
    assert params and not any(p.requires_grad for p in editor.vae.parameters())
    before = editor.denoiser.transformer.patch_embedding.weight.detach().clone()
    opt = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    cond, target, mask = _batch(editor, g)
    loss, stats = objective(cond, target, mask, g)
    loss.backward()
    grad = editor.denoiser.transformer.patch_embedding.weight.grad
    assert torch.isfinite(loss) and grad is not None and grad[:, Z:].abs().sum() > 0  # the source channels learn
    opt.step()
    assert not torch.equal(before, editor.denoiser.transformer.patch_embedding.weight)


@pytest.mark.parametrize("preset", ["lucy-edit", "wan-qwen", "hunyuan-llava"])
def test_grpo_step_trains_a_lora_on_the_backbone(preset, lucy_folder, wan_qwen_folder, hunyuan_folder):
    from viva.flow import sample_with_logprobs
    from viva.train.grpo import Bucket, GRPOObjective, GRPOObjectiveConfig, Rollout, RolloutConfig
    from viva.train.lora import DenoiserLoRA, LoraSettings

    folder = {"lucy-edit": lucy_folder[1], "wan-qwen": wan_qwen_folder, "hunyuan-llava": hunyuan_folder}[preset]
    editor = load_preset(preset, folder, height=SIZE, width=SIZE, num_frames=FRAMES, max_sequence_length=MAX_LEN)
    lora = DenoiserLoRA(editor.denoiser, LoraSettings(rank=4, alpha=4, targets=("to_q", "to_k", "to_v", "to_out.0")))
    rollout_cfg, grpo_cfg = RolloutConfig(steps=3, sde_window=(1, 2)), GRPOObjectiveConfig(group_size=2)
    g = torch.Generator().manual_seed(0)
    cond, _, _ = _batch(editor, g)
    G = 2
    fn = editor.guided_velocity_fn(cond, 2.0, 1.0, group_size=G)
    noise = torch.randn((2 * G, Z, cond.latent_frames, SIZE // 8, SIZE // 8), generator=g)
    with torch.no_grad():
        _, records = sample_with_logprobs(fn, noise, editor.sigmas(3), rollout_cfg.eta, (1, 2), None, g)
    bucket = Bucket(cond, G, [r for r in records if r.sde], torch.tensor([1.0, 0.0, 0.2, 0.9]))
    bucket.advantages, bucket.valid = torch.tensor([1.0, -1.0, -1.0, 1.0]), torch.ones(4, dtype=torch.bool)
    objective = GRPOObjective(editor, lora, rollout_cfg, grpo_cfg, (2.0, 1.0))
    loss, stats = objective(Rollout([bucket], normalizer=float(bucket.terms), stats={}))
    loss.backward()
    grads = [p.grad for p in lora.parameters()]
    assert torch.isfinite(loss) and all(gr is not None for gr in grads) and sum(gr.abs().sum() for gr in grads) > 0
    assert abs(stats["ratio_mean_dev"]) < 1e-4  # on-policy: the rollout's log-probs are reproduced


def test_missing_or_incomplete_weights_folder_is_one_clear_line(tmp_path, lucy_folder):
    with pytest.raises(VivaUserError, match="does not exist"):
        load_preset("lucy-edit", tmp_path / "nowhere")
    with pytest.raises(VivaUserError, match="unknown backbone preset"):
        load_preset("sd15", tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(lucy_folder[1], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(VivaUserError, match="incomplete: vae/ is missing"):
        load_preset("lucy-edit", broken)
    shutil.copytree(lucy_folder[1] / "vae", broken / "vae")
    weights = next((broken / "transformer").glob("*.safetensors"))
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(VivaUserError, match="pickle format"):
        load_preset("lucy-edit", broken)
    weights.with_suffix(".bin").unlink()
    (broken / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors"}}))
    with pytest.raises(VivaUserError, match="shard .* is missing"):
        load_preset("lucy-edit", broken)
    with pytest.raises(VivaUserError, match="not a text-to-video Wan model"):
        load_preset("wan-t2v", lucy_folder[1])
    for err in (pytest.raises(VivaUserError),):
        with err as info:
            load_preset("lucy-edit", broken)
        assert "\n" not in str(info.value)


def test_backbone_editor_round_trips_through_a_viva_model_folder(tmp_path, lucy_folder):
    """save_editor / load_editor give the same tokens and velocity bit for bit."""
    from viva.pipeline import load_editor, save_editor

    editor = load_preset("lucy-edit", lucy_folder[1], height=SIZE, width=SIZE, num_frames=FRAMES,
                         max_sequence_length=MAX_LEN)
    save_editor(editor, tmp_path / "model")
    again = load_editor(tmp_path / "model")  # built on the meta device, then filled from the files
    assert again.config == editor.config
    assert not any(t.is_meta for t in list(again.parameters()) + list(again.buffers()))
    encoder = again.instructor.encoder  # UMT5: the file stores the tied embedding once; the tie is restored
    assert encoder.shared.weight is encoder.encoder.embed_tokens.weight
    g = torch.Generator().manual_seed(0)
    cond, target, _ = _batch(editor, g)

    noisy, t = torch.randn(target.shape, generator=g), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        v1 = editor.velocity(noisy, cond, t)
        tokens = again.instructor(["make the car red", "add a dog"])
        assert torch.equal(tokens.tokens, cond.tokens)
        v2 = again.velocity(noisy, cond, t)
    assert torch.equal(v1, v2)


def test_viva_edit_cli_with_a_preset(tmp_path, lucy_folder, capsys):
    from viva.cli import main
    from viva.io import read_video, write_video

    frames = np.random.default_rng(2).integers(0, 256, size=(9, 40, 48, 3), dtype=np.uint8)
    write_video(tmp_path / "in.mp4", frames, fps=8)
    out = tmp_path / "out.mp4"
    code = main(["edit", str(tmp_path / "in.mp4"), "-i", "make the car red", "-o", str(out), "--preset", "lucy-edit",
                 "--weights", str(lucy_folder[1]), "--size", "32x32x5", "--steps", "2", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    edited, _ = read_video(out)
    assert edited.shape == (5, 32, 32, 3)
    for argv, message in [
        (["--preset", "lucy-edit", "--weights", str(tmp_path / "none")], "does not exist"),
        (["--preset", "lucy-edit"], "needs --weights"),
        (["--preset", "lucy-edit", "--weights", str(lucy_folder[1]), "--size", "32x32x6"], "1 + 4k"),
        (["--weights", str(lucy_folder[1])], "go with --preset"),
    ]:
        capsys.readouterr()
        code = main(["edit", str(tmp_path / "in.mp4"), "-i", "x", "-o", str(tmp_path / "o2.mp4"), *argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "\n" not in err, err
        assert not (tmp_path / "o2.mp4").exists()


# VLM presets (wan-qwen, hunyuan-llava) ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def wan_qwen_folder(tmp_path_factory, wan_folder):
    folder = tmp_path_factory.mktemp("wq") / "wan-qwen"
    shutil.copytree(wan_folder[1], folder)
    save_tiny_qwen(folder / "vlm")
    return folder


@pytest.fixture(scope="module")
def hunyuan_folder(tmp_path_factory):
    return save_tiny_preset("hunyuan-llava", tmp_path_factory.mktemp("hy") / "hunyuan-llava", seed=5)


@pytest.mark.parametrize("preset", ["wan-qwen", "hunyuan-llava"])
def test_vlm_presets_edit_sft_and_round_trip(preset, wan_qwen_folder, hunyuan_folder, tmp_path):
    from viva.pipeline import VivaPipeline, load_editor, save_editor
    from viva.train.sft import SFTObjective

    folder = wan_qwen_folder if preset == "wan-qwen" else hunyuan_folder
    editor = load_preset(preset, folder, height=SIZE, width=SIZE, num_frames=FRAMES)
    # The instructor sees the first frame: its tokens change with the image, not only the text.
    g = torch.Generator().manual_seed(0)
    frames = torch.rand((2, 3, SIZE, SIZE), generator=g) * 2 - 1
    with torch.no_grad():
        a = editor.instructor(["make the car red"] * 2, first_frames=frames)
        b = editor.instructor(["make the car red"], first_frames=frames[:1], references=[frames[1]])
    assert a.mask.all() and not torch.allclose(a.tokens[0], a.tokens[1])
    assert b.tokens.shape[1] > a.tokens.shape[1]  # the reference image adds its tokens
    # An edit with a reference image, through VivaPipeline.
    video = np.random.default_rng(3).integers(0, 256, size=(FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    ref = np.random.default_rng(4).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    result = VivaPipeline(editor)(video, "add a dog", reference_image=ref, num_inference_steps=2, seed=1)
    assert result.frames.shape == (FRAMES, SIZE, SIZE, 3)
    # An SFT step: the refiner and the denoiser learn, the VLM and the VAE stay frozen.
    objective = SFTObjective(editor).train()
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    cond, target, mask = _batch(editor, g)
    loss, _ = objective(cond, target, mask, g)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in editor.refiner.parameters())
    opt.step()
    assert not any(p.requires_grad for p in editor.instructor.parameters())
    # The trained editor saves as a viva model folder and loads back to the same velocity.
    editor.eval()
    save_editor(editor, tmp_path / "model")
    again = load_editor(tmp_path / "model")
    noisy, t = torch.randn(target.shape, generator=g), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        cond2 = again.encode_condition(["make the car red", "add a dog"], torch.zeros(2, 3, FRAMES, SIZE, SIZE))
        cond1 = editor.encode_condition(["make the car red", "add a dog"], torch.zeros(2, 3, FRAMES, SIZE, SIZE))
        assert torch.allclose(cond1.tokens, cond2.tokens) and torch.allclose(cond1.source, cond2.source)
        assert torch.allclose(editor.velocity(noisy, cond1, t), again.velocity(noisy, cond1, t), atol=1e-6)


def test_lucy_edit_with_a_vlm_instructor(lucy_folder, wan_qwen_folder, tmp_path):
    """Lucy-Edit's UMT5 swapped for a VLM instructor: `wan-qwen` on a Lucy-Edit folder (vlm=DIR) keeps
    Lucy's channel-concat transformer as it is (not widened again; same weights) and reads the first frame."""
    editor = load_preset("wan-qwen", lucy_folder[1], height=SIZE, width=SIZE, num_frames=FRAMES,
                         vlm=wan_qwen_folder / "vlm")
    lucy = lucy_folder[0].transformer
    ours = editor.denoiser.transformer
    assert ours.config.in_channels == lucy.config.in_channels == 2 * Z
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), lucy.state_dict().values()))
    assert type(editor.instructor).__name__ == "VLMInstructor"
    video = np.random.default_rng(3).integers(0, 256, size=(FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    from viva.pipeline import VivaPipeline

    result = VivaPipeline(editor)(video, "make the car red", num_inference_steps=2, seed=1)
    assert result.frames.shape == (FRAMES, SIZE, SIZE, 3)


def test_vlm_preset_needs_its_vlm_folder(tmp_path, wan_folder):
    with pytest.raises(VivaUserError, match="vlm/ is missing"):
        load_preset("wan-qwen", wan_folder[1])


def test_two_process_gloo_sft_keeps_ranks_identical(tmp_path, lucy_folder):
    """Two processes (gloo, DDP), different batches per rank: after two SFT steps the backbone's weights are
    identical on both ranks."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("_backbone_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = ["2", str(lucy_folder[1]), str(tmp_path / "rdv"), str(tmp_path / "out.json")]
    procs = [subprocess.Popen([sys.executable, str(worker), str(rank), *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["digests"][0] == result["digests"][1]


def test_fsdp_sft_of_the_paper_backbone_matches_ddp(tmp_path, hunyuan_folder):
    """`torchrun --nproc_per_node 2 -m viva train sft model.preset=hunyuan-llava train.fsdp=true` (gloo): the
    HunyuanVideo blocks and token refiner are sharded (FSDP2) and the weights after two steps equal a DDP
    run's to float32 rounding (float32, so that bf16 kernel choices do not blur the comparison); the export
    loads as a plain editor."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from viva.pipeline import load_editor

    config = tmp_path / "sft.yaml"
    config.write_text(
        "data: {height: 32, width: 32, num_frames: 5, max_sprites: 2}\n"
        f"model: {{preset: hunyuan-llava, weights: {hunyuan_folder}}}\n"
        "optim: {lr: 1.0e-3, warmup_steps: 1}\n"
        "train: {steps: 2, batch_size: 2, log_every: 1, checkpoint_every: 2, sample_every: 0, num_workers: 0,\n"
        "        tensorboard: false, mixed_precision: 'no', ema_decay: 0.9}\n"
    )
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for mode in ("ddp", "fsdp"):
        result = subprocess.run(
            [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "viva", "train", "sft", "--config", str(config),
             "--out", str(tmp_path / mode), "--no-progress", f"train.fsdp={mode == 'fsdp'}"],
            capture_output=True, text=True, timeout=240, env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("FSDP: trainable modules sharded" in result.stderr) == (mode == "fsdp")
    for part in ("refiner", "denoiser"):
        ddp, fsdp = (load_file(str(tmp_path / mode / "model" / part / "model.safetensors")) for mode in ("ddp", "fsdp"))
        assert ddp.keys() == fsdp.keys() and len(ddp) > 0
        assert max(float((ddp[k] - fsdp[k]).abs().max()) for k in ddp) < 1e-5, part
    sync = [[json.loads(x) for x in (tmp_path / "fsdp" / "sync" / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert sync[0][-1]["sha256"] == sync[1][-1]["sha256"] != sync[0][0]["sha256"]  # trained, ranks agree
    editor = load_editor(tmp_path / "fsdp" / "model")
    assert type(editor.denoiser).__name__ == "HunyuanDenoiser"


def test_viva_train_sft_then_grpo_with_a_preset(tmp_path, lucy_folder, capsys):
    """`viva train sft model.preset=lucy-edit model.weights=DIR` on world data exports RUN/model; `viva train grpo
    --init RUN/model` post-trains it with a LoRA and exports the merged model."""
    from viva.cli import main
    from viva.pipeline import load_editor

    config = tmp_path / "sft.yaml"
    config.write_text(
        "data: {height: 32, width: 32, num_frames: 5, max_sprites: 2}\n"
        f"model: {{preset: lucy-edit, weights: {lucy_folder[1]}}}\n"
        "optim: {lr: 1.0e-3, warmup_steps: 1}\n"
        "train: {steps: 2, batch_size: 2, log_every: 1, checkpoint_every: 2, sample_every: 2, sample_steps: 2,\n"
        "        num_workers: 0, tensorboard: false}\n"
    )
    code = main(["train", "sft", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    editor = load_editor(tmp_path / "run" / "model")
    assert type(editor.denoiser).__name__ == "WanDenoiser" and editor.config.sigma_grid == "diffusers"
    assert (tmp_path / "run" / "samples" / "step-00000002.png").is_file()
    capsys.readouterr()
    code = main(["train", "sft", "--config", str(config), "--out", str(tmp_path / "bad"), "--no-progress",
                 "data.num_frames=4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "frames 1 + 4k" in err and "\n" not in err
    # Edit-GRPO from that export: LoRA on the Wan attention projections, world prompts at the model's size.
    grpo = tmp_path / "grpo.yaml"
    grpo.write_text(
        "prompts: {max_sprites: 2}\n"
        "rollout: {steps: 2, sde_window: 1, guidance_scale: 1.0, video_guidance_scale: 1.0}\n"
        "grpo: {group_size: 2, updates_per_step: 1}\n"
        "lora: {rank: 2, alpha: 2, targets: [to_q, to_k, to_v, to_out.0]}\n"
        "eval: {per_category: 0}\n"
        "train: {steps: 1, batch_size: 2, log_every: 1, checkpoint_every: 1, num_workers: 0, tensorboard: false}\n"
    )
    capsys.readouterr()
    code = main(["train", "grpo", "--config", str(grpo), "--init", str(tmp_path / "run" / "model"), "--out",
                 str(tmp_path / "grpo"), "--no-progress", "--prompts", "world:categories=color,add"])
    assert code == 0, capsys.readouterr().err
    merged = load_editor(tmp_path / "grpo" / "model")
    assert type(merged.denoiser).__name__ == "WanDenoiser"


def test_sft_with_a_bf16_offloaded_vlm_instructor(tmp_path, hunyuan_folder, capsys):
    """At scale the frozen LLaVA dominates memory: model.instructor_dtype=bfloat16 halves it and
    model.offload_frozen=true keeps it (and the VAE) in CPU memory between uses. Two SFT steps of the
    paper's preset run so, and the exported instructor is bf16."""
    from safetensors.torch import load_file

    from viva.cli import main

    config = tmp_path / "sft.yaml"
    config.write_text(
        "data: {height: 32, width: 32, num_frames: 5, max_sprites: 2}\n"
        f"model: {{preset: hunyuan-llava, weights: {hunyuan_folder}, instructor_dtype: bfloat16, offload_frozen: true}}\n"
        "train: {steps: 2, batch_size: 2, log_every: 1, checkpoint_every: 2, sample_every: 2, sample_steps: 2,\n"
        "        num_workers: 0, tensorboard: false}\n"
    )
    code = main(["train", "sft", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    weights = load_file(str(tmp_path / "run" / "model" / "instructor" / "model.safetensors"))
    dtypes = {v.dtype for k, v in weights.items() if v.is_floating_point()}
    assert dtypes == {torch.bfloat16}, dtypes


def test_shipped_lucy_sft_config_parses_and_names_the_missing_weights(tmp_path, capsys):
    from pathlib import Path

    from viva.cli import main

    config = Path(__file__).parents[1] / "configs" / "sft_lucy_edit.yaml"
    code = main(["train", "sft", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress",
                 f"model.weights={tmp_path / 'no-such-folder'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no-such-folder does not exist" in err and "\n" not in err
    assert not (tmp_path / "run").exists()
