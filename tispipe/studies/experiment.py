"""`tispipe experiment`: the paper's comparison (its Table 1) and TIS-DPO(D) ablations (its Table 2) on one task,
each method at its own best learning rate from one shared grid, each ablation at TIS-DPO(D)'s.

The stages talk only through their folders on disk, as a user would run them. Every job is one stage
with one config (tispipe.studies.jobs): OUT/logs/<job>.yaml repeats it with `tispipe <command> --config`. A
re-run skips what is finished: estimate and train recognise their own finished runs.

0. carve a validation split out of train.jsonl (OUT/data; tispipe.data.held_out.carve_files). Weights and
   trainings use the rest; the validation split chooses the learning rates; the test split only reports;
1. estimate the token weights once per estimation method (prompt, sft, dpo) on the training pairs, and
   score the test pairs with the same pi+/pi- (held-out weight AUC against the token labels);
2. the grid: train every method but the ablations at every lr of --lrs with seed 0 (the same steps and
   batch for all), and evaluate each lr's models on validation prompts; each method's lr is the one with
   the highest oracle reward there (pooled over the temperatures; ties to the smaller lr). An ablation
   changes one thing of TIS-DPO(D) and keeps the rest, its lr included (ABLATIONS);
3. train each method at its chosen lr for --seeds seeds (seed 0 is the grid's run) and evaluate each
   seed on the test split (win rates against that seed's DPO); the TIS-DPO methods also at the lr that keeps
   their validation KL within DPO's (tispipe.studies.kl_matched), in the same evals;
4. write report.json, results.md and the figures (tispipe.studies.results_page).

Steps 1 and 2 share one queue: each job starts when what it reads is finished (Runner's `after`), so the
grid's first trainings run while the slower weights are still being built.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from tispipe.artifacts.atomic import atomic_write_json, atomic_write_text
from tispipe.config_files import config_dict
from tispipe.configs import ESTIMATION_METHODS, EstimateConfig, EvalConfig, ExperimentConfig, TrainConfig, check_options
from tispipe.data.held_out import carve_files
from tispipe.errors import TispipeError
from tispipe.studies import generated_block, kl_matched
from tispipe.studies.jobs import Runner, check_study, command_line, say
from tispipe.studies.results_page import WEIGHTLESS_LOSSES, method_rows, render, render_tables, seed_metrics, slug, write_figures

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
    # U(L,U) shifted to each side's mean estimated weight: the same mean weight without the information
    ("TIS-DPO(D) random weights, mean-matched", "dpo", {"loss": "tisdpo", "weighting": "random-matched"}),
    ("TIS-DPO(D) equal weights", "dpo", {"loss": "tisdpo", "weighting": "equal"}),
    ("TIS-DPO(D) without eta", "dpo", {"loss": "tisdpo", "eta_coef": 0.0}),
    # other ways from the same r to weights (tispipe.core.weights), re-derived from the dpo shards by train
    ("TIS-DPO(D) calibrated", "dpo", {"loss": "tisdpo", "transform": "calibrated"}),
    ("TIS-DPO(D) top 20%", "dpo", {"loss": "tisdpo", "transform": "top", "top_fraction": 0.2}),
    # the "DPO vs reference" estimator: pi+ = the dpo pair's pi+, pi- = the base itself (one trained model)
    ("TIS-DPO(D vs base)", "dpo-vs-base", {"loss": "tisdpo"}),
]
# TIS-DPO(D) with one part changed (paper Table 2): trained at TIS-DPO(D)'s chosen lr, not a grid of their own, so each
# row differs from the full method in that part alone (the mean-matched weights: the same mean weight at the same lr)
ABLATIONS = ("TIS-DPO(D) random weights U(L,U)", "TIS-DPO(D) random weights U(0.7,1.3)", "TIS-DPO(D) random weights, mean-matched",
             "TIS-DPO(D) equal weights", "TIS-DPO(D) without eta")
# the shards a method can train on: one per estimation method, and pi+ of the dpo pair against the base
ESTIMATORS = (*ESTIMATION_METHODS, "dpo-vs-base")
DPO_PAIR_SCORINGS = ("dpo-vs-base",)
# (name, compute_weights options) of the transforms the weight-quality table also measures
TRANSFORMS = [("exp", None), ("calibrated", {"transform": "calibrated"}), ("top 20%", {"transform": "top", "fraction": 0.2})]


QUICK = dict(seeds=2, lrs="1e-5,1e-4", max_steps=4, batch_size=4, limit=32, eval_limit=16, num_prompts=4, temperatures="0", max_new_tokens=16, jobs=1)


def quick_settings(cfg: ExperimentConfig) -> ExperimentConfig:
    """The --quick variant: tiny everything, so CI can check that each method runs and the tables are written.
    It sets only the options left at their defaults: one given (and checked, tispipe.option_rules) is kept."""
    defaults = {f.name: f.default for f in fields(ExperimentConfig)}
    return replace(cfg, **{name: value for name, value in QUICK.items() if getattr(cfg, name) == defaults[name]})


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
    # DPO: the win rates compare against it; the generated block trains its methods at their main-table lr
    needed = ["DPO", *(dict.fromkeys(generated_block.LR_OF.values()) if cfg.generated else []),
              *(["TIS-DPO(D)"] if set(names) & set(ABLATIONS) else [])]
    names += [n for n in needed if n not in names]
    return [m for m in METHODS if m[0] in names]


def needed_estimators(methods) -> list[str]:
    """The estimates the methods train on, in ESTIMATORS order: each weighted method's own (dpo too for the
    scorings with the dpo pair's models); the dpo estimate only for the weightless losses when nothing else runs."""
    weighted = {m[1] for m in methods if m[2].get("loss") not in WEIGHTLESS_LOSSES}
    needed = weighted | ({"dpo"} if weighted & set(DPO_PAIR_SCORINGS) or not weighted else set())
    return [e for e in ESTIMATORS if e in needed]


