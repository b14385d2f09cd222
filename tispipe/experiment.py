"""`tispipe experiment`: the paper's comparison (its Table 1) and TIS-DPO(D) ablations (its Table 2) on one task.

The stages talk only through their folders on disk, as a user would run them. Every job below is one
stage with one config object (EstimateConfig, TrainConfig, EvalConfig), built here and written to
OUT/logs/<job>.yaml, so `tispipe <command> --config OUT/logs/<job>.yaml` repeats it; its output goes
to OUT/logs/<job>.log. With --jobs 1 each stage runs in this process, one after another; with more,
each runs as that command in a subprocess (so several single-threaded trainings can share the CPU).
A re-run skips what is finished: estimate and train recognise their own finished runs.

1. estimate the token weights once per estimation method (prompt, sft, dpo) on the training pairs, and
   once more on the test pairs with the same pi+/pi- (held-out weight AUC against the token labels);
2. train every method for every seed from the same base with the same steps, learning rate and batch
   (DPO, IPO and TDPO2 read the dpo shards, which they use only for the tokens and reference log-probs);
3. evaluate each seed's models in one eval (win rates against that seed's DPO);
4. write report.json and results.md (tispipe.experiment_report): mean and sample standard deviation over seeds.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tispipe import experiment_generated as generated
from tispipe.atomic import atomic_write_json, atomic_write_text
from tispipe.config_files import config_dict, write_config
from tispipe.configs import ESTIMATION_METHODS, EstimateConfig, EvalConfig, ExperimentConfig, TrainConfig, check_options
from tispipe.errors import TispipeError
from tispipe.experiment_report import method_rows, render, render_tables, slug, write_figures

# (name, estimation method of the shards it trains on, TrainConfig fields). Every method also gets the shared budget.
METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("DPO", "dpo", {"loss": "dpo"}),
    ("IPO", "dpo", {"loss": "ipo"}),
    ("TDPO2", "dpo", {"loss": "tdpo2"}),
    ("TIS-DPO(P)", "prompt", {"loss": "tisdpo"}),
    ("TIS-DPO(S)", "sft", {"loss": "tisdpo"}),
    ("TIS-DPO(D)", "dpo", {"loss": "tisdpo"}),
    # the paper's text: "random numbers between L and U", i.e. U(-0.5, 1.5), negative weights included
    ("TIS-DPO(D) random weights U(L,U)", "dpo", {"loss": "tisdpo", "weighting": "random"}),
    # the authors' code draws U(0.7, 1.3) instead: both are reported
    ("TIS-DPO(D) random weights U(0.7,1.3)", "dpo", {"loss": "tisdpo", "weighting": "random", "lower": 0.7, "upper": 1.3}),
    ("TIS-DPO(D) equal weights", "dpo", {"loss": "tisdpo", "weighting": "equal"}),
    ("TIS-DPO(D) without eta", "dpo", {"loss": "tisdpo", "eta_coef": 0.0}),
]
# the stage modules the experiment runs, and the `tispipe` command of each
COMMANDS = {"estimate": "estimate", "train": "train", "evaluate": "eval", "generate_pairs": "generate"}


def quick_settings(cfg: ExperimentConfig) -> ExperimentConfig:
    """The --quick variant: tiny everything, so CI can check that each method runs and the table is written."""
    return replace(cfg, seeds=1, max_steps=4, batch_size=4, limit=32, eval_limit=16, num_prompts=4, temperatures="0", max_new_tokens=16, jobs=1)


def selected_methods(cfg: ExperimentConfig) -> list[tuple[str, str, dict[str, Any]]]:
    if cfg.methods == "all":
        return METHODS
    names = [n.strip() for n in cfg.methods.split(",") if n.strip()]
    known = {m[0]: m for m in METHODS}
    by_lower = {name.lower(): name for name in known}
    names = [by_lower.get(n.lower(), n) for n in names]  # `dpo` is DPO
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TispipeError(f"unknown method(s) {', '.join(unknown)}", hint=f"known: {', '.join(known)}")
    if "DPO" not in names:
        names.insert(0, "DPO")  # the win rates compare against it
    return [known[n] for n in names]


# ---------------------------------------------------------------- the jobs' configs


def estimate_config(cfg: ExperimentConfig, method: str, weights_root: Path) -> EstimateConfig:
    """Token weights of the training pairs, from pi+/pi- made with `method`."""
    return EstimateConfig(data=str(Path(cfg.data) / "train.jsonl"), model=cfg.base, method=method,
                          out=str(weights_root / f"weights-{method}"), limit=cfg.limit)


def held_out_estimate_config(cfg: ExperimentConfig, method: str, weights_root: Path) -> EstimateConfig:
    """The same pi+/pi- (for prompt: the same system prompts) scoring the test pairs."""
    contrast = weights_root / f"weights-{method}" / "contrast"
    models = {} if method == "prompt" else {"pos_model": str(contrast / "pos"), "neg_model": str(contrast / "neg")}
    return EstimateConfig(data=str(Path(cfg.data) / "test.jsonl"), model=cfg.base, method=method, **models,
                          out=str(Path(cfg.out) / "weights-test" / method), overwrite=True, limit=cfg.eval_limit)


def train_config(cfg: ExperimentConfig, method: tuple[str, str, dict[str, Any]], seed: int, shards: Path, out: Path) -> TrainConfig:
    """One method's training for one seed on `shards` into `out`: its own fields plus the budget every method shares."""
    _, _, fields = method
    return TrainConfig(shards=str(shards), model=cfg.base, out=str(out), **fields,
                       lr=cfg.lr, batch_size=cfg.batch_size, threads=cfg.threads, max_steps=cfg.max_steps, seed=seed, resume=True)


