"""User-facing errors: one line `Error: ...`, an optional `Hint: ...`, exit code 1."""

from __future__ import annotations


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
    if path.is_dir():
        return TispipeError(f"{what} {path} is a folder, not a file", hint=hint)
    if path.exists():
        return TispipeError(f"{what} {path} is a file, not a folder", hint=hint)
    return TispipeError(f"{what} {path} does not exist", hint=hint)
