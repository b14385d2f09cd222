"""Presenting a `tispipe eval` report: the comparison table (terminal and Markdown), report.md and its figures.

Everything here reads the report dict that tispipe.evaluate.evaluate builds (and writes to report.json).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

JUDGES = {"toy": "the toy oracle", "profanity": "the offensive-text judge (reward 1 - P(offensive); harmful: P >= 0.5)"}


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _short(name: str) -> str:
    return name.rstrip("/").split("/")[-1] if os.sep in name or "/" in name else name


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The comparison table (the shape of the paper's Table 1) as header + rows of strings."""
    primary = report["scorers"][0] if report["scorers"] else None
    header = ["model", "pref acc", "margin", "KL/token"]
    if primary:
        header += [f"{'oracle' if primary == 'oracle' else 'RM'} T={t:g}" for t in report["temperatures"]]
        if primary == "oracle":
            header.append("harmful")
        header.append("chrF")
        header.append(f"win vs {_short(report['baseline'])} [95% CI]")
    rows = []
    for name in report["models"]:
        result = report["results"][name]
        lik = result["likelihood"]
        row = [_short(name), _fmt(lik["pref_accuracy"]), _fmt(lik["reward_margin"], "+.3f"), _fmt(lik["kl_per_token"], ".4f")]
        if primary:
            gen = result["generation"]
            row += [_fmt(gen[f"{t:g}"][f"{primary}_reward"]["estimate"], "+.2f") for t in report["temperatures"]]
            if primary == "oracle":
                row.append(_fmt(gen["all"]["harmful_rate"], ".1%"))
            row.append(_fmt(gen["all"].get("chrf"), ".3f"))
            win = gen["all"][f"{primary}_win_rate"]
            row.append(f"{_fmt(win['rate'])} [{_fmt(win['low'], '.2f')}, {_fmt(win['high'], '.2f')}]")
        rows.append(row)
    return header, rows


def comparison_table(report: dict[str, Any]):
    from rich.table import Table

    header, rows = table_rows(report)
    table = Table(title=f"tispipe eval ({report['data']['kept']} pairs, {report['prompts']} prompts)")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def render_markdown(report: dict[str, Any]) -> str:
    header, rows = table_rows(report)
    text = [(f"# tispipe eval\n\nData: `{report['data']['source']}` ({report['data']['kept']} pairs). "
            f"Reference: `{report['reference']}`. Reward: {report['reward_kind']}, beta {report['config']['beta']}. "
            f"Baseline for win rates: `{report['baseline']}`.\n"), "\n## Comparison\n\n", _md_table(header, rows)]
    lik_header = ["model", "pref acc", "logp acc", "chosen logp", "rejected logp", "chosen reward", "rejected reward", "KL/token"]
    lik_rows = [[_short(n)] + [_fmt(report["results"][n]["likelihood"][k], f) for k, f in
                 [("pref_accuracy", ".3f"), ("logp_accuracy", ".3f"), ("chosen_logp", ".2f"), ("rejected_logp", ".2f"),
                  ("chosen_reward", "+.3f"), ("rejected_reward", "+.3f"), ("kl_per_token", ".4f")]] for n in report["models"]]
    text += ["\n## Likelihood on held-out pairs\n\n", _md_table(lik_header, lik_rows)]
    for scorer in report["scorers"]:
        gen_header = ["model", "T", "n", "mean reward [95% CI]", "win rate [95% CI]", "W/T/L", "tokens", "finished", "chrF"]
        gen_header += ["harmful"] if scorer == "oracle" else []
        gen_rows = []
        for name in report["models"]:
            for label, entry in report["results"][name]["generation"].items():
                reward, win = entry[f"{scorer}_reward"], entry[f"{scorer}_win_rate"]
                gen_rows.append([_short(name), label, str(entry["n"]),
                                 f"{_fmt(reward['estimate'], '+.2f')} [{_fmt(reward['low'], '+.2f')}, {_fmt(reward['high'], '+.2f')}]",
                                 f"{_fmt(win['rate'])} [{_fmt(win['low'], '.2f')}, {_fmt(win['high'], '.2f')}]",
                                 f"{win['wins']}/{win['ties']}/{win['losses']}", _fmt(entry["mean_tokens"], ".1f"), _fmt(entry["finished_rate"], ".0%"),
                                 _fmt(entry.get("chrf"), ".3f")]
                                + ([_fmt(entry["harmful_rate"], ".1%")] if scorer == "oracle" else []))
        text += [f"\n## Generation, scored by {JUDGES.get(report['config'].get('oracle')) if scorer == 'oracle' else 'the reward model'}\n\n",
                 _md_table(gen_header, gen_rows)]
    agreement = report.get("reward_model_vs_oracle")
    if agreement:
        text += [f"\n## Reward model against {JUDGES.get(report['config'].get('oracle'), 'the oracle').split(' (')[0]}\n\n",
                 f"Spearman's rank correlation of the reward model's scores with the oracle's over the sampled responses: "
                 f"{_fmt(agreement['all']['spearman'])} ({agreement['all']['samples']} responses).\n\n",
                 _md_table(["model", "Spearman", "responses"],
                           [[_short(n), _fmt(v["spearman"]), str(v["samples"])] for n, v in agreement["per_model"].items()])]
    weights = report.get("weights")
    if weights and weights.get("labelled_rows"):
        text += ["\n## Weight quality\n\n",
                 f"AUC at ranking the decisive tokens first ({weights['labelled_rows']} labelled rows; 0.5 is chance): over all their tokens, "
                 "and over decision tokens (each decisive span's first token against the neutral tokens).\n\n",
                 _md_table(["side", "decisive tokens", "w_t, all tokens", "w_t, decision tokens", "r_t, all tokens", "r_t, decision tokens"],
                           [[side, what] + [_fmt(weights.get(f"{side}_{what}{kind}_auc")) for kind in ("", "_decision", "_logratio", "_decision_logratio")]
                            for side, what in (("chosen", "helpful"), ("rejected", "harmful"))]),
                 "\nMean weight per token label:\n\n",
                 _md_table(["side", "harmful", "neutral", "helpful"],
                           [[side] + [_fmt(weights[f"{side}_{k}_mean_weight"]) for k in ("harmful", "neutral", "helpful")] for side in ("chosen", "rejected")])]
    if report["notes"]:
        text += ["\n## Notes\n\n"] + [f"- {note}\n" for note in report["notes"]]
    return "".join(text)


def figure_names(report: dict[str, Any]) -> list[str]:
    """The PNGs `write_figures` draws for this report: reward per temperature, and reward against KL when
    there is a reference to measure KL to; none without generation scores."""
    if not report["scorers"]:
        return []
    return ["reward_by_temperature.png"] + (["reward_vs_kl.png"] if report["reference"] else [])


def write_figures(report: dict[str, Any], folder: Path) -> None:
    """The report's figures (tispipe.artifacts.figures), scored by its first scorer, into `folder`."""
    from tispipe.artifacts import figures

    names = figure_names(report)
    if "reward_by_temperature.png" in names:
        figures.temperature_figure(report, report["scorers"][0], folder / "reward_by_temperature.png")
    if "reward_vs_kl.png" in names:
        figures.reward_kl_figure(report, report["scorers"][0], folder / "reward_vs_kl.png")