def eval_config(cfg: ExperimentConfig, models: list[Path], baseline: Path, seed: int, out: Path) -> EvalConfig:
    """The base and `models` of one seed side by side on the test split, win rates against `baseline` (that seed's DPO)."""
    return EvalConfig(model=[cfg.base, *map(str, models)], ref=cfg.base,
                      baseline=str(baseline), data=str(Path(cfg.data) / "test.jsonl"), oracle="toy",
                      temperatures=cfg.temperatures, num_prompts=cfg.num_prompts, max_new_tokens=cfg.max_new_tokens, seed=seed,
                      threads=cfg.threads, out=str(out), overwrite=True, limit=cfg.eval_limit)


# ---------------------------------------------------------------- the stage


def run(cfg: ExperimentConfig) -> dict[str, Any]:
    """Estimate, train, evaluate and tabulate; returns the report (also written to OUT/report.json)."""
    if cfg.quick:
        cfg = quick_settings(cfg)
    check(cfg)
    started = time.time()
    out = Path(cfg.out)
    weights_root = Path(cfg.weights_root or cfg.out)
    methods = selected_methods(cfg)
    estimators = [e for e in ESTIMATION_METHODS if any(m[1] == e for m in methods)]
    (out / "logs").mkdir(parents=True, exist_ok=True)
    runner = Runner(out / "logs", cfg.jobs, cfg.threads)

    # 1. weights: one estimate per method on the training pairs; its pi+/pi- then score the test pairs
    timings: dict[str, float] = {}
    t0 = time.time()
    for method in estimators:
        runner.add(f"estimate-{method}", "estimate", estimate_config(cfg, method, weights_root))
    runner.wait()
    for method in estimators:
        runner.add(f"estimate-{method}-test", "estimate", held_out_estimate_config(cfg, method, weights_root))
    if cfg.generated:  # the generated-data block's pairs, then their weights
        runner.add("generate-pairs", "generate_pairs", generated.generate_config(cfg, weights_root))
        runner.wait()
        for method in generated.ESTIMATORS:
            runner.add(f"estimate-generated-{method}", "estimate", generated.estimate_config(cfg, method, weights_root))
    runner.wait()
    timings["estimate"] = time.time() - t0

    # 2. training, the same budget for every method and seed, then 3. one eval per seed with all methods side by
    # side (win rates against that seed's DPO); a seed's eval runs while the next seed trains, so an experiment
    # stopped early leaves whole seeds behind.
    t0 = time.time()
    for seed in range(cfg.seeds):
        for method in methods:
            shards, model = weights_root / f"weights-{method[1]}", model_dir(out, method[0], seed)
            runner.add(f"train-{slug(method[0])}-seed{seed}", "train", train_config(cfg, method, seed, shards, model))
        for method in generated.METHODS if cfg.generated else []:
            shards, model = generated.weights_dir(weights_root, method[1]), generated.model_dir(out, method[0], seed)
            runner.add(f"train-generated-{slug(method[0])}-seed{seed}", "train", train_config(cfg, method, seed, shards, model))
        runner.wait()
        models = [model_dir(out, name, seed) for name, _, _ in methods]
        runner.add(f"eval-seed{seed}", "evaluate", eval_config(cfg, models, model_dir(out, "DPO", seed), seed, out / "eval" / f"seed-{seed}"),
                   skip_if_done=out / "eval" / f"seed-{seed}")
        if cfg.generated:
            models = [generated.model_dir(out, name, seed) for name, _, _ in generated.METHODS]
            evaluation = eval_config(cfg, models, generated.model_dir(out, "DPO", seed), seed, out / "eval" / f"generated-seed-{seed}")
            runner.add(f"eval-generated-seed{seed}", "evaluate", evaluation, skip_if_done=out / "eval" / f"generated-seed-{seed}")
    runner.wait()
    timings["train_and_eval"] = time.time() - t0
    timings["total"] = time.time() - started

    report = collect(cfg, methods, estimators, weights_root, timings, runner.commands)
    if cfg.generated:
        report["generated"] = generated.collect(cfg, weights_root)
    order = [m[0] for m in METHODS]
    text = render(report, order, ESTIMATION_METHODS)
    for folder in [out, *([Path(cfg.results)] if cfg.results else [])]:
        folder.mkdir(parents=True, exist_ok=True)
        write_figures(report, folder)
        atomic_write_json(folder / "report.json", report)
        atomic_write_text(folder / "results.md", text)
    print(render_tables(report, order, ESTIMATION_METHODS))
    say(f"Wrote {out / 'results.md'}{' and ' + str(Path(cfg.results) / 'results.md') if cfg.results else ''} in {timings['total'] / 60:.1f} min")
    return report


