"""`tispipe contrast-study`: which budget builds a contrastive pair whose weights find the decision tokens.

The grids were fixed before their first runs: GRID for the toy base (every weight trained), LORA_GRID for LoRA
adapters on a pretrained model (--lora-r above 0; around the `lora` preset). For each setting of --estimators:

1. carve a validation split out of train.jsonl (tispipe.data.held_out.carve_files); the test split is not read;
2. `tispipe estimate` on the remaining training pairs builds pi+/pi- with the setting and scores those pairs;
3. the same pi+/pi- score the validation pairs; for dpo also (pi+, base) and (base, pi-), the two halves
   of r = [log pi+ - log ref] + [log ref - log pi-], which say which model finds which side's tokens
   ((pi+, base) is also the "DPO vs reference" estimator, one trained model instead of two);
4. each method's setting is chosen by the weaker side's decision-token AUC of w on validation
   (min over chosen and rejected), ties to the earlier grid row; report.json, contrast-study.md and
   contrast-study.png are written.

The decision-token AUC ranks the first token of each labelled span (a helpful phrase in a chosen
response, a harmful one in a rejected response) against the unlabelled tokens (tispipe.artifacts.weight_quality).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from tispipe.artifacts.atomic import atomic_write_json, atomic_write_text
from tispipe.configs import ContrastStudyConfig, EstimateConfig, check_options
from tispipe.data.held_out import carve_files
from tispipe.errors import TispipeError
from tispipe.studies.jobs import Runner, check_study, command_line, say

# (method, lr, epochs, beta); batch sizes are the paper's (sft 32, dpo 16). The paper's own settings are
# sft 5e-5 x 3 epochs and dpo 1e-5 x 1 epoch, beta 0.1 (tispipe.contrast_presets.PAPER_DEFAULTS).
GRID: list[tuple[str, float, float, float]] = [
    ("dpo", 5e-6, 1.0, 0.1),
    ("dpo", 1e-5, 1.0, 0.1),
    ("dpo", 2e-5, 1.0, 0.1),
    ("dpo", 5e-5, 1.0, 0.1),
    ("dpo", 1e-5, 1.0, 0.5),
    ("dpo", 2e-5, 1.0, 0.5),
    ("sft", 2e-5, 3.0, 0.1),
    ("sft", 5e-5, 3.0, 0.1),
    ("sft", 5e-5, 1.0, 0.1),
    ("sft", 2e-4, 1.0, 0.1),
]
# LoRA on a pretrained model, batch 16 (the `lora` preset's): its settings (sft 2e-4, dpo 1e-4, one epoch each), a larger
# lr, and three epochs at the preset's lr and below
LORA_GRID: list[tuple[str, float, float, float]] = [
    ("sft", 2e-4, 1.0, 0.1),
    ("sft", 5e-4, 1.0, 0.1),
    ("sft", 2e-4, 3.0, 0.1),
    ("sft", 1e-4, 3.0, 0.1),
    ("dpo", 1e-4, 1.0, 0.1),
    ("dpo", 2e-4, 1.0, 0.1),
    ("dpo", 1e-4, 3.0, 0.1),
]
QUICK_GRID = [("dpo", 1e-5, 0.5, 0.1), ("sft", 5e-5, 0.5, 0.1)]
# (scoring name, pi+, pi-): "pair" is the estimate itself; the halves only for dpo
SCORINGS = [("pair", "pos", "neg"), ("pos-vs-base", "pos", "base"), ("base-vs-neg", "base", "neg")]
AUC_COLUMNS = {  # report key -> weight_quality key
    "w_decision_chosen": "chosen_helpful_decision_auc", "w_decision_rejected": "rejected_harmful_decision_auc",
    "r_decision_chosen": "chosen_helpful_decision_logratio_auc", "r_decision_rejected": "rejected_harmful_decision_logratio_auc",
    "w_all_chosen": "chosen_helpful_auc", "w_all_rejected": "rejected_harmful_auc",
}


def label(setting: tuple[str, float, float, float]) -> str:
    method, lr, epochs, beta = setting
    return f"{method}-lr{lr:g}-ep{epochs:g}" + (f"-beta{beta:g}" if method == "dpo" else "")


def run(cfg: ContrastStudyConfig) -> dict[str, Any]:
    """Build, score and tabulate every setting of the grid; returns the report (also OUT/report.json)."""
    check_study(cfg)
    check_options(cfg, at_least_one=("limit", "eval_limit"), non_negative=("lora_r",))
    started, out = time.time(), Path(cfg.out)
    grid = settings(cfg)
    limit = 48 if cfg.quick else cfg.limit
    splits = carve_files(cfg.data, out / "data", cfg.validation_fraction, seed=0)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    runner = Runner(out / "logs", cfg.jobs, cfg.threads)

    for setting in grid:
        runner.add(f"build-{label(setting)}", "estimate", build_config(cfg, setting, out, limit))
    runner.wait()
    for setting in grid:
        for scoring, pos, neg in SCORINGS if setting[0] == "dpo" else SCORINGS[:1]:
            runner.add(f"validation-{label(setting)}-{scoring}", "estimate", validation_config(cfg, setting, scoring, pos, neg, out, limit))
    runner.finish()

    report = collect(cfg, grid, out, splits, time.time() - started, runner.commands)
    text = render(report)
    for folder in [out, *([Path(cfg.results)] if cfg.results else [])]:
        folder.mkdir(parents=True, exist_ok=True)
        from tispipe.artifacts.figures import contrast_study_figure

        contrast_study_figure(report, folder / "contrast-study.png")
        atomic_write_json(folder / "contrast-study.json", report)
        atomic_write_text(folder / "contrast-study.md", text)
    say(f"Wrote {out / 'contrast-study.md'} in {(time.time() - started) / 60:.1f} min")
    return report


def settings(cfg: ContrastStudyConfig) -> list[tuple[str, float, float, float]]:
    """The grid's settings of --estimators: QUICK_GRID with --quick, else LORA_GRID with --lora-r above 0, else GRID."""
    return [s for s in (QUICK_GRID if cfg.quick else LORA_GRID if cfg.lora_r else GRID) if s[0] in estimators(cfg)]


