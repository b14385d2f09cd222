"""Atomic writes: a file or a folder appears whole under its name or not at all (temporary sibling, fsync, rename)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
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
    os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp creates 0600 files: give the usual permissions of a new file
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as e:
        if e.filename is None:  # a failed write names no file: say which one it was
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
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


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def with_umask_modes(path: Path) -> None:
    """Give `path` (and all under it) the modes of a file or folder made under the process's umask: 0644 and
    0755 under umask 022. mkdtemp makes 0700 folders and safetensors writes 0600 files; what tispipe saves
    is readable by whoever may read the folder it is in, as files other programs write are."""
    umask = current_umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def staged_folder(final: str | Path, prefix: str | None = None) -> Iterator[Path]:
    """Yield an empty hidden folder next to `final`; on success it replaces `final` whole.

    A folder named `final` is therefore always complete: the old one (if any) is moved aside before
    the rename and deleted after it, so a kill at any moment leaves either the old folder or the new
    one under that name, never a half-deleted or half-written mix. Leftovers of a kill are hidden
    folders `PREFIX*.tmp` (default prefix `.NAME.`), removed by the next staging of the same name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = prefix or f".{final.name}."
    remove_leftovers(final.parent, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        with_umask_modes(tmp)
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
    remove_leftovers(folder, prefix, patterns=("*",))  # older versions staged without the .tmp suffix
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=folder))
    try:
        yield tmp
        with_umask_modes(tmp)
        for path in tmp.iterdir():
            os.replace(path, folder / path.name)
        fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_leftovers(folder: Path, prefix: str, patterns: tuple[str, ...] = ("*.tmp", "*.tmp.old")) -> None:
    """Delete the staging folders PREFIX + pattern in `folder` that a killed run left: with the output
    locked (`output_lock`), no live run stages there under the same prefix."""
    for pattern in patterns:
        for leftover in folder.glob(glob.escape(prefix) + pattern):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)


class SetAside:
    """Paths moved whole into one hidden holder folder, so that `--overwrite` loses nothing until the new run
    has started: `restore()` puts them back (removing what the new run wrote there), `discard()` deletes them.

    A holder left by a killed process is removed by `remove_stale_holders` on the next run.
    """

    pending: list[SetAside] = []  # set aside, neither restored nor discarded yet: `cleaned_up_on_failure` restores them

    def __init__(self, paths: list[Path], holder: Path):
        self.holder, self.moved = holder, []
        holder.mkdir(parents=True)
        SetAside.pending.append(self)
        for path in paths:
            if path.exists() or path.is_symlink():
                os.replace(path, holder / path.name)
                self.moved.append(path)
        fsync_dir(holder.parent)

    def restore(self) -> None:
        if self in SetAside.pending:
            SetAside.pending.remove(self)
        for path in self.moved:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            os.replace(self.holder / path.name, path)
        shutil.rmtree(self.holder, ignore_errors=True)

    def discard(self) -> None:
        if self in SetAside.pending:
            SetAside.pending.remove(self)
        shutil.rmtree(self.holder, ignore_errors=True)


HOLDER_SUFFIX = ".replaced"


def holder_for(path: Path) -> Path:
    """The hidden sibling that holds `path`'s old content while it is being replaced."""
    return path.parent / f".{path.name}.{os.getpid()}{HOLDER_SUFFIX}"


