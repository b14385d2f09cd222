"""Running stage jobs for the studies (`tispipe experiment`, `tispipe contrast-study`): one config per job, logged.

A job is (label, stage module, config). Its config goes to LOGS/<label>.yaml first, so
`tispipe <command> --config LOGS/<label>.yaml` repeats it, and its output to LOGS/<label>.log.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from tispipe.artifacts.atomic import atomic_write_json
from tispipe.config_files import config_dict, write_config
from tispipe.errors import TispipeError

# the stages the studies run: the `tispipe` command of each, and its module (tispipe.<module>.run)
COMMANDS = {"estimate": "estimate", "train": "train", "evaluate": "eval", "generate": "generate", "reward-model": "reward-model"}
MODULES = {"estimate": "estimate.estimate", "train": "train.train", "evaluate": "evaluate.evaluate", "generate": "prepare.generate",
           "reward-model": "train.reward_model"}


def say(text: str) -> None:
    """A progress line of the experiment itself (stderr, with the time), between the jobs' own logs."""
    from tispipe.console import log_console

    log_console().print(f"[{time.strftime('%H:%M:%S')}] {text}", highlight=False, soft_wrap=True, markup=False)


def run_job(logs: Path, label: str, stage: str, cfg: Any, threads: int) -> int:
    """Run one job in this process, its output into LOGS/<label>.log, through `tispipe.cli.run_stage` (every
    option and output checked, as the command line checks them); return its exit code (1: an error, logged
    as the command line prints it)."""
    import contextlib

    import torch

    from tispipe.cli import run_stage

    before, code = torch.get_num_threads(), 0
    if threads:
        torch.set_num_threads(threads)
    try:
        with open(logs / f"{label}.log", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                run_stage(COMMANDS[stage], MODULES[stage], cfg)
            except TispipeError as e:
                print(f"Error: {e.message}" + (f"\nHint: {e.hint}" if e.hint else ""), file=log)
                code = 1
            except Exception:  # noqa: BLE001 (a worker reports every failure as its job's, with the traceback in the log)
                import traceback

                traceback.print_exc(file=log)
                code = 2
    finally:
        torch.set_num_threads(before)
    return code


def _start_worker(threads: int) -> None:
    """A pool worker's set-up, before it imports torch: the thread count and the environment a stage run gets."""
    os.environ.update({"HF_HUB_OFFLINE": "1", "TERM": "dumb", **({"OMP_NUM_THREADS": str(threads)} if threads else {})})


class Runner:
    """Runs stages, at most `jobs` at a time, each logging to its own file; any failure stops the study.

    A job is (label, stage module, config). Its config goes to LOGS/<label>.yaml first (`tispipe <command>
    --config LOGS/<label>.yaml` repeats it). One job at a time runs in this process, in the order added; more
    run in a pool of `jobs` worker processes that live as long as the study, so Python, torch and
    transformers are imported once per worker, not once per job. The same settings and checks either way
    (`run_job`).

    A job may name the jobs it needs (`after`): it waits in the queue until they have finished, and a free
    worker takes the first job of the queue whose needs are met, so no worker idles while anything can run.
    """

    def __init__(self, logs: Path, jobs: int, threads: int):
        self.logs, self.jobs, self.threads = logs, jobs, threads
        self.running: list[tuple[str, Any, float]] = []  # (label, future, start time)
        self.queued: list[tuple[str, str, Any, tuple[str, ...]]] = []  # (label, stage, config, the labels it needs)
        self.finished: dict[str, float] = {}  # label -> when it finished (time.time())
        self.commands: list[str] = []
        self.done_markers: dict[str, tuple[Path, dict[str, Any]]] = {}
        self.pool = None

    def add(self, label: str, stage: str, cfg: Any, skip_if_done: Path | None = None, after: tuple[str, ...] | list[str] = ()) -> None:
        """Run the stage on `cfg` once the jobs labelled `after` have finished; with skip_if_done, not when that folder
        records a finished run of the same config."""
        known = {*self.finished, *(item[0] for item in self.running), *(item[0] for item in self.queued)}
        if unknown := [need for need in after if need not in known]:
            raise ValueError(f"{label} needs jobs never added: {', '.join(unknown)}")
        config_file = self.logs / f"{label}.yaml"
        write_config(cfg, config_file)
        self.commands.append("tispipe " + shlex.join([COMMANDS[stage], "--config", str(config_file)]))
        if skip_if_done is not None:
            done, settings = skip_if_done / "experiment-config.json", config_dict(cfg)
            if done.is_file() and json.loads(done.read_text(encoding="utf-8")) == settings:
                say(f"skip  {label} (done)")
                self.finished[label] = time.time()
                return
            self.done_markers[label] = (done, settings)
        if self.jobs == 1:  # jobs run in the order added, so whatever a job needs has run before it
            say(f"start {label}")
            started = time.time()
            self._finished(label, run_job(self.logs, label, stage, cfg, self.threads), started)
            return
        self.queued.append((label, stage, cfg, tuple(after)))
        self._start_ready()

    def _start_ready(self) -> None:
        """Give each free worker the first queued job whose needs have finished."""
        while len(self.running) < self.jobs:
            ready = next((item for item in self.queued if all(need in self.finished for need in item[3])), None)
            if ready is None:
                return
            self.queued.remove(ready)
            label, stage, cfg, _ = ready
            if self.pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                # spawn, not fork: a forked child of a process that has run torch's thread pools can hang
                self.pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                                                initargs=(self.threads,))
            say(f"start {label}")
            self.running.append((label, self.pool.submit(run_job, self.logs, label, stage, cfg, self.threads), time.time()))

    def _finished(self, label: str, code: int, started: float) -> None:
        if code != 0:
            self.close()
            tail = (self.logs / f"{label}.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            raise TispipeError(f"{label} failed (exit {code}): {' / '.join(tail)}", hint=f"its log: {self.logs / (label + '.log')}")
        if label in self.done_markers:
            path, settings = self.done_markers.pop(label)
            atomic_write_json(path, settings)
        self.finished[label] = time.time()
        say(f"done  {label} ({time.time() - started:.0f}s)")

    def wait(self) -> None:
        """Until every job added has finished."""
        while self.running:
            self._reap()
            self._start_ready()

    def finish(self) -> None:
        """Wait for the last jobs, then stop the workers."""
        self.wait()
        self.close()

    def close(self) -> None:
        """Stop the workers (the running jobs with them) and forget the queued jobs."""
        if self.pool is not None:
            # the executor has no public way to stop a running job; its worker processes are the only handle
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.terminate()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.running, self.queued = [], []

    def _reap(self) -> None:
        """Wait for the first running job to finish and record it."""
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as wait_for

        finished, _ = wait_for([future for _, future, _ in self.running], return_when=FIRST_COMPLETED)
        for item in [item for item in self.running if item[1] in finished]:
            self.running.remove(item)
            label, future, started = item
            try:
                code = future.result()
            except Exception:  # noqa: BLE001 (the worker itself died: killed, out of memory)
                code = 3
            self._finished(label, code, started)


def check_study(cfg: Any) -> None:
    """What both studies need before they start (StudyOptions): the task's two files, the base, a usable validation share."""
    from tispipe.configs import check_options

    for name in ("train.jsonl", "test.jsonl"):
        if not (Path(cfg.data) / name).is_file():
            raise TispipeError(f"{Path(cfg.data) / name} does not exist", hint="make the toy data with `tispipe toy-data --out DIR`")
    if not Path(cfg.base).is_dir():
        raise TispipeError(f"base model folder {cfg.base} does not exist", hint="build it with `make base` (tispipe init-base)")
    check_options(cfg, at_least_one=("jobs",), positive=("validation_fraction",), non_negative=("threads",))
    if not cfg.validation_fraction < 1:
        raise TispipeError(f"--validation-fraction must be below 1, not {cfg.validation_fraction}")


def command_line(command: str, cfg: Any) -> str:
    """The `tispipe <command>` line that repeats a study run from its config, every option spelled out."""
    words = ["tispipe", command]
    for key, value in config_dict(cfg).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            words += [flag] if value else []
        elif value is not None:
            words += [flag, str(value)]
    return shlex.join(words)
