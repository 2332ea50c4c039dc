"""`VivaPipeline` edit latency and memory at the DEFAULT mini sizes, float32 vs bf16 autocast, on CPU.

The model: MiniVAE, MiniVLMInstructor (with the real MiniLM), MiniTokenRefiner and MiniDiT at their default
configs, random weights (latency does not depend on the values), saved to a temporary model folder. The
edit: an 8-frame 64x64 clip with a reference image (the largest condition: 9 latent frames, 2 images for
the instructor) and without one, 20 Euler steps, both guidance scales != 1 (text 3.0, video 1.5), so each
step is ONE denoiser call on a batch of 3 (full | no text | neither).

Each precision runs in a fresh child process, so "load" is a cold model-folder load (imports of torch,
transformers and viva measured separately as "import") and peak RSS (resource.getrusage, the whole process) belongs to that precision alone.
Rows: median over --repeats edits after one warm-up. The breakdown times the stages of one edit separately:
condition (instructor + VAE encode), one step (refiner + DiT on batch 3, and each alone), decode.

    python benchmarks/bench_edit.py [--threads 2] [--repeats 3] [--steps 20]
Targets: <= 3 s per edit (load excluded), <= 1.5 GB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 3.0
TARGET_RSS_GB = 1.5


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def make_model(folder: Path) -> None:
    import torch

    from viva.models.tiny import build_default_editor
    from viva.pipeline import save_editor

    torch.set_num_threads(1)
    editor = build_default_editor(seed=0, vlm=True)
    save_editor(editor, folder)
    names = ("vae", "instructor", "refiner", "denoiser")
    sizes = {name: sum(p.numel() for p in getattr(editor, name).parameters()) for name in names}
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in sizes.items()), flush=True)


def child(args: argparse.Namespace) -> dict:
    """One precision: load, warm up, time edits and stages; returns a dict of seconds / GB."""
    t0 = time.perf_counter()
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertModel  # noqa: F401  (imported by the instructor; timed here)

    from viva.pipeline import VivaPipeline

    torch.set_num_threads(int(args.threads))
    t_import = time.perf_counter() - t0
    start = time.perf_counter()
    pipe = VivaPipeline.from_pretrained(args.model, precision=args.precision)
    t_load = time.perf_counter() - start
    rss_loaded = peak_rss_gb()

    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    reference = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    settings = dict(num_inference_steps=args.steps, guidance_scale=3.0, video_guidance_scale=1.5)

    def timed_edit(ref):
        stamps = []
        start, cpu = time.perf_counter(), time.process_time()
        pipe(clip, "replace the red circle with a blue star", reference_image=ref, seed=0,
             callback=lambda i, n: stamps.append(time.perf_counter()), **settings)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
        steps = [b - a for a, b in zip(stamps, stamps[1:])]
        return total, statistics.median(steps) if steps else float("nan"), cpu

    out: dict = {"precision": args.precision, "threads": int(args.threads), "import_s": t_import, "load_s": t_load,
                 "rss_loaded_gb": rss_loaded}
    for name, ref in (("ref", reference), ("noref", None)):
        timed_edit(ref)  # warm-up
        runs = [timed_edit(ref) for _ in range(args.repeats)]
        out[f"edit_{name}_s"] = statistics.median(r[0] for r in runs)
        out[f"step_{name}_s"] = statistics.median(r[1] for r in runs)
        out[f"cpu_{name}_s"] = statistics.median(r[2] for r in runs)

    # Stage breakdown of one edit with a reference (same shapes as the pipeline).
    editor = pipe.editor
    pixels = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    ref_px = torch.from_numpy(reference).permute(2, 0, 1)[None].float() / 127.5 - 1

    def best(fn, n=5):
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times), statistics.median(times)

    with torch.no_grad(), pipe._autocast():
        cond = editor.encode_condition(["replace the red circle with a blue star"], pixels, ref_px)
        fn = editor.guided_velocity_fn(cond, 3.0, 1.5)
        x = torch.randn(1, cond.source.shape[1], 8, *cond.source.shape[-2:])
        sigma = torch.full((1,), 0.5)
        # Batch-3 inputs exactly as the guided velocity builds them.
        n = 3
        tokens3, mask3 = torch.cat([cond.tokens] * n), torch.cat([cond.token_mask] * n)
        t3 = sigma.repeat(n)
        refined3 = editor.refiner(tokens3, mask3, t3)
        noisy3 = torch.cat([torch.cat([x, torch.zeros_like(x[:, :, :1])], 2)] * n)
        source3 = torch.cat([cond.source] * n)
        text = ["replace the red circle with a blue star"]
        out["stage_instructor_s"] = best(
            lambda: editor.instructor(text, first_frames=pixels[:, :, 0], references=list(ref_px))
        )[1]
        out["stage_vae_encode_s"] = best(lambda: editor.encode_video(torch.cat([pixels, ref_px[:, :, None]], 2)))[1]
        out["stage_condition_s"] = best(lambda: editor.encode_condition(text, pixels, ref_px))[1]
        out["stage_step_s"] = best(lambda: fn(x, sigma), n=10)[1]
        out["stage_refiner_s"] = best(lambda: editor.refiner(tokens3, mask3, t3), n=10)[1]
        out["stage_dit_s"] = best(lambda: editor.denoiser(noisy3, source3, refined3, mask3, t3), n=10)[1]
        out["stage_decode_s"] = best(lambda: editor.decode(x))[1]
    out["tokens"] = int(cond.tokens.shape[1])
    out["rss_peak_gb"] = peak_rss_gb()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="2", help="torch threads; a comma list runs each (e.g. 2,1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        make_model(folder)
        rows = []
        for threads in args.threads.split(","):
            for precision in args.precisions.split(","):
                cmd = [sys.executable, __file__, "--child", "--model", str(folder), "--precision", precision,
                       "--threads", threads, "--repeats", str(args.repeats), "--steps", str(args.steps)]
                env = {**os.environ, "PYTHONWARNINGS": "ignore"}
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode:
                    sys.exit(f"child failed:\n{done.stderr}")
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    print(f"\nedit of an 8-frame 64x64 clip, {args.steps} steps, CFG text 3.0 / video 1.5 (batch 3 per step), "
          f"median of {args.repeats}; import = torch + transformers + viva; load = model folder -> pipeline; cpu = process CPU seconds")
    header = ("precision", "threads", "import s", "load s", "edit+ref s", "cpu+ref s", "step+ref ms", "edit s",
              "step ms", "peak RSS GB")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        cells = (r["precision"], str(r["threads"]), f"{r['import_s']:.2f}", f"{r['load_s']:.2f}",
                 f"{r['edit_ref_s']:.2f}", f"{r['cpu_ref_s']:.2f}", f"{r['step_ref_s'] * 1e3:.1f}",
                 f"{r['edit_noref_s']:.2f}", f"{r['step_noref_s'] * 1e3:.1f}",
                 f"{r['rss_peak_gb']:.2f}")
        print("| " + " | ".join(cells) + " |")
    print("\nbreakdown of one edit with a reference (ms, median):")
    stages = ("instructor", "vae_encode", "condition", "step", "refiner", "dit", "decode")
    print("| precision | threads | " + " | ".join(stages) + f" | {args.steps} steps |")
    print("|---|---|" + "|".join("---" for _ in stages) + "|---|")
    for r in rows:
        cells = [f"{r[f'stage_{s}_s'] * 1e3:.1f}" for s in stages] + [f"{r['stage_step_s'] * args.steps * 1e3:.0f}"]
        print(f"| {r['precision']} | {r['threads']} | " + " | ".join(cells) + " |")
    print(f"(step = refiner + DiT on batch 3 + guidance arithmetic; {rows[0]['tokens']} instructor tokens)")
    worst = max(r["edit_ref_s"] for r in rows)
    rss = max(r["rss_peak_gb"] for r in rows)
    verdict = ("OK" if worst <= TARGET_SECONDS else "OVER", "OK" if rss <= TARGET_RSS_GB else "OVER")
    print(f"\ntargets: edit <= {TARGET_SECONDS} s: {verdict[0]} (worst {worst:.2f} s); "
          f"peak RSS <= {TARGET_RSS_GB} GB: {verdict[1]} ({rss:.2f} GB)")


if __name__ == "__main__":
    main()
