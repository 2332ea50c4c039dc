"""viva.rewards: world rewards on generated pairs, weighted sums, the verifier pool, CLIP-family rewards on
tiny random CLIP models saved to temporary folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from viva.data.generate import make_pair
from viva.errors import VivaUserError
from viva.rewards.base import RewardBatch, RewardOutput, WeightedSum
from viva.rewards.world import InstructionFollowing, Preservation, Quality, edit_region

CATEGORIES = ("add", "remove", "color", "size", "weather", "background", "ref_replace", "hybrid")


@pytest.fixture(scope="module")
def pairs():
    return [make_pair(3, i, c) for i, c in enumerate(CATEGORIES)]


def noisy(clips: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(clips + rng.normal(0.0, sigma, clips.shape), 0, 255).astype(np.uint8)


def blurred(clips: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    x = ndimage.gaussian_filter(clips.astype(np.float32), (0, 0, sigma, sigma, 0))
    return (np.clip(x, 0, 255) + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ world


def test_instruction_following_target_beats_source(pairs):
    reward = InstructionFollowing(mode="both")
    on_target = reward(RewardBatch.from_pairs(pairs, np.stack([p.target for p in pairs])))
    on_source = reward(RewardBatch.from_pairs(pairs, np.stack([p.source for p in pairs])))
    assert on_target.total.shape == (len(pairs),) and on_target.total.dtype == torch.float32
    assert (on_target.total > on_source.total).all()
    assert (on_target.components["score"] > on_source.components["score"]).all()
    assert on_target.components["pass"].tolist() == [1.0] * len(pairs)
    assert on_source.components["pass"].tolist() == [0.0] * len(pairs)
    both = 0.5 * (on_target.components["score"] + on_target.components["pass"])
    assert torch.equal(on_target.total, both)


def test_preservation_identity_is_max_and_targets_keep_everything_else(pairs):
    reward = Preservation()
    sources = np.stack([p.source for p in pairs])
    identity = reward(RewardBatch.from_pairs(pairs, sources))
    assert torch.allclose(identity.total, torch.ones(len(pairs)), atol=1e-5)
    assert identity.components["psnr"].tolist() == [50.0] * len(pairs)
    # Ground truth changes only the edit region (found from the program, not from the target): local
    # edits keep everything else exactly; global ones (weather, hybrids with one) keep the structure.
    target = reward(RewardBatch.from_pairs(pairs, np.stack([p.target for p in pairs])))
    for p, score, psnr in zip(pairs, target.total.tolist(), target.components["psnr"].tolist()):
        is_global = any(c.op == "global" for c in p.program)
        assert score >= (0.9 if is_global else 0.999), (p.category, p.instruction, score)
        assert score <= identity.total.max().item() + 1e-6
        if not is_global:
            assert psnr == 50.0, (p.category, psnr)
    # Damage outside the edit region lowers it; noise lowers it more than identity everywhere.
    damaged = np.stack([p.target for p in pairs])
    for i, p in enumerate(pairs):
        region = edit_region(p.source_scene, p.program, *p.source.shape[:3])
        inside = ndimage.distance_transform_edt(np.pad(region.compare.all(axis=0), 1))[1:-1, 1:-1]
        y, x = np.unravel_index(np.argmax(inside), inside.shape)  # deepest in what must stay
        damaged[i, :, max(0, y - 4) : y + 4, max(0, x - 4) : x + 4] = (255, 0, 255)
    hurt = reward(RewardBatch.from_pairs(pairs, damaged))
    assert (hurt.total < target.total - 0.005).all(), (hurt.total, target.total)
    assert (reward(RewardBatch.from_pairs(pairs, noisy(sources, 12.0))).total < 0.95).all()


def test_edit_region_comes_from_the_program(pairs):
    add = next(p for p in pairs if p.category == "add")
    region = edit_region(add.source_scene, add.program, 8, 64, 64)
    assert not region.edited.any() and region.adds and not region.structural  # the new sprite goes anywhere
    remove = next(p for p in pairs if p.category == "remove")
    region = edit_region(remove.source_scene, remove.program, 8, 64, 64)
    assert region.edited.any() and (region.compare == ~region.edited).all()
    # The generator's mask (from the target clip) lies inside the region derived from the program.
    assert not ((remove.mask > 0) & region.compare).any()
    weather = next(p for p in pairs if p.category == "weather")
    assert edit_region(weather.source_scene, weather.program, 8, 64, 64).structural


def test_quality_prefers_clean_sharp_stable_clips(pairs):
    reward = Quality()
    sources = np.stack([p.source for p in pairs])
    same = reward(RewardBatch.from_pairs(pairs, sources))
    assert torch.allclose(same.total, torch.ones(len(pairs)))
    target = reward(RewardBatch.from_pairs(pairs, np.stack([p.target for p in pairs])))
    assert (target.total >= 0.9).all()
    blur = reward(RewardBatch.from_pairs(pairs, blurred(sources)))
    noise = reward(RewardBatch.from_pairs(pairs, noisy(sources, 8.0)))
    assert (blur.components["sharpness"] < 0.7).all() and (blur.total < 0.9).all()
    assert (noise.components["temporal"] < 0.5).all() and (noise.components["color"] < 0.5).all()
    assert (noise.total < 0.7).all()
    assert set(target.components) == {"temporal", "sharpness", "color"}


def test_weighted_sum_composes(pairs):
    outputs = np.stack([p.target for p in pairs[:4]])
    batch = RewardBatch.from_pairs(pairs[:4], outputs)
    parts = {"if": InstructionFollowing(), "keep": Preservation(), "quality": Quality()}
    weights = {"if": 1.0, "keep": 0.5, "quality": -0.25}
    out = WeightedSum(parts, weights)(batch)
    expected = sum(w * parts[k](batch).total for k, w in weights.items())
    assert torch.allclose(out.total, expected, atol=1e-6)
    assert set(out.components) >= {"if", "keep", "quality", "if/score", "if/pass", "keep/psnr", "quality/sharpness"}
    assert torch.equal(out.components["keep"], parts["keep"](batch).total)
    # Nested sums and zero weights work; mismatched names and bad weights fail loudly.
    nested = WeightedSum({"a": WeightedSum(parts, weights), "b": parts["if"]}, {"a": 2.0, "b": 0.0})(batch)
    assert torch.allclose(nested.total, 2 * expected, atol=1e-6) and "a/if/score" in nested.components
    with pytest.raises(ValueError, match="same parts"):
        WeightedSum(parts, {"if": 1.0})
    with pytest.raises(ValueError, match="finite"):
        WeightedSum(parts, {**weights, "if": float("nan")})


def test_pool_equals_in_process(pairs):
    # Two samples per prompt, as in Edit-GRPO groups: the target and a noisy target.
    chosen = pairs[:4]
    group = [p for p in chosen for _ in range(2)]
    outputs = np.stack([clip for p in chosen for clip in (p.target, noisy(p.target[None], 10.0, seed=1)[0])])
    batch = RewardBatch.from_pairs(group, outputs)
    local = InstructionFollowing(mode="score")(batch)
    pooled_reward = InstructionFollowing(mode="score", workers=2)
    try:
        pooled = pooled_reward(batch)
        again = pooled_reward(batch)  # the pool is reused
    finally:
        pooled_reward.close()
    assert torch.equal(local.total, pooled.total) and torch.equal(local.components["pass"], pooled.components["pass"])
    assert torch.equal(pooled.total, again.total)


def test_batch_validation(pairs):
    clips = np.stack([p.target for p in pairs[:2]])
    with pytest.raises(ValueError, match="same shape"):
        RewardBatch(outputs=clips, sources=clips[:, :4])
    with pytest.raises(ValueError, match="instructions has 1 items for 2"):
        RewardBatch(outputs=clips, sources=clips, instructions=["x"])
    with pytest.raises(ValueError, match="InstructionFollowing needs RewardBatch.scenes"):
        InstructionFollowing()(RewardBatch(outputs=clips, sources=clips))
    # float input in [0, 1] scores like its uint8 version
    batch_u8 = RewardBatch.from_pairs(pairs[:2], clips)
    batch_f = RewardBatch.from_pairs(pairs[:2], torch.from_numpy(clips).float() / 255.0)
    assert torch.equal(InstructionFollowing()(batch_u8).total, InstructionFollowing()(batch_f).total)
    assert torch.allclose(Preservation()(batch_u8).total, Preservation()(batch_f).total)


# ------------------------------------------------------------------------------------------------ CLIP

WORDS = "a video of red blue green yellow circle square star on plain gray white background and the".split()


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random CLIPModel (32-px images, 16-dim embeddings) and a tiny CLIP BPE tokenizer, saved with
    save_pretrained (safetensors)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for w in WORDS:
        vocab.setdefault(w + "</w>", len(vocab))
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=40, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def world_batch(pairs):
    chosen = pairs[:3]
    return RewardBatch.from_pairs(chosen, np.stack([p.target for p in chosen]))


def test_clip_rewards_shapes_and_determinism(clip_dir, world_batch):
    from viva.rewards.clip import ClipInstructionReward, ClipPreservation, ClipScorer, PickScore

    assert any(clip_dir.glob("*.safetensors")) and not any(clip_dir.glob("*.bin"))
    scorer = ClipScorer(clip_dir, num_frames=4)
    n = len(world_batch)
    for reward in (ClipInstructionReward(scorer), ClipPreservation(scorer), PickScore(scorer)):
        first, second = reward(world_batch), reward(world_batch)
        assert first.total.shape == (n,) and first.total.dtype == torch.float32
        assert torch.isfinite(first.total).all()
        assert torch.equal(first.total, second.total)
    # A second load of the folder gives the same numbers.
    again = ClipPreservation(clip_dir, num_frames=4)(world_batch)
    assert torch.equal(again.total, ClipPreservation(scorer)(world_batch).total)
    assert scorer.video_features(world_batch.outputs).shape == (n, 4, 16)


def test_clip_reward_values(clip_dir, world_batch):
    from viva.rewards.clip import ClipInstructionReward, ClipPreservation, ClipScorer, PickScore
    from viva.rewards.world import world_captions

    scorer = ClipScorer(clip_dir, num_frames=8)
    # Preservation: the source itself is the most similar video there is.
    same = RewardBatch(outputs=world_batch.sources, sources=world_batch.sources)
    identity = ClipPreservation(scorer)(same).total
    assert torch.allclose(identity, torch.ones(len(world_batch)), atol=1e-5)
    assert (ClipPreservation(scorer)(world_batch).total <= identity + 1e-6).all()
    # Instruction reward is directional: swapping the captions negates it.
    src, tgt = world_captions(world_batch)
    assert src != tgt
    forward = ClipInstructionReward(scorer)(world_batch)
    swapped = RewardBatch(
        outputs=world_batch.outputs, sources=world_batch.sources, source_captions=tgt, target_captions=src
    )
    assert torch.allclose(ClipInstructionReward(scorer)(swapped).total, -forward.total, atol=1e-6)
    assert torch.allclose(forward.total, forward.components["target"] - forward.components["source"])
    # PickScore equals the model's own logits (CLIPModel.forward), pooled over frames, over 26.
    frames = torch.from_numpy(world_batch.outputs[0]).float() / 255.0  # [T,H,W,3]
    tokens = scorer.tokenizer([tgt[0]], truncation=True, max_length=scorer.max_length, return_tensors="pt")
    with torch.no_grad():
        logits = scorer.model(input_ids=tokens["input_ids"], pixel_values=scorer.preprocess(frames)).logits_per_image
    expected = logits[:, 0].mean() / 26.0
    got = PickScore(scorer)(world_batch)
    assert torch.allclose(got.total[0], expected, atol=1e-5)
    assert torch.allclose(got.components["raw"], got.total * 26.0)


def test_clip_preprocess(clip_dir):
    from viva.rewards.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipScorer

    scorer = ClipScorer(clip_dir)
    flat = torch.full((2, 48, 80, 3), 0.5)
    pixels = scorer.preprocess(flat)
    assert pixels.shape == (2, 3, 32, 32)
    want = (0.5 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    assert torch.allclose(pixels[0, :, 5, 7], want, atol=1e-5)
    # preprocessor_config.json overrides mean, std and sizes
    (clip_dir / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"shortest_edge": 40},
                    "crop_size": {"height": 32, "width": 32}})
    )
    try:
        custom = ClipScorer(clip_dir).preprocess(flat)
    finally:
        (clip_dir / "preprocessor_config.json").unlink()
    assert custom.shape == (2, 3, 32, 32) and torch.allclose(custom, torch.zeros_like(custom), atol=1e-5)


def test_clip_loading_errors(tmp_path, clip_dir, world_batch):
    from viva.rewards.clip import ClipPreservation, ClipScorer, PickScore

    with pytest.raises(VivaUserError, match="does not exist"):
        ClipScorer(tmp_path / "missing")
    with pytest.raises(VivaUserError, match="PickScore weights folder .* does not exist"):
        PickScore(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VivaUserError, match="no config.json"):
        ClipScorer(empty)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((clip_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(VivaUserError, match="only safetensors"):
        ClipScorer(pickled)
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((clip_dir / name).read_bytes())
    with pytest.raises(VivaUserError, match="tokenizer"):
        ClipScorer(no_tokenizer)
    # Rewards without captions on a non-world batch say what is missing.
    bare = RewardBatch(outputs=world_batch.outputs, sources=world_batch.sources)
    with pytest.raises(ValueError, match="source_captions and target_captions"):
        PickScore(clip_dir)(bare)
    assert isinstance(ClipPreservation(clip_dir)(bare), RewardOutput)  # needs no captions
