"""Mini instructors: the LLaVA-style MiniVLMInstructor and the text-only baseline, on the real MiniLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from viva.errors import VivaUserError
from viva.models.instructor import (
    MiniVLMInstructor,
    MiniVLMInstructorConfig,
    TextOnlyInstructor,
)
from viva.models.interfaces import InstructorOutput
from viva.models.vision import MiniViT, VisionConfig

N_IMG = 64
# A narrower ViT keeps the tests fast; the token layout is the same as the default's.
SMALL_VISION = dict(width=64, depth=2, heads=2)


@pytest.fixture(scope="module")
def vlm() -> MiniVLMInstructor:
    torch.manual_seed(0)
    return MiniVLMInstructor(MiniVLMInstructorConfig(vision=VisionConfig(**SMALL_VISION), projector_hidden=128)).eval()


@pytest.fixture(scope="module")
def text_only() -> TextOnlyInstructor:
    return TextOnlyInstructor().eval()


def _images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _real(out: InstructorOutput, i: int) -> torch.Tensor:
    return out.tokens[i, : int(out.mask[i].sum())]


def test_vit_shapes():
    vit = MiniViT(VisionConfig(**SMALL_VISION))
    assert vit(_images(2)).shape == (2, 64, 64)
    assert vit(_images(1, 32)).shape == (1, 16, 64)  # sin-cos positions: any multiple of the patch


def test_conv_stem_keeps_the_token_grid_and_sees_across_patch_borders(tmp_path):
    """vision.stem=conv: the same [B, grid*grid, width] tokens; a pixel changed in one patch also changes
    its neighbour's token before any attention (the 3x3 convolutions overlap patch borders), unlike the
    patch stem; the config round-trips; a non power-of-two patch is refused."""
    torch.manual_seed(0)
    config = VisionConfig(**SMALL_VISION, stem="conv")
    conv, patch = MiniViT(config).eval(), MiniViT(VisionConfig(**SMALL_VISION)).eval()
    images = _images(1)
    assert conv(images).shape == patch(images).shape == (1, 64, 64)
    poked = images.clone()
    poked[..., 0, 7] += 1.0  # the last column of patch 0, next to patch 1
    with torch.no_grad():
        assert not torch.allclose(conv.patch_embed(poked)[..., 0, 1], conv.patch_embed(images)[..., 0, 1])
        assert torch.equal(patch.patch_embed(poked)[..., 0, 1], patch.patch_embed(images)[..., 0, 1])
    conv.save_pretrained(tmp_path / "vit")
    loaded = MiniViT.from_pretrained(tmp_path / "vit").eval()
    assert loaded.config.stem == "conv"
    torch.testing.assert_close(loaded(images), conv(images), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="power-of-two"):
        VisionConfig(image_size=60, patch_size=6, stem="conv")


def test_default_sizes():
    torch.manual_seed(0)
    model = MiniVLMInstructor()
    assert model.hidden_size == 384
    assert model.vision.config.width == 256 and model.vision.config.depth == 4
    assert model.config.image_tokens == N_IMG
    # MiniLM frozen by default: only the ViT, projector and type embeddings train.
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"vision", "projector", "image_type", "reference_type"}


def test_shapes_and_masks_mixed_batch(vlm):
    instructions = ["make the red circle blue", "add this shape on the left of the yellow star", "remove it"]
    refs = [None, _images(1, 48)[0], None]  # references are resized to the ViT's 64x64
    out = vlm(instructions, _images(3), refs)
    n_text = [len(vlm.token_ids(s)) for s in instructions]
    lengths = [2 + N_IMG + (N_IMG if r is not None else 0) + n for r, n in zip(refs, n_text)]
    assert out.tokens.shape == (3, max(lengths), 384)
    assert out.mask.dtype == torch.bool
    assert out.mask.sum(1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert out.mask[i, :n].all() and not out.mask[i, n:].any()
        assert (out.tokens[i, n:] == 0).all()  # padded rows are zero
    # No reference anywhere / no references argument: same layout without reference tokens.
    out2 = vlm(instructions, _images(3), None)
    assert out2.mask.sum(1).tolist() == [2 + N_IMG + n for n in n_text]


def test_padding_does_not_change_real_tokens(vlm, text_only):
    short = "remove it"
    frames = _images(2, seed=3)
    alone = vlm([short], frames[1:], None)
    batched = vlm(["add this patterned star to the upper left corner of the scene please", short], frames, [_images(1)[0], None])
    assert batched.tokens.shape[1] > alone.tokens.shape[1]
    torch.testing.assert_close(_real(batched, 1), _real(alone, 0), atol=1e-5, rtol=0)
    alone = text_only([short])
    batched = text_only(["make every blue square in the video turn bright yellow", short])
    torch.testing.assert_close(_real(batched, 1), _real(alone, 0), atol=1e-5, rtol=0)


def test_images_change_tokens(vlm):
    text = ["make the red circle blue"] * 2
    out = vlm(text, torch.cat([_images(1, seed=1), _images(1, seed=2)]))
    assert out.mask[0].equal(out.mask[1])
    n = int(out.mask[0].sum())
    text_rows = slice(1 + N_IMG, n)  # the instruction's own tokens see the image too
    assert (out.tokens[0, text_rows] - out.tokens[1, text_rows]).abs().max() > 1e-3
    # and the reference changes them as well
    a = vlm(text[:1], _images(1, seed=1), [_images(1, seed=4)[0]])
    b = vlm(text[:1], _images(1, seed=1), [_images(1, seed=5)[0]])
    assert (a.tokens - b.tokens).abs().max() > 1e-3


def test_text_only_ignores_images(text_only):
    text = ["make the red circle blue", "remove the star"]
    plain = text_only(text)
    with_images = text_only(text, _images(2, seed=1), [_images(1)[0], None])
    assert torch.equal(plain.tokens, with_images.tokens) and torch.equal(plain.mask, with_images.mask)
    n = [len(text_only.token_ids(s)) + 2 for s in text]
    assert plain.mask.sum(1).tolist() == n and plain.tokens.shape == (2, max(n), 384)


def test_tokenizer_cache_and_truncation(text_only, monkeypatch):
    calls = []
    tokenizer = text_only.tokenizer

    def counting(*args, **kwargs):
        calls.append(args)
        return tokenizer(*args, **kwargs)

    monkeypatch.setattr(text_only, "tokenizer", counting)
    text_only(["turn the green triangle purple"] * 3)
    text_only(["turn the green triangle purple"])
    assert len(calls) == 1
    long = " ".join(["red"] * 100)
    assert len(text_only.token_ids(long)) == text_only.config.max_text_tokens == 48
    assert text_only([long]).tokens.shape[1] == 50


def test_gradients_reach_vision_not_frozen_minilm():
    torch.manual_seed(0)
    model = MiniVLMInstructor(MiniVLMInstructorConfig(vision=VisionConfig(**SMALL_VISION), projector_hidden=128)).train()
    assert not model.language_model.training  # frozen MiniLM never runs dropout
    out = model(["add a star"], _images(1), [_images(1)[0]])
    out.tokens.pow(2).mean().backward()
    assert model.vision.patch_embed.weight.grad.abs().sum() > 0
    assert model.projector[0].weight.grad.abs().sum() > 0
    assert model.reference_type.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.language_model.parameters())
    model.set_language_model_trainable(True)
    assert model.language_model.training
    model.freeze()
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_save_load_round_trip_frozen_minilm(vlm, tmp_path):
    vlm.save_pretrained(tmp_path / "instructor")
    config = json.loads((tmp_path / "instructor" / "config.json").read_text())
    assert config["_class_name"] == "MiniVLMInstructor" and config["vision"]["width"] == 64
    with safe_open(str(tmp_path / "instructor" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("language_model.") for k in keys)  # MiniLM comes from the package
    loaded = MiniVLMInstructor.from_pretrained(tmp_path / "instructor")
    args = (["make the red circle blue", "add it"], _images(2), [None, _images(1)[0]])
    expected, got = vlm(*args), loaded(*args)
    assert torch.equal(expected.mask, got.mask)
    torch.testing.assert_close(got.tokens, expected.tokens, atol=1e-6, rtol=0)


def test_save_load_round_trip_trained_minilm(text_only, tmp_path):
    model = TextOnlyInstructor(train_language_model=True)
    with torch.no_grad():
        model.language_model.encoder.layer[0].output.dense.weight.add_(0.05 * torch.randn(384, 1536))  # "trained"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("language_model.encoder.") for n in trainable)  # embeddings stay frozen
    model.save_pretrained(tmp_path / "text")
    with safe_open(tmp_path / "text" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == {f"language_model.{n}" for n, _ in model.language_model.encoder.named_parameters(prefix="encoder")}
    loaded = TextOnlyInstructor.from_pretrained(tmp_path / "text")
    assert loaded.config.train_language_model
    model.eval()
    torch.testing.assert_close(loaded(["remove the cross"]).tokens, model(["remove the cross"]).tokens, atol=1e-6, rtol=0)
    assert (loaded(["remove the cross"]).tokens - text_only(["remove the cross"]).tokens).abs().max() > 1e-3


def test_load_errors(vlm, tmp_path):
    with pytest.raises(VivaUserError, match="does not exist"):
        MiniVLMInstructor.from_pretrained(tmp_path / "missing")
    vlm.save_pretrained(tmp_path / "vlm")
    with pytest.raises(VivaUserError, match="MiniVLMInstructor"):
        TextOnlyInstructor.from_pretrained(tmp_path / "vlm")
    with pytest.raises(VivaUserError, match="config.json"):
        TextOnlyInstructor(language_model_path=str(tmp_path / "missing"))


def test_offline_loading(tmp_path):
    """Loading needs no network and no Hugging Face cache: a fresh process with HF_HUB_OFFLINE=1, an empty
    HF_HOME and an unreachable endpoint builds both instructors and runs them."""
    code = textwrap.dedent(
        """
        import torch
        from viva.models.instructor import MiniVLMInstructor, TextOnlyInstructor
        out = TextOnlyInstructor()(["make the red circle blue"])
        assert out.tokens.shape == (1, 7, 384), out.tokens.shape
        vlm = MiniVLMInstructor()
        out = vlm(["add it"], torch.zeros(1, 3, 64, 64), [torch.zeros(3, 64, 64)])
        assert out.tokens.shape == (1, 2 + 128 + 2, 384), out.tokens.shape
        print("ok")
        """
    )
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        HF_ENDPOINT="http://127.0.0.1:9",
        OMP_NUM_THREADS="1",
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))


def test_image_token_positions_add_a_learned_table_that_round_trips(tmp_path):
    """image_token_positions adds a trainable [n_img, 384] table (a sin-cos grid at init, distinct per
    position) to the projected image tokens of frames and references alike; saved and loaded with the model."""
    torch.manual_seed(0)
    config = MiniVLMInstructorConfig(vision=VisionConfig(**SMALL_VISION), projector_hidden=64, image_token_pool=2,
                                     image_token_positions=True)
    model = MiniVLMInstructor(config).eval()
    table = model.image_positions
    assert table.shape == (16, 384) and table.requires_grad
    assert torch.cdist(table, table).add(torch.eye(16) * 1e3).min() > 0.1  # every position distinct
    images = _images(2)
    with torch.no_grad():
        with_table = model.image_tokens(images, model.reference_type)
        model.image_positions = None
        without = model.image_tokens(images, model.reference_type)
        model.image_positions = table
    torch.testing.assert_close(with_table - without, table.detach().expand_as(with_table), atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "vlm")
    loaded = MiniVLMInstructor.from_pretrained(tmp_path / "vlm")
    assert torch.equal(loaded.image_positions, model.image_positions)
    assert MiniVLMInstructor(vision=VisionConfig(**SMALL_VISION), projector_hidden=64).image_positions is None


def test_fusion_layers_start_as_identity_then_train_and_round_trip(tmp_path):
    """fusion_layers adds transformer blocks after MiniLM: a fresh instructor gives MiniLM's own output
    exactly (zero-initialised residual branches), they receive gradients, padding never leaks into the
    real tokens, and they are saved and loaded with the instructor."""
    torch.manual_seed(0)
    config = MiniVLMInstructorConfig(vision=VisionConfig(**SMALL_VISION), projector_hidden=64, image_token_pool=2,
                                     fusion_layers=2)
    model = MiniVLMInstructor(config)
    plain = MiniVLMInstructor(MiniVLMInstructorConfig(vision=VisionConfig(**SMALL_VISION), projector_hidden=64,
                                                      image_token_pool=2))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fusion")})
    args = (["remove the star", "make the leftmost one bigger please"], _images(2), [None, _images(1)[0]])
    with torch.no_grad():
        assert torch.equal(model.eval()(*args).tokens, plain.eval()(*args).tokens)
    model.train()
    out = model(*args)
    out.tokens.pow(2).mean().backward()
    assert model.fusion[1].attn.to_out.weight.grad.abs().sum() > 0
    with torch.no_grad():  # after a step the fusion layers change the tokens...
        for p in model.fusion.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    fused = model(*args)
    assert not torch.allclose(fused.tokens, plain(*args).tokens)
    # ...but the shorter item's real tokens do not depend on the padding after them.
    alone = model([args[0][0]], args[1][:1], [None])
    torch.testing.assert_close(_real(alone, 0), _real(fused, 0), atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "vlm")
    loaded = MiniVLMInstructor.from_pretrained(tmp_path / "vlm").eval()
    assert loaded.config.fusion_layers == 2
    torch.testing.assert_close(loaded(*args).tokens, fused.tokens, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="fusion"):
        MiniVLMInstructorConfig(fusion_heads=5)