def estimators(cfg: ContrastStudyConfig) -> list[str]:
    names = [n.strip() for n in cfg.estimators.split(",") if n.strip()]
    if not names or any(n not in ("sft", "dpo") for n in names):
        raise TispipeError(f"--estimators {cfg.estimators!r}: give sft, dpo or both")
    return names


def build_config(cfg: ContrastStudyConfig, setting, out: Path, limit: int | None) -> EstimateConfig:
    method, lr, epochs, beta = setting
    preset = {"lora_r": cfg.lora_r, "contrast_preset": "lora"} if cfg.lora_r else {}  # the preset gives the batch size
    return EstimateConfig(data=str(out / "data" / "train.jsonl"), model=cfg.base, out=str(out / "runs" / label(setting)), method=method,
                          contrast_lr=lr, contrast_epochs=epochs, contrast_beta=beta, limit=limit, **preset)


def validation_config(cfg: ContrastStudyConfig, setting, scoring: str, pos: str, neg: str, out: Path, limit: int | None) -> EstimateConfig:
    contrast = out / "runs" / label(setting) / "contrast"
    path = {"pos": str(contrast / "pos"), "neg": str(contrast / "neg"), "base": cfg.base}
    return EstimateConfig(data=str(out / "data" / "validation.jsonl"), model=cfg.base, method=setting[0], pos_model=path[pos], neg_model=path[neg],
                          out=str(out / "validation" / f"{label(setting)}-{scoring}"), overwrite=True, limit=cfg.eval_limit if cfg.eval_limit else limit)


def aucs(folder: Path) -> dict[str, float | None]:
    from tispipe.artifacts.weight_quality import weight_quality

    quality = weight_quality(folder)
    return {key: quality.get(source) for key, source in AUC_COLUMNS.items()}


