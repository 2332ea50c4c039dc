"""`viva train vae`: train the MiniVAE on world frames, fit its latent scaling, measure held-out PSNR.

    viva train vae --config configs/vae_mini.yaml --out runs/vae [train.steps=2000 ...]

Data: every step reads `train.batch_size` pairs of the world (made on the fly from (data.seed, index), or
read from `data.root`), all categories including weather and style, videos and 1-frame images; each
pair gives `data.frames_per_pair` frames (half from the source clip, half from the target, the reference
image in the last slot when the pair has one). The MiniVAE is frame-wise, so frames of clips and images
are one batch [N,3,1,H,W]. Loss: `viva.models.vae.vae_loss` (L1 + L2 + edge + tiny KL, posterior sampled).

At the end (on the EMA weights when `train.ema_decay` > 0): `fit_scaling_factor` on `eval.scale_batches`
training batches, then PSNR on whole held-out clips (`eval.num_pairs` pairs of seed `eval.seed`: source,
target and reference) through `decode(encode(x))` in float32, and RUN/vae/ (save_pretrained) +
RUN/eval.json (overall PSNR, mean/min per clip, by kind, category and global state).

Fine-tuning: `init=DIR` starts from a saved MiniVAE (its config replaces `model`); with `train_part=decoder`
the encoder is frozen and the init's latent shift / scale are kept (not refitted), so the latent space, and
with it every editor trained on those latents, stays valid while the reconstructions get sharper:

    viva train vae --config configs/vae_decoder_finetune.yaml --out runs/vae_dec init=runs/vae/vae
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..models.vae import MiniVAE, MiniVAEConfig, VAELossConfig, vae_loss
from .config import component_config
from .harness import OptimConfig, RunConfig, TrainingRun, write_json
from .world_data import PairSource, StepBatchSampler, VAEFrames, WorldDataConfig, auto_workers, ignore_stop_signals, coerce_numbers, to_unit

__all__ = ["VAEDataConfig", "VAEEvalConfig", "VAETrainConfig", "VAETrainingRun", "evaluate_vae", "PSNR_TARGET"]

PSNR_TARGET = 32.0


@dataclass
class VAEDataConfig(WorldDataConfig):
    image_fraction: float = 0.4
    frames_per_pair: int = 8  # frames taken from each pair (source, target, reference)


@dataclass
class VAEEvalConfig:
    seed: int = 1_000_003  # held-out pairs (must differ from data.seed)
    num_pairs: int = 128
    batch_size: int = 16  # clips per forward pass
    scale_batches: int = 8  # training batches used to fit the latent shift / scale

    def __post_init__(self) -> None:
        coerce_numbers(self)
        if self.num_pairs < 1 or self.batch_size < 1 or self.scale_batches < 1:
            raise ValueError("eval.num_pairs, batch_size and scale_batches must be at least 1")


@dataclass
class VAETrainConfig:
    model: MiniVAEConfig = field(default_factory=MiniVAEConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=300))
    train: RunConfig = field(
        default_factory=lambda: RunConfig(steps=7000, batch_size=32, checkpoint_every=1000, log_every=50)
    )
    eval: VAEEvalConfig = field(default_factory=VAEEvalConfig)
    init: str | None = None  # a saved MiniVAE folder to start from (its config replaces `model`)
    train_part: str = "all"  # all | decoder (encoder frozen, latent shift/scale kept; needs init)

    def __post_init__(self) -> None:
        coerce_numbers(self.loss)
        if self.train_part not in ("all", "decoder"):
            raise ValueError(f"train_part must be all or decoder, got {self.train_part!r}")
        if self.train_part == "decoder" and self.init is None:
            raise ValueError("train_part=decoder fine-tunes a trained VAE's decoder; give init=DIR (a saved MiniVAE folder)")
        if self.init is not None:
            hint = "it is not a saved MiniVAE folder: pass e.g. runs/vae/vae (written by `viva train vae`)"
            self.model = MiniVAE.config_class.from_dict(component_config(self.init, "init", hint))
        if self.model.temporal_mix:
            raise ValueError("the VAE trainer trains frame-wise; model.temporal_mix must be false")
        if self.data.root is None and self.eval.seed == self.data.seed:
            raise ValueError(f"eval.seed must differ from data.seed ({self.data.seed}): held-out clips must be unseen")
        if self.data.height % self.model.spatial_factor or self.data.width % self.model.spatial_factor:
            raise ValueError(f"data.height and data.width must be multiples of model.spatial_factor {self.model.spatial_factor}")


def _collate_frames(items: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(items)


class VAETrainingRun(TrainingRun):
    component = "vae"
    unit = "frames"

    def build(self):
        cfg = self.config
        self.vae = MiniVAE.from_pretrained(cfg.init) if cfg.init is not None else MiniVAE(cfg.model)
        self.vae.train()
        if cfg.train_part == "decoder":
            self.vae.encoder.requires_grad_(False)
            self.vae.encoder.eval()  # frozen: the latent space stays the init's
        self.vae.to(self.device)
        if self.device.type == "cuda":
            self.vae.to(memory_format=torch.channels_last)
        self.model = self.vae
        self.source = PairSource(self.config.data)
        self.samples_per_batch = self.train.batch_size * self.config.data.frames_per_pair
        return {"vae": self.vae}

    def _loader(self, start: int, stop: int, offset: int = 0) -> DataLoader:
        workers = auto_workers(self.train.num_workers)
        return DataLoader(
            VAEFrames(self.source, self.config.data.frames_per_pair),
            batch_sampler=StepBatchSampler(self.train.batch_size, start, stop, self.rank, self.world, offset),
            num_workers=workers,
            collate_fn=_collate_frames,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,
            worker_init_fn=ignore_stop_signals,
        )

    def make_loader(self, start: int, stop: int):
        return self._loader(start, stop)

    def frames_to_video(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [B,F,H,W,3] -> float [B*F,3,1,H,W] in [-1,1] on the device."""
        x = to_unit(batch.to(self.device, non_blocking=True))  # [B,F,3,H,W]
        return x.flatten(0, 1).unsqueeze(2)

    def compute_loss(self, batch):
        return vae_loss(self.model, self.frames_to_video(batch), self.config.loss)

    def finish(self) -> dict:
        cfg = self.config
        # 1. Latent shift / scale from training frames (posterior means, float32); a decoder fine-tune
        #    keeps the init's, so latents mean what they meant before.
        if cfg.train_part == "decoder":
            shift, scale = self.vae.shift_factor, self.vae.scaling_factor
        else:
            batches = (self.frames_to_video(b) for b in self._loader(0, cfg.eval.scale_batches))
            shift, scale = self.vae.fit_scaling_factor(batches, max_batches=cfg.eval.scale_batches)
        # 2. Held-out PSNR on whole clips.
        held_out = PairSource(cfg.data, seed=cfg.eval.seed, generate=True)
        metrics = evaluate_vae(self.vae, held_out, cfg.eval.num_pairs, cfg.eval.batch_size, self.device)
        # 3. Export.
        self.vae.save_pretrained(self.run_dir / "vae")
        summary = {
            "component": "vae",
            "steps": self.steps_done,
            "init": cfg.init,
            "train_part": cfg.train_part,
            "held_out_seed": cfg.eval.seed,
            "shift_factor": shift,
            "scaling_factor": scale,
            "psnr_target": PSNR_TARGET,
            "meets_target": bool(metrics["psnr"] >= PSNR_TARGET),
            **metrics,
            "num_parameters": self.vae.num_parameters(),
        }
        write_json(self.run_dir / "eval.json", summary)
        self.log(
            f"held-out PSNR {metrics['psnr']:.2f} dB over {metrics['num_clips']} clips and reference images "
            f"({metrics['psnr_clips']:.2f} dB on the clips alone) "
            f"(mean per clip {metrics['psnr_mean']:.2f}, min {metrics['psnr_min']:.2f}); "
            f"wrote {Path(self.run_dir) / 'vae'} and eval.json"
        )
        return summary