def shard_estimator(method, estimators: list[str]) -> str:
    """The estimate a method trains on: its own, or for a weightless loss whose own is not built, the first that is."""
    _, estimator, fields = method
    return estimator if estimator in estimators or fields.get("loss") not in WEIGHTLESS_LOSSES else estimators[0]


def learning_rates(cfg: ExperimentConfig) -> list[float]:
    """--lrs as floats, ascending."""
    try:
        lrs = sorted({float(v) for v in cfg.lrs.split(",") if v.strip()})
    except ValueError:
        raise TispipeError(f"--lrs must be comma-separated numbers, not {cfg.lrs!r}") from None
    if not lrs or not all(0 < lr < float("inf") for lr in lrs):
        raise TispipeError(f"--lrs must be positive finite numbers, not {cfg.lrs!r}")
    return lrs


# ---------------------------------------------------------------- the jobs' configs


def _scoring(cfg: ExperimentConfig, estimator: str, out: Path) -> dict[str, str]:
    """The estimate options of `estimator`: its method, and for dpo-vs-base pi+/pi- as models already built
    (the dpo pair's pi+ against the base)."""
    if estimator == "dpo-vs-base":
        return {"method": "dpo", "pos_model": str(out / "weights-dpo" / "contrast" / "pos"), "neg_model": cfg.base}
    return {"method": estimator}


def estimate_config(cfg: ExperimentConfig, estimator: str, out: Path) -> EstimateConfig:
    """Token weights of the training pairs (validation split removed), from pi+/pi- made by `estimator`."""
    return EstimateConfig(data=str(out / "data" / "train.jsonl"), model=cfg.base, **_scoring(cfg, estimator, out),
                          out=str(out / f"weights-{estimator}"), limit=cfg.limit, lora_r=cfg.lora_r, contrast_preset=cfg.contrast_preset)


def held_out_estimate_config(cfg: ExperimentConfig, estimator: str, out: Path) -> EstimateConfig:
    """The same pi+/pi- (for prompt: the same system prompts) scoring the test pairs."""
    options = _scoring(cfg, estimator, out)
    if estimator in ("sft", "dpo"):
        contrast = out / f"weights-{estimator}" / "contrast"
        options |= {"pos_model": str(contrast / "pos"), "neg_model": str(contrast / "neg")}
    return EstimateConfig(data=str(out / "data" / "test.jsonl"), model=cfg.base, **options,
                          out=str(out / "weights-test" / estimator), overwrite=True, limit=cfg.eval_limit)


