"""Per preset: parameters, SFT step time, peak memory and model FLOPs utilisation of the DiT step, on random
configs of the real diffusers / transformers classes (`viva.models.backbones.tiny`, scaled by --width).

    python benchmarks/bench_backbones.py                                   # tiny, CPU, float32 (a smoke run)
    python benchmarks/bench_backbones.py --device cuda --bf16 --width 16 --layers 8 --size 256x256x17

Prints a Markdown table. FLOPs of one SFT step (refiner + DiT forward and backward, frozen encoders
excluded) are counted with torch.utils.flop_counter; MFU = FLOPs / step time / --peak-tflops (default
989: H100 SXM dense bf16). Peak memory is CUDA's max_memory_allocated during the step (n/a on CPU).
Activation memory (any device) is measured, not estimated: the bytes of the distinct tensors autograd saves
for the backward of one training forward (torch.autograd.graph.saved_tensors_hooks), weights excluded;
the bf16 copies of the weights that autocast makes (they live until the backward too) are counted apart.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from viva.models.backbones import PRESETS, load_preset  # noqa: E402
from viva.models.backbones.tiny import save_tiny_preset  # noqa: E402


def count(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


VIEWS = {"TBackward0", "ViewBackward0", "UnsafeViewBackward0", "PermuteBackward0", "TransposeBackward0", "ExpandBackward0"}


def _is_weight_copy(t: torch.Tensor, param_ids: set[int]) -> bool:
    """A cast of a parameter (autocast's bf16 weight copy, maybe seen through a transpose or view): a chain
    of views and one ToCopy ending at a parameter's AccumulateGrad."""
    fn, copied = t.grad_fn, False
    for _ in range(6):
        if fn is None:
            return False
        name = type(fn).__name__
        if name == "AccumulateGrad":
            return copied and id(fn.variable) in param_ids
        if name == "ToCopyBackward0":
            copied = True
        elif name not in VIEWS:
            return False
        parents = [f for f, _ in fn.next_functions if f is not None]
        if len(parents) != 1:
            return False
        fn = parents[0]
    return False


def saved_bytes(forward, params) -> tuple[torch.Tensor, int, int]:
    """Run `forward()`; returns (its output, bytes of the distinct activation storages autograd keeps for
    the backward, bytes of the weight copies it keeps). The storages of `params` themselves are not counted."""
    weights = {p.untyped_storage().data_ptr() for p in params}
    param_ids = {id(p) for p in params}
    activations: dict[int, int] = {}
    copies: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            (copies if _is_weight_copy(t, param_ids) else activations)[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    return out, sum(activations.values()), sum(copies.values())


def bench(preset: str, root: Path, args) -> dict:
    w, h, t = (int(v) for v in args.size.split("x"))
    folder = save_tiny_preset(preset, root / preset, width=args.width, layers=args.layers)
    device = torch.device(args.device)
    editor = load_preset(preset, folder, height=h, width=w, num_frames=t, max_sequence_length=32, device=device)
    editor.denoiser.gradient_checkpointing = args.checkpointing
    trainable = [p for m in (editor.refiner, editor.denoiser) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand((args.batch, 3, t, h, w), generator=g) * 2 - 1).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    with torch.no_grad(), autocast:
        cond = editor.encode_condition(["make the car red"] * args.batch, pixels)
        target = editor.encode_video(pixels).float()
    cond.source = cond.source.float()

    def forward():
        with autocast:
            return editor.training_loss(cond, target, None, torch.Generator().manual_seed(1))[0]

    def step():
        forward().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    loss, activation, weight_copies = saved_bytes(forward, trainable)
    loss.backward()
    opt.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.repeat):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.repeat
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {
        "preset": preset,
        "trainable_M": count(editor.refiner) + count(editor.denoiser),
        "frozen_M": count(editor.vae) + count(editor.instructor),
        "latent_tokens": int(target[0, 0].numel() / 4),
        "step_s": seconds,
        "activation_MiB": activation / 2**20,
        "weight_copies_MiB": weight_copies / 2**20,
        "peak_GiB": peak,
        "TFLOP_step": flops / 1e12,
        "MFU": flops / seconds / (args.peak_tflops * 1e12),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--width", type=int, default=1, help="multiplies the tiny configs' hidden sizes")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--size", default="32x32x5", help="WxHxT of the clips")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (float32 weights, as the trainer)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing of the DiT blocks")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            rows.append(bench(preset, Path(tmp), args))
    keys = list(rows[0])
    print(f"device {args.device}, size {args.size}, batch {args.batch}, width x{args.width}, {args.layers} layers, "
          f"{'bf16 autocast' if args.bf16 else 'float32'}")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
