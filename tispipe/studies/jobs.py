"""Running stage jobs for the studies (`tispipe experiment`, `tispipe contrast-study`): one config per job, logged.

A job is (label, stage module, config). Its config goes to LOGS/<label>.yaml first, so
`tispipe <command> --config LOGS/<label>.yaml` repeats it, and its output to LOGS/<label>.log.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tispipe.artifacts.atomic import atomic_write_json
from tispipe.config_files import config_dict, write_config
from tispipe.errors import TispipeError

# the stages the studies run: the `tispipe` command of each, and its module (tispipe.<module>.run)
COMMANDS = {"estimate": "estimate", "train": "train", "evaluate": "eval", "generate": "generate"}
MODULES = {"estimate": "estimate.estimate", "train": "train.train", "evaluate": "evaluate.evaluate", "generate": "prepare.generate"}


def say(text: str) -> None:
    """A progress line of the experiment itself (stderr, with the time), between the jobs' own logs."""
    from tispipe.console import log_console

    log_console().print(f"[{time.strftime('%H:%M:%S')}] {text}", highlight=False, soft_wrap=True, markup=False)


class Runner:
    """Runs stages, at most `jobs` at a time, each logging to its own file; any failure stops the experiment.

    A job is (label, stage module, config). Its config goes to LOGS/<label>.yaml first; one job at a
    time runs it in this process through `tispipe.cli.run_stage` (every option and output checked, as the
    command line checks them), more run `python -m tispipe <command>
    --config LOGS/<label>.yaml` as subprocesses: the same settings either way.
    """

    def __init__(self, logs: Path, jobs: int, threads: int):
        self.logs, self.jobs, self.threads = logs, jobs, threads
        self.running: list[tuple[str, subprocess.Popen, float]] = []
        self.commands: list[str] = []
        self.done_markers: dict[str, tuple[Path, dict[str, Any]]] = {}

    def add(self, label: str, stage: str, cfg: Any, skip_if_done: Path | None = None) -> None:
        """Run the stage on `cfg`; with skip_if_done, not when that folder records a finished run of the same config."""
        config_file = self.logs / f"{label}.yaml"
        write_config(cfg, config_file)
        argv = [COMMANDS[stage], "--config", str(config_file)]
        self.commands.append("tispipe " + shlex.join(argv))
        if skip_if_done is not None:
            done, settings = skip_if_done / "experiment-config.json", config_dict(cfg)
            if done.is_file() and json.loads(done.read_text(encoding="utf-8")) == settings:
                say(f"skip  {label} (done)")
                return
            self.done_markers[label] = (done, settings)
        if self.jobs == 1:
            say(f"start {label}")
            self._run_here(label, stage, cfg)
            return
        while len(self.running) >= self.jobs:
            self._reap(block=True)
        say(f"start {label}")
        # OMP_NUM_THREADS holds every command (and its libraries) to the thread count
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "dumb", **({"OMP_NUM_THREADS": str(self.threads)} if self.threads else {})}
        with open(self.logs / f"{label}.log", "w", encoding="utf-8") as log:
            process = subprocess.Popen([sys.executable, "-m", "tispipe", *argv], stdout=log, stderr=subprocess.STDOUT, env=env)
        self.running.append((label, process, time.time()))

    def _run_here(self, label: str, stage: str, cfg: Any) -> None:
        """One job at a time: call the stage in this process, saving a Python start-up per job."""
        import contextlib

        import torch

        from tispipe.cli import run_stage

        t0, threads, code = time.time(), torch.get_num_threads(), 0
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with open(self.logs / f"{label}.log", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                try:
                    run_stage(COMMANDS[stage], MODULES[stage], cfg)  # the checks of `tispipe <command>`, as a job run as a subprocess gets them
                except TispipeError as e:
                    # the lines the command line prints for a user error, so the log reads the same either way
                    print(f"Error: {e.message}" + (f"\nHint: {e.hint}" if e.hint else ""), file=log)
                    code = 1
        finally:
            torch.set_num_threads(threads)
        self._finished(label, code, t0)

    def _finished(self, label: str, code: int, t0: float) -> None:
        if code != 0:
            for _, other, _ in self.running:
                other.terminate()
            tail = (self.logs / f"{label}.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            raise TispipeError(f"{label} failed (exit {code}): {' / '.join(tail)}", hint=f"its log: {self.logs / (label + '.log')}")
        if label in self.done_markers:
            path, settings = self.done_markers.pop(label)
            atomic_write_json(path, settings)
        say(f"done  {label} ({time.time() - t0:.0f}s)")

    def wait(self) -> None:
        while self.running:
            self._reap(block=True)

    def _reap(self, block: bool) -> None:
        while True:
            for item in self.running:
                label, process, t0 = item
                if process.poll() is not None:
                    self.running.remove(item)
                    self._finished(label, process.returncode, t0)
                    return
            if not block:
                return
            time.sleep(0.5)


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
