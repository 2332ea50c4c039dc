"""MiniDiT, MiniTokenRefiner, their shared layers and the model-folder mixin."""

import json

import pytest
import torch

from viva.errors import VivaUserError
from viva.models import MiniDiT, MiniDiTConfig, MiniTokenRefiner, RefinerConfig
from viva.models.layers import Attention, KeyMask, Rope3D, apply_rope, grid_positions

TINY_DIT = dict(latent_channels=4, hidden_size=32, depth=2, num_heads=2, cond_dim=24, rope_axes_dim=(4, 6, 6))
TINY_REFINER = dict(in_dim=20, hidden_size=24, depth=2, num_heads=2)


def perturb_zero_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every all-zero parameter (adaLN-zero, zero-init heads) small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def make_dit(trained_like: bool = True) -> MiniDiT:
    torch.manual_seed(0)
    model = MiniDiT(MiniDiTConfig(**TINY_DIT))
    return perturb_zero_init(model) if trained_like else model


def make_refiner(trained_like: bool = True) -> MiniTokenRefiner:
    torch.manual_seed(0)
    model = MiniTokenRefiner(RefinerConfig(**TINY_REFINER))
    return perturb_zero_init(model) if trained_like else model


def dit_inputs(B=2, T=8, h=4, w=4, L=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, D = TINY_DIT["latent_channels"], TINY_DIT["cond_dim"]
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False  # row 0 has padding
    return dict(
        noisy=torch.randn(B, C, T, h, w, generator=g),
        source=torch.randn(B, C, T, h, w, generator=g),
        tokens=torch.randn(B, L, D, generator=g),
        token_mask=mask,
        timestep=torch.rand(B, generator=g),
    )


# ----------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("T", [1, 8, 9])
def test_dit_output_shape_images_clips_and_reference_frame(T):
    model = make_dit()
    x = dit_inputs(T=T)
    out = model(**x)
    assert out.shape == x["noisy"].shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_dit_rejects_mismatched_shapes():
    model = make_dit()
    x = dit_inputs()
    with pytest.raises(ValueError):
        model(**{**x, "source": x["source"][:, :, :-1]})
    with pytest.raises(ValueError):
        model(**{**x, "noisy": x["noisy"][..., :3], "source": x["source"][..., :3]})  # w not divisible by 2


def test_default_dit_size():
    n = MiniDiT().num_parameters()
    assert 4e6 <= n <= 8e6, n


# ----------------------------------------------------------------------------------------------- init and gradients


def test_fresh_dit_blocks_are_identity_and_output_is_zero():
    model = make_dit(trained_like=False)
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda mod, args, out: seen.append(torch.equal(args[0], out)))
    x = dit_inputs()
    assert torch.equal(model(**x), torch.zeros_like(x["noisy"]))
    assert seen == [True] * len(model.blocks)


def test_gradients_reach_every_parameter():
    model = make_dit()
    model(**dit_inputs()).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_matches():
    x = dit_inputs()
    grads = []
    for flag in (False, True):
        model = make_dit()
        model.gradient_checkpointing = flag
        model(**x).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------- RoPE


def rope_scores(positions_q, positions_k, seed=0):
    g = torch.Generator().manual_seed(seed)
    rope = Rope3D((4, 6, 6))
    q = torch.randn(1, 1, len(positions_q), 16, generator=g)
    k = torch.randn(1, 1, len(positions_k), 16, generator=g)
    q = apply_rope(q, rope(positions_q))
    k = apply_rope(k, rope(positions_k))
    return (q @ k.transpose(-1, -2))[0, 0]


def test_rope_depends_only_on_relative_position():
    pos = grid_positions(3, 2, 2)
    base = rope_scores(pos, pos)
    shifted = rope_scores(pos + torch.tensor([5.0, -3.0, 7.0]), pos + torch.tensor([5.0, -3.0, 7.0]))
    torch.testing.assert_close(base, shifted, atol=1e-4, rtol=1e-4)
    # The same query/key vectors at a different relative offset along any axis score differently.
    for axis in range(3):
        offset = torch.zeros(3)
        offset[axis] = 1.0
        moved = rope_scores(pos, pos + offset)
        assert not torch.allclose(base, moved, atol=1e-3)


def test_rope_preserves_norm():
    x = torch.randn(2, 3, 12, 16)
    rotated = apply_rope(x, Rope3D((4, 6, 6))(grid_positions(3, 2, 2)))
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))


# ----------------------------------------------------------------------------------------------- masking