def _db(mse: float) -> float:
    return float(-10.0 * math.log10(max(mse, 1e-12)))


@torch.no_grad()
def evaluate_vae(
    vae: MiniVAE, source: PairSource, num_pairs: int, batch_size: int = 16, device: torch.device | str = "cpu"
) -> dict:
    """PSNR (dB, 0..1 scale) of `decode(encode(clip))` (posterior mean, float32) over pairs 0..num_pairs-1
    of `source`: their source and target clips and reference images. Returns the PSNR of the pooled MSE
    ("psnr"; "psnr_clips": source and target clips only, without the reference images), mean / min
    per-clip PSNR, and pooled PSNR by clip kind, category and global state."""
    was_training = vae.training
    vae.eval()
    device = torch.device(device)
    groups: dict[str, list[float]] = {}  # name -> per-clip MSEs
    per_clip: list[float] = []
    pending: dict[int, list[tuple[np.ndarray, list[str]]]] = {}  # frames -> [(clip, group names)]

    def flush(frames: int) -> None:
        items = pending.pop(frames, [])
        if not items:
            return
        clips = torch.from_numpy(np.stack([c for c, _ in items])).to(device)  # [N,T,H,W,3]
        x = to_unit(clips).permute(0, 2, 1, 3, 4)  # [N,3,T,H,W]
        with torch.autocast(device.type, enabled=False):
            y = vae.decode(vae.encode(x.float()))
        mse = ((y - x) / 2.0).pow(2).flatten(1).mean(1).double().cpu().tolist()
        for value, (_, names) in zip(mse, items):
            per_clip.append(value)
            for name in names:
                groups.setdefault(name, []).append(value)

    for index in range(num_pairs):
        pair = source(index)
        kind = "image" if pair.source.shape[0] == 1 else "video"
        clips = [
            (pair.source, [kind, f"category/{pair.category}", f"state/{pair.source_scene.global_state}"]),
            (pair.target, [kind, f"category/{pair.category}", f"state/{pair.target_scene.global_state}"]),
        ]
        if pair.reference is not None:
            clips.append((pair.reference[None], ["reference"]))
        for clip, names in clips:
            pending.setdefault(clip.shape[0], []).append((clip, names))
            if len(pending[clip.shape[0]]) >= batch_size:
                flush(clip.shape[0])
    for frames in list(pending):
        flush(frames)
    vae.train(was_training)
    if not per_clip:
        raise ValueError("evaluate_vae needs at least one pair")
    psnrs = [_db(m) for m in per_clip]
    # the source / target clips alone (videos and 1-frame images): what the editor encodes AND decodes;
    # reference images are only ever encoded
    clips = groups.get("video", []) + groups.get("image", [])
    return {
        "psnr": _db(float(np.mean(per_clip))),
        "psnr_clips": _db(float(np.mean(clips))) if clips else None,
        "psnr_mean": float(np.mean(psnrs)),
        "psnr_min": float(np.min(psnrs)),
        "num_clips": len(per_clip),
        "num_pairs": num_pairs,
        "by_group": {name: {"psnr": _db(float(np.mean(v))), "clips": len(v)} for name, v in sorted(groups.items())},
    }