def remove_stale_holders(path: Path) -> None:
    """Delete holders of `path` left by processes that no longer run (a kill between set-aside and discard)."""
    for holder in path.parent.glob(f".{path.name}.*{HOLDER_SUFFIX}"):
        pid = holder.name[len(path.name) + 2 : -len(HOLDER_SUFFIX)]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(holder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(folder: str | Path, option: str = "--out") -> None:
    """Fail now, before any work, when files cannot be made in `folder` (made if absent): read-only, not a
    folder, no permission. Nothing is left behind: a folder made only for the probe is removed."""
    from tispipe.errors import TispipeError

    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise TispipeError(f"{option} {folder} is not writable ({e.strerror or e})", hint="choose a folder you can write to") from None
    finally:
        for made in missing:  # innermost first
            with contextlib.suppress(OSError):
                made.rmdir()


@contextlib.contextmanager
def cleaned_up_on_failure(out: str | Path, saved: Callable[[Path], bool], resume: str = "re-run the same command to resume") -> Iterator[None]:
    """A run into a new (absent or empty) OUT that fails before `saved(OUT)` holds (a checkpoint, a finished
    shard) takes OUT away again, so a failed first try leaves no half-made run; what can be resumed stays.
    What --overwrite set aside (`SetAside`) and the run had not discarded is put back first, whatever
    failed. An OS error (a full disk, a folder turned read-only) becomes a one-line error that says which,
    and how to go on (`resume`: the command that continues the run)."""
    from tispipe.errors import TispipeError

    out = Path(out)
    new = not out.exists() or (out.is_dir() and not any(out.iterdir()))
    try:
        yield
    except BaseException as e:
        restored = bool(SetAside.pending)
        for aside in reversed(list(SetAside.pending)):
            aside.restore()
        kept = out.is_dir() and (not new or saved(out))
        if not kept:
            shutil.rmtree(out, ignore_errors=True)
        # safetensors reports a failed write as its own error type, not as an OSError; one that failed to
        # read (deserialize) a file is a damaged input, not a full disk
        if type(e).__name__ == "SafetensorError" and "deserializ" in str(e).lower():
            raise TispipeError(f"a weights file could not be read ({str(e).strip().splitlines()[0]})",
                               hint="a *.safetensors file the command reads is damaged or incomplete: make it again") from e
        if not isinstance(e, OSError) and type(e).__name__ != "SafetensorError":
            raise
        fate = ("the run it was to replace is back in place" if restored else f"what it finished is kept: {resume}") if kept else "nothing of it was kept"
        if isinstance(e, OSError) and e.filename and not _inside(e.filename, out):  # an input or another place, not OUT
            raise TispipeError(f"{e.filename}: {e.strerror or e}; {fate}", hint="check that the path exists, is readable (or writable) and has room, then re-run") from e
        reason = f"{e.strerror}" + (f" ({e.filename})" if e.filename else "") if isinstance(e, OSError) and e.strerror else str(e)
        then = resume if kept and not restored else "re-run"
        raise TispipeError(f"writing {out}: {reason}; {fate}", hint=f"free some space or fix the permissions, then {then}") from e


def _inside(path: str | bytes | os.PathLike, folder: Path) -> bool:
    """`path` is `folder`, lies inside it, or is one of the staging files beside it (`.NAME.*`)."""
    path, folder = Path(os.fsdecode(path)).absolute(), folder.absolute()
    return path == folder or folder in path.parents or (path.parent == folder.parent and path.name.startswith(f".{folder.name}"))


@contextlib.contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """Hold `.NAME.lock` next to the output folder for the whole run: a second writer (with or without
    --overwrite) is refused, naming the holder's pid. Released on any exit; a lock whose process is gone
    (killed) is taken over."""
    from tispipe.errors import TispipeError

    out = Path(out)
    lock = out.parent / f".{out.name}.lock"
    # The lock appears with its pid already in it (a hard link of a written file), so a reader never
    # sees an empty lock and takes it for a stale one.
    mine = out.parent / f".{out.name}.lock.{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        mine.write_text(str(os.getpid()), encoding="utf-8")
    except OSError:  # nothing can be written there: no second writer either; the stage says what is wrong
        yield
        return
    try:
        for _ in range(2):
            try:
                os.link(mine, lock)
                break
            except FileExistsError:
                holder = lock.read_text(encoding="utf-8", errors="replace").strip()
                if holder.isdigit() and int(holder) != os.getpid() and _running(int(holder)):
                    raise TispipeError(f"--out {out} is being written by another tispipe run (pid {holder})", hint="wait for it to finish, or choose another --out") from None
                lock.unlink(missing_ok=True)  # its process is gone: a stale lock
        else:
            raise TispipeError(f"--out {out}: could not take the lock {lock}")
    finally:
        mine.unlink(missing_ok=True)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