def collect(cfg: ContrastStudyConfig, grid, out: Path, splits: dict[str, int], seconds: float, commands: list[str]) -> dict[str, Any]:
    rows = []
    for setting in grid:
        method, lr, epochs, beta = setting
        run_folder = out / "runs" / label(setting)
        build = json.loads((run_folder / "manifest.json").read_text(encoding="utf-8"))["contrast"]
        log = run_folder / "estimate-run.json"
        build_seconds = json.loads(log.read_text(encoding="utf-8")).get("contrast_seconds") if log.is_file() else None
        scorings = {name: aucs(out / "validation" / f"{label(setting)}-{name}") for name, _, _ in (SCORINGS if method == "dpo" else SCORINGS[:1])}
        validation = scorings["pair"]
        rows.append({
            "label": label(setting), "method": method, "lr": lr, "epochs": epochs, "beta": beta if method == "dpo" else None,
            "batch_size": build["settings"]["batch_size"], "build_seconds": build_seconds,
            "validation": validation, "train": aucs(run_folder), "halves": {k: v for k, v in scorings.items() if k != "pair"},
            "score": _score(validation),
        })
    chosen = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        candidates = [r for r in rows if r["method"] == method and r["score"] is not None]
        if candidates:
            chosen[method] = max(candidates, key=lambda r: r["score"])["label"]  # max keeps the first of equal scores
    from tispipe.contrast_presets import PAPER_DEFAULTS

    return {"config": dataclasses.asdict(cfg), "command": command_line("contrast-study", cfg), "splits": splits, "rows": rows, "chosen": chosen, "paper_defaults": PAPER_DEFAULTS,
            "seconds": seconds, "commands": commands, "selection": "max over settings of min(chosen, rejected) decision-token AUC of w, validation split"}


def _score(validation: dict[str, float | None]) -> float | None:
    sides = [validation["w_decision_chosen"], validation["w_decision_rejected"]]
    return None if None in sides else min(sides)


def _f(value: float | None) -> str:
    return _g(value, ".3f")


def _g(value: float | None, spec: str = "g") -> str:
    return "-" if value is None else format(value, spec)


