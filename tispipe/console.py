"""What the stages print, in one convention: progress and logs on stderr, results on stdout.

- `log_console()`: stderr, for progress bars, notes and what a run is doing (quiet on torchrun ranks
  other than 0), so `tispipe eval ... > table.txt` keeps only the result;
- `result_console()`: stdout, for the tables a command exists to produce; wide when stdout is a
  file or pipe, so a log gets the table unwrapped;
- `ProgressLine`: a progress bar with a live text (loss, rate) on a terminal, and in a log file a
  plain line every ~5% of the work instead of one truncated final frame.
"""

from __future__ import annotations

import sys
import time


def quiet_transformers() -> None:
    """Turn off transformers' own per-file loading and saving bars: they would break tispipe's progress lines."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def log_console(quiet: bool = False):
    from rich.console import Console

    return Console(stderr=True, quiet=quiet)


def result_console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


PRINT_EVERY_S = 30.0  # off a terminal, a long run's progress line at least this often


class ProgressLine:
    """`label` done/total, a bar, the time left and `text`; `update(done, text)` moves it.

    Usable as a context manager (the bar is drawn while inside). Off a terminal, a plain line
    `label done/total  text  ETA` is printed every `total // 20` steps (and at least every
    PRINT_EVERY_S seconds that a step ends in) and at the end.
    """

    def __init__(self, console, label: str, total: int, done: int = 0, transient: bool = False):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = console or log_console()
        self.console, self.label, self.total = console, label, total
        self.every = max(1, total // 20)
        self.done, self.first, self.started = done, done, time.perf_counter()
        self.printed = self.started
        self.progress = None
        if console.is_terminal:
            self.progress = Progress(
                TextColumn(f"[bold]{label}"), MofNCompleteColumn(), BarColumn(bar_width=20), TimeElapsedColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[text]}"), console=console, transient=transient,
            )
            self.task = self.progress.add_task(label, total=total, completed=done, text="")

    def __enter__(self) -> ProgressLine:
        if self.progress is not None:
            self.progress.start()
        return self

    def update(self, done: int, text: str = "") -> None:
        previous, self.done = self.done, done
        if self.progress is not None:
            self.progress.update(self.task, completed=done, text=text)
        elif done // self.every > previous // self.every or (done == self.total and previous != done) or time.perf_counter() - self.printed > PRINT_EVERY_S:
            self.printed = time.perf_counter()
            rate = (done - self.first) / max(time.perf_counter() - self.started, 1e-9)
            eta = f"  ETA {(self.total - done) / rate:.0f} s" if rate > 0 and done < self.total else ""
            self.console.print(f"{self.label} {done}/{self.total}  {text}{eta}", soft_wrap=True, highlight=False)

    def advance(self, n: int, text: str = "") -> None:
        self.update(self.done + n, text)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __exit__(self, *exc) -> None:
        self.stop()
