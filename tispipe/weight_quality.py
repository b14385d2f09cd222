"""How good are a run's token weights? Statistics of w_t and r_t, and AUCs against ground-truth token labels.

Used by estimate (the manifest's `weights`, `logratio` and `auc`), eval (`--shards`) and experiment.
Everything is read back from the shards, so resumed and distributed runs count every shard.

The AUCs rank by HIGH weight on both sides: on the chosen side helpful tokens (label +1) have a high
r_t, so w = exp(+clamp(r_t)) is high; on the rejected side harmful tokens (label -1) have a low r_t
(pi+ dislikes them, pi- likes them), so w = exp(-clamp(r_t)) is high too: Eq. 19 makes the tokens
that decide the preference count more on both sides. An AUC is the probability that a labelled token
outranks an unlabelled one of the same side (ties half): 1.0 is a perfect ranking, 0.5 chance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tispipe import metrics
from tispipe.errors import TispipeError
from tispipe.shards import iter_shard_rows, read_manifest, verify_shards

SIDES = ("chosen", "rejected")
# The label that marks a side's decisive tokens, and the sign that turns r_t into "higher = more decisive".
DECISIVE_LABEL = {"chosen": 1, "rejected": -1}
LOGRATIO_SIGN = {"chosen": 1.0, "rejected": -1.0}
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def decisive_auc(scores: np.ndarray, labels: np.ndarray, side: str) -> float | None:
    """AUC of `scores` (N,) at picking the side's decisive tokens among `labels` (N,) of that side."""
    return array_auc(scores, labels == DECISIVE_LABEL[side])


def array_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """`metrics.auc` on arrays, in numpy (no Python object per token, about 14 bytes a token while it runs):
    the Mann-Whitney U statistic with average ranks for ties, (sum of positive ranks - n_pos (n_pos + 1) / 2)
    / (n_pos n_neg); None without a positive or a negative."""
    scores, positive = np.asarray(scores), np.asarray(positive, dtype=bool)
    if scores.shape != positive.shape:
        raise ValueError(f"{scores.size} scores for {positive.size} labels")
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="stable")
    ordered, hits = scores[order], positive[order].view(np.uint8)
    del order
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # the first position of each distinct score
    counts = np.diff(np.r_[starts, ordered.size])
    average_rank = starts + (counts + 1) / 2  # tied values share the mean of their 1-based ranks
    rank_sum = float((np.add.reduceat(hits, starts, dtype=np.int64) * average_rank).sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def read_token_values(folder: str | Path, entries: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, Any]:
    """Per side and column name (weights, logratio, labels): every token's value over all rows, concatenated.

    Returns {"rows", "labelled_rows", "<side>_<name>": (T,) array, "labelled_<side>_<name>": (T',) array
    over the rows that carry labels}. A labelled row whose columns differ in length is an error. Values are
    float32 (labels int8), as stored: 4 bytes a token and column (1 for labels), and when every row is
    labelled the labelled arrays are the same arrays, not copies.
    """
    columns = [f"{side}_{name}" for side in SIDES for name in names]
    dtypes = {c: np.int8 if c.endswith("_labels") else np.float32 for c in columns}
    values: dict[str, list] = {c: [] for c in columns}
    labelled: dict[str, list] = {c: [] for c in columns}
    rows = labelled_rows = 0
    for entry in entries:
        path = Path(folder) / "shards" / entry["file"]
        for row in iter_shard_rows(path, columns, entry["rows"]):
            rows += 1
            parts = {c: np.asarray(row[c], dtype=dtypes[c]) for c in columns if row[c] is not None}
            for c, part in parts.items():
                values[c].append(part)
            if "labels" not in names or any(row[f"{side}_labels"] is None for side in SIDES):
                continue
            labelled_rows += 1
            for side in SIDES:
                lengths = {name: len(row[f"{side}_{name}"]) for name in names}
                if len(set(lengths.values())) != 1:
                    raise TispipeError(f"shard {path}: a row has {lengths} {side} values (weights and labels must line up)")
                for name in names:
                    labelled[f"{side}_{name}"].append(parts[f"{side}_{name}"])  # the same array, not a copy
    flat = lambda parts, c: np.concatenate(parts) if parts else np.zeros(0, dtype=dtypes[c])  # noqa: E731
    out: dict[str, Any] = {"rows": rows, "labelled_rows": labelled_rows}
    out.update({c: flat(v, c) for c, v in values.items()})
    values.clear()
    if labelled_rows == rows:
        out.update({f"labelled_{c}": out[c] for c in columns})
    else:
        out.update({f"labelled_{c}": flat(v, c) for c, v in labelled.items()})
    return out


def summary(values: np.ndarray) -> dict[str, Any]:
    """count, mean, std, min, max and QUANTILES of a flat array (float64 arithmetic)."""
    if values.size == 0:
        return {"count": 0}
    v = values.astype(np.float64)
    return {
        "count": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
        "quantiles": {str(q): float(np.quantile(v, q)) for q in QUANTILES},
    }


STATISTICS_COLUMNS = ("weights", "logratio", "labels")


def shard_statistics(values: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `weights` and `logratio` summaries per side and, when every row has labels, its `auc`,
    from `read_token_values(folder, entries, STATISTICS_COLUMNS)`."""
    stats: dict[str, Any] = {
        "weights": {side: summary(values[f"{side}_weights"]) for side in SIDES},
        "logratio": {side: summary(values[f"{side}_logratio"]) for side in SIDES},
        "auc": None,
    }
    if values["labelled_rows"] and values["labelled_rows"] == values["rows"]:
        chosen, rejected = ({name: values[f"{side}_{name}"] for name in ("weights", "logratio", "labels")} for side in SIDES)
        stats["auc"] = {
            "chosen_helpful_by_high_weight": decisive_auc(chosen["weights"], chosen["labels"], "chosen"),
            "rejected_harmful_by_high_weight": decisive_auc(rejected["weights"], rejected["labels"], "rejected"),
            "rejected_harmful_by_low_logratio": decisive_auc(LOGRATIO_SIGN["rejected"] * rejected["logratio"], rejected["labels"], "rejected"),
            "chosen_helpful_by_high_logratio": decisive_auc(LOGRATIO_SIGN["chosen"] * chosen["logratio"], chosen["labels"], "chosen"),
        }
    return stats


def weight_quality(folder: str | Path) -> dict[str, Any]:
    """The weights' AUCs and mean weight per label kind, over the labelled rows of a finished estimate run."""
    manifest = read_manifest(folder)
    verify_shards(folder, manifest)
    values = read_token_values(folder, manifest["shards"], ("weights", "labels"))
    result: dict[str, Any] = {"shards": str(folder), "rows": values["rows"], "labelled_rows": values["labelled_rows"]}
    if not values["labelled_rows"]:
        return result
    for side in ("rejected", "chosen"):
        what = "helpful" if side == "chosen" else "harmful"
        result[f"{side}_{what}_auc"] = decisive_auc(values[f"labelled_{side}_weights"], values[f"labelled_{side}_labels"], side)
    for side in SIDES:
        weights, labels = values[f"labelled_{side}_weights"], values[f"labelled_{side}_labels"]
        for name, label in (("harmful", -1), ("neutral", 0), ("helpful", 1)):
            picked = weights[labels == label]
            result[f"{side}_{name}_tokens"] = int(picked.size)
            result[f"{side}_{name}_mean_weight"] = metrics.mean(picked.tolist())
    return result
