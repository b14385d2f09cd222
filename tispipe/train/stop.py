"""Ctrl-C during training: the first one asks for a clean stop, the second one stops at once."""

from __future__ import annotations

import os
import signal
import threading


class StopRequest:
    """First Ctrl-C: finish the current step, save a checkpoint and stop. Second Ctrl-C: stop at once.

    The step loop reads `requested` after each step. Outside the main thread (where signal handlers
    cannot be set) it does nothing and `requested` stays False.
    """

    def __enter__(self):
        self.requested = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        os.write(2, b"\nStopping after this step and saving a checkpoint (Ctrl-C again to quit without saving)\n")

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
