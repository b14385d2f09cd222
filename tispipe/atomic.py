"""Atomic writes: a file or a folder appears whole under its name or not at all (temporary sibling, fsync, rename)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`.

    A crash before the rename leaves `path` untouched (old content or absent), so a reader
    never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the usual permissions for a new file
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def fsync_dir(path: Path) -> None:
    """Make a folder's renames durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_folder(final: str | Path, prefix: str | None = None) -> Iterator[Path]:
    """Yield an empty hidden folder next to `final`; on success it replaces `final` whole.

    A folder named `final` is therefore always complete: the old one (if any) is moved aside before
    the rename and deleted after it, so a kill at any moment leaves either the old folder or the new
    one under that name, never a half-deleted or half-written mix. Leftovers of a kill are hidden
    folders starting with `prefix` (default `.NAME.`), which their owners clean up.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        fsync_dir(tmp)
        old = tmp.with_name(tmp.name + ".old")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_files(folder: str | Path, prefix: str = ".staged-") -> Iterator[Path]:
    """Yield an empty hidden folder inside `folder`; on success each file in it is moved into `folder`.

    For outputs that share their folder with other files (a trained model next to its metrics):
    each file appears whole, old files of the same name are replaced.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    try:
        yield tmp
        for path in tmp.iterdir():
            os.replace(path, folder / path.name)
        fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
