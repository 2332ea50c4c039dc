"""Full-scale rewards of PAPER.md section 3, on CLIP-family models loaded from a LOCAL folder:

- `ClipInstructionReward`: R_IF = C(V_edit, t_edit) - C(V_edit, t_src), the directional instruction reward;
- `ClipPreservation`: R_SP = C(V_src, V_edit), video-video similarity;
- `PickScore`: R_PS = PickScore(V_edit, t_edit).

C is the cosine similarity of CLIP embeddings. Pooling over frames (the paper leaves it open; our choice):
`num_frames` frames are sampled evenly (first and last included), every frame is scored on its own
(video-video: frame t of the source with frame t of the edit) and the per-frame scores are averaged.
Captions t_src / t_edit come from the batch (`source_captions`, `target_captions`); world batches
default to `scene_caption` of the source and the expected target scene.

A folder holds `config.json`, `*.safetensors` weights and tokenizer files (what `save_pretrained` of a
CLIPModel and its tokenizer writes), optionally `preprocessor_config.json` (mean, std, sizes). Images are
preprocessed in torch (no torchvision): bicubic antialiased resize of the shorter side, centre crop,
normalization; close to, not bit-identical with, transformers' CLIPImageProcessor on PIL images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import VivaUserError
from ..io.sampling import even_indices
from .base import RewardBatch, RewardOutput, to_float
from .world import world_captions

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PICKSCORE_NORMALIZER = 26.0  # PickScore logits are ~20-23; Flow-GRPO divides by 26
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")


def _check_folder(path: Path, what: str) -> None:
    hint = (
        f"put a {what} there (config.json, *.safetensors and tokenizer files from save_pretrained); "
        "weights are never downloaded"
    )
    if not path.exists():
        raise VivaUserError(f"{what} weights folder {path} does not exist; {hint}")
    if not path.is_dir():
        raise VivaUserError(f"{what} weights path {path} is not a folder; {hint}")
    if not (path / "config.json").is_file():
        raise VivaUserError(f"{what} weights folder {path} has no config.json; {hint}")
    if not any(path.glob("*.safetensors")):
        raise VivaUserError(
            f"{what} weights folder {path} has no .safetensors weights; only safetensors are loaded "
            "(convert pytorch_model.bin with safetensors.torch.save_file)"
        )


def _sizes(path: Path, model_config) -> tuple[int, tuple[int, int], tuple, tuple]:
    """(shortest edge, (crop height, crop width), mean, std) from preprocessor_config.json or CLIP defaults."""
    vision = getattr(model_config, "vision_config", model_config)
    side = int(getattr(vision, "image_size", 224))
    shortest, crop, mean, std = side, (side, side), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        try:
            data = json.loads(pre.read_text())
        except (OSError, ValueError) as e:
            raise VivaUserError(f"cannot read {pre}: {e}; fix or delete it") from None
        size = data.get("size", shortest)
        if isinstance(size, dict):
            size = size.get("shortest_edge", size.get("height", shortest))
        shortest = int(size)
        c = data.get("crop_size", shortest)
        if isinstance(c, dict):
            crop = (int(c.get("height", shortest)), int(c.get("width", shortest)))
        else:
            crop = (int(c), int(c))
        mean = tuple(data.get("image_mean", mean))
        std = tuple(data.get("image_std", std))
    return shortest, crop, mean, std


class ClipScorer:
    """A CLIP-family model (transformers `AutoModel` with get_image_features / get_text_features /
    logit_scale) and its tokenizer from a local folder, with torch preprocessing.

    path: the folder. device, dtype: where and how the model runs. num_frames: frames scored per clip.
    batch_size: images per forward. what: the model's name in error messages."""

    def __init__(
        self,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        num_frames: int = 8,
        batch_size: int = 32,
        what: str = "CLIP",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        _check_folder(path, what)
        if num_frames < 1 or batch_size < 1:
            raise ValueError(f"num_frames and batch_size must be >= 1, got {num_frames} and {batch_size}")
        try:
            model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True, dtype=dtype)
        except (OSError, ValueError, KeyError) as e:
            raise VivaUserError(f"cannot load the {what} model from {path}: {str(e).splitlines()[0]}") from None
        if not all(hasattr(model, a) for a in ("get_image_features", "get_text_features", "logit_scale")):
            raise VivaUserError(f"{path} holds a {type(model).__name__}, not a CLIP-family model; give a CLIP folder")
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            # (transformers would quietly build an empty tokenizer from the model config)
            raise VivaUserError(
                f"{what} weights folder {path} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
                "save the model's tokenizer there with tokenizer.save_pretrained"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise VivaUserError(
                f"cannot load the tokenizer of {path}: {str(e).splitlines()[0]}; save it there with "
                "tokenizer.save_pretrained"
            ) from None
        self.path, self.what = path, what
        self.device, self.dtype = torch.device(device), dtype
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.num_frames, self.batch_size = int(num_frames), int(batch_size)
        self.shortest, self.crop, mean, std = _sizes(path, model.config)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        text = getattr(model.config, "text_config", model.config)
        self.max_length = int(getattr(text, "max_position_embeddings", 77))

    # Inputs ---------------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,H,W,3] float in [0, 1] -> pixel values [B,3,crop_h,crop_w] (resize shorter side,
        centre crop, normalize)."""
        x = images.permute(0, 3, 1, 2).float()
        h, w = x.shape[-2:]
        scale = self.shortest / min(h, w)
        nh, nw = max(self.crop[0], round(h * scale)), max(self.crop[1], round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
        top, left = (nh - self.crop[0]) // 2, (nw - self.crop[1]) // 2
        x = x[:, :, top : top + self.crop[0], left : left + self.crop[1]]
        return (x - self.mean) / self.std

    def sample(self, clips: torch.Tensor) -> torch.Tensor:
        """The scored frames of clips [N,T,H,W,3]: [N,T',H,W,3], T' = min(T, num_frames) evenly spaced."""
        t = clips.shape[1]
        if t <= self.num_frames:
            return clips
        return clips[:, torch.from_numpy(even_indices(t, self.num_frames))]

    # Features -------------------------------------------------------------------------------------
    @staticmethod
    def _pooled(out) -> torch.Tensor:
        return out.pooler_output if hasattr(out, "pooler_output") else out

    @torch.inference_mode()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings [B,D] of images [B,H,W,3] in [0, 1]."""
        feats = []
        for i in range(0, images.shape[0], self.batch_size):
            pixels = self.preprocess(images[i : i + self.batch_size]).to(self.device, self.dtype)
            feats.append(self._pooled(self.model.get_image_features(pixel_values=pixels)).float().cpu())
        return F.normalize(torch.cat(feats), dim=-1)

    @torch.inference_mode()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm embeddings [B,D] of texts."""
        feats = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(
                list(texts[i : i + self.batch_size]), padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            out = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            feats.append(self._pooled(out).float().cpu())
        return F.normalize(torch.cat(feats), dim=-1)

    def video_features(self, clips) -> torch.Tensor:
        """Unit-norm per-frame embeddings [N,T',D] of clips [N,T,H,W,3] (uint8 or float in [0, 1])."""
        x = self.sample(to_float(clips))
        n, t = x.shape[:2]
        return self.image_features(x.flatten(0, 1)).view(n, t, -1)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())


def _scorer(model, what: str, **kwargs) -> ClipScorer:
    return model if isinstance(model, ClipScorer) else ClipScorer(model, what=what, **kwargs)


class ClipInstructionReward:
    """R_IF = mean over frames of cos(frame, t_edit) - cos(frame, t_src), times `scale`. model: a folder or
    a shared `ClipScorer`. Components "target" and "source": the two mean cosines."""

    def __init__(self, model, scale: float = 1.0, **kwargs) -> None:
        self.scorer = _scorer(model, "CLIP", **kwargs)
        self.scale = float(scale)

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        src_caps, tgt_caps = world_captions(batch)
        frames = self.scorer.video_features(batch.outputs)  # [N,T',D]
        t_src, t_edit = self.scorer.text_features(src_caps), self.scorer.text_features(tgt_caps)  # [N,D]
        c_edit = torch.einsum("ntd,nd->nt", frames, t_edit).mean(dim=1)
        c_src = torch.einsum("ntd,nd->nt", frames, t_src).mean(dim=1)
        return RewardOutput(total=self.scale * (c_edit - c_src), components={"target": c_edit, "source": c_src})


class ClipPreservation:
    """R_SP = mean over frames t of cos(source frame t, edited frame t). model: a folder or a `ClipScorer`."""

    def __init__(self, model, **kwargs) -> None:
        self.scorer = _scorer(model, "CLIP", **kwargs)

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        out = self.scorer.video_features(batch.outputs)
        src = self.scorer.video_features(batch.sources)
        total = (out * src).sum(dim=-1).mean(dim=1)
        return RewardOutput(total=total, components={})


class PickScore:
    """R_PS = mean over frames of exp(logit_scale) * cos(frame, t_edit) / normalizer (PickScore's model is
    a CLIP; its raw scores are ~20-23, so the default normalizer 26 gives ~0.8). model: a folder holding
    PickScore weights (and the CLIP-H tokenizer) or a `ClipScorer`. Component "raw": the unnormalized score."""

    def __init__(self, model, normalizer: float = PICKSCORE_NORMALIZER, **kwargs) -> None:
        self.scorer = _scorer(model, "PickScore", **kwargs)
        self.normalizer = float(normalizer)

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        _, tgt_caps = world_captions(batch)
        frames = self.scorer.video_features(batch.outputs)
        text = self.scorer.text_features(tgt_caps)
        raw = self.scorer.logit_scale * torch.einsum("ntd,nd->nt", frames, text).mean(dim=1)
        return RewardOutput(total=raw / self.normalizer, components={"raw": raw})
