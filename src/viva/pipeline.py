"""`VivaPipeline`: load an editor from a model folder and edit videos with it.

A model folder (HF-style, one subfolder per component, safetensors only):

    MODEL/model_index.json   {"_class_name": "VivaPipeline", "vae": "MiniVAE", "instructor": ..., "editor": {...}}
    MODEL/vae/               config.json + model.safetensors
    MODEL/instructor/        config.json + model.safetensors
    MODEL/refiner/           config.json + model.safetensors
    MODEL/denoiser/          config.json + model.safetensors

Component classes are looked up in a fixed registry (never imported by name from the file), so loading a
folder cannot run arbitrary code.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from viva.errors import VivaUserError

INDEX_NAME = "model_index.json"
COMPONENTS = ("vae", "instructor", "refiner", "denoiser")


def component_registry() -> dict[str, type]:
    """Class name -> class for every component a model folder may name."""
    from viva.models.dit import MiniDiT
    from viva.models.instructor import MiniVLMInstructor, TextOnlyInstructor
    from viva.models.refiner import MiniTokenRefiner
    from viva.models.vae import MiniVAE

    return {cls.__name__: cls for cls in (MiniVAE, MiniVLMInstructor, TextOnlyInstructor, MiniTokenRefiner, MiniDiT)}


def save_editor(editor, directory: str | os.PathLike) -> Path:
    """Write `editor` (a VivaEditor) as a model folder, atomically (temp folder, then rename)."""
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise VivaUserError(f"cannot save model to {target}: it is a file; give a folder path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        index = {"_class_name": "VivaPipeline", "editor": editor.config.to_dict()}
        for name in COMPONENTS:
            module = getattr(editor, name)
            module.save_pretrained(tmp / name)
            index[name] = type(module).__name__
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        if target.exists():
            old = target.parent / f".{target.name}.{secrets.token_hex(4)}.old"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_editor(directory: str | os.PathLike, device=None):
    """Build a VivaEditor from a model folder written by `save_editor` (eval mode)."""
    from viva.models.editor import EditorConfig, VivaEditor

    folder = Path(directory)
    index_path = folder / INDEX_NAME
    if not index_path.is_file():
        raise VivaUserError(
            f"model folder {folder} has no {INDEX_NAME}; pass a folder written by viva (e.g. a run's model/ folder)"
        )
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VivaUserError(f"{index_path} is not valid JSON ({e}); re-export the model") from None
    registry = component_registry()
    parts = {}
    for name in COMPONENTS:
        class_name = index.get(name)
        if class_name not in registry:
            raise VivaUserError(
                f"{index_path} names {class_name!r} for {name}; known components: {', '.join(sorted(registry))}"
            )
        parts[name] = registry[class_name].from_pretrained(folder / name)
    editor = VivaEditor(config=EditorConfig.from_dict(index.get("editor", {})), **parts)
    if device is not None:
        editor.to(device)
    return editor.eval()