def train_config(cfg: ExperimentConfig, method: tuple[str, str, dict[str, Any]], lr: float, seed: int, shards: Path, out: Path) -> TrainConfig:
    """One method's training at `lr` for one seed on `shards` into `out`: its own fields plus the budget every method shares."""
    _, _, fields = method
    return TrainConfig(shards=str(shards), model=cfg.base, out=str(out), **fields, lora_r=cfg.lora_r,
                       lr=lr, batch_size=cfg.batch_size, threads=cfg.threads, max_steps=cfg.max_steps, seed=seed, resume=True)


def eval_config(cfg: ExperimentConfig, models: list[Path], baseline: Path, seed: int, out: Path, split: str) -> EvalConfig:
    """The base and `models` side by side on OUT/data/<split>.jsonl, win rates against `baseline` (DPO)."""
    return EvalConfig(model=[cfg.base, *map(str, models)], ref=cfg.base,
                      baseline=str(baseline), data=str(Path(cfg.out) / "data" / f"{split}.jsonl"), oracle=cfg.oracle,
                      temperatures=cfg.temperatures, num_prompts=cfg.num_prompts, max_new_tokens=cfg.max_new_tokens, seed=seed,
                      threads=cfg.threads, out=str(out), overwrite=True, limit=cfg.eval_limit)


def model_dir(out: Path, name: str, lr: float, seed: int) -> Path:
    return out / "models" / f"{slug(name)}-lr{lr:g}-seed{seed}"


def validation_dir(out: Path, lr: float) -> Path:
    return out / "eval" / f"validation-lr{lr:g}"


# ---------------------------------------------------------------- the stage


