"""MiniDiT vs diffusers' WanTransformer3DModel of the same size: time per step on CPU.

Both models get the same work: batch 4, 8 frames of 8x8 latents with 16 channels for the noisy and the
source latents (concatenated along channels: 32 in, 16 out), patch (1, 2, 2) -> 128 video tokens, and 32
condition tokens for cross-attention. Wan is configured to our width, depth, heads, MLP width and patch.
Repeats are interleaved (ours, Wan, ours, Wan, ...) so both see the same machine state; the ratio is the
median of per-repeat ratios ours / diffusers (< 1: ours is faster).

    python benchmarks/bench_dit.py [--threads 2] [--repeats 20] [--warmup 3] [--padded-mask]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch


def build_models(args: argparse.Namespace):
    from diffusers import WanTransformer3DModel

    from viva.models import MiniDiT, MiniDiTConfig

    config = MiniDiTConfig()
    ours = MiniDiT(config)
    wan = WanTransformer3DModel(
        patch_size=config.patch_size,
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=2 * config.latent_channels,
        out_channels=config.latent_channels,
        text_dim=config.cond_dim,
        freq_dim=256,
        ffn_dim=int(config.hidden_size * config.mlp_ratio),
        num_layers=config.depth,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
    )
    # Zero-initialised layers cost the same as any other, but give both models non-trivial activations.
    torch.manual_seed(0)
    for model in (ours, wan):
        for p in model.parameters():
            if not p.detach().any():
                torch.nn.init.normal_(p, std=0.02)
    return config, ours, wan


def make_inputs(config, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    B, C = args.batch, config.latent_channels
    shape = (B, C, args.frames, args.size, args.size)
    mask = torch.ones(B, args.text_tokens, dtype=torch.bool)
    if args.padded_mask:
        mask[:, args.text_tokens // 2 :] = False
    return {
        "noisy": torch.randn(shape, generator=g),
        "source": torch.randn(shape, generator=g),
        "tokens": torch.randn(B, args.text_tokens, config.cond_dim, generator=g),
        "mask": mask,
        "t": torch.rand(B, generator=g),
    }


def step_fns(ours, wan, x: dict[str, torch.Tensor]) -> dict[str, Callable[[], torch.Tensor]]:
    def run_ours() -> torch.Tensor:
        return ours(x["noisy"], x["source"], x["tokens"], x["mask"], x["t"])

    def run_wan() -> torch.Tensor:
        hidden = torch.cat([x["noisy"], x["source"]], dim=1)
        return wan(hidden, x["t"] * 1000, x["tokens"], return_dict=False)[0]

    return {"ours": run_ours, "wan": run_wan}


def time_step(fn: Callable[[], torch.Tensor], model: torch.nn.Module, backward: bool, bf16: bool) -> float:
    start = time.perf_counter()
    if backward:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fn()
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=8, help="latent height = width")
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--padded-mask", action="store_true", help="mask half of the condition tokens (ours only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # diffusers' Wan RMSNorm keeps float32 weights under bf16 autocast and warns on every call.
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")

    config, ours, wan = build_models(args)
    inputs = make_inputs(config, args)
    fns = step_fns(ours, wan, inputs)
    models = {"ours": ours, "wan": wan}
    cases = [(bf16, backward) for bf16 in (False, True) for backward in (False, True)]

    times: dict[tuple, list[float]] = {(name, *case): [] for name in models for case in cases}
    for rep in range(args.warmup + args.repeats):
        for case in cases:
            for name in models:
                seconds = time_step(fns[name], models[name], backward=case[1], bf16=case[0])
                if rep >= args.warmup:
                    times[(name, *case)].append(seconds)

    tokens = args.frames * (args.size // config.patch_size[1]) * (args.size // config.patch_size[2])
    n_ours = sum(p.numel() for p in ours.parameters())
    n_wan = sum(p.numel() for p in wan.parameters())
    print(
        f"MiniDiT vs diffusers WanTransformer3DModel | batch {args.batch}, {tokens} video tokens + "
        f"{args.text_tokens} condition tokens{' (half padded)' if args.padded_mask else ''}, "
        f"{args.threads} threads, median of {args.repeats} interleaved repeats (ms per step)"
    )
    print(f"parameters: MiniDiT {n_ours / 1e6:.3f} M, Wan {n_wan / 1e6:.3f} M (ours/diffusers {n_ours / n_wan:.3f})")
    print()
    print("| precision | step | MiniDiT ms | Wan ms | ours/diffusers | best MiniDiT ms | best Wan ms | best ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for bf16, backward in cases:
        a, b = times[("ours", bf16, backward)], times[("wan", bf16, backward)]
        ratio = statistics.median(x / y for x, y in zip(a, b))
        print(
            f"| {'bf16 autocast' if bf16 else 'float32'} | {'forward+backward' if backward else 'forward'} | "
            f"{1e3 * statistics.median(a):.1f} | {1e3 * statistics.median(b):.1f} | {ratio:.2f} | "
            f"{1e3 * min(a):.1f} | {1e3 * min(b):.1f} | {min(a) / min(b):.2f} |"
        )
    print()
    print("ms: median over repeats; ours/diffusers: median of the per-repeat ratios; best: fastest repeat (least")
    print("disturbed by other processes on a shared machine).")


if __name__ == "__main__":
    main()
