"""The step loop's bookkeeping that `train` and `reward-model` share.

Each trainer runs its own steps (what a batch is and how a step is taken differ) and hands every finished
step to `StepLoop.record`, which adds the step, the epoch and the rates of training alone (held-out
measurement time left out), measures the held-out pairs when asked, writes `metrics.jsonl` and the
tracker, moves the progress line, saves a checkpoint every `save_every` steps and, after a Ctrl-C, saves
one last checkpoint and stops the run with the command that resumes it. `finish` saves the final
checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from tispipe.artifacts.atomic import SetAside
from tispipe.artifacts.checkpoint import TrainState, damaged
from tispipe.artifacts.metrics_log import MetricsLog, logged_metrics
from tispipe.artifacts.trackers import Tracker
from tispipe.console import ProgressLine
from tispipe.errors import TispipeError
from tispipe.train.stop import StopRequest


@contextmanager
def loading_models(replaced: SetAside | None, checkpoint: Path | None):
    """Around loading a run's models: if they fail to load, the run --overwrite set aside is put back
    (nothing lost) and a checkpoint that does not load is named with the one to fall back on; once they
    have loaded, the old run is deleted."""
    try:
        yield
    except BaseException as e:
        if replaced is not None:
            replaced.restore()
        if checkpoint is not None and isinstance(e, TispipeError) and str(checkpoint) in e.message:
            raise TispipeError(e.message, hint=damaged(checkpoint, "model").hint) from e
        raise
    if replaced is not None:
        replaced.discard()


class StepLoop:
    """Per-step logging, progress, checkpoints and Ctrl-C for one run (a context manager around its steps).

    Args:
        command: the command that resumes the run (`train`, `reward-model`), for the stop message.
        out: the run's folder (its config.yaml is named in the stop message).
        total_steps, start: the planned steps and the state the run starts (or resumes) from.
        rows_per_epoch: pairs in one epoch, for the fractional epoch.
        save_every: checkpoint every this many steps (0: only at a stop and at the end).
        save: writes a checkpoint of a state and returns its folder.
        tracker, log_path: where metrics go (log_path None: not written, as on ranks other than 0).
        label, step_line: the progress line's name and its text for a step's metrics.
        agree: turns this process's Ctrl-C into the decision all processes share (torchrun).
    """

    def __init__(self, *, command: str, out: Path, console, total_steps: int, start: TrainState, rows_per_epoch: int, save_every: int,
                 save: Callable[[TrainState], Path], tracker: Tracker, log_path: Path | None, label: str,
                 step_line: Callable[[dict[str, Any]], str], agree: Callable[[bool], bool] = lambda requested: requested):
        self.command, self.out, self.console, self.total_steps, self.start = command, out, console, total_steps, start
        self.rows_per_epoch, self.save_every, self.save, self.tracker, self.log_path = rows_per_epoch, save_every, save, tracker, log_path
        self.label, self.step_line, self.agree = label, step_line, agree
        self.pairs_seen, self.tokens_seen, self.eval_seconds, self.wall = 0, 0, 0.0, 0.0
        self.metrics: dict[str, Any] = {}

    def __enter__(self) -> StepLoop:
        self.started = time.perf_counter()
        with ExitStack() as stack:
            self.stop = stack.enter_context(StopRequest())
            self.log = stack.enter_context(MetricsLog(self.log_path))
            stack.enter_context(self.tracker)
            self.progress = stack.enter_context(ProgressLine(self.console, self.label, self.total_steps, self.start.step))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> bool:
        self.wall = time.perf_counter() - self.started
        return self._stack.__exit__(*exc)

    def record(self, state: TrainState, metrics: dict[str, Any], pairs: int, tokens: int | None = None,
               measure: Callable[[], dict[str, float]] | None = None) -> None:
        """Log the step that led to `state` (`pairs` pairs, `tokens` tokens), after `measure()`'s held-out metrics if given."""
        self.pairs_seen += pairs
        elapsed = time.perf_counter() - self.started - self.eval_seconds  # the rate of training alone
        metrics.update(step=state.step, epoch=state.epoch + state.rows_in_epoch / max(1, self.rows_per_epoch), pairs_per_s=self.pairs_seen / elapsed)
        if tokens is not None:
            self.tokens_seen += tokens
            metrics["tokens_per_s"] = self.tokens_seen / elapsed
        if measure is not None:
            measure_started = time.perf_counter()
            metrics.update(measure())
            self.eval_seconds += time.perf_counter() - measure_started
        self.log.write(metrics)
        self.tracker.log(metrics, state.step)
        self.progress.update(state.step, self.step_line(metrics))
        self.metrics = metrics
        if state.step >= self.total_steps:
            return  # the final checkpoint is saved by finish
        stopping = self.agree(self.stop.requested)
        if (self.save_every > 0 and state.step % self.save_every == 0) or stopping:
            path = self.save(state)
        if stopping:
            self.fail(f"stopped at step {state.step} of {self.total_steps}; checkpoint saved to {path}",
                      hint=f"continue with: tispipe {self.command} --config {self.out / 'config.yaml'} --resume")

    def fail(self, message: str, hint: str) -> None:
        """Stop the run with an error (the progress line cleared first)."""
        self.progress.stop()
        raise TispipeError(message, hint=hint) from None

    def finish(self, state: TrainState) -> dict[str, Any]:
        """After the loop: save the final checkpoint; return the last step's metrics (read back from metrics.jsonl
        when an earlier, killed process did every step)."""
        self.metrics = self.metrics or logged_metrics(self.log_path, state.step)
        self.save(state)
        return self.metrics
