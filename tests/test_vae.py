"""MiniVAE: shapes, frame-wise encoding, gradients, scaling factor, save/load."""

from __future__ import annotations

import pytest
import torch

from viva.errors import VivaUserError
from viva.models.vae import MiniVAE, MiniVAEConfig, VAELossConfig, psnr, vae_loss

# A narrow VAE keeps the tests fast; the default config has the same structure.
SMALL = dict(base_channels=16, channel_mult=(1, 2, 2), decoder_blocks=1)


@pytest.fixture(scope="module")
def vae() -> MiniVAE:
    torch.manual_seed(0)
    return MiniVAE(MiniVAEConfig(**SMALL)).eval()


def _video(b: int, t: int, h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


@pytest.mark.parametrize("t", [1, 8])
def test_default_shapes(t):
    model = MiniVAE().eval()
    assert (model.latent_channels, model.spatial_factor, model.temporal_factor) == (16, 8, 1)
    with torch.no_grad():
        z = model.encode(_video(2, t))
        assert z.shape == (2, 16, t, 8, 8)
        out = model.decode(z)
    assert out.shape == (2, 3, t, 64, 64)
    assert out.min() >= -1 and out.max() <= 1


def test_any_size_divisible_by_8(vae):
    with torch.no_grad():
        z = vae.encode(_video(1, 3, 48, 80))
        assert z.shape == (1, 16, 3, 6, 10)
        assert vae.decode(z).shape == (1, 3, 3, 48, 80)
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(_video(1, 1, 60, 64))
    with pytest.raises(ValueError):
        vae.encode(torch.zeros(1, 3, 64, 64))  # an image must be a 1-frame clip


def test_framewise(vae):
    """A clip's latents are its frames' latents: images are 1-frame clips, references can be appended."""
    video = _video(2, 4)
    with torch.no_grad():
        z = vae.encode(video)
        for t in range(4):
            torch.testing.assert_close(z[:, :, t : t + 1], vae.encode(video[:, :, t : t + 1]), atol=1e-5, rtol=1e-4)
        assert torch.equal(vae.encode(video), z)  # posterior mean: deterministic
        assert not torch.equal(vae.encode(video, sample=True), z)


def test_temporal_mix_starts_framewise():
    torch.manual_seed(0)
    model = MiniVAE(MiniVAEConfig(**SMALL, temporal_mix=True)).eval()
    video = _video(1, 3)
    with torch.no_grad():
        z = model.encode(video)
        torch.testing.assert_close(z[:, :, 1:2], model.encode(video[:, :, 1:2]), atol=1e-5, rtol=1e-4)
        assert model.decode(z).shape == video.shape


def test_loss_gradients_and_training_step():
    torch.manual_seed(0)
    model = MiniVAE(MiniVAEConfig(**SMALL, temporal_mix=True)).train()
    video = _video(2, 2, 32, 32)
    loss, stats = vae_loss(model, video, VAELossConfig(l1_weight=1.0, edge_weight=0.5))
    assert set(stats) >= {"loss", "l1", "l2", "edge", "kl", "psnr", "latent_std"}
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["encoder.conv_in.weight"].abs().sum() > 0
    assert grads["decoder.conv_out.weight"].abs().sum() > 0
    # A few steps on one batch reduce the loss (gradients reach through the whole model).
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for _ in range(6):
        opt.zero_grad()
        loss, _ = vae_loss(model, video, VAELossConfig(sample_posterior=False))
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_psnr():
    x = torch.zeros(1, 3, 1, 8, 8)
    assert float(psnr(x + 0.2, x)) == pytest.approx(20.0, abs=1e-4)  # error 0.1 on the 0..1 scale


def test_scaling_factor_gives_unit_std(vae):
    model = MiniVAE(MiniVAEConfig(**SMALL))
    model.load_state_dict(vae.state_dict())
    batches = [_video(2, 2, seed=s) for s in range(3)]
    shift, scale = model.fit_scaling_factor(batches)
    assert (model.shift_factor, model.scaling_factor) == (shift, scale)
    with torch.no_grad():
        z = torch.cat([model.encode(b) for b in batches])
        assert float(z.std()) == pytest.approx(1.0, abs=0.02)
        assert abs(float(z.mean())) < 0.02
        # decode undoes the scaling: same pixels as the unscaled path
        raw, _ = model.posterior(batches[0])
        torch.testing.assert_close(model.decode(model.encode(batches[0]), clamp=False), model.decode_raw(raw), atol=1e-5, rtol=1e-4)


def test_save_load_round_trip(vae, tmp_path):
    model = MiniVAE(MiniVAEConfig(**SMALL))
    model.load_state_dict(vae.state_dict())
    model.fit_scaling_factor([_video(2, 2)])
    model.save_pretrained(tmp_path / "vae")
    assert {p.name for p in (tmp_path / "vae").iterdir()} == {"config.json", "model.safetensors"}
    loaded = MiniVAE.from_pretrained(tmp_path / "vae")
    assert loaded.config == model.config
    assert loaded.scaling_factor == model.scaling_factor
    video = _video(1, 2, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(video)), model.eval().decode(model.encode(video)))


def test_missing_folder_is_user_error(tmp_path):
    with pytest.raises(VivaUserError, match="does not exist"):
        MiniVAE.from_pretrained(tmp_path / "nope")


def test_bad_config():
    with pytest.raises(ValueError):
        MiniVAEConfig(temporal_factor=4)
    with pytest.raises(ValueError):
        MiniVAEConfig(channel_mult=(1, 2))
