"""The text of an experiment's results: per-seed numbers into mean ± std, the tables, results.md.

Everything here reads the report dict that `tispipe.studies.experiment.collect` builds (also written to
report.json). Rows are listed in `order`, the experiment's method names as
tispipe.studies.experiment.METHODS lists them, and the weight AUC rows in `estimators` order, not in
report.json's (sorted) key order.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from tispipe.core.losses import LOSSES

# Losses that read only the pairs and the reference log-probs from the shards (the same in every estimator's shards)
WEIGHTLESS_LOSSES = tuple(name for name, loss in LOSSES.items() if not loss.weighted)
# the rows of the paper's Table 1; Table 2 holds TIS-DPO(D) and its ablations, the methods named "TIS-DPO(D) ..."
MAIN_TABLE = ["DPO", "IPO", "TDPO2", "TIS-DPO(P)", "TIS-DPO(S)", "TIS-DPO(D)"]
# other weights from the same contrast: transforms of the dpo pair's r, and its pi+ against the base
TRANSFORM_TABLE = ["TIS-DPO(D)", "TIS-DPO(D) calibrated", "TIS-DPO(D) top 20%", "TIS-DPO(D vs base)"]
# the rows of the generated-data block (tispipe.studies.generated_block.METHODS)
RLCD_STAND_IN = "RLCD stand-in (DPO on RM-ranked pairs)"
GENERATED_TABLE = ["DPO", RLCD_STAND_IN, "TIS-DPO(P)", "TIS-DPO(D)"]


def slug(name: str) -> str:
    """A method name as a folder name: `TIS-DPO(D) equal weights` -> `tis-dpo-d-equal-weights`."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (None for one value) of the per-seed values."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "values": []}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None, "values": values}


def seed_metrics(result: dict[str, Any]) -> dict[str, float | None]:
    """The table's numbers for one model in one seed's eval report (generation pooled over the temperatures)."""
    pooled = result.get("generation", {}).get("all", {})
    likelihood = result["likelihood"]
    by_temperature = {t: g["oracle_reward"]["estimate"] for t, g in result.get("generation", {}).items() if t != "all"}
    return {
        "oracle_reward": pooled.get("oracle_reward", {}).get("estimate"),
        "harmful_rate": pooled.get("harmful_rate"),
        "chrf": pooled.get("chrf"),
        "win_rate_vs_dpo": pooled.get("oracle_win_rate", {}).get("rate"),
        "pref_accuracy": likelihood["pref_accuracy"],
        "reward_margin": likelihood.get("reward_margin"),
        "kl_per_token": likelihood["kl_per_token"],
        **{f"oracle_reward_T{t}": v for t, v in by_temperature.items()},
    }


def method_rows(reports: list[dict[str, Any]], methods, base: str, model_dir) -> dict[str, Any]:
    """{name: weights, train overrides, and each table metric as mean_std over the seeds} for the base and
    `methods`, from one eval report per seed; `model_dir(name, seed)` is where a method's model of a seed is."""
    rows: dict[str, Any] = {}
    for name, estimator, fields in [("base", None, {}), *methods]:
        per_seed = [seed_metrics(r["results"][base if name == "base" else str(model_dir(name, seed))]) for seed, r in enumerate(reports)]
        keys = sorted({k for m in per_seed for k in m})
        weights = None if fields.get("loss") in WEIGHTLESS_LOSSES else estimator  # DPO reads no weights, whichever shards it trains on
        rows[name] = {"weights": weights, "train_overrides": fields, **{k: mean_std([m.get(k) for m in per_seed]) for k in keys}}
    return rows


def _cell(entry: dict[str, Any], spec: str, percent: bool = False) -> str:
    if entry is None or entry.get("mean") is None:
        return "n/a"
    scale = 100 if percent else 1
    text = format(entry["mean"] * scale, spec) + ("%" if percent else "")
    if entry.get("std") is not None:
        text += " ± " + format(entry["std"] * scale, spec.lstrip("+"))
    return text