def run(cfg: ExperimentConfig) -> dict[str, Any]:
    """Estimate, choose each method's lr on validation, train the seeds, evaluate and tabulate; returns the report."""
    if cfg.quick:
        cfg = quick_settings(cfg)
    check(cfg)
    lrs = learning_rates(cfg)
    started, out = time.time(), Path(cfg.out)
    methods = selected_methods(cfg)
    gridded = [m for m in methods if m[0] not in ABLATIONS]
    estimators = needed_estimators(methods)
    splits = carve_files(cfg.data, out / "data", cfg.validation_fraction, seed=0)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    runner = Runner(out / "logs", cfg.jobs, cfg.threads)
    shards = lambda method: out / f"weights-{shard_estimator(method, estimators)}"  # noqa: E731
    train_label = lambda name, lr, seed: f"train-{slug(name)}-lr{lr:g}-seed{seed}"  # noqa: E731

    # 1. weights: one estimate per method on the training pairs; its pi+/pi- then score the test pairs. The longest
    #    jobs go first in the queue (the contrasts that train models, the generated block's chain of four).
    weight_jobs = []
    for method in sorted((e for e in estimators if e not in DPO_PAIR_SCORINGS), key=lambda e: e == "prompt"):
        runner.add(f"estimate-{method}", "estimate", estimate_config(cfg, method, out))
        weight_jobs.append(f"estimate-{method}")
    if cfg.generated:  # the generated-data block's pairs, its preference model and the pairs that ranks, and their weights
        weight_jobs += generated_block.prepare(runner, cfg, out)
    for method in estimators:
        if method in DPO_PAIR_SCORINGS:  # they score with the dpo pair's models
            runner.add(f"estimate-{method}", "estimate", estimate_config(cfg, method, out), after=["estimate-dpo"])
            weight_jobs.append(f"estimate-{method}")
        runner.add(f"estimate-{method}-test", "estimate", held_out_estimate_config(cfg, method, out), after=[f"estimate-{method}"])
        weight_jobs.append(f"estimate-{method}-test")

    # 2. the lr grid with seed 0: each training once its shards are built, each lr's eval once its models are
    for lr in lrs:
        for method in gridded:
            runner.add(train_label(method[0], lr, 0), "train", train_config(cfg, method, lr, 0, shards(method), model_dir(out, method[0], lr, 0)),
                       after=[f"estimate-{shard_estimator(method, estimators)}"])
        models = [model_dir(out, name, lr, 0) for name, _, _ in gridded]
        runner.add(f"eval-validation-lr{lr:g}", "evaluate", eval_config(cfg, models, model_dir(out, "DPO", lr, 0), 0, validation_dir(out, lr), "validation"),
                   skip_if_done=validation_dir(out, lr), after=[train_label(name, lr, 0) for name, _, _ in gridded])
    runner.wait()
    timings = {"weights_done": max(runner.finished[label] for label in weight_jobs) - started, "grid_done": time.time() - started}
    grid = grid_metrics(cfg, gridded, lrs)
    chosen = {name: choose_lr(grid[name], cfg.select_by) for name, _, _ in gridded}
    chosen |= {name: chosen["TIS-DPO(D)"] for name, _, _ in methods if name in ABLATIONS}
    say("chosen on validation: " + ", ".join(f"{name} {lr:g}" for name, lr in chosen.items()))
    matched = kl_matched.matched_lrs(grid, chosen, cfg.select_by)
    if matched:
        say("within DPO's validation KL: " + ", ".join(f"{name} {'none' if lr is None else f'{lr:g}'}" for name, lr in matched.items()))
    extra = {name: lr for name, lr in matched.items() if lr is not None and lr != chosen[name]}  # models the main table does not train

    # 3. every method at its chosen lr over the seeds, one test eval per seed with all methods side by side
    t0 = time.time()
    for seed in range(cfg.seeds):
        trainings = [(m, chosen[m[0]]) for m in methods] + [(m, extra[m[0]]) for m in methods if m[0] in extra]
        for method, lr in trainings:
            runner.add(train_label(method[0], lr, seed), "train", train_config(cfg, method, lr, seed, shards(method), model_dir(out, method[0], lr, seed)))
        models = [model_dir(out, name, chosen[name], seed) for name, _, _ in methods] + [model_dir(out, name, lr, seed) for name, lr in extra.items()]
        test_dir = out / "eval" / f"seed-{seed}"
        runner.add(f"eval-seed{seed}", "evaluate", eval_config(cfg, models, model_dir(out, "DPO", chosen["DPO"], seed), seed, test_dir, "test"),
                   skip_if_done=test_dir, after=[train_label(m[0], lr, seed) for m, lr in trainings])
        if cfg.generated:
            labels = []
            for method in generated_block.METHODS:
                lr = generated_block.lr(method[0], chosen)
                labels.append(f"train-generated-{slug(method[0])}-lr{lr:g}-seed{seed}")
                runner.add(labels[-1], "train", train_config(cfg, method, lr, seed, generated_block.weights_dir(out, method[1]),
                                                             generated_block.model_dir(out, method[0], lr, seed)))
            models = [generated_block.model_dir(out, name, generated_block.lr(name, chosen), seed) for name, _, _ in generated_block.METHODS]
            evaluation = eval_config(cfg, models, generated_block.model_dir(out, "DPO", chosen["DPO"], seed), seed, out / "eval" / f"generated-seed-{seed}", "test")
            runner.add(f"eval-generated-seed{seed}", "evaluate", evaluation, skip_if_done=out / "eval" / f"generated-seed-{seed}", after=labels)
    runner.finish()
    timings["seeds"] = time.time() - t0
    timings["total"] = time.time() - started

    report = collect(cfg, methods, estimators, lrs, grid, chosen, splits, timings, runner.commands)
    if matched:
        report["kl_matched"] = kl_matched.collect(seed_reports(cfg), methods, cfg.base, chosen, matched, grid,
                                                  lambda name, lr, seed: model_dir(out, name, lr, seed))
    if cfg.generated:
        report["generated"] = generated_block.collect(cfg, out, chosen)
    order = [m[0] for m in METHODS]
    text = render(report, order, list(ESTIMATORS))
    for folder in [out, *([Path(cfg.results)] if cfg.results else [])]:
        folder.mkdir(parents=True, exist_ok=True)
        write_figures(report, folder)
        atomic_write_json(folder / "report.json", report)
        atomic_write_text(folder / "results.md", text)
    print(render_tables(report, order, list(ESTIMATORS)))
    say(f"Wrote {out / 'results.md'}{' and ' + str(Path(cfg.results) / 'results.md') if cfg.results else ''} in {timings['total'] / 60:.1f} min")
    return report


SELECT_BY = ("oracle_reward", "pref_accuracy")