def render(report: dict[str, Any]) -> str:
    """contrast-study.md: the table, the choice, the two halves of r for dpo, and how it was run."""
    splits, rows = report["splits"], report["rows"]
    lines = [
        "# Contrast study: which budget builds pi+/pi- whose weights find the decision tokens",
        "_Written by `tispipe contrast-study`; do not edit by hand (re-run the command)._" + (
            "\n\n**This is a `--quick` smoke run: the numbers mean nothing.**" if report["config"]["quick"] else ""),
        f"pi+/pi- are trained on {report['config']['limit'] or splits['train']} training pairs"
        + (f" as LoRA adapters of rank {report['config']['lora_r']} on `{report['config']['base']}`" if report["config"].get("lora_r") else "")
        + f" and scored on {min(splits['validation'], report['config'].get('eval_limit') or splits['validation'])} validation pairs carved "
        f"from train.jsonl ({report['config']['validation_fraction']:g} by a seeded hash of pair_id); the test split is not read. "
        "Weights use the paper's Eq. 19 (exp, clamp [-0.5, 1.5]). *decision* = AUC of the first token of each labelled span "
        "against the unlabelled tokens; *all* = every token of the spans. Selection: " + report["selection"] + ".",
    ]
    table = [
        "| setting | lr | epochs | beta | batch | build s | w decision chosen | w decision rejected | r decision chosen | "
        "r decision rejected | w all chosen | w all rejected | w decision chosen, train | w decision rejected, train |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v, t = r["validation"], r["train"]
        mark = " **(chosen)**" if report["chosen"].get(r["method"]) == r["label"] else ""
        table.append(f"| {r['label']}{mark} | {r['lr']:g} | {r['epochs']:g} | {_g(r['beta'])} | {r['batch_size']} | "
                     f"{_g(r['build_seconds'], '.0f')} | {_f(v['w_decision_chosen'])} | {_f(v['w_decision_rejected'])} | "
                     f"{_f(v['r_decision_chosen'])} | {_f(v['r_decision_rejected'])} | {_f(v['w_all_chosen'])} | {_f(v['w_all_rejected'])} | "
                     f"{_f(t['w_decision_chosen'])} | {_f(t['w_decision_rejected'])} |")
    lines += ["\n".join(table), "![decision-token AUC of w against the contrast budget](contrast-study.png)"]
    halves = [r for r in rows if r["halves"]]
    if halves:
        lines += [
            "### The two halves of r for dpo (validation, decision-token AUC of r)",
            "r = [log pi+ - log base] + [log base - log pi-]. Each half is scored as its own pair of models; "
            "*pi+ vs base* is also the \"DPO vs reference\" estimator (one trained model).",
        ]
        table = ["| setting | pi+ vs pi-: chosen | rejected | pi+ vs base: chosen | rejected | base vs pi-: chosen | rejected |", "|---|---|---|---|---|---|---|"]
        for r in halves:
            p, a, b = r["validation"], r["halves"]["pos-vs-base"], r["halves"]["base-vs-neg"]
            table.append(f"| {r['label']} | {_f(p['r_decision_chosen'])} | {_f(p['r_decision_rejected'])} | {_f(a['r_decision_chosen'])} | "
                         f"{_f(a['r_decision_rejected'])} | {_f(b['r_decision_chosen'])} | {_f(b['r_decision_rejected'])} |")
        lines.append("\n".join(table))
    lines += ["## What the numbers say", "\n".join(verdict(report)), "## How this was run",
              f"`{report['command']}`: {report['seconds'] / 60:.1f} min; the commands it ran are in contrast-study.json (`commands`)."]
    return "\n\n".join(lines) + "\n"


def verdict(report: dict[str, Any]) -> list[str]:
    """Sentences computed from the table."""
    from tispipe.contrast_presets import PAPER_DEFAULTS

    by_label = {r["label"]: r for r in report["rows"]}
    out = []
    for method, chosen in report["chosen"].items():
        best = by_label[chosen]
        paper = PAPER_DEFAULTS[method]
        paper_row = next((r for r in report["rows"] if r["method"] == method and r["lr"] == paper["lr"] and r["epochs"] == paper["epochs"]
                          and r["beta"] in (None, 0.1)), None)
        sentence = (f"- {method}: the best setting is {chosen}, weaker-side decision-token AUC of w {best['score']:.3f} "
                    f"(chosen {best['validation']['w_decision_chosen']:.3f}, rejected {best['validation']['w_decision_rejected']:.3f})")
        if paper_row is not None and paper_row is not best:
            sentence += f"; the paper's setting ({paper_row['label']}) gives {paper_row['score']:.3f}"
        elif paper_row is best:
            sentence += "; it is the paper's setting"
        out.append(sentence + ".")
    if report["config"].get("lora_r"):
        out.append("- The `lora` preset of `tispipe estimate` (`--contrast-preset lora`) builds with each method's first setting of this grid.")
    else:
        out.append("- These choices are the small-model defaults of `tispipe estimate` (`--contrast-preset small`, tispipe.contrast_presets.SMALL_MODEL_DEFAULTS); "
                   "`--contrast-preset paper` gives the paper's settings.")
    for r in report["rows"]:
        if r["halves"] and report["chosen"].get("dpo") == r["label"]:
            a, b = r["halves"]["pos-vs-base"], r["halves"]["base-vs-neg"]
            out.append(f"- In {r['label']}, pi+ alone (against the base) ranks chosen decision tokens at {_f(a['r_decision_chosen'])} and rejected ones at "
                       f"{_f(a['r_decision_rejected'])}; pi- alone at {_f(b['r_decision_chosen'])} and {_f(b['r_decision_rejected'])}.")
    return out