def test_masked_tokens_do_not_influence_dit_output():
    model = make_dit()
    x = dit_inputs()
    out = model(**x)
    tokens = x["tokens"].clone()
    tokens[~x["token_mask"]] = 1e4 * torch.randn(int((~x["token_mask"]).sum()), tokens.shape[-1])
    torch.testing.assert_close(model(**{**x, "tokens": tokens}), out, atol=0, rtol=0)
    # ... while real tokens do.
    tokens = x["tokens"].clone()
    tokens[0, 0] += 1.0
    assert not torch.allclose(model(**{**x, "tokens": tokens}), out)


def test_fully_masked_token_row_is_finite_and_ignores_tokens():
    model = make_dit()
    x = dit_inputs()
    x["token_mask"][1] = False
    out = model(**x)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    tokens = x["tokens"].clone()
    tokens[1] = torch.randn_like(tokens[1])
    torch.testing.assert_close(model(**{**x, "tokens": tokens})[1], out[1], atol=0, rtol=0)


def test_attention_all_masked_rows_give_zero():
    attn = Attention(16, 2, context_dim=8)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    out = attn(torch.randn(2, 4, 16), torch.randn(2, 3, 8), key_mask=KeyMask.from_mask(mask))
    torch.testing.assert_close(out[1], attn.to_out.bias.expand(4, 16))
    assert KeyMask.from_mask(torch.ones(2, 3, dtype=torch.bool)) == (None, None)


# ----------------------------------------------------------------------------------------------- precision


def test_bf16_autocast_close_to_float32():
    model = make_dit()
    x = dit_inputs()
    ref = model(**x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**x)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() <= 0.03 * ref.abs().max()


# ----------------------------------------------------------------------------------------------- refiner


def refiner_inputs(B=3, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2] = False  # a row with no real token at all
    return torch.randn(B, L, TINY_REFINER["in_dim"], generator=g), mask, torch.rand(B, generator=g)


def test_refiner_shape_masking_and_finiteness():
    refiner = make_refiner()
    tokens, mask, t = refiner_inputs()
    out = refiner(tokens, mask, t)
    assert out.shape == (3, 6, TINY_REFINER["hidden_size"])
    assert torch.isfinite(out).all()
    assert (out[~mask] == 0).all()
    noisy = tokens.clone()
    noisy[~mask] = 1e4 * torch.randn(int((~mask).sum()), tokens.shape[-1])
    torch.testing.assert_close(refiner(noisy, mask, t), out, atol=0, rtol=0)
    assert not torch.allclose(refiner(tokens, mask, 1 - t)[:2], out[:2])  # the timestep conditions it
    assert refiner(tokens, mask).shape == out.shape  # timestep is optional
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in refiner.parameters())


def test_fresh_refiner_is_the_input_projection():
    refiner = make_refiner(trained_like=False)
    tokens, mask, t = refiner_inputs()
    expected = refiner.proj_in(tokens) * mask.unsqueeze(-1)
    torch.testing.assert_close(refiner(tokens, mask, t), expected)


# ----------------------------------------------------------------------------------------------- configs and folders


def test_config_dict_round_trip_and_validation():
    config = MiniDiTConfig(**TINY_DIT)
    data = json.loads(json.dumps(config.to_dict()))
    assert MiniDiTConfig.from_dict(data) == config
    assert isinstance(MiniDiTConfig.from_dict(data).patch_size, tuple)
    with pytest.raises(VivaUserError, match="head dim"):
        MiniDiTConfig(hidden_size=256, num_heads=4, rope_axes_dim=(16, 16, 16))
    with pytest.raises(VivaUserError, match="unknown"):
        MiniDiTConfig.from_dict({**data, "hiden_size": 3})


@pytest.mark.parametrize("kind", ["dit", "refiner"])
def test_save_load_round_trip(tmp_path, kind):
    if kind == "dit":
        model, cls, x = make_dit(), MiniDiT, dit_inputs()
        run = lambda m: m(**x)  # noqa: E731
    else:
        model, cls, (tokens, mask, t) = make_refiner(), MiniTokenRefiner, refiner_inputs()
        run = lambda m: m(tokens, mask, t)  # noqa: E731
    folder = model.save_pretrained(tmp_path / "nested" / kind)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    loaded = cls.from_pretrained(folder)
    assert loaded.config == model.config
    assert torch.equal(run(loaded), run(model))
    model.save_pretrained(folder)  # saving over an existing folder works
    assert torch.equal(run(cls.from_pretrained(folder)), run(model))


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(VivaUserError, match="does not exist"):
        MiniDiT.from_pretrained(tmp_path / "missing")
    folder = make_dit().save_pretrained(tmp_path / "dit")
    with pytest.raises(VivaUserError, match="holds a MiniDiT"):
        MiniTokenRefiner.from_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(VivaUserError, match="safetensors"):
        MiniDiT.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(VivaUserError, match="no model.safetensors"):
        MiniDiT.from_pretrained(folder)
