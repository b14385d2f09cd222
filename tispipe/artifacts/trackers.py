"""Where a training run's per-step metrics go besides OUT/metrics.jsonl: `--report-to`, named as in TRL.

- `tensorboard`: event files in OUT/tensorboard (torch.utils.tensorboard; needs the tensorboard package,
  the `tensorboard` extra): `tensorboard --logdir OUT/tensorboard`.
- `wandb`: a Weights & Biases run in OUT/wandb, project `tispipe` (set WANDB_MODE=offline to log offline).
- `trackio`: a trackio run, project `tispipe`, named OUT's name plus a short hash of its path (trackio
  resumes a run by name, and two runs called `dpo` in different folders must stay apart); trackio's
  own messages go to stderr with tispipe's.
- `none` (the default): metrics.jsonl only.

Each backend gets the same names metrics.jsonl has (`loss`, `rewards/chosen`, ...) at the same steps.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
from pathlib import Path
from typing import Any

from tispipe.errors import TispipeError

REPORT_TO = ("none", "tensorboard", "wandb", "trackio")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def check_report_to(report_to: str) -> None:
    """A known backend whose package is installed; said before the run starts, not after its first step."""
    if report_to not in REPORT_TO:
        raise TispipeError(f"--report-to {report_to!r} is not one of {', '.join(REPORT_TO)}")
    package = PACKAGES.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise TispipeError(f"--report-to {report_to} needs the {package} package, which is not installed", hint=f"pip install {package}")


class Tracker:
    """`log(metrics, step)` to the chosen backend; `close()` flushes it. Usable as a context manager."""

    def __init__(self, report_to: str, out: Path, run_name: str, config: dict[str, Any]):
        from tispipe.artifacts.atomic import check_writable

        check_report_to(report_to)
        self.report_to, self.backend = report_to, None
        self.thread_error: BaseException | None = None
        if report_to in ("tensorboard", "wandb"):
            check_writable(out / report_to, f"--report-to {report_to}: the folder")
        # A backend's own threads (tensorboard's event writer, ...) fail as a one-line error too, not as a
        # traceback printed by the thread: the error is kept and raised by the next log() or close().
        self.previous_hook, threading.excepthook = threading.excepthook, self._thread_failed
        try:
            self._open(report_to, out, run_name, config)
        except BaseException:
            threading.excepthook = self.previous_hook
            raise

    def _open(self, report_to: str, out: Path, run_name: str, config: dict[str, Any]) -> None:
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.backend = SummaryWriter(log_dir=str(out / "tensorboard"))
        elif report_to == "wandb":
            import wandb

            (out / "wandb").mkdir(parents=True, exist_ok=True)
            self.backend = wandb.init(project="tispipe", name=run_name, dir=str(out), config=config, resume="allow", id=_run_id(out))
        elif report_to == "trackio":
            import trackio

            with contextlib.redirect_stdout(sys.stderr):
                self.backend = trackio.init(project="tispipe", name=f"{run_name}-{_run_id(out)[:8]}", config=config, resume="allow")

    def _thread_failed(self, args) -> None:
        if self.thread_error is None:
            self.thread_error = args.exc_value

    def _raise_thread_error(self) -> None:
        error, self.thread_error = self.thread_error, None
        if error is not None:
            reason = f"{error.strerror}: {error.filename}" if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
            raise TispipeError(f"--report-to {self.report_to}: {reason}", hint="check that OUT is writable, or train with --report-to none")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._raise_thread_error()
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
        if self.report_to == "tensorboard":
            for key, value in numbers.items():
                self.backend.add_scalar(key, value, step)
        elif self.report_to == "wandb":
            self.backend.log(numbers, step=step)
        elif self.report_to == "trackio":
            import trackio

            trackio.log(numbers, step=step)

    def close(self) -> None:
        try:
            self._close_backend()
        finally:
            threading.excepthook = self.previous_hook
        self._raise_thread_error()

    def _close_backend(self) -> None:
        if self.report_to == "tensorboard":
            self.backend.close()
        elif self.report_to == "wandb":
            self.backend.finish()
        elif self.report_to == "trackio":
            import trackio

            with contextlib.redirect_stdout(sys.stderr):
                trackio.finish()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _run_id(out: Path) -> str:
    """A wandb run id stable for OUT, so a resumed training continues its run instead of starting a new one."""
    import hashlib

    return hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:12]
