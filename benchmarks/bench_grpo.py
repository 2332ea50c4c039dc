"""Edit-GRPO throughput through the real trainer, and what sharing per-prompt encodings saves.

    python benchmarks/bench_grpo.py [--size default|tiny] [--prompts K] [--group G] [--rounds R] ...

Two `GRPOTrainingRun`s from the same random model folder, identical but for `rollout.share_encodings`:
shared (the instructor, the VAE and, at every denoising step, the refiner run once per prompt and serve
its G samples) and re-encoded (every sample encoded on its own, as a per-sample pipeline would). Both are
advanced in alternation, `--steps-per-round` steps at a time with `--stop-at` and exact resume, so
machine-load drift hits both alike ("one run, interleaved"). The first step of each segment is a
warm-up and is not counted. Prints samples/s (K x G edits rolled out, scored and trained on per second,
median over rounds), the split of a step's time, and the speedup. Results are identical either way
(tests/test_train_grpo.py::test_shared_encodings_equal_per_sample_reencoding).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("default", "tiny"), default="default",
                        help="default: mini model sizes at 64x64x8 (MiniVLM instructor); tiny: the test model at 32x32x4")
    parser.add_argument("--prompts", type=int, default=2, help="K prompts per step")
    parser.add_argument("--group", type=int, default=8, help="G samples per prompt")
    parser.add_argument("--denoise-steps", type=int, default=10, help="rollout denoising steps")
    parser.add_argument("--window", type=int, default=2, help="SDE window size")
    parser.add_argument("--guidance", choices=("model", "none"), default="model",
                        help="model: the model's two-scale CFG (3 passes); none: one pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    args = parser.parse_args()

    import torch

    from viva.pipeline import save_editor
    from viva.train.config import load_config
    from viva.train.grpo import GRPOConfig, GRPOTrainingRun

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench_grpo_"))
    if args.size == "default":
        from viva.models.tiny import build_default_editor

        model = save_editor(build_default_editor(seed=0, vlm=True), root / "model")
    else:
        from viva.models.tiny import save_tiny_editor

        model = save_tiny_editor(root / "model", height=32, width=32, num_frames=4)
    guidance = [] if args.guidance == "model" else ["rollout.guidance_scale=1", "rollout.video_guidance_scale=1"]
    overrides = [
        f"model.init={model}", "eval.per_category=0", f"train.batch_size={args.prompts}", f"grpo.group_size={args.group}",
        f"rollout.steps={args.denoise_steps}", f"rollout.sde_window={args.window}", f"train.device={args.device}",
        "train.log_every=1", "train.tensorboard=false", "train.num_workers=0", "train.checkpoint_every=100000",
        f"train.steps={args.rounds * args.steps_per_round}", *guidance,
    ]
    modes = {"shared": "true", "re-encoded": "false"}
    rows: dict[str, list[dict]] = {mode: [] for mode in modes}
    for r in range(args.rounds):
        order = list(modes) if r % 2 == 0 else list(modes)[::-1]
        for mode in order:
            config = load_config(GRPOConfig, None, overrides + [f"rollout.share_encodings={modes[mode]}"])
            run_dir = root / mode
            stop = (r + 1) * args.steps_per_round
            with open(os.devnull, "w") as quiet:
                saved, sys.stdout = sys.stdout, quiet
                try:
                    GRPOTrainingRun(config, run_dir, stop_at=stop, progress=False).run()
                finally:
                    sys.stdout = saved
            metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
            segment = [m for m in metrics if stop - args.steps_per_round + 1 < m["step"] <= stop]
            rows[mode] += segment
    shutil.rmtree(root, ignore_errors=True)

    def med(mode: str, key: str) -> float:
        return statistics.median(m[key] for m in rows[mode])

    samples = args.prompts * args.group
    print(f"Edit-GRPO, {args.size} model, K={args.prompts} prompts x G={args.group} samples, {args.denoise_steps} "
          f"denoising steps (SDE window {args.window}), guidance {args.guidance}, "
          f"{args.rounds} rounds x {args.steps_per_round - 1} timed steps, torch threads {torch.get_num_threads()}")
    print("| encodings | samples/s | step s | encode s | rollout s | reward s | update s |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        sps = med(mode, "samples_per_s")
        step = samples / sps
        enc, smp, rew = med(mode, "encode_s"), med(mode, "sample_s"), med(mode, "reward_s")
        print(f"| {mode} | {sps:.2f} | {step:.2f} | {enc:.3f} | {smp:.2f} | {rew:.2f} | {step - enc - smp - rew:.2f} |")
    speedup = med("shared", "samples_per_s") / med("re-encoded", "samples_per_s")
    print(f"speedup of shared per-prompt encodings: {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