def check(cfg: ExperimentConfig) -> None:
    from tispipe.contrast_presets import PRESETS
    from tispipe.option_rules import check_oracle

    check_study(cfg)
    check_options(cfg, at_least_one=("seeds", "batch_size", "num_prompts", "max_new_tokens", "max_steps", "limit", "eval_limit"),
                  non_negative=("lora_r",), choices={"select_by": SELECT_BY, "contrast_preset": tuple(PRESETS)})
    check_oracle(cfg.oracle)
    if cfg.generated and cfg.oracle != "toy":  # its label noise is counted with the toy oracle (generated_block.label_noise)
        raise TispipeError(f"the generated-data block needs --oracle toy, not {cfg.oracle!r}", hint="add --no-generated")


# ---------------------------------------------------------------- choosing the learning rates


def grid_metrics(cfg: ExperimentConfig, methods, lrs: list[float]) -> dict[str, dict[str, dict[str, float | None]]]:
    """{method: {lr: the validation eval's metrics of its seed-0 model}} (tispipe.studies.results_page.seed_metrics)."""
    out = Path(cfg.out)
    grid: dict[str, dict[str, dict[str, float | None]]] = {name: {} for name, _, _ in methods}
    for lr in lrs:
        results = json.loads((validation_dir(out, lr) / "report.json").read_text(encoding="utf-8"))["results"]
        for name, _, _ in methods:
            grid[name][f"{lr:g}"] = seed_metrics(results[str(model_dir(out, name, lr, 0))])
    return grid


def choose_lr(by_lr: dict[str, dict[str, float | None]], select_by: str = "oracle_reward") -> float:
    """The lr with the highest validation `select_by` (oracle reward: pooled over the temperatures); ties to the smaller lr."""
    best = kl_matched.best_lr(by_lr, select_by)
    if best is None:
        raise TispipeError(f"no learning rate of the grid has a validation {select_by.replace('_', ' ')}",
                           hint="the validation evals sampled no responses (--num-prompts 0?)")
    return best


# ---------------------------------------------------------------- the report


def seed_reports(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Each seed's test eval report, seed order."""
    return [json.loads((Path(cfg.out) / "eval" / f"seed-{seed}" / "report.json").read_text(encoding="utf-8")) for seed in range(cfg.seeds)]


def collect(cfg: ExperimentConfig, methods, estimators: list[str], lrs: list[float], grid, chosen: dict[str, float], splits: dict[str, int],
            timings: dict[str, float], commands: list[str]) -> dict[str, Any]:
    import torch

    from tispipe.artifacts.weight_quality import weight_quality

    out = Path(cfg.out)
    rows = method_rows(seed_reports(cfg), methods, cfg.base, lambda name, seed: model_dir(out, name, chosen[name], seed))
    for name in chosen:
        rows[name]["lr"] = chosen[name]
    auc: dict[str, Any] = {}
    keep = lambda quality: {k: v for k, v in quality.items() if k.endswith("_auc") or k == "labelled_rows"}  # noqa: E731
    for method in estimators:
        auc[method] = {name: {"train": keep(weight_quality(out / f"weights-{method}", options)), "test": keep(weight_quality(out / "weights-test" / method, options))}
                       for name, options in TRANSFORMS}
    steps = json.loads((model_dir(out, "DPO", chosen["DPO"], 0) / "train_info.json").read_text(encoding="utf-8")).get("steps")
    return {
        "config": config_dict(cfg),
        "command": command_line("experiment", cfg),
        "machine": {"cpu_cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()},
        "budget": {"lrs": lrs, "batch_size": cfg.batch_size, "steps": steps, "seeds": cfg.seeds, "train_pairs": splits["train"] if cfg.limit is None else cfg.limit,
                   "validation_pairs": splits["validation"], "validation": "shipped" if (Path(cfg.data) / "validation.jsonl").is_file() else "carved"},
        "eval": {"temperatures": cfg.temperatures, "num_prompts": cfg.num_prompts, "max_new_tokens": cfg.max_new_tokens, "test_pairs": cfg.eval_limit or "all"},
        "methods": rows,
        "grid": grid,
        "weight_auc": auc,
        "timing_seconds": timings,
        "commands": commands,
    }
