"""VLM instructors (PAPER.md section 1): a frozen transformers vision-language model reads a system prompt,
the source's FIRST FRAME, an optional reference image and the instruction; its LAST-LAYER hidden states,
with the template prefix (system prompt and chat header) dropped as Qwen-Image-Edit does, are the
condition tokens.

    VLMInstructor.from_folder("/models/Qwen2.5-VL-7B-Instruct")     # Qwen2_5_VLForConditionalGeneration
    VLMInstructor.from_folder("/models/llava-llama-3-8b")            # LlavaForConditionalGeneration

Images go through the PIL image processors (`Qwen2VLImageProcessorPil`, `CLIPImageProcessorPil`), never
the torchvision-based ones or the video processors, and the image placeholder tokens are expanded here,
so no `*Processor` class (which demands torchvision) is needed. Items are encoded one at a time (their
token counts differ) and right-padded into a batch with a mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from viva.errors import VivaUserError
from viva.models.backbones.folders import check_component
from viva.models.backbones.wan import _load_weights, _read_folder, _write_folder, empty_weights
from viva.models.interfaces import Instructor, InstructorOutput

SYSTEM_PROMPT = (
    "Describe the key features of the input image (color, shape, size, texture, objects, background), then "
    "explain how the user's text instruction should alter or modify the image. Generate a new image that "
    "meets the user's requirements while maintaining consistency with the original input where appropriate."
)  # Qwen-Image-Edit's system prompt
KINDS = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "llava": "LlavaForConditionalGeneration"}


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3,H,W] in [-1,1] -> uint8 [H,W,3]."""
    return ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class VLMInstructor(Instructor):
    """A frozen VLM (Qwen2.5-VL or LLaVA) as the instructor. max_text_tokens: the instruction's word pieces
    are cut to this many."""

    def __init__(self, model: nn.Module, tokenizer, image_processor, system_prompt: str = SYSTEM_PROMPT,
                 max_text_tokens: int = 256):
        super().__init__()
        kind = model.config.model_type
        if kind not in KINDS:
            raise VivaUserError(f"unsupported VLM {type(model).__name__} ({kind}); use one of {', '.join(KINDS.values())}")
        self.kind = kind
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.system_prompt = system_prompt
        self.max_text_tokens = int(max_text_tokens)
        self.hidden_size = int(model.config.text_config.hidden_size)

    # -- folders -----------------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder, dtype=None, **kwargs) -> "VLMInstructor":
        """Load a transformers VLM folder (config.json, safetensors, tokenizer files, preprocessor_config.json)
        offline. The model class comes from config.json's model_type (qwen2_5_vl or llava), never remote code."""
        import transformers
        from transformers import AutoTokenizer

        folder = check_component(Path(folder), "VLM")
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        if model_type not in KINDS:
            raise VivaUserError(
                f"{folder} holds a {model_type!r} model; the VLM instructor supports {', '.join(KINDS)}"
            )
        if not (folder / "preprocessor_config.json").is_file():
            raise VivaUserError(f"VLM weights folder {folder} is incomplete: preprocessor_config.json is missing")
        try:
            model = getattr(transformers, KINDS[model_type]).from_pretrained(
                folder, local_files_only=True, use_safetensors=True, dtype=dtype
            )
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            image_processor = cls._processor_class(model_type).from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise VivaUserError(f"cannot load the VLM from {folder}: {first}") from None
        return cls(model.eval(), tokenizer, image_processor, **kwargs)

    @staticmethod
    def _processor_class(kind: str):
        if kind == "qwen2_5_vl":
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            return Qwen2VLImageProcessorPil
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        return CLIPImageProcessorPil

    def save_pretrained(self, directory) -> Path:
        config = {"kind": self.kind, "inner": self.model.config.to_dict(), "system_prompt": self.system_prompt,
                  "max_text_tokens": self.max_text_tokens}
        target = _write_folder(self, directory, config)
        self.tokenizer.save_pretrained(str(target / "tokenizer"))
        self.image_processor.save_pretrained(str(target / "image_processor"))
        return target

    @classmethod
    def from_pretrained(cls, directory, device=None, dtype=None) -> "VLMInstructor":
        import transformers
        from transformers import AutoConfig, AutoTokenizer

        data = _read_folder(cls, directory)
        kind = data.get("kind")
        if kind not in KINDS:
            raise VivaUserError(f"{directory}: unknown VLM kind {kind!r}; re-save the model")
        inner = dict(data["inner"])
        inner.pop("model_type", None)
        config = AutoConfig.for_model(kind, **inner)
        with empty_weights():
            model = getattr(transformers, KINDS[kind])(config)
        tokenizer = AutoTokenizer.from_pretrained(str(Path(directory) / "tokenizer"), local_files_only=True)
        processor = cls._processor_class(kind).from_pretrained(str(Path(directory) / "image_processor"))
        out = _load_weights(cls(model, tokenizer, processor, data["system_prompt"], data["max_text_tokens"]), directory)
        return out.to(device=device, dtype=dtype) if device is not None or dtype is not None else out

    # -- prompts -----------------------------------------------------------------------------------------
    def _image_tokens(self, pixels: dict) -> str:
        cfg = self.model.config
        if self.kind == "qwen2_5_vl":
            merge = int(cfg.vision_config.spatial_merge_size)
            count = int(pixels["image_grid_thw"].prod()) // (merge * merge)
            return "<|vision_start|>" + "<|image_pad|>" * count + "<|vision_end|>"
        vision = cfg.vision_config
        count = (vision.image_size // vision.patch_size) ** 2 + (cfg.vision_feature_select_strategy == "full")
        return self.tokenizer.convert_ids_to_tokens(int(cfg.image_token_id)) * count

    def _template(self, instruction: str, images: str) -> tuple[str, str]:
        """(prefix, rest): the prefix (system prompt + chat header) is dropped from the output tokens."""
        if self.kind == "qwen2_5_vl":
            prefix = f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n<|im_start|>user\n"
            return prefix, f"{images}{instruction}<|im_end|>\n<|im_start|>assistant\n"
        prefix = f"{self.system_prompt}\nUSER: "
        return prefix, f"{images}\n{instruction} ASSISTANT:"

    def _encode_one(self, instruction: str, images: list[np.ndarray]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        ids = self.tokenizer(instruction, add_special_tokens=False)["input_ids"][: self.max_text_tokens]
        instruction = self.tokenizer.decode(ids)
        pixels = self.image_processor(images=images, return_tensors="pt") if images else {}
        if images and self.kind == "qwen2_5_vl":
            per_image = [{"image_grid_thw": g[None]} for g in pixels["image_grid_thw"]]
        else:
            per_image = [pixels] * len(images)
        image_text = "".join(self._image_tokens(p) for p in per_image)
        prefix, rest = self._template(instruction, image_text)
        n_prefix = len(self.tokenizer(prefix, add_special_tokens=False)["input_ids"])
        input_ids = self.tokenizer(prefix + rest, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        kwargs = {k: v.to(device) for k, v in pixels.items()}
        if "pixel_values" in kwargs:
            kwargs["pixel_values"] = kwargs["pixel_values"].to(self.model.dtype)
        out = self.model.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        return out.last_hidden_state[0, n_prefix:]

    def forward(self, instructions, first_frames=None, references=None) -> InstructorOutput:
        states = []
        for i, text in enumerate(instructions):
            images = []
            if first_frames is not None:
                images.append(_to_uint8(first_frames[i]))
            if references is not None and references[i] is not None:
                images.append(_to_uint8(references[i]))
            states.append(self._encode_one(text, images))
        length = max(s.shape[0] for s in states)
        tokens = states[0].new_zeros(len(states), length, states[0].shape[-1])
        mask = torch.zeros(len(states), length, dtype=torch.bool, device=tokens.device)
        for i, s in enumerate(states):
            tokens[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = True
        return InstructorOutput(tokens=tokens, mask=mask)