def check(cfg: ExperimentConfig) -> None:
    for name in ("train.jsonl", "test.jsonl"):
        if not (Path(cfg.data) / name).is_file():
            raise TispipeError(f"{Path(cfg.data) / name} does not exist", hint="make the toy data with `tispipe toy-data --out DIR`")
    if not Path(cfg.base).is_dir():
        raise TispipeError(f"base model folder {cfg.base} does not exist", hint="build it with `make base` (tispipe init-base)")
    check_options(
        cfg, at_least_one=("seeds", "jobs", "batch_size", "num_prompts", "max_new_tokens", "max_steps", "limit", "eval_limit"), positive=("lr",),
        non_negative=("threads",),
    )


def say(text: str) -> None:
    """A progress line of the experiment itself (stderr, with the time), between the jobs' own logs."""
    from tispipe.console import log_console

    log_console().print(f"[{time.strftime('%H:%M:%S')}] {text}", highlight=False, soft_wrap=True, markup=False)


def model_dir(out: Path, name: str, seed: int) -> Path:
    return out / "models" / f"{slug(name)}-seed{seed}"


class Runner:
    """Runs stages, at most `jobs` at a time, each logging to its own file; any failure stops the experiment.

    A job is (label, stage module, config). Its config goes to LOGS/<label>.yaml first; one job at a
    time runs `tispipe.<stage>.run(config)` in this process, more run `python -m tispipe <command>
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
        import importlib

        import torch

        t0, threads, code = time.time(), torch.get_num_threads(), 0
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with open(self.logs / f"{label}.log", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                try:
                    importlib.import_module(f"tispipe.{stage}").run(cfg)
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


# ---------------------------------------------------------------- the report


def collect(cfg: ExperimentConfig, methods, estimators: list[str], weights_root: Path, timings: dict[str, float], commands: list[str]) -> dict[str, Any]:
    import torch

    from tispipe.weight_quality import weight_quality

    out = Path(cfg.out)
    reports = [json.loads((out / "eval" / f"seed-{seed}" / "report.json").read_text(encoding="utf-8")) for seed in range(cfg.seeds)]
    rows = method_rows(reports, methods, cfg.base, lambda name, seed: model_dir(out, name, seed))
    auc: dict[str, Any] = {}
    for method in estimators:
        train_quality = weight_quality(str(weights_root / f"weights-{method}"))
        test_quality = weight_quality(str(out / "weights-test" / method))
        keep = lambda quality: {k: v for k, v in quality.items() if k.endswith("_auc") or k == "labelled_rows"}  # noqa: E731
        auc[method] = {"train": keep(train_quality), "test": keep(test_quality)}
    steps = json.loads((model_dir(out, "DPO", 0) / "train_info.json").read_text(encoding="utf-8")).get("steps")
    return {
        "config": config_dict(cfg),
        "command": command_line(cfg),
        "machine": {"cpu_cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()},
        "budget": {"lr": cfg.lr, "batch_size": cfg.batch_size, "steps": steps, "seeds": cfg.seeds, "train_pairs": cfg.limit or "all"},
        "eval": {"temperatures": cfg.temperatures, "num_prompts": cfg.num_prompts, "max_new_tokens": cfg.max_new_tokens, "test_pairs": cfg.eval_limit or "all"},
        "methods": rows,
        "weight_auc": auc,
        "timing_seconds": timings,
        "commands": commands,
    }


def command_line(cfg: ExperimentConfig) -> str:
    """The `tispipe experiment` command that repeats this run, every option spelled out."""
    words = ["tispipe", "experiment"]
    for key, value in config_dict(cfg).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            words += [flag] if value else []
        elif value is not None:
            words += [flag, str(value)]
    return shlex.join(words)
