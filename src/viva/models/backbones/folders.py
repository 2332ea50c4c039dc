"""Checks of LOCAL pretrained weights folders (diffusers / transformers layouts), before anything is built.

Every problem a user can cause (folder missing, a component subfolder missing, no config.json, weights
only in pickle formats, a sharded checkpoint missing shards) ends as one `VivaUserError` line naming the
folder and the fix. Nothing is ever downloaded: loaders are called with `local_files_only=True` and
`use_safetensors=True`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from viva.errors import VivaUserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def check_folder(path: str | os.PathLike, what: str) -> Path:
    """`path` must be an existing folder; returns it as a Path."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise VivaUserError(f"{what} weights folder {folder} {state}; pass a local folder holding the pretrained weights")
    return folder


def check_component(folder: Path, what: str, needs_weights: bool = True) -> Path:
    """A component folder (diffusers model / transformers model or tokenizer): config.json and, when
    `needs_weights`, complete safetensors weights (a single file or every shard an index names)."""
    if not folder.is_dir():
        raise VivaUserError(f"{what} weights folder {folder.parent} is incomplete: {folder.name}/ is missing")
    if not needs_weights:
        return folder
    if not (folder / "config.json").is_file():
        raise VivaUserError(f"{what} weights folder {folder.parent} is incomplete: {folder.name}/config.json is missing")
    try:
        json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VivaUserError(f"{folder / 'config.json'} is not valid JSON ({e}); re-download or re-save the weights") from None
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    singles = sorted(folder.glob("*.safetensors"))
    if indexes:
        try:
            shards = set(json.loads(indexes[0].read_text())["weight_map"].values())
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise VivaUserError(f"{indexes[0]} is not a valid safetensors index ({e}); re-download the weights") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise VivaUserError(
                f"{what} weights folder {folder} is incomplete: shard {missing[0]} is missing"
                f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; finish the download"
            )
        return folder
    if singles:
        return folder
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise VivaUserError(
            f"{what} weights in {folder} are only in pickle format ({pickles[0]}); viva loads safetensors only: "
            "convert them (e.g. save_pretrained with safe_serialization) or download the .safetensors files"
        )
    raise VivaUserError(f"{what} weights folder {folder.parent} is incomplete: {folder.name}/ has no .safetensors weights")
