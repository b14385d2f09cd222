"""`tispipe weight-study`: how well each way of estimating the weights finds the labelled tokens of a data set.

Where `contrast-study` searches budgets on the toy task, this runs each estimator once, at the settings
given (`--contrast-preset`, `--lora-r`), on any data folder whose rows carry token spans (data/real):

1. carve or read the validation split (tispipe.data.held_out.carve_files; data/real ships its own, split by prompt);
2. build pi+/pi- on the training pairs with each of --estimators that trains (sft, dpo);
3. score the validation and the test pairs with every scoring: prompt (the base under the two system
   prompts), sft and dpo (pi+ vs pi-), dpo one-sided (each side against the base), and dpo-vs-base
   (pi+ of the dpo pair against the base);
4. tabulate the all-token and decision-token AUCs of w and r per side (tispipe.artifacts.weight_quality), beside the
   surprisal baseline -log base(y_t), which needs no contrast. The best scoring is chosen on validation by
   the weaker side's decision-token AUC of w; the test split only reports.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tispipe.artifacts.atomic import atomic_write_json, atomic_write_text
from tispipe.configs import EstimateConfig, WeightStudyConfig, check_options
from tispipe.data.held_out import carve_files
from tispipe.errors import TispipeError
from tispipe.studies.jobs import Runner, check_study, command_line, say

TRAINED = ("sft", "dpo")
# (scoring, estimator whose models it uses, pi+, pi-, logratio); "base" is the base model itself
SCORINGS = [
    ("prompt", "prompt", None, None, "pair"),
    ("sft", "sft", "pos", "neg", "pair"),
    ("dpo", "dpo", "pos", "neg", "pair"),
    ("dpo one-sided", "dpo", "pos", "neg", "one-sided"),
    ("dpo-vs-base", "dpo", "pos", "base", "pair"),
]
SPLITS = ("validation", "test")
# (report key, weight_quality key)
COLUMNS = {
    f"{what}_{kind}_{side}": f"{side}_{name}{'_decision' if kind == 'decision' else ''}{suffix}_auc"
    for what, suffix in (("w", ""), ("r", "_logratio"), ("surprisal", "_surprisal"))
    for kind in ("decision", "all")
    for side, name in (("chosen", "helpful"), ("rejected", "harmful"))
}


def estimators(cfg: WeightStudyConfig) -> list[str]:
    names = [n.strip() for n in cfg.estimators.split(",") if n.strip()]
    unknown = [n for n in names if n not in ("prompt", *TRAINED)]
    if not names or unknown:
        raise TispipeError(f"--estimators {cfg.estimators!r}: give some of prompt, sft, dpo")
    return names


def run(cfg: WeightStudyConfig) -> dict[str, Any]:
    """Build, score and tabulate; returns the report (also OUT/weights.json, OUT/weights.md and --results)."""
    from tispipe.contrast_presets import PRESETS

    check_study(cfg)
    check_options(cfg, at_least_one=("limit", "eval_limit"), non_negative=("lora_r",), choices={"contrast_preset": tuple(PRESETS)})
    names = estimators(cfg)
    started, out = time.time(), Path(cfg.out)
    splits = carve_files(cfg.data, out / "data", cfg.validation_fraction, seed=0)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    runner = Runner(out / "logs", cfg.jobs, cfg.threads)
    for method in [n for n in names if n in TRAINED]:
        runner.add(f"build-{method}", "estimate", build_config(cfg, method, out))
    runner.wait()
    scorings = [s for s in SCORINGS if s[1] in names]
    for scoring in scorings:
        for split in SPLITS:
            folder = out / "scores" / f"{slug(scoring[0])}-{split}"
            runner.add(f"score-{slug(scoring[0])}-{split}", "estimate", scoring_config(cfg, scoring, split, out), skip_if_done=folder)
    runner.finish()

    report = collect(cfg, scorings, out, splits, time.time() - started, runner.commands)
    text = render(report)
    for folder in [out, *([Path(cfg.results)] if cfg.results else [])]:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "weights.json", report)
        atomic_write_text(folder / "weights.md", text)
    print(text)
    say(f"Wrote {out / 'weights.md'} in {(time.time() - started) / 60:.1f} min")
    return report


def slug(name: str) -> str:
    return name.replace(" ", "-")


def build_config(cfg: WeightStudyConfig, method: str, out: Path) -> EstimateConfig:
    """pi+/pi- of `method` trained on the training pairs (which it also scores)."""
    return EstimateConfig(data=str(out / "data" / "train.jsonl"), model=cfg.base, method=method, out=str(out / "build" / method),
                          limit=cfg.limit, lora_r=cfg.lora_r, contrast_preset=cfg.contrast_preset)


def scoring_config(cfg: WeightStudyConfig, scoring, split: str, out: Path) -> EstimateConfig:
    name, method, pos, neg, logratio = scoring
    contrast = out / "build" / method / "contrast"
    models = {"pos": str(contrast / "pos"), "neg": str(contrast / "neg"), "base": cfg.base}
    given = {"pos_model": models[pos], "neg_model": models[neg]} if pos else {}
    return EstimateConfig(data=str(out / "data" / f"{split}.jsonl"), model=cfg.base, method=method, **given, logratio=logratio,
                          out=str(out / "scores" / f"{slug(name)}-{split}"), overwrite=True, limit=cfg.eval_limit)


def collect(cfg: WeightStudyConfig, scorings, out: Path, splits: dict[str, int], seconds: float, commands: list[str]) -> dict[str, Any]:
    import dataclasses

    from tispipe.artifacts.shards import read_manifest
    from tispipe.artifacts.weight_quality import weight_quality
    from tispipe.contrast_presets import PRESETS

    rows = []
    for name, method, _, _, _ in scorings:
        row: dict[str, Any] = {"scoring": name, "estimator": method}
        for split in SPLITS:
            folder = out / "scores" / f"{slug(name)}-{split}"
            quality, spread = weight_quality(folder), read_manifest(folder)["logratio"]
            row[split] = ({key: quality.get(source) for key, source in COLUMNS.items()} | {"rows": quality["labelled_rows"]}
                          | {f"r_std_{side}": spread[side].get("std") for side in ("chosen", "rejected")})
        rows.append(row)
    ranked = [r for r in rows if _score(r["validation"]) is not None]
    best = max(ranked, key=lambda r: _score(r["validation"]))["scoring"] if ranked else None
    return {"config": dataclasses.asdict(cfg), "command": command_line("weight-study", cfg), "splits": splits, "rows": rows, "best": best,
            "presets": {m: PRESETS[cfg.contrast_preset][m] for m in TRAINED}, "seconds": seconds, "commands": commands,
            "selection": "max over scorings of min(chosen, rejected) decision-token AUC of w, validation split"}


def _score(split: dict[str, Any]) -> float | None:
    sides = [split["w_decision_chosen"], split["w_decision_rejected"]]
    return None if None in sides else min(sides)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(report: dict[str, Any]) -> str:
    """weights.md: the table per split, the choice, and sentences computed from the numbers."""
    cfg, splits = report["config"], report["splits"]
    trained = [m for m in cfg["estimators"].split(",") if m in report["presets"]]  # the prompt estimator trains nothing
    built = (f"pi+/pi- are trained on {min(splits['train'], cfg['limit'] or splits['train'])} training pairs "
             f"(LoRA rank {cfg['lora_r'] or 'none: full fine-tuning'}, preset `{cfg['contrast_preset']}`: "
             + "; ".join(f"{m} lr {report['presets'][m]['lr']:g} x {report['presets'][m]['epochs']:g} epoch, batch {report['presets'][m]['batch_size']}"
                         + (f", beta {report['presets'][m]['beta']:g}" if m == "dpo" else "") for m in trained)
             + ") and score" if trained else "pi+/pi- are the base model under the paper's two system prompts (nothing is trained); they score")
    lines = [
        f"# Weight quality on `{cfg['data']}`: which estimator finds the labelled tokens",
        "_Written by `tispipe weight-study`; do not edit by hand (re-run the command)._",
        f"Base model `{cfg['base']}`. {built}"
        + f" up to {cfg['eval_limit']} pairs of the validation and the test split. Weights are the paper's Eq. 19 "
        "(exp, clamp [-0.5, 1.5]). AUC = how well a score ranks the side's labelled tokens (helpful on chosen, harmful on "
        "rejected) above its other tokens; 0.5 is chance. *decision*: the first token of each labelled span against the "
        "unlabelled tokens; *all*: every token of the spans against the other labelled ones. *surprisal*: -log base(y_t), "
        "a baseline without a contrast; *std of r*: how far pi+ and pi- disagree at all. Selection: " + report["selection"] + ".",
    ]
    header = ("| scoring | w decision chosen | w decision rejected | r decision chosen | r decision rejected | surprisal decision chosen | "
              "surprisal decision rejected | w all chosen | w all rejected | std of r, chosen | std of r, rejected | pairs |")
    for split in SPLITS:
        table = [f"### {split.capitalize()} split", "", header, "|---|" + "---|" * 11]
        for r in report["rows"]:
            v = r[split]
            mark = " **(chosen)**" if split == "validation" and r["scoring"] == report["best"] else ""
            table.append(f"| {r['scoring']}{mark} | " + " | ".join(_f(v[k]) for k in (
                "w_decision_chosen", "w_decision_rejected", "r_decision_chosen", "r_decision_rejected", "surprisal_decision_chosen",
                "surprisal_decision_rejected", "w_all_chosen", "w_all_rejected", "r_std_chosen", "r_std_rejected")) + f" | {v['rows']} |")
        lines.append("\n".join(table))
    lines += ["## What the numbers say", "\n".join(verdict(report)), "## How this was run",
              f"`{report['command']}`: {report['seconds'] / 60:.1f} min; the commands it ran are in weights.json (`commands`)."]
    return "\n\n".join(lines) + "\n"


def verdict(report: dict[str, Any]) -> list[str]:
    """Sentences computed from the tables."""
    by_name = {r["scoring"]: r for r in report["rows"]}
    if report["best"] is None:
        return ["- No scoring has decision-token AUCs on both sides (the data has no labels on one side)."]
    best = by_name[report["best"]]
    v, t = best["validation"], best["test"]
    out = [f"- Chosen on validation: {report['best']} (weaker-side decision-token AUC of w {_score(v):.3f}). On the test split it ranks "
           f"decision tokens at {_f(t['w_decision_chosen'])} (chosen) and {_f(t['w_decision_rejected'])} (rejected)."]
    for side in ("chosen", "rejected"):
        mine, base = t[f"w_decision_{side}"], t[f"surprisal_decision_{side}"]
        if mine is not None and base is not None:
            out.append(f"- {side.capitalize()} side, test: {report['best']}'s weights {'beat' if mine > base else 'do not beat'} the surprisal "
                       f"baseline ({mine:.3f} against {base:.3f}).")
    for name, r in by_name.items():
        if name != report["best"] and _score(r["test"]) is not None:
            out.append(f"- {name}: test decision-token AUC of w {_f(r['test']['w_decision_chosen'])} / {_f(r['test']['w_decision_rejected'])}.")
    return out