def table(report: dict[str, Any], names: list[str]) -> str:
    rows = [(name, report["methods"][name]) for name in names if name in report["methods"]]
    margin = any("reward_margin" in row for _, row in rows)  # not in reports written before the column was
    header = ["method", "weights", "lr (chosen)", "oracle reward", "harmful", "chrF", "win vs DPO", "pref acc", *(["margin"] if margin else []), "KL/token"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows:
        lines.append("| " + " | ".join([
            name, row["weights"] or "-", f"{row['lr']:g}" if row.get("lr") else "-", _cell(row.get("oracle_reward"), "+.2f"), _cell(row.get("harmful_rate"), ".1f", percent=True),
            _cell(row.get("chrf"), ".3f"), _cell(row.get("win_rate_vs_dpo"), ".3f"), _cell(row.get("pref_accuracy"), ".3f"),
            *([_cell(row.get("reward_margin"), "+.3f")] if margin else []), _cell(row.get("kl_per_token"), ".3f"),
        ]) + " |")
    return "\n".join(lines)


def render_tables(report: dict[str, Any], order: list[str], estimators: list[str]) -> str:
    # report.json is written with sorted keys: order the rows as the paper's tables do, not as the file does
    names = [n for n in ["base", *order] if n in report["methods"]]
    columns = [(f"{side}_{what}{kind}{suffix}_auc", f"{score} {side}, {tokens}")  # weight_quality's keys
               for score, suffix in (("w_t", ""), ("r_t", "_logratio"), ("surprisal", "_surprisal")) for kind, tokens in (("", "all"), ("_decision", "decision"))
               for side, what in (("chosen", "helpful"), ("rejected", "harmful"))]
    auc_lines = ["| estimation | transform | split | " + " | ".join(title for _, title in columns) + " |", "|---|---|---|" + "---|" * len(columns)]
    for method in [m for m in estimators if m in report["weight_auc"]]:
        for transform, by_split in sorted(report["weight_auc"][method].items(), key=lambda item: item[0] != "exp"):  # the paper's first
            for split in ("train", "test"):
                cells = ["same" if transform != "exp" and ("_logratio" in key or "_surprisal" in key) else by_split[split].get(key) for key, _ in columns]
                auc_lines.append(f"| {method} | {transform} | {split} | " + " | ".join(v if isinstance(v, str) else "n/a" if v is None else f"{v:.3f}" for v in cells) + " |")
    auc_lines.append("\nAUC at ranking the decisive tokens (helpful in chosen, harmful in rejected) first: over all their tokens, "
                     "and over decision tokens (each decisive span's first token against the neutral ones); w_t is the weight, r_t the signed log-ratio "
                     "(the same for every transform of one estimate), *surprisal* the base model's -log p(y_t), a baseline that needs no "
                     "contrast. *dpo-vs-base*: the dpo pair's pi+ against the base as pi-.")
    sections = [("### Comparison (paper Table 1)", ["base", *[n for n in MAIN_TABLE if n in names]]),
                ("### Ablations of TIS-DPO(D) (paper Table 2)", [n for n in ablation_names(names) if n in names]),
                ("### Other weights from the same contrast: transforms, and pi+ against the base", [n for n in TRANSFORM_TABLE if n in names])]
    parts = [part for title, rows in sections if len(rows) > 1 or title.startswith("### Comparison") for part in (title, table(report, rows))]
    return "\n\n".join([*parts, "### Weight quality per estimation method and transform", "\n".join(auc_lines)])


def ablation_names(names: list[str]) -> list[str]:
    """TIS-DPO(D) and its ablations (paper Table 2), in `names` order."""
    return ["TIS-DPO(D)"] + [n for n in names if n.startswith("TIS-DPO(D) ") and n not in TRANSFORM_TABLE]


def render(report: dict[str, Any], order: list[str], estimators: list[str]) -> str:
    """results.md: the tables with what they measure, how the run was made, and sentences computed from the numbers."""
    budget, ev, timing, machine = report["budget"], report["eval"], report["timing_seconds"], report["machine"]
    config = report["config"]
    quick, oracle = config["quick"], config.get("oracle", "toy")
    select_by = {"oracle_reward": "oracle reward", "pref_accuracy": "preference accuracy"}[config.get("select_by", "oracle_reward")]
    validation = ("the data folder's own validation split" if report["budget"].get("validation") == "shipped"
                  else "carved from the training split")
    parts = [
        "# Results: TIS-DPO against DPO, IPO and TDPO2 on the toy harmlessness task" if oracle == "toy"
        else f"# Results: TIS-DPO against DPO on `{config['data']}`, base `{config['base']}`",
        "_Written by `tispipe experiment`; do not edit by hand (re-run the command)._" + (
            "\n\n**This is a `--quick` smoke run: the numbers mean nothing.**" if quick else ""),
        f"Protocol: every method trains from the same base with the same budget (batch {budget['batch_size']}, {budget['steps']} steps, "
        f"{budget['train_pairs']} training pairs) at every learning rate of one grid ({', '.join(f'{lr:g}' for lr in budget['lrs'])}) with seed 0. "
        f"Each method's lr is the one whose model has the highest {select_by} on {budget['validation_pairs']} validation pairs ({validation}; "
        "oracle reward pooled over the temperatures; ties to the smaller lr); the test split plays no part in the choice. "
        + ablation_protocol(report) +
        f"Each method is then trained at its own lr with {budget['seeds']} seed(s) (0..{budget['seeds'] - 1}; the seed sets the data order, "
        f"random weights and sampling) and evaluated on the test split ({ev['test_pairs']} pairs for accuracy and KL; "
        f"{ev['num_prompts']} prompts sampled at T = {ev['temperatures']}, {ev['max_new_tokens']} new tokens at most). "
        "Cells are mean ± sample std over seeds.",
        ("Columns: *oracle reward* = mean toy-oracle score of the sampled responses (distinct helpful minus harmful phrases), "
         "pooled over the temperatures; *harmful* = share of responses containing a harmful phrase; " if oracle == "toy" else
         "Columns: *oracle reward* = mean of 1 - P(offensive) of the sampled responses by alt-profanity-check, an outside classifier "
         "trained on human-labelled offensive comments, pooled over the temperatures; *harmful* = share of responses it gives "
         "P(offensive) >= 0.5; ")
        + "*chrF* = chrF of each response against the chosen responses of its prompt (the best-matching one); *win vs DPO* = share of "
        "prompts where the oracle scores the response above that seed's DPO response (ties count half); *pref acc* = "
        "share of test pairs where the implicit reward beta·(log pi - log pi_ref) prefers the chosen response; *margin* = its "
        "mean of chosen minus rejected implicit reward there; *KL/token* = KL(pi || base) per response token on the test pairs.",
        render_tables(report, order, estimators),
        " ".join(f"![{title}]({name})" for name, _, title in figures_of(report) if name != "results-generated.png"),
        "![Oracle reward against the learning rate: validation, and test at the chosen lr](results-lr.png) "
        "![Oracle reward against KL on validation, one point per lr](results-frontier.png)",
        "Weight AUC: how well the estimated weights rank the ground-truth decisive tokens (helpful phrases in chosen, "
        "harmful phrases in rejected responses) above the other tokens of that side; 0.5 is chance. *train* = the shards "
        "training used, *test* = the same pi+/pi- scoring the held-out test pairs.",
        "## How this was run",
        f"```\n{report['command'] or 'tispipe experiment (called from Python)'}\n```",
        f"Machine: {machine['cpu_cores']} CPU cores, torch {machine['torch']}, Python {machine['python']} ({machine['platform']}). "
        f"Wall time {timing['total'] / 60:.1f} min ({wall_parts(timing)}); the commands it ran are listed in report.json (`commands`) "
        "and their logs are in OUT/logs.",
    ]
    matched = "\n\n" + render_kl_matched(report["kl_matched"]) + "\n" if report.get("kl_matched") else ""
    generated = "\n\n" + render_generated(report["generated"]) + "\n" if report.get("generated") else ""
    return ("\n\n".join(parts) + "\n\n## What the numbers say\n\n" + verdict(report, order) + "\n\n" + grid_table(report, order) + "\n"
            + matched + generated)


def ablation_protocol(report: dict[str, Any]) -> str:
    """The protocol's sentence on the ablations trained without a grid of their own (empty when there are none)."""
    ungridded = [n for n in ablation_names(list(report["methods"])) if n != "TIS-DPO(D)" and n not in report.get("grid", {})]
    if not ungridded:
        return ""
    return (f"The {len(ungridded)} ablations of TIS-DPO(D) have no grid of their own: each trains at TIS-DPO(D)'s chosen lr, so it differs "
            "from the full method in one part only (the mean-matched random weights: the same mean weight at the same lr). ")


def wall_parts(timing: dict[str, float]) -> str:
    """Where the wall time went: the weights and the grid share one queue, so their times are since the start."""
    if "grid_done" in timing:
        return (f"weights done after {timing['weights_done'] / 60:.1f}, lr grid after {timing['grid_done'] / 60:.1f}; "
                f"the grid's trainings start as their weights are done; then seeds {timing['seeds'] / 60:.1f}")
    return f"weights {timing['estimate'] / 60:.1f}, lr grid {timing['grid'] / 60:.1f}, seeds {timing['seeds'] / 60:.1f}"  # reports written before the queue


def _interval(entry: dict[str, Any]) -> tuple[float, float]:
    std = entry["std"] or 0.0
    return entry["mean"] - std, entry["mean"] + std


def beats(report: dict[str, Any], a: str, b: str, key: str = "oracle_reward") -> str:
    """Whether `a` beats `b` with non-overlapping mean ± std intervals, as a sentence."""
    x, y = report["methods"][a][key], report["methods"][b][key]
    if x["mean"] is None or y["mean"] is None:
        return f"{a} vs {b}: n/a"
    (xl, xh), (yl, yh) = _interval(x), _interval(y)
    at = lambda name: f" at lr {report['methods'][name]['lr']:g}" if report["methods"][name].get("lr") else ""  # noqa: E731
    if len(x["values"]) < 2:
        word = "is (one seed, no spread) " + ("above" if x["mean"] > y["mean"] else "not above")
    elif xl > yh:
        word = "beats, with non-overlapping mean ± std,"
    elif xh < yl:
        word = "falls below, with non-overlapping mean ± std,"
    else:
        word = "does not beat (the mean ± std intervals overlap)"
    return f"{a}{at(a)} ({_cell(x, '+.2f')}) {word} {b}{at(b)} ({_cell(y, '+.2f')})"


def verdict(report: dict[str, Any], order: list[str]) -> str:
    """Sentences computed from the table (never written by hand): does TIS-DPO(D) beat DPO, where do the ablations
    fall against the paper's order, and how do the estimation methods rank against the paper's D > S > P."""
    methods = report["methods"]
    reward = lambda name: methods[name]["oracle_reward"]["mean"]  # noqa: E731
    lines = []
    for name in [n for n in ("TIS-DPO(D)", "TIS-DPO(S)", "TIS-DPO(P)") if n in methods]:
        win = methods[name]["win_rate_vs_dpo"]
        lines.append(f"- Oracle reward on the test split, each method at its own lr: {beats(report, name, 'DPO')}; {name} wins "
                     f"{_cell(win, '.3f')} of the prompts against DPO (0.5 = parity).")
        if methods[name].get("pref_accuracy") and methods["DPO"].get("pref_accuracy"):
            lines.append(f"  - Held-out preference accuracy of the implicit reward: {beats(report, name, 'DPO', 'pref_accuracy')}.")
        if methods[name].get("chrf", {}).get("mean") is not None:
            lines.append(f"  - chrF against the chosen responses: {beats(report, name, 'DPO', 'chrf')}; KL per token: "
                         f"{_cell(methods[name]['kl_per_token'], '.3f')} against DPO's {_cell(methods['DPO']['kl_per_token'], '.3f')}.")
    ranked = sorted((n for n in methods if n != "base" and reward(n) is not None), key=lambda n: -reward(n))
    if ranked:
        lines.append(f"- Highest mean oracle reward: {ranked[0]} ({reward(ranked[0]):+.2f}); base model {reward('base'):+.2f}.")
    paper_order = [n for n in ("TIS-DPO(D) random weights U(L,U)", "TIS-DPO(D) equal weights", "TIS-DPO(D) without eta", "TIS-DPO(D)") if n in methods]
    if len(paper_order) > 1:
        measured = sorted(paper_order, key=reward)
        holds = all(reward(a) < reward(b) for a, b in zip(paper_order, paper_order[1:]))
        lines.append("- Ablations, lowest to highest mean oracle reward: " + " < ".join(f"{n} ({reward(n):+.2f})" for n in measured)
                     + f". The paper's order (random U(L,U) < equal < without eta < full) {'holds' if holds else 'does not hold'} in the means.")
        for name in [n for n in order if n.startswith("TIS-DPO(D) ") and n in methods]:
            lines.append(f"  - {beats(report, 'TIS-DPO(D)', name)}.")
    if "TIS-DPO(D) random weights, mean-matched" in methods and "TIS-DPO(D)" in methods:
        lines.append("- Information or step size: random weights with each side's mean estimated weight (the same width as U(L,U)) "
                     f"against the estimated weights themselves: {beats(report, 'TIS-DPO(D)', 'TIS-DPO(D) random weights, mean-matched')}.")
    estimators = [n for n in ("TIS-DPO(D)", "TIS-DPO(S)", "TIS-DPO(P)") if n in methods]
    if len(estimators) > 1:
        measured = sorted(estimators, key=lambda n: -reward(n))
        holds = all(reward(a) > reward(b) for a, b in zip(estimators, estimators[1:]))
        lines.append("- Estimation methods by mean oracle reward: " + " > ".join(f"{n} ({reward(n):+.2f})" for n in measured)
                     + f"; the paper's D > S > P {'holds' if holds else 'does not hold'} in the means.")
    for name in [n for n in TRANSFORM_TABLE[1:] if n in methods]:
        lines.append(f"- Other weights: {beats(report, name, 'TIS-DPO(D)')}.")
    aucs = {m: e["exp"]["test"].get("chosen_helpful_decision_auc") for m, e in report["weight_auc"].items()}
    aucs = {m: (v, report["weight_auc"][m]["exp"]["test"].get("rejected_harmful_decision_auc")) for m, v in aucs.items() if v is not None}
    if aucs:
        lines.append("- Test-split decision-token AUC of w (chosen / rejected), by the weaker side, best first: "
                     + ", ".join(f"{m} {c:.3f} / {r:.3f}" for m, (c, r) in sorted(aucs.items(), key=lambda kv: -min(kv[1]))) + ".")
    return "\n".join(lines)


def grid_table(report: dict[str, Any], order: list[str]) -> str:
    """The lr grid: each method's validation oracle reward (seed 0) at each lr, its chosen lr in bold."""
    grid = report.get("grid") or {}
    lrs = sorted({lr for by_lr in grid.values() for lr in by_lr}, key=float)
    lines = ["### The learning-rate grid (validation prompts, seed 0)", "",
             "Oracle reward (pooled over the temperatures) / preference accuracy / KL per token on the validation pairs; **bold** = the lr chosen.", "",
             "| method | " + " | ".join(f"lr {lr}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    for name in [n for n in order if n in grid]:
        cells = []
        for lr in lrs:
            m = grid[name].get(lr) or {}
            text = " / ".join("n/a" if m.get(key) is None else format(m[key], spec)
                              for key, spec in (("oracle_reward", "+.2f"), ("pref_accuracy", ".3f"), ("kl_per_token", ".3f")))
            cells.append(f"**{text}**" if float(lr) == report["methods"][name].get("lr") else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + edge_notes(report, [n for n in order if n in grid], [float(lr) for lr in lrs]))


def edge_notes(report: dict[str, Any], names: list[str], lrs: list[float]) -> list[str]:
    """A sentence for the methods whose chosen lr is the grid's largest or smallest: their best may lie beyond it."""
    if len(lrs) < 2:
        return []
    notes = []
    for edge, where, option in ((max(lrs), "largest", "upward"), (min(lrs), "smallest", "downward")):
        on_edge = [name for name in names if report["methods"][name].get("lr") == edge]
        if on_edge:
            notes.append(f"{', '.join(on_edge)} chose the grid's {where} lr ({edge:g}): {'its' if len(on_edge) == 1 else 'their'} best may lie "
                         f"beyond the grid, so the comparison holds for this grid only (extend --lrs {option} to see).")
    return ["", *notes] if notes else []


def render_kl_matched(block: dict[str, Any]) -> str:
    """The KL-matched section (tispipe.studies.kl_matched): the budget, the table and a sentence per method."""
    budget, rows = block["kl_budget"], block["methods"]
    names = sorted((n for n in rows if n != "DPO"), key=lambda n: (MAIN_TABLE.index(n) if n in MAIN_TABLE else len(MAIN_TABLE), n))  # report.json sorts its keys
    lines = [
        "### At matched KL",
        f"The main table lets each method move as far from the base as its best lr takes it. Here each TIS-DPO method trains at the lr "
        f"with the best validation score among those whose validation KL per token (seed 0) is at most DPO's at its chosen lr "
        f"({'n/a' if budget is None else f'{budget:.4f}'}), with the same seeds, and is evaluated on the test split beside DPO.",
        table(block, ["DPO", *names]),
    ]
    sentences = [f"- At matched KL: {beats(block, name, 'DPO')}; test KL per token {_cell(rows[name]['kl_per_token'], '.3f')} against DPO's "
                 f"{_cell(rows['DPO']['kl_per_token'], '.3f')}." for name in names]
    for name, smallest in block["no_lr_within_budget"].items():
        where = "" if smallest is None else f" (its smallest: {smallest['kl_per_token']:.4f} at lr {smallest['lr']:g})"
        sentences.append(f"- No lr of the grid keeps {name}'s validation KL within the budget{where}: no KL-matched row (extend --lrs downward to get one).")
    return "\n\n".join([*lines, "\n".join(sentences)])


def render_generated(block: dict[str, Any]) -> str:
    """The block's section of results.md: what was generated, the table, and sentences computed from it."""
    gen, noise, s = block["generation"], block["label_noise"], block["generation"]["settings"]
    dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(gen["dropped"].items())) or "none"
    table_report = {"methods": block["methods"]}
    lines = [
        "### Generated data (paper Table 2, third block)",
        f"The base model answered {gen['generated']} training prompts under the harmless (chosen) and the harmful (rejected) "
        f"system prompt (`tispipe generate`, T = {s['temperature']:g}, top-p {s['top_p']:g}, at most {s['max_new_tokens']} new tokens, "
        f"seed {s['seed']}); {gen['pairs']} pairs were kept (dropped: {dropped}); {noise['responses_finished']:.1%} of their responses "
        "ended with EOS, the others were cut off at the limit. Label noise of these pairs by the toy oracle: it "
        f"prefers the chosen response in {noise['oracle_agrees']:.1%}, ties in {noise['oracle_ties']:.1%} and prefers the rejected "
        f"one in {noise['oracle_disagrees']:.1%}. DPO, TIS-DPO(P) and TIS-DPO(D) train on them with the main table's budget, each at its lr chosen for "
        "the main table; win rates are against DPO trained on the same generated pairs.",
        rlcd_text(block),
        table(table_report, [n for n in ("base", *GENERATED_TABLE) if n in block["methods"]]),
        "![Generated data: oracle reward](results-generated.png)",
        "What the numbers say:",
        "\n".join([
            f"- {beats(table_report, 'TIS-DPO(D)', 'DPO')} (oracle reward).",
            f"- {beats(table_report, 'TIS-DPO(P)', 'DPO')} (oracle reward).",
            f"- {beats(table_report, 'TIS-DPO(D)', 'TIS-DPO(P)')} (oracle reward).",
            *([f"- {beats(table_report, 'TIS-DPO(D)', RLCD_STAND_IN)} (oracle reward)."] if RLCD_STAND_IN in block["methods"] else []),
            f"- Against DPO on the same pairs, TIS-DPO(P) wins {_cell(block['methods']['TIS-DPO(P)']['win_rate_vs_dpo'], '.3f')} and "
            f"TIS-DPO(D) {_cell(block['methods']['TIS-DPO(D)']['win_rate_vs_dpo'], '.3f')} of the prompts (0.5 = parity).",
        ]),
    ]
    return "\n\n".join(lines)


def rlcd_text(block: dict[str, Any]) -> str:
    """What the RLCD stand-in trained on: the preference model, the ranked pairs and how the toy oracle sees them."""
    ranked = block.get("ranked")
    if not ranked:
        return ""
    model, noise, s = ranked["reward_model"], ranked["label_noise"], ranked["settings"]
    dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(ranked["dropped"].items())) or "none"
    return (f"*{RLCD_STAND_IN}*: {block['how_rlcd_differs']} The preference model trained {model['steps']} steps on "
            f"{model['train_pairs']} of the generated pairs and ranks {model['held_out_accuracy']:.1%} of {model['held_out_pairs']} held-out ones "
            f"as their system prompts do; it ranked {ranked['generated']} prompts' {s['candidates']} answers into {ranked['pairs']} pairs "
            f"(dropped: {dropped}), of which the toy oracle prefers the chosen answer in {noise['oracle_agrees']:.1%}, ties in "
            f"{noise['oracle_ties']:.1%} and prefers the rejected one in {noise['oracle_disagrees']:.1%}. DPO trains on them at DPO's lr.")


def figures_of(report: dict[str, Any]) -> list[tuple[str, list[str], str]]:
    """(file name, rows, title) of each bar chart of an experiment report: the comparison, the ablations and,
    when it ran, the generated-data block."""
    ablations = ablation_names(list(report["methods"]))
    charts = [("results-comparison.png", ["base", *MAIN_TABLE], "Comparison (paper Table 1): oracle reward"),
              ("results-ablations.png", ablations, "Ablations of TIS-DPO(D) (paper Table 2): oracle reward"),
              ("results-transforms.png", TRANSFORM_TABLE, "Other weights from the same contrast: oracle reward")]
    if report.get("generated"):
        charts.append(("results-generated.png", ["base", *GENERATED_TABLE], "Generated data (Table 2, third block): oracle reward"))
    # a chart needs two of its rows run (a method and what it is compared with); the generated block always has them
    present = set(report["methods"]) | set((report.get("generated") or {}).get("methods", {}))
    return [chart for chart in charts if len(present.intersection(chart[1])) > 1]


def write_figures(report: dict[str, Any], folder: Path) -> None:
    """Bar charts of the oracle reward per method (tispipe.artifacts.figures.methods_figure) into `folder`."""
    from tispipe.artifacts import figures

    for name, rows, title in figures_of(report):
        source = report["generated"]["methods"] if name == "results-generated.png" else report["methods"]
        figures.methods_figure(source, rows, folder / name, title)
    present = list(report["grid"])
    groups = [("Comparison (paper Table 1)", [n for n in MAIN_TABLE if n in present]),
              ("Ablations of TIS-DPO(D) (paper Table 2)", [n for n in ablation_names(present) if n in present]),
              ("Other weights from the same contrast", [n for n in TRANSFORM_TABLE if n in present])]
    panels = [groups[0], *(g for g in groups[1:] if len(g[1]) > 1)]  # a side panel needs a row besides TIS-DPO(D) (DPO is always run)
    figures.lr_grid_figure(report["grid"], report["methods"], panels, folder / "results-lr.png")
    figures.frontier_figure(report["grid"], report["methods"], list(dict.fromkeys(n for _, names in groups for n in names)), folder / "results-frontier.png")
