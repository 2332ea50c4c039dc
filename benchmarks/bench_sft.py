"""SFT throughput on CPU: samples per second of `viva train sft` at the default mini sizes.

Runs the real trainer (a subprocess per row, so each row gets a fresh process) with random frozen encoders
of the default sizes (`model.vae=new model.instructor=new`: MiniVAE, MiniVLMInstructor with the real
MiniLM, 64x64 clips of 8 frames) and the default 7.0M-parameter DiT + 2.2M refiner, pairs generated on
the fly in the training process (`train.num_workers=0`, so the data cost is included), for
image-only, video-only and the default 0.6 / 0.4 mix. The figure is the trainer's own `samples_per_s`
over the steps after the first `--warmup` (RUN/metrics.jsonl, one row per step), combined as total
samples / total time (the harmonic mean of the per-step rates).

    python benchmarks/bench_sft.py [--threads 2] [--steps 12] [--warmup 4] [--batch 16 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = {"image": "1.0", "video": "0.0", "mix 0.6/0.4": "0.6"}


def run_row(image_prob: str, batch: int, steps: int, threads: int, precision: str) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        args = [
            sys.executable, "-m", "viva", "train", "sft", "--config", str(ROOT / "configs" / "sft_mini.yaml"),
            "--out", str(run), "--device", "cpu", "--no-progress",
            "model.vae=new", "model.instructor=new", f"data.image_prob={image_prob}",
            f"train.steps={steps}", f"train.batch_size={batch}", "train.num_workers=0", f"train.cpu_threads={threads}",
            f"train.mixed_precision={precision}", "train.log_every=1", "train.sample_every=0",
            f"train.checkpoint_every={steps + 1}", "train.tensorboard=false", "train.ema_decay=0",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        result = subprocess.run(args, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise SystemExit(f"viva train sft failed:\n{result.stderr[-2000:]}")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
        return [r["samples_per_s"] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4, help="first steps left out of the figure")
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--precision", nargs="+", default=["bf16"], choices=["bf16", "no"])
    args = parser.parse_args()
    print(f"SFT samples/s, {args.threads} threads, steps {args.warmup + 1}..{args.steps}")
    print(f"{'batches':<14} {'batch':>5} {'precision':>9} {'samples/s':>10}")
    for precision in args.precision:
        for batch in args.batch:
            for label, image_prob in KINDS.items():
                rates = run_row(image_prob, batch, args.steps, args.threads, precision)[args.warmup :]
                print(f"{label:<14} {batch:>5} {precision:>9} {statistics.harmonic_mean(rates):10.1f}", flush=True)


if __name__ == "__main__":
    main()
