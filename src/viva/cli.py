"""The `viva` command line.

    viva data generate --out DIR --num N [--workers K] [--seed S] [--categories add,remove] ...
    viva data info DIR
    viva data show DIR --index I -o preview.png
    viva train vae | instructor | probe | sft [--config YAML] [--out RUN] [KEY=VALUE ...]
    viva train grpo --init MODEL_DIR --prompts SPEC [--config YAML] [--out RUN] [KEY=VALUE ...]
    viva demo [--out DIR]
    viva edit INPUT -i "instruction" -o OUT.mp4 [--ref IMG] [--preview PNG] [--model DIR] [--steps N] ...
    viva eval (--model DIR | --baseline identity|ground_truth | --outputs DIR | --export-bench DIR) [--cases N] ...
    viva app [--host 127.0.0.1] [--port 7860] [--model DIR] [--share]

`build_parser()` assembles one small `add_*_commands(subparsers)` function per command group; each command
sets `func`, a handler `(args) -> int` that imports what it needs lazily (so `viva --help` stays fast).
Errors a user can fix (`VivaUserError`, bad arguments) print ONE line `error: ...` to stderr and exit 2;
Ctrl-C exits 130 and SIGTERM 143, each with one line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from . import __version__
from .data.pair import ALL_CATEGORIES
from .errors import VivaUserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class UsageError(Exception):
    """A command-line syntax error found by argparse."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that cleanup (temporary folders) runs."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports errors as an exception (printed by `main` on one line) instead of exiting."""

    def error(self, message: str):
        raise UsageError(self.prog, message)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# viva data ------------------------------------------------------------------------------------------


def _whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid whole number: {text!r}") from None
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_data_commands(commands) -> None:
    """`viva data generate | info | show`."""
    data = commands.add_parser("data", help="generate, inspect and preview paired editing data")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    gen = sub.add_parser(
        "generate",
        help="generate edit pairs into webdataset tar shards",
        description="Generate edit pairs of the procedural world into DIR (shards + manifest.json). "
        "The output is byte-identical for the same seed and options, whatever --workers or --ray.",
    )
    gen.add_argument("--out", required=True, metavar="DIR", help="dataset folder to create")
    gen.add_argument("--num", required=True, type=_whole_number, metavar="N", help="number of pairs")
    gen.add_argument("--seed", type=_whole_number, default=0, metavar="S", help="dataset seed (default 0)")
    gen.add_argument("--workers", type=_whole_number, default=1, metavar="K", help="parallel processes (default 1)")
    gen.add_argument(
        "--categories",
        metavar="LIST",
        help=f"comma-separated categories (default: every primitive one) from: {', '.join(ALL_CATEGORIES)}",
    )
    gen.add_argument("--hybrid", action="store_true", help="also make hybrid (multi-clause) instructions")
    gen.add_argument("--split", choices=("train", "heldout", "any"), help="instruction phrasings to use")
    gen.add_argument("--frames", type=_whole_number, metavar="T", help="frames per clip")
    gen.add_argument("--size", type=_whole_number, metavar="PX", help="frame height and width in pixels")
    gen.add_argument("--image-fraction", type=_fraction, metavar="F", help="fraction of image (1-frame) pairs")
    gen.add_argument("--shard-size", type=_whole_number, default=256, metavar="N", help="pairs per shard (default 256)")
    ray = gen.add_mutually_exclusive_group()
    ray.add_argument("--ray", action="store_true", help="generate shards as tasks on a local Ray instance")
    ray.add_argument("--ray-address", metavar="ADDR", help="generate on an existing Ray cluster (e.g. auto)")
    gen.add_argument("--overwrite", action="store_true", help="replace DIR if it holds a dataset")
    gen.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    gen.set_defaults(func=cmd_data_generate)

    info = sub.add_parser("info", help="summarise a dataset's manifest")
    info.add_argument("dir", metavar="DIR", help="dataset folder")
    info.add_argument("--verify", action="store_true", help="also check every shard's sha256")
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    info.set_defaults(func=cmd_data_info)

    show = sub.add_parser("show", help="write a preview image (or GIF) of one pair")
    show.add_argument("dir", metavar="DIR", help="dataset folder")
    show.add_argument("--index", type=int, default=0, metavar="I", help="pair index (default 0)")
    show.add_argument("-o", "--output", metavar="PATH", help="output .png or .gif (default preview-INDEX.png)")
    show.add_argument("--gif", action="store_true", help="write an animated GIF")
    show.add_argument("--scale", type=_whole_number, default=3, help="upscaling factor (default 3)")
    show.set_defaults(func=cmd_data_show)


def _data_config(args):
    """DataConfig from the defaults and the options given on the command line."""
    import dataclasses

    from .data.generate import DataConfig

    changes: dict = {}
    if args.frames is not None:
        changes["num_frames"] = args.frames
    if args.size is not None:
        changes["height"] = changes["width"] = args.size
    if args.image_fraction is not None:
        changes["image_fraction"] = args.image_fraction
    if args.split is not None:
        changes["split"] = args.split
    try:
        return dataclasses.replace(DataConfig(), **changes)
    except ValueError as e:
        raise VivaUserError(f"invalid generation options: {e}") from None


def cmd_data_generate(args) -> int:
    from .data.pair import HYBRID
    from .data.shards import check_categories, generate_dataset

    config = _data_config(args)
    categories = check_categories(args.categories)
    if args.hybrid:
        base = categories if categories is not None else list(config.categories)
        categories = base + [HYBRID] if HYBRID not in base else base
    manifest = generate_dataset(
        args.out,
        num=args.num,
        seed=args.seed,
        workers=args.workers,
        categories=categories,
        config=config,
        shard_size=args.shard_size,
        ray=args.ray,
        ray_address=args.ray_address,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"wrote {manifest['num']} pairs in {len(manifest['shards'])} shards to {args.out}")
    return 0


def summarize_manifest(manifest: dict, root: str) -> str:
    """A human-readable summary of a dataset manifest."""
    config = manifest.get("config", {})
    size = sum(s["bytes"] for s in manifest["shards"])
    lines = [
        f"dataset:    {root}",
        f"generator:  v{manifest.get('generator_version')} (viva {manifest.get('viva_version')}), "
        f"seed {manifest.get('seed')}",
        f"pairs:      {manifest['num']} in {len(manifest['shards'])} shards of up to {manifest['shard_size']} "
        f"({size / 2**20:.1f} MiB)",
        f"clips:      {config.get('num_frames', '?')} frames of "
        f"{config.get('height', '?')}x{config.get('width', '?')}; "
        f"{manifest.get('videos', 0)} videos, {manifest.get('images', 0)} images",
        f"held out:   {manifest.get('held_out', 0)} pairs with held-out phrasings",
        f"categories: {', '.join(manifest.get('categories') or []) or '(all)'}",
    ]
    counts = manifest.get("counts", {})
    width = max((len(c) for c in counts), default=0)
    lines += [f"  {name:<{width}}  {n:>7}" for name, n in counts.items()]
    return "\n".join(lines)


def cmd_data_info(args) -> int:
    import json

    from .data.format import load_manifest

    manifest = load_manifest(args.dir, verify=args.verify)
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        print(summarize_manifest(manifest, args.dir))
        if args.verify:
            print(f"checksums:  all {len(manifest['shards'])} shards OK")
    return 0


def cmd_data_show(args) -> int:
    from pathlib import Path

    from .data.format import ShardReader

    output = args.output or f"preview-{args.index:08d}.{'gif' if args.gif else 'png'}"
    suffix = Path(output).suffix.lower()
    if args.gif and suffix != ".gif":
        raise VivaUserError(f"--gif writes an animation: give an output name ending in .gif, not {output}")
    if suffix not in (".png", ".gif"):
        raise VivaUserError(f"cannot write preview {output}: use a .png (grid) or .gif (animation) file name")
    reader = ShardReader(args.dir)
    if not 0 <= args.index < len(reader):
        raise VivaUserError(f"--index {args.index} is out of range: {args.dir} holds pairs 0..{len(reader) - 1}")

    from .data.preview import save_preview

    pair = reader.pair_at(args.index)
    path = save_preview(pair, output, scale=args.scale)
    print(f"wrote {path}")
    return 0


# viva edit ------------------------------------------------------------------------------------------


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100, got {text}")
    return value


def add_edit_command(commands) -> None:
    """`viva edit INPUT -i INSTRUCTION -o OUT [--ref IMG] [--preview PNG] [--model DIR] ...`."""
    edit = commands.add_parser(
        "edit",
        help="edit a video (or image) from an instruction",
        description="Edit INPUT (a video file, a folder of frames or an image) as the instruction says, "
        "optionally showing a reference image. The input is fitted to the model's size and length (each "
        "change is printed). Defaults for --steps / --guidance / --video-guidance come from the model.",
    )
    edit.add_argument("input", metavar="INPUT", help="video file, frame folder or image to edit")
    edit.add_argument("-i", "--instruction", required=True, metavar="TEXT", help="what to change")
    edit.add_argument("-o", "--output", required=True, metavar="OUT",
                      help="edited video (.mp4 .mov .mkv .webm .avi .gif) or, for an image input, an image "
                      "(.png .jpg .webp)")
    edit.add_argument("--ref", metavar="IMG",
                      help="reference image (PNG, JPEG, WebP) to take the look of new content from")
    edit.add_argument("--preview", metavar="PNG",
                      help="also write a source | result (| reference) grid, one row per frame")
    edit.add_argument("--model", metavar="DIR",
                      help="model folder (from training or save_pretrained; default: the bundled default model)")
    edit.add_argument("--preset", metavar="NAME",
                      help="full-scale backbone preset instead of --model: wan-t2v, lucy-edit, wan-qwen or hunyuan-llava "
                      "(docs/backbones.md)")
    edit.add_argument("--weights", metavar="DIR", help="with --preset: the LOCAL pretrained weights folder")
    edit.add_argument("--vlm", metavar="DIR",
                      help="with --preset wan-qwen / hunyuan-llava: the LOCAL VLM folder (default WEIGHTS/vlm)")
    edit.add_argument("--offload", action="store_true",
                      help="keep the VAE and instructor in CPU memory, on --device only while they run "
                      "(big backbones on a small GPU; slower)")
    edit.add_argument("--size", metavar="WxHxT",
                      help="with --preset: the clip size to edit at, e.g. 832x480x81 (T = 1 + 4k; default: the preset's)")
    edit.add_argument("--steps", type=_whole_number, metavar="N", help="denoising steps (model default: 20)")
    edit.add_argument("--guidance", type=_scale, metavar="G", help="instruction guidance scale (model default: 3.0)")
    edit.add_argument("--video-guidance", type=_scale, metavar="G",
                      help="source-video guidance scale (model default: 1.5)")
    edit.add_argument("--seed", type=_whole_number, default=0, metavar="S", help="noise seed (default 0)")
    edit.add_argument("--fps", type=_positive_number, metavar="F",
                      help="sample the input at F frames per second and write the result at F "
                      "(default: frames spread evenly over the whole clip, keeping its duration)")
    _add_compute_options(edit)
    edit.set_defaults(func=cmd_edit)


def _add_compute_options(parser) -> None:
    """--precision, --device, --threads, --no-progress: how `viva edit` / `viva demo` run the model."""
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="compute precision (bfloat16: autocast, faster on CPUs with bf16 support)")
    parser.add_argument("--device", default="cpu", metavar="DEV", help="torch device (default cpu)")
    parser.add_argument("--threads", type=_whole_number, metavar="N",
                        help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _compute_device(args):
    """The torch device of --device (checked), after applying --threads."""
    import torch

    from .pipeline import parse_device

    device = parse_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise VivaUserError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return device


def _check_output(path: str, formats, what: str, hint: str) -> None:
    """Fail before any work when `path` cannot be written: unknown extension, missing or read-only folder."""
    import os
    from pathlib import Path

    target = Path(path)
    if target.suffix.lower() not in formats:
        raise VivaUserError(
            f"cannot write {what} {path}: unknown extension {target.suffix or '(none)'!r}; use one of {hint}"
        )
    if target.is_dir():
        raise VivaUserError(f"cannot write {what} {path}: it is a folder; give a file name")
    parent = target.parent
    if not parent.is_dir():
        raise VivaUserError(f"cannot write {what} {path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VivaUserError(f"cannot write {what} {path}: folder {parent} is not writable; check its permissions")


def _preset_args(args):
    """`viva edit --preset NAME --weights DIR [--size WxHxT]` -> None (no preset) or (name, (H, W, T)),
    after cheap checks of the weights folder."""
    if args.preset is None:
        if args.weights is not None or args.size is not None or args.vlm is not None:
            raise VivaUserError("--weights, --vlm and --size go with --preset NAME; for a viva model folder use --model DIR")
        return None
    from .models.backbones import PRESET_SIZES, check_preset_folder

    if args.model is not None:
        raise VivaUserError("give --model DIR or --preset NAME --weights DIR, not both")
    if args.weights is None:
        raise VivaUserError(f"--preset {args.preset} needs --weights DIR, the local pretrained weights folder")
    check_preset_folder(args.preset, args.weights, args.vlm)
    height, width, frames = PRESET_SIZES[args.preset]
    if args.size is not None:
        parts = args.size.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise VivaUserError(f"--size must be WIDTHxHEIGHTxFRAMES, e.g. 832x480x81, got {args.size!r}")
        width, height, frames = (int(p) for p in parts)
    if height % 16 or width % 16 or (frames - 1) % 4:
        raise VivaUserError(f"--size {width}x{height}x{frames}: width and height must be multiples of 16 and frames 1 + 4k")
    return args.preset, (height, width, frames)


def cmd_edit(args) -> int:
    from pathlib import Path

    from .io import IMAGE_FORMATS, VIDEO_FORMATS, write_image, write_video
    from .pipeline import (
        VivaPipeline,
        check_instruction,
        check_model_folder,
        default_model_path,
        load_reference_input,
        load_video_input,
    )

    # 1. Everything a user can get wrong, before loading the model or writing anything.
    instruction = check_instruction(args.instruction)
    kinds = ", ".join([*VIDEO_FORMATS, *IMAGE_FORMATS])
    _check_output(args.output, {**VIDEO_FORMATS, **IMAGE_FORMATS}, "output", kinds)
    if args.preview is not None:
        _check_output(args.preview, IMAGE_FORMATS, "preview", ", ".join(IMAGE_FORMATS))
        if Path(args.preview).resolve() == Path(args.output).resolve():
            raise VivaUserError("--preview and -o name the same file; give the preview its own name")
    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise VivaUserError(f"--steps must be from 1 to 1000, got {args.steps}")
    if args.seed < 0:
        raise VivaUserError(f"--seed must be >= 0, got {args.seed}")
    preset = _preset_args(args)
    if preset is None:
        model = args.model if args.model is not None else default_model_path()
        if model is None:
            raise VivaUserError("no --model given and no bundled model; pass --model DIR")
        if args.model is None:
            print(f"using the bundled default model ({model}); --model DIR for another")
        index = check_model_folder(model)
    else:
        index = {"editor": {"height": preset[1][0], "width": preset[1][1], "num_frames": preset[1][2]}}
    device = _compute_device(args)

    # 2. Read and fit the inputs to the model's size (all of a corrupt or truncated file is decoded here).
    from .models.editor import EditorConfig

    size = EditorConfig.from_dict(index.get("editor", {}))
    frames, fps, notes = load_video_input(args.input, size.height, size.width, size.num_frames, args.fps)
    as_image = Path(args.output).suffix.lower() in IMAGE_FORMATS
    if as_image and len(frames) != 1:
        raise VivaUserError(
            f"{args.input} is a video but {args.output} is an image; use a video extension "
            f"({', '.join(VIDEO_FORMATS)})"
        )
    reference = None
    if args.ref is not None:
        try:
            reference, ref_notes = load_reference_input(args.ref, size.height, size.width)
        except VivaUserError as e:
            raise VivaUserError(f"--ref: {e}") from None
        notes += ref_notes

    # 3. Load the model and edit.
    placed = None if args.offload else device  # --offload: loaded in CPU memory, then placed part by part
    if preset is None:
        pipe = VivaPipeline.from_pretrained(model, device=placed, precision=args.precision)
    else:
        from .models.backbones import load_preset

        height, width, length = preset[1]
        editor = load_preset(args.preset, args.weights, height=height, width=width, num_frames=length, device=placed,
                             vlm=args.vlm)
        pipe = VivaPipeline(editor, precision=args.precision)
    if args.offload:
        pipe.enable_model_cpu_offload(device)
    result = pipe(
        frames,
        instruction,
        reference_image=reference,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        video_guidance_scale=args.video_guidance,
        seed=args.seed,
        source_fps=fps,
        progress=not args.no_progress,
    )
    for note in dict.fromkeys(notes + result.notes):  # the fitted arrays repeat none but the image note
        print(f"note: {note}")

    # 4. Write (each file atomically; if the preview fails, the new output is removed again).
    output = Path(args.output)
    existed = output.exists()
    if as_image:
        write_image(output, result.frames[0])
    else:
        write_video(output, result.frames, fps=result.fps)
    try:
        if args.preview is not None:
            write_image(args.preview, result.preview())
    except BaseException:
        if not existed:
            output.unlink(missing_ok=True)
        raise
    T, H, W = result.frames.shape[:3]
    what = "image" if as_image else f"{T} frames at {result.fps:.3g} fps"
    print(
        f"wrote {output} ({what}, {W}x{H}; steps {result.num_inference_steps}, guidance {result.guidance_scale:g}, "
        f"video guidance {result.video_guidance_scale:g}, seed {result.seed})"
    )
    if args.preview is not None:
        print(f"wrote {args.preview} (preview)")
    return 0


# viva demo ------------------------------------------------------------------------------------------


def add_demo_command(commands) -> None:
    """`viva demo [--out DIR] [--model DIR] ...`: edit the bundled sample clips (viva.demo)."""
    demo = commands.add_parser(
        "demo",
        help="edit the bundled sample clips with the bundled model; write the videos and a preview",
        description="Edit each bundled sample clip (a recolor, a remove, a reference-based add, a replace "
        "and a hybrid instruction) with the bundled default model (or --model), write OUT/<sample>.mp4 and "
        "OUT/preview.png (source above edited, per sample), and print the world verifier's verdict on each.",
    )
    demo.add_argument("--out", default="outputs/demo", metavar="DIR", help="output folder (default outputs/demo)")
    demo.add_argument("--model", metavar="DIR", help="model folder (default: the bundled default model)")
    demo.add_argument("--steps", type=_whole_number, metavar="N", help="denoising steps (default: the model's)")
    demo.add_argument("--seed", type=_whole_number, default=0, metavar="S", help="noise seed (default 0)")
    _add_compute_options(demo)
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from .demo import cmd_demo as run

    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise VivaUserError(f"--steps must be from 1 to 1000, got {args.steps}")
    return run(args, _compute_device(args))


# viva train -----------------------------------------------------------------------------------------
# One sub-subcommand per trainer (`viva train vae | instructor | probe | ...`): each `add_train_*(sub)`
# below adds its parser to the group; add a new trainer by appending its function to TRAIN_COMMANDS.


def add_run_arguments(parser, what: str, default_out: str) -> None:
    """What every trainer takes: --config, --out, --device, --stop-at, --no-progress, KEY=VALUE overrides."""
    parser.add_argument("--config", metavar="YAML", help=f"{what} config (default: the built-in defaults, as in configs/)")
    parser.add_argument("--out", default=default_out, metavar="RUN",
                        help=f"run folder (default {default_out}); a run that has checkpoints there is resumed")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="overrides train.device (auto: CUDA when available)")
    parser.add_argument("--stop-at", type=_whole_number, metavar="STEP",
                        help="stop after STEP steps with a checkpoint (run again to resume)")
    parser.add_argument("--export", action="store_true",
                        help="with --stop-at: also evaluate and export the model of that step (a partial model)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=100 optim.lr=1e-3")


def _run_trainer(args, config_class, run_class) -> int:
    from .train.config import load_config

    overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
    config = load_config(config_class, args.config, overrides)
    if args.stop_at is not None and args.stop_at < 1:
        raise VivaUserError(f"--stop-at must be at least 1, got {args.stop_at}")
    if args.export and args.stop_at is None:
        raise VivaUserError("--export needs --stop-at STEP (the step whose weights to export)")
    return run_class(config, args.out, stop_at=args.stop_at, progress=not args.no_progress, export=args.export).run()


def add_train_vae(sub) -> None:
    vae = sub.add_parser("vae", help="train the mini VAE on world clips",
                         description="Train the MiniVAE on world frames (generated on the fly, or data.root), fit its "
                         "latent scaling and write RUN/vae/ and RUN/eval.json (held-out PSNR).")
    add_run_arguments(vae, "VAE training", "runs/vae")
    vae.set_defaults(func=cmd_train_vae)


def cmd_train_vae(args) -> int:
    from .train.vae import VAETrainConfig, VAETrainingRun

    return _run_trainer(args, VAETrainConfig, VAETrainingRun)


def add_train_instructor(sub) -> None:
    inst = sub.add_parser("instructor", help="vision-language pre-training of the mini VLM instructor",
                          description="Teach the instructor's ViT + projector to ground instructions in the world "
                          "(grounding heads, discarded after training); write RUN/instructor/ and RUN/eval.json "
                          "(held-out head accuracies and the grounding probe).")
    add_run_arguments(inst, "instructor pre-training", "runs/instructor")
    inst.set_defaults(func=cmd_train_instructor)


def cmd_train_instructor(args) -> int:
    from .train.instructor import InstructorTrainConfig, InstructorTrainingRun

    return _run_trainer(args, InstructorTrainConfig, InstructorTrainingRun)


def add_train_probe(sub) -> None:
    probe = sub.add_parser("probe", help="linear grounding probe of an instructor's tokens",
                           description="Fit linear probes on an instructor's mean-pooled tokens to recover the color and "
                           "3x3 cell of the sprite an instruction refers to by shape, size or position only; held-out "
                           "accuracy, with the text-only instructor as the baseline.")
    probe.add_argument("--instructor", required=True, metavar="DIR", help="instructor folder (e.g. RUN/instructor)")
    probe.add_argument("--num-train", type=_whole_number, default=2000, metavar="N", help="probe training examples (default 2000)")
    probe.add_argument("--num-test", type=_whole_number, default=1000, metavar="N", help="held-out examples (default 1000)")
    probe.add_argument("--seed", type=_whole_number, default=2_000_003, metavar="S", help="examples' seed (test: S+1)")
    probe.add_argument("--no-baseline", action="store_true", help="skip the text-only instructor baseline")
    probe.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run (default auto)")
    probe.add_argument("--workers", type=int, default=-1, metavar="K", help="data workers (default: automatic)")
    probe.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    probe.set_defaults(func=cmd_train_probe)


def cmd_train_probe(args) -> int:
    from .train.probe import run_probe_command

    return run_probe_command(args)


def add_train_sft(sub) -> None:
    sft = sub.add_parser("sft", help="supervised fine-tuning of the editor (refiner + DiT)",
                         description="Train the editor's token refiner and DiT with the masked flow-matching loss on "
                         "world pairs (images with probability data.image_prob, videos otherwise), the VAE and the "
                         "instructor frozen; previews in RUN/samples/, the EMA model in RUN/model/.")
    add_run_arguments(sft, "SFT", "runs/sft")
    sft.set_defaults(func=cmd_train_sft)


def cmd_train_sft(args) -> int:
    from .train.sft import SFTConfig, SFTTrainingRun

    return _run_trainer(args, SFTConfig, SFTTrainingRun)


def add_train_grpo(sub) -> None:
    grpo = sub.add_parser("grpo", help="Edit-GRPO: reward-optimized LoRA post-training of the editor",
                          description="Sample groups of edits per prompt with the Flow-SDE, score them with the world "
                          "rewards (verifier, preservation, quality) and train a LoRA on the DiT with PPO-clip + KL to "
                          "the LoRA-free model; held-out evaluation every eval.every steps; RUN/model/ holds the model "
                          "with the LoRA merged (see configs/grpo_mini.yaml).")
    grpo.add_argument("--init", metavar="MODEL_DIR", help="model folder to start from (e.g. runs/sft/model; "
                      "overrides model.init)")
    grpo.add_argument("--prompts", metavar="SPEC", help="world[:key=value,...] (e.g. world:categories=add,color,"
                      "hybrid_fraction=0.3,split=heldout) or a dataset folder (overrides prompts.*)")
    add_run_arguments(grpo, "Edit-GRPO", "runs/grpo")
    grpo.set_defaults(func=cmd_train_grpo)


def cmd_train_grpo(args) -> int:
    from .train.grpo import GRPOConfig, GRPOTrainingRun, grpo_overrides

    args.overrides = grpo_overrides(args.init, args.prompts) + list(args.overrides)
    return _run_trainer(args, GRPOConfig, GRPOTrainingRun)


TRAIN_COMMANDS = [add_train_vae, add_train_instructor, add_train_probe, add_train_sft, add_train_grpo]


def add_train_commands(commands) -> None:
    """`viva train vae | instructor | probe | ...` (one parser per entry of TRAIN_COMMANDS)."""
    train = commands.add_parser("train", help="train and probe the mini components")
    sub = train.add_subparsers(dest="train_command", metavar="TRAINER", required=True)
    for add in TRAIN_COMMANDS:
        add(sub)


# viva eval ------------------------------------------------------------------------------------------


def add_eval_command(commands) -> None:
    """`viva eval (--model DIR | --baseline NAME | --outputs DIR | --export-bench DIR) [--cases N] ...`."""
    ev = commands.add_parser(
        "eval",
        help="score a model, a baseline or another system's outputs on the world bench",
        description="Edit every case of the world bench (or read another system's results), score it (verifier "
        "pass rate, preservation, fidelity, temporal stability, quality; see docs/metrics.md) and write "
        "OUT/results.json, results.md and report.html. An interrupted run resumes from OUT/cases.jsonl.",
    )
    what = ev.add_mutually_exclusive_group()
    what.add_argument("--model", metavar="DIR", help="model folder (default: the bundled model)")
    what.add_argument("--baseline", choices=("identity", "ground_truth"), help="score a baseline editor")
    what.add_argument("--outputs", metavar="DIR", help="score results another system wrote: DIR/<case id>.mp4 "
                      "(or an image, or a folder of frames) per case")
    what.add_argument("--export-bench", metavar="DIR", help="write the bench inputs (sources, references, "
                      "manifest.jsonl) for another system, and stop")
    ev.add_argument("--with-targets", action="store_true", help="with --export-bench: also the ground-truth targets")
    ev.add_argument("--bench", choices=("world",), default="world", help="which bench (default world)")
    ev.add_argument("--cases", type=_whole_number, default=50, metavar="N", help="cases per category (default 50)")
    ev.add_argument("--categories", metavar="LIST", help="comma-separated bench categories (default: all)")
    ev.add_argument("--steps", type=_whole_number, metavar="N", help="denoising steps (model default: 20)")
    ev.add_argument("--guidance", type=_scale, metavar="G", help="instruction guidance scale (model default)")
    ev.add_argument("--video-guidance", type=_scale, metavar="G", help="source-video guidance scale (model default)")
    ev.add_argument("--seed", type=_whole_number, default=0, metavar="S", help="run seed; each case's noise seed "
                    "derives from it and the case id (default 0)")
    ev.add_argument("--batch-size", type=_whole_number, default=8, metavar="B", help="cases edited at once (default 8)")
    ev.add_argument("--out", metavar="DIR", help="results folder (default eval/<editor name>)")
    ev.add_argument("--overwrite", action="store_true", help="start again in a folder that holds other results")
    ev.add_argument("--precision", choices=("float32", "bfloat16"), default="float32", help="model compute precision")
    ev.add_argument("--device", default="cpu", metavar="DEV", help="torch device (default cpu)")
    ev.add_argument("--threads", type=_whole_number, metavar="N", help="CPU threads for torch")
    ev.add_argument("--no-previews", action="store_true", help="skip the per-case preview PNGs")
    ev.add_argument("--save-outputs", action="store_true", help="keep every output clip as PNG frames in "
                    "OUT/outputs/<case id>/ (for `viva judge --outputs`, or to score again with --outputs)")
    ev.add_argument("--report-png", metavar="FILE", help="also render report.html in headless Chromium to this PNG "
                    "(the system's chromium via Playwright; nothing is downloaded; at most the top 16000 px)")
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ev.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from .eval.command import run_eval_command

    return run_eval_command(args)


# viva ablate ----------------------------------------------------------------------------------------


def add_ablate_command(commands) -> None:
    """`viva ablate --budget SAMPLES --out DIR [...]`: the Table 2 ladder (see viva.eval.ablate)."""
    ab = commands.add_parser(
        "ablate",
        help="train and score the paper's ablation ladder at mini scale with equal SFT compute",
        description="Train vanilla (text-only) -> + VLM instructor -> + masked loss -> + image mix with the same "
        "number of SFT samples each (--budget), then Edit-GRPO from the last; score every model on the world "
        "bench and write OUT/ablation.md (beside the paper's Table 2) and OUT/ablation.json. Resumes.",
    )
    ab.add_argument("--budget", required=True, type=_whole_number, metavar="SAMPLES",
                    help="SFT training samples per rung (steps = SAMPLES // train.batch_size)")
    ab.add_argument("--out", default="runs/ablate", metavar="DIR", help="output folder (default runs/ablate)")
    ab.add_argument("--sft-config", metavar="YAML", help="SFT config of every rung (default: built-in, as in configs/)")
    ab.add_argument("--grpo-config", metavar="YAML", help="Edit-GRPO config (default: built-in)")
    ab.add_argument("--sft", action="append", default=[], metavar="KEY=VALUE", help="SFT override (repeatable)")
    ab.add_argument("--grpo", action="append", default=[], metavar="KEY=VALUE", help="Edit-GRPO override (repeatable)")
    ab.add_argument("--grpo-steps", type=_whole_number, default=300, metavar="N", help="Edit-GRPO steps (default 300)")
    ab.add_argument("--rungs", metavar="LIST", help="comma-separated rungs (default: vanilla,vlm,masked,image_mix,grpo)")
    ab.add_argument("--cases", type=_whole_number, default=50, metavar="N", help="bench cases per category (default 50)")
    ab.add_argument("--categories", metavar="LIST", help="bench categories (default: all)")
    ab.add_argument("--eval-steps", type=_whole_number, metavar="N", help="denoising steps when scoring (default: the model's)")
    ab.add_argument("--seed", type=_whole_number, default=0, metavar="S", help="eval seed (default 0)")
    ab.add_argument("--no-progress", action="store_true", help="hide progress bars")
    ab.set_defaults(func=cmd_ablate)


def cmd_ablate(args) -> int:
    import os

    from .eval.ablate import ABLATION_TABLE, ablation_table, run_ablation

    ablation = run_ablation(args.out, args.budget, sft_config=args.sft_config, grpo_config=args.grpo_config,
                            sft_overrides=args.sft, grpo_overrides=args.grpo, grpo_steps=args.grpo_steps,
                            rungs=args.rungs, cases=args.cases, categories=args.categories, eval_steps=args.eval_steps,
                            seed=args.seed, progress=not args.no_progress)
    print(ablation_table(ablation), end="")
    print(f"wrote {os.path.join(args.out, ABLATION_TABLE)}")
    return 0


# viva judge -----------------------------------------------------------------------------------------


def add_judge_command(commands) -> None:
    """`viva judge MANIFEST --url URL --model NAME [--outputs DIR] [--out FILE] ...`: the VLM judge."""
    judge = commands.add_parser(
        "judge",
        help="score edited videos with a VLM judge behind an OpenAI-compatible endpoint (VIE-Bench style)",
        description="Ask a vision-language model (any OpenAI-compatible chat-completions server, e.g. a local "
        "vLLM) to score every case of a JSONL manifest 0-10 for instruction following, preservation, quality "
        "(and subject similarity for reference edits); see docs/judge.md. Results go to OUT (JSONL, one record "
        "per case) and a summary beside it (<OUT stem>.summary.json); an interrupted run resumes, asking only for the cases not yet judged. "
        "World bench: `viva eval --export-bench B` writes B/judge.jsonl; judge another system's edits with "
        "`viva judge B/judge.jsonl --outputs DIR`, or a model's with `viva eval --save-outputs` and "
        "`--outputs EVAL_OUT/outputs`.",
    )
    judge.add_argument("manifest", metavar="MANIFEST", help="JSONL: one case per line (video, instruction, "
                       "edited, reference, category, id, meta)")
    judge.add_argument("--url", required=True, metavar="URL", help="API root, e.g. http://localhost:8000/v1")
    judge.add_argument("--model", required=True, metavar="NAME", help="the model name the server serves")
    judge.add_argument("--key-env", metavar="VAR", help="environment variable holding the API key (default: none)")
    judge.add_argument("--outputs", metavar="DIR", help="folder of edited clips (<id>.mp4, an image, or <id>/ "
                       "frames) for cases without \"edited\"")
    judge.add_argument("--out", metavar="FILE", help="results JSONL (default: MANIFEST's folder/<stem>.judged.jsonl)")
    judge.add_argument("--frames", type=_whole_number, default=8, metavar="N", help="frames sampled per video (default 8)")
    judge.add_argument("--max-side", type=_whole_number, default=512, metavar="PX", help="longest frame side sent (default 512)")
    judge.add_argument("--timeout", type=_positive_number, default=120.0, metavar="S", help="seconds per request (default 120)")
    judge.add_argument("--retries", type=_whole_number, default=3, metavar="N", help="retries of a failed request (default 3)")
    judge.add_argument("--workers", type=_whole_number, default=1, metavar="N", help="concurrent requests (default 1)")
    judge.add_argument("--skip-errors", action="store_true", help="record a case that fails and go on (it is asked "
                       "again next run) instead of stopping")
    judge.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    judge.set_defaults(func=cmd_judge)


def cmd_judge(args) -> int:
    from .eval.command import run_judge_command

    return run_judge_command(args)


# viva app -------------------------------------------------------------------------------------------


def add_app_command(commands) -> None:
    """`viva app [--host 127.0.0.1] [--port 7860] [--model DIR] [--share] [--device DEV]`: the web page."""
    app = commands.add_parser(
        "app",
        help="serve a web page for editing videos (Gradio)",
        description="Serve a page where you upload a video (or pick a bundled sample), type an instruction, "
        "optionally add a reference image, and see the result beside the source. Edits run one at a time in "
        "a queue. Nothing is fetched from the internet unless --share is given.",
    )
    app.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                     help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: the network)")
    app.add_argument("--port", type=_whole_number, default=7860, metavar="PORT", help="port (default 7860)")
    app.add_argument("--model", metavar="DIR", help="model folder (default: the bundled model)")
    app.add_argument("--share", action="store_true",
                     help="also open a public *.gradio.live link through Gradio's tunnel (off by default; "
                     "needs the internet, and anyone with the link can use the app)")
    app.add_argument("--device", default="cpu", metavar="DEV", help="torch device (default cpu)")
    app.set_defaults(func=cmd_app)


def cmd_app(args) -> int:
    from .app import run_app_command

    return run_app_command(args)


# The parser -----------------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="viva",
        description="VIVA: instruction-based video editing with a VLM instructor and Edit-GRPO.",
    )
    parser.add_argument("--version", action="version", version=f"viva {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_data_commands(commands)
    add_train_commands(commands)
    add_edit_command(commands)
    add_demo_command(commands)
    add_eval_command(commands)
    add_judge_command(commands)
    add_ablate_command(commands)
    add_app_command(commands)
    return parser


def _on_sigterm(signum, frame):
    raise Terminated()


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, except that a trainer's KEY=VALUE overrides may come after its options too
    (`viva train vae --out R init=D --no-progress optim.lr=1e-4`: argparse alone stops at the option)."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 130 interrupted, 143 terminated)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        parser = build_parser()
        args = _parse(parser, argv)
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"error: {_one_line(e)} (see: {e.prog} --help)", file=sys.stderr)
        return EXIT_USER_ERROR
    except VivaUserError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:  # e.g. `viva data info DIR | head -1`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
