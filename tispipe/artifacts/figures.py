"""PNG figures of what the stages measured, each written beside a JSON file of exactly the numbers it draws.

- `training_figure`: a training run's loss, weighted and unweighted rewards of chosen and rejected (the
  paper's Fig. 3 right), margins, accuracy and KL over steps, from OUT/metrics.jsonl;
- `weights_figure`: histograms of w_t and r_t per side and, where the data has token labels, the ROC
  curves of w_t and r_t at finding the decisive tokens, from a shard folder;
- `temperature_figure`: each model's reward per sampling temperature (Fig. 3 left), and
  `reward_kl_figure`: reward against KL to the reference, from an eval report;
- `methods_figure`: the experiment's oracle reward per method, mean and std over seeds.

Each function takes the numbers (plain lists and dicts), draws with matplotlib's Agg backend (no display
needed) and writes NAME.png and NAME.json atomically. The JSON is the figure's source of truth: a test
can read it back and compare it with the report the numbers came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tispipe.artifacts.atomic import atomic_path, atomic_write_text

SIDES = ("chosen", "rejected")
COLOURS = {"chosen": "#1b7837", "rejected": "#b2182b"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, data: dict[str, Any]) -> Path:
    """Write `fig` as PATH (PNG) and `data` as PATH with .json, both whole or not at all; close the figure."""
    plt = _pyplot()
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    atomic_write_text(path.with_suffix(".json"), json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def _short(name: str) -> str:
    return Path(name).name or name


# ---------------------------------------------------------------- train


TRAINING_PANELS = [
    ("loss", ["loss"]),
    ("reward (beta * sum of log-ratios)", ["rewards/chosen", "rewards/rejected"]),
    ("weighted log-ratio sum", ["logratio/chosen_weighted", "logratio/rejected_weighted"]),
    ("reward margin", ["rewards/margins"]),
    ("reward accuracy", ["rewards/accuracies"]),
    ("KL to the reference (per pair)", ["kl/chosen", "kl/rejected"]),
]


def training_figure(records: list[dict[str, Any]], path: Path) -> Path:
    """Six panels over steps, one line per logged metric (those the run logged; a panel with none says so)."""
    plt = _pyplot()
    steps = [r["step"] for r in records]
    data: dict[str, Any] = {"step": steps}
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (title, keys) in zip(axes.flat, TRAINING_PANELS, strict=True):
        drawn = False
        for key in keys:
            values = [r.get(key) for r in records]
            if all(v is None for v in values):
                continue
            data[key] = values
            side = next((s for s in SIDES if s in key), None)
            ax.plot(steps, [float("nan") if v is None else v for v in values], label=key, color=COLOURS.get(side, "#2166ac"), linewidth=1.2)
            drawn = True
            held_out = [(step, r[f"eval/{key}"]) for step, r in zip(steps, records, strict=True) if f"eval/{key}" in r]
            if held_out:  # --eval-data: the same metric on the held-out pairs, at the steps it was measured
                data[f"eval/{key}"] = {"step": [s for s, _ in held_out], "value": [v for _, v in held_out]}
                ax.plot(*zip(*held_out), label=f"eval/{key}", color=COLOURS.get(side, "#2166ac"), marker="o", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if drawn and len(ax.get_lines()) > 1:
            ax.legend(fontsize=8)
        if not drawn:
            ax.text(0.5, 0.5, "not logged by this loss", ha="center", va="center", transform=ax.transAxes, color="grey")
    return save(fig, path, data)


# ---------------------------------------------------------------- estimate


def _thin(curve: dict[str, list[float]], points: int = 400) -> dict[str, list[float]]:
    """At most `points` points of a curve, evenly picked, first and last kept (a PNG shows no more)."""
    n = len(curve["fpr"])
    if n <= points:
        return curve
    picks = sorted({round(i * (n - 1) / (points - 1)) for i in range(points)})
    return {k: [v[i] for i in picks] for k, v in curve.items()}


def weights_figure(stats, path: Path, bins: int = 50) -> Path:
    """Histograms of w_t and r_t per side; with labels, ROC curves of w_t and of the signed r_t.

    `stats`: `weight_quality.read_statistics(...)`, whose fine histograms give these `bins` bins (BINS
    is a multiple of 50) and one ROC point per occupied fine bin.
    """
    from tispipe.artifacts.weight_quality import high_is_decisive
    from tispipe.core.token_histograms import DECISIVE, LABELLED_OTHER

    plt = _pyplot()
    labelled = stats.labelled_rows > 0
    fig, axes = plt.subplots(1, 3 if labelled else 2, figsize=(13 if labelled else 9, 3.8))
    data: dict[str, Any] = {"histograms": {}, "roc": {}}
    for ax, (name, label) in zip(axes, (("weights", "w_t"), ("logratio", "r_t")), strict=False):
        for side in SIDES:
            counts, edges = stats.histograms[f"{side}_{name}"].coarse(bins)
            data["histograms"][f"{side}_{name}"] = {"counts": counts.tolist(), "edges": edges.tolist()}
            ax.stairs(counts, edges, label=side, color=COLOURS[side], fill=False, linewidth=1.2)
        ax.set_title(f"{label} per side", fontsize=10)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    if labelled:
        ax = axes[2]
        for side in SIDES:
            for name, style in (("weights", "-"), ("logratio", ":")):
                curve = _thin(stats.histograms[f"{side}_{name}"].roc(DECISIVE, LABELLED_OTHER, high_is_decisive(side, name)))
                data["roc"][f"{side}_{name}"] = curve
                ax.plot(curve["fpr"], curve["tpr"], style, color=COLOURS[side], label=f"{side}, {'w_t' if name == 'weights' else 'r_t'}")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        ax.set_title("ROC: decisive tokens (helpful in chosen, harmful in rejected)", fontsize=9)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=8)
    return save(fig, path, data)


# ---------------------------------------------------------------- eval


def temperature_figure(report: dict[str, Any], scorer: str, path: Path) -> Path:
    """Mean `scorer` reward per temperature for each model of an eval report (95% interval as error bars)."""
    plt = _pyplot()
    temps = report["temperatures"]
    data: dict[str, Any] = {"temperatures": temps, "scorer": scorer, "models": {}}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in report["models"]:
        gen = report["results"][name]["generation"]
        entries = [gen[f"{t:g}"][f"{scorer}_reward"] for t in temps]
        means = [e["estimate"] for e in entries]
        errors = [[m - e["low"] for m, e in zip(means, entries, strict=True)], [e["high"] - m for m, e in zip(means, entries, strict=True)]]
        data["models"][name] = {"mean": means, "low": [e["low"] for e in entries], "high": [e["high"] for e in entries]}
        ax.errorbar(temps, means, yerr=errors, marker="o", capsize=3, label=_short(name))
    ax.set_xlabel("sampling temperature")
    ax.set_ylabel(f"mean {scorer} reward")
    ax.legend(fontsize=8)
    return save(fig, path, data)


def reward_kl_figure(report: dict[str, Any], scorer: str, path: Path) -> Path:
    """Each model's pooled `scorer` reward against its KL per token to the reference."""
    plt = _pyplot()
    data: dict[str, Any] = {"scorer": scorer, "models": {}}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in report["models"]:
        result = report["results"][name]
        kl, reward = result["likelihood"]["kl_per_token"], result["generation"]["all"][f"{scorer}_reward"]["estimate"]
        data["models"][name] = {"kl_per_token": kl, "reward": reward}
        ax.scatter([kl], [reward], s=40)
        ax.annotate(_short(name), (kl, reward), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("KL to the reference per token")
    ax.set_ylabel(f"mean {scorer} reward (all temperatures)")
    return save(fig, path, data)


# ---------------------------------------------------------------- experiment


def methods_figure(rows: dict[str, Any], names: list[str], path: Path, title: str) -> Path:
    """Oracle reward per method (mean, with the std over seeds as error bars), in `names` order."""
    plt = _pyplot()
    names = [n for n in names if n in rows and rows[n]["oracle_reward"]["mean"] is not None]
    means = [rows[n]["oracle_reward"]["mean"] for n in names]
    stds = [rows[n]["oracle_reward"]["std"] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 4))
    ax.bar(range(len(names)), means, yerr=stds, capsize=3, color=["#999999" if n == "base" else "#2166ac" for n in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("oracle reward (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    return save(fig, path, {"methods": names, "mean": means, "std": stds})


def _lr_axis(ax, lrs: list[float]) -> None:
    """A log x axis labelled at the grid's learning rates only."""
    ax.set_xscale("log")
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs], fontsize=7)
    ax.minorticks_off()


def contrast_study_figure(report: dict[str, Any], path: Path) -> Path:
    """Decision-token AUC of w on validation against the contrast lr: one panel per method, one line per
    (epochs, beta) and side (chosen solid, rejected dashed)."""
    plt = _pyplot()
    methods = list(dict.fromkeys(r["method"] for r in report["rows"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods), 4), squeeze=False)
    data: dict[str, Any] = {}
    for ax, method in zip(axes[0], methods):
        rows = [r for r in report["rows"] if r["method"] == method]
        for number, budget in enumerate(dict.fromkeys((r["epochs"], r["beta"]) for r in rows)):
            series = sorted((r for r in rows if (r["epochs"], r["beta"]) == budget), key=lambda r: r["lr"])
            name = f"{budget[0]:g} epoch(s)" + (f", beta {budget[1]:g}" if budget[1] is not None else "")
            for side, style, marker in (("chosen", "-", "o"), ("rejected", "--", "s")):
                lrs, values = [r["lr"] for r in series], [r["validation"][f"w_decision_{side}"] for r in series]
                ax.plot(lrs, values, style, marker=marker, color=f"C{number}", label=f"{name}: {side}")
                data[f"{method} {name} {side}"] = {"lr": lrs, "auc": values}
        ax.axhline(0.9, color="grey", lw=0.8, ls=":")
        _lr_axis(ax, sorted({r["lr"] for r in rows}))
        ax.set_xlabel("contrast learning rate")
        ax.set_ylabel("decision-token AUC of w (validation)")
        ax.set_title(f"pi+/pi- built by {method}" + (f" (chosen: {report['chosen'][method]})" if method in report["chosen"] else ""), fontsize=9)
        ax.legend(fontsize=7)
    return save(fig, path, data)


def lr_grid_figure(grid: dict[str, Any], rows: dict[str, Any], groups: list[tuple[str, list[str]]], path: Path) -> Path:
    """Validation oracle reward (seed 0) against the lr, one line per method and one panel per (title, names)
    group; each method's chosen lr carries its test-split mean ± std over the seeds as an error bar."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), sharey=True, squeeze=False)
    data: dict[str, Any] = {}
    for ax, (title, group) in zip(axes[0], groups):
        ax.set_title(title, fontsize=8)
        for number, name in enumerate([n for n in group if n in grid]):
            lrs = sorted(grid[name], key=float)
            values = [grid[name][lr]["oracle_reward"] for lr in lrs]
            (line,) = ax.plot([float(lr) for lr in lrs], values, marker="o", ms=3, label=name, color=f"C{number % 10}")
            test = rows[name]["oracle_reward"]
            if rows[name].get("lr") and test["mean"] is not None:
                ax.errorbar([rows[name]["lr"]], [test["mean"]], yerr=[test["std"] or 0.0], fmt="s", ms=7, mfc="none", color=line.get_color(), capsize=4)
            data[name] = {"lr": [float(lr) for lr in lrs], "validation_oracle_reward": values, "chosen_lr": rows[name].get("lr"), "test": test}
        _lr_axis(ax, sorted({float(lr) for name in group if name in grid for lr in grid[name]}))
        ax.set_xlabel("learning rate")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("oracle reward")
    title = "Oracle reward against the lr: validation prompts, seed 0 (line);{}test split at the chosen lr (square, mean ± std over seeds)"
    fig.suptitle(title.format(" " if len(groups) > 1 else "\n"), fontsize=9)  # one panel is too narrow for one line
    return save(fig, path, data)


def frontier_figure(grid: dict[str, Any], rows: dict[str, Any], names: list[str], path: Path) -> Path:
    """Validation oracle reward against KL per token (seed 0), one point per lr joined in lr order: the reward-KL frontier."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    data: dict[str, Any] = {}
    colours = plt.get_cmap("tab20")
    for number, name in enumerate([n for n in names if n in grid]):
        lrs = sorted(grid[name], key=float)
        kls = [grid[name][lr]["kl_per_token"] for lr in lrs]
        rewards = [grid[name][lr]["oracle_reward"] for lr in lrs]
        ax.plot(kls, rewards, marker="o", ms=3, label=name, color=colours(number % 20), ls="-" if number < 6 else "--")
        data[name] = {"lr": [float(lr) for lr in lrs], "kl_per_token": kls, "oracle_reward": rewards}
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("KL(pi || base) per token, validation pairs")
    ax.set_ylabel("oracle reward, validation prompts")
    ax.set_title("Reward against KL over the lr grid (seed 0)", fontsize=9)
    ax.legend(fontsize=6)
    return save(fig, path, data)
