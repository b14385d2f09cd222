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
