"""Random preset folders built from the REAL diffusers / transformers classes, for tests and benchmarks.

    save_tiny_preset("lucy-edit", "tmp/lucy")          # a LucyEditPipeline folder, milliseconds per step on CPU
    save_tiny_preset("hunyuan-llava", "tmp/hy", width=2)   # `width` multiplies the hidden sizes (benchmarks)
    load_preset("lucy-edit", "tmp/lucy", height=32, width=32, num_frames=5, max_sequence_length=12)

Folders have the same layout as the real checkpoints (`transformer/ vae/ text_encoder/ tokenizer/
scheduler/`, plus `vlm/` for the VLM presets). Tokenizers are word-level `tokenizers` objects over a small
vocabulary (no sentencepiece, no download); Z latent channels, text width TEXT_DIM * width.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

Z = 4
TEXT_DIM = 16
WORDS = "make the car red blue a dog cat remove add turn into snow night video circle square green".split()
VLM_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<image>"]

__all__ = ["save_tiny_preset", "tiny_wan_parts", "tiny_tokenizer", "tiny_vlm_tokenizer", "Z", "TEXT_DIM", "WORDS"]


def tiny_tokenizer():
    """Word-level T5-style tokenizer: `<pad>` 0, `</s>` 1 appended to every text, `<unk>` 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_vlm_tokenizer():
    """Word-level tokenizer with the Qwen2.5-VL / LLaVA special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", *VLM_SPECIALS, "system", "user", "assistant", "USER", "ASSISTANT", ":", *WORDS]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    out.add_tokens(VLM_SPECIALS, special_tokens=True)
    return out


def tiny_wan_parts(in_channels: int, seed: int = 0, width: int = 1, layers: int = 2) -> dict:
    """WanPipeline / LucyEditPipeline components: AutoencoderKLWan, WanTransformer3DModel (in_channels,
    out_channels Z), UMT5EncoderModel, tokenizer, FlowMatchEulerDiscreteScheduler(shift 3)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=Z, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0],
    ).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2 * width, attention_head_dim=8 * width, in_channels=in_channels,
        out_channels=Z, text_dim=TEXT_DIM * width, freq_dim=32, ffn_dim=32 * width * width, num_layers=layers,
        rope_max_seq_len=64,
    ).eval()
    encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(WORDS) + 3, d_model=TEXT_DIM * width, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return dict(vae=vae, transformer=transformer, text_encoder=encoder, tokenizer=tiny_tokenizer(), scheduler=scheduler)


def save_tiny_qwen(folder: str | os.PathLike, hidden: int = 24, seed: int = 3) -> Path:
    """A random Qwen2.5-VL folder (model, tokenizer, PIL image processor at 28..56 px)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = tiny_vlm_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in VLM_SPECIALS}
    torch.manual_seed(seed)
    head = hidden // 2
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_scaling={"type": "mrope", "mrope_section": [head // 6, head // 6, head // 2 - 2 * (head // 6)]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0],
                           window_size=28),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|image_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    folder = Path(folder)
    Qwen2_5_VLForConditionalGeneration(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=28 * 28 * 4).save_pretrained(folder)
    return folder


def save_tiny_llava(folder: str | os.PathLike, hidden: int = 16, seed: int = 4) -> Path:
    """A random LLaVA folder (CLIP vision tower at 28 px, Llama language model, PIL CLIP image processor)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = tiny_vlm_tokenizer()
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=28, patch_size=14),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                max_position_embeddings=512),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    folder = Path(folder)
    LlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder


def save_tiny_preset(preset: str, folder: str | os.PathLike, seed: int = 0, width: int = 1, layers: int = 2) -> Path:
    """Write a random weights folder for `preset` (see the module docstring); returns it."""
    from diffusers import LucyEditPipeline, WanPipeline

    folder = Path(folder)
    if preset in ("wan-t2v", "wan-qwen"):
        WanPipeline(**tiny_wan_parts(Z, seed, width, layers)).save_pretrained(folder)
        if preset == "wan-qwen":
            save_tiny_qwen(folder / "vlm", hidden=24 * width, seed=seed + 3)
    elif preset == "lucy-edit":
        LucyEditPipeline(**tiny_wan_parts(2 * Z, seed, width, layers)).save_pretrained(folder)
    elif preset == "hunyuan-llava":
        from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

        torch.manual_seed(seed)
        HunyuanVideoTransformer3DModel(
            in_channels=Z, out_channels=Z, num_attention_heads=2 * width, attention_head_dim=8 * width,
            num_layers=layers // 2 or 1, num_single_layers=layers // 2 or 1, num_refiner_layers=1, patch_size=2,
            patch_size_t=1, text_embed_dim=TEXT_DIM * width, pooled_projection_dim=8,
            rope_axes_dim=(2 * width, 2 * width, 4 * width), guidance_embeds=True,
        ).save_pretrained(folder / "transformer")
        AutoencoderKLHunyuanVideo(
            latent_channels=Z, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
            down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
            mid_block_add_attention=False,
        ).save_pretrained(folder / "vae")
        save_tiny_llava(folder / "vlm", hidden=TEXT_DIM * width, seed=seed + 4)
    else:
        from viva.errors import VivaUserError

        raise VivaUserError(f"unknown backbone preset {preset!r}")
    return folder
