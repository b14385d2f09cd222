"""User-facing errors: one line `Error: ...`, an optional `Hint: ...`, exit code 1."""

from __future__ import annotations

import os


class TispipeError(Exception):
    """An error caused by the user's input or environment, not by a bug.

    The CLI prints `Error: <message>` (and `Hint: <hint>`) and exits 1 without a traceback,
    unless TISPIPE_DEBUG=1.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


def wrong_path(path, what: str, want: str = "file", hint: str | None = None) -> TispipeError:
    """The error for an input `path` that is not an existing `want` ("file" or "folder"): says what it is instead."""
    from pathlib import Path

    path = Path(path)
    special = special_file(path)
    if special:  # a FIFO, a device, a socket: neither a file to read nor a folder
        return TispipeError(f"{what} {path} is {special}, not a regular {want}", hint=hint or f"give a regular {want}")
    if path.is_dir():
        return TispipeError(f"{what} {path} is a folder, not a file", hint=hint)
    if path.exists():
        return TispipeError(f"{what} {path} is a file, not a folder", hint=hint)
    if path.is_symlink():
        return TispipeError(f"{what} {path} is a link to {os.readlink(path)}, which does not exist", hint=hint)
    return TispipeError(f"{what} {path} does not exist", hint=hint)


def special_file(path) -> str | None:
    """What `path` is when it exists but is neither a regular file nor a folder ("a named pipe (FIFO)", ...), else None."""
    import stat
    from pathlib import Path

    try:
        mode = Path(path).stat().st_mode
    except (OSError, ValueError):
        return None
    for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None
