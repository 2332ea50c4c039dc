"""The `viva` command line.

    viva data generate --out DIR --num N [--workers K] [--seed S] [--categories add,remove] ...
    viva data info DIR
    viva data show DIR --index I -o preview.png

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


# The parser -----------------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="viva",
        description="VIVA: instruction-based video editing with a VLM instructor and Edit-GRPO.",
    )
    parser.add_argument("--version", action="version", version=f"viva {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_data_commands(commands)
    return parser


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 130 interrupted, 143 terminated)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
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
