"""Loading a backbone editor folder: building the modules with random weights and then reading the file
(the old path) vs building them on the meta device and assigning the file's tensors (`empty_weights`,
what `load_editor` does), in one run on the same folder.

    python benchmarks/bench_load.py [--width 12 --layers 8]      # hunyuan-llava, ~1.2B parameters

Prints a Markdown table: seconds per load of the whole editor (median of --repeat) and the parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

import viva.models.backbones.hunyuan as hunyuan
import viva.models.backbones.vlm as vlm
import viva.models.backbones.wan as wan
from viva.models.backbones import load_preset
from viva.models.backbones.tiny import save_tiny_preset
from viva.pipeline import load_editor, save_editor


def timed_loads(folder: Path, repeat: int) -> tuple[float, int]:
    times, editor = [], None
    for _ in range(repeat):
        del editor
        start = time.perf_counter()
        editor = load_editor(folder)
        times.append(time.perf_counter() - start)
    return statistics.median(times), sum(p.numel() for p in editor.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hunyuan-llava")
    parser.add_argument("--width", type=int, default=12)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = save_tiny_preset(args.preset, Path(tmp) / "weights", width=args.width, layers=args.layers)
        save_editor(load_preset(args.preset, weights, height=32, width=32, num_frames=5), Path(tmp) / "model")
        timed_loads(Path(tmp) / "model", 1)  # imports and page cache
        original = wan.empty_weights
        meta, params = timed_loads(Path(tmp) / "model", args.repeat)
        modules = (wan, hunyuan, vlm)
        for module in modules:  # random initialisation first (the loaders look the name up at call time)
            module.empty_weights = contextlib.nullcontext
        try:
            random_first, _ = timed_loads(Path(tmp) / "model", args.repeat)
        finally:
            for module in modules:
                module.empty_weights = original
    print(f"{args.preset}, width x{args.width}, {args.layers} layers: {params / 1e6:.0f}M parameters, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| load path | s per load |\n|---|---:|")
    print(f"| random init, then read the file | {random_first:.2f} |")
    print(f"| meta device, assign the file's tensors (load_editor) | {meta:.2f} |")
    print(f"| speedup | {random_first / meta:.0f}x |")


if __name__ == "__main__":
    main()
