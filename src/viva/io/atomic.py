"""Atomic output: write next to the target, then rename over it (files and whole folders)."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from viva.errors import VivaUserError


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path in `path`'s folder; on success rename it to `path`.

    On any exception the temporary file is deleted and an existing file at `path` is left untouched.
    The temporary name starts with a dot, so frame-folder readers skip it.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise VivaUserError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise VivaUserError(f"cannot write {path}: it is a folder; give a file name")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # O_EXCL: never clobber a file we did not create; mode 0o666 lets the umask decide permissions.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise VivaUserError(f"cannot write {path}: {e.strerror}; check the folder's permissions") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def replace_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the finished folder `tmp` to `target` (same parent folder), replacing a folder already there:
    the old one is first renamed aside, so `target` is at every moment either the old or the new folder."""
    tmp, target = Path(tmp), Path(target)
    if target.exists():
        old = target.parent / f".{target.name}.{secrets.token_hex(4)}.old"
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target
