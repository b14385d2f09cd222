"""How good are a run's token weights? Statistics of w_t and r_t, and AUCs against ground-truth token labels.

Used by estimate (the manifest's `weights`, `logratio` and `auc`), eval (`--shards`) and experiment.
Everything is read back from the shards, so resumed and distributed runs count every shard, into the
bounded-memory accumulators of tispipe.core.token_histograms: two passes over the shards (the exact range of
each column, then its histogram), a few MB whatever the number of tokens.

The AUCs rank by HIGH weight on both sides: on the chosen side helpful tokens (label +1) have a high
r_t, so w = exp(+clamp(r_t)) is high; on the rejected side harmful tokens (label -1) have a low r_t
(pi+ dislikes them, pi- likes them), so w = exp(-clamp(r_t)) is high too: Eq. 19 makes the tokens
that decide the preference count more on both sides. An AUC is the probability that a labelled token
outranks an unlabelled one of the same side (ties half): 1.0 is a perfect ranking, 0.5 chance.

Two AUCs of each: over all tokens (the decisive spans' tokens against the side's other labelled ones),
and over decision tokens (the first token of each decisive span against the neutral tokens; the span's
later tokens are left out, since they follow from its first one under both contrastive models, so their
log-ratio says little whatever the span). Each is given for the weights w_t and for the raw r_t (its
sign turned so that higher means more decisive), so that a transform that loses information shows.

`weight_quality` also ranks by the reference model's surprisal -log ref(y_t) (the shards' ref_logps), a
baseline that needs no contrastive pair: a pair's weights are worth their cost where they beat it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tispipe.artifacts.shards import open_shard, read_manifest, rewrite_weights, verify_shards
from tispipe.core.token_histograms import (
    DECISION,
    DECISIVE,
    LABELLED_OTHER,
    NEUTRAL,
    OPPOSITE,
    UNLABELLED,
    ClassHistogram,
    Moments,
    token_classes,
)
from tispipe.errors import TispipeError

SIDES = ("chosen", "rejected")
# The label that marks a side's decisive tokens, and the sign that turns r_t into "higher = more decisive".
DECISIVE_LABEL = {"chosen": 1, "rejected": -1}
DECISIVE_NAME = {"chosen": "helpful", "rejected": "harmful"}
OPPOSITE_NAME = {"chosen": "harmful", "rejected": "helpful"}
LOGRATIO_SIGN = {"chosen": 1.0, "rejected": -1.0}
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


VALUE_COLUMNS = ("weights", "logratio")
SURPRISAL_COLUMN = "ref_logps"  # ranked low-first: the most surprising tokens first
# (name suffix, positive classes, negative classes) of the two AUCs
AUC_KINDS = (("", DECISIVE, LABELLED_OTHER), ("_decision", (DECISION,), (NEUTRAL,)))


@dataclass
class TokenStatistics:
    """What the shards' per-token values come to: exact moments and a ClassHistogram per "<side>_<column>"."""

    rows: int
    labelled_rows: int  # rows with labels on both sides
    moments: dict[str, Moments]
    histograms: dict[str, ClassHistogram]

    def auc(self, side: str, column: str, kind: str = "") -> float | None:
        """The side's AUC of `column` (weights or logratio, sign-turned) over all tokens (kind "") or decision tokens."""
        _, positive, negative = next(k for k in AUC_KINDS if k[0] == kind)
        return self.histograms[f"{side}_{column}"].auc(positive, negative, descending_values=high_is_decisive(side, column))


def high_is_decisive(side: str, column: str) -> bool:
    """Whether high values of the column mark the side's decisive tokens (weights always; r_t on chosen;
    log ref(y_t) never: a low one is a surprising token)."""
    return column == "weights" or (column == "logratio" and LOGRATIO_SIGN[side] > 0)


def manifest_auc_key(side: str, column: str, kind: str) -> str:
    """The manifest's name of an AUC: chosen_helpful_by_high_weight, rejected_harmful_decision_by_low_logratio, ..."""
    direction = "high" if high_is_decisive(side, column) else "low"
    return f"{side}_{DECISIVE_NAME[side]}{kind}_by_{direction}_{'weight' if column == 'weights' else 'logratio'}"


def _batches(folder: str | Path, entries: list[dict[str, Any]], columns: list[str]):
    for entry in entries:
        path = Path(folder) / "shards" / entry["file"]
        shard = open_shard(path, entry["rows"])
        try:
            for batch in shard.iter_batches(batch_size=4096, columns=columns):
                yield path, batch
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise TispipeError(f"shard {path} is corrupt ({str(e).splitlines()[0]})") from None


def _flat(column) -> tuple[np.ndarray, np.ndarray]:
    """(values of every row, concatenated, (T,); each row's length (rows,), 0 for a null row) of a list column."""
    import pyarrow.compute as pc

    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return column.flatten().to_numpy(zero_copy_only=False), lengths


def column_moments(folder: str | Path, entries: list[dict[str, Any]], names: list[str]) -> dict[str, Moments]:
    """Exact count, mean, std, min and max of each per-token column in `names` over the shards (one pass)."""
    moments = {name: Moments() for name in names}
    for path, batch in _batches(folder, entries, names):
        for name in names:
            values, _ = _flat(batch.column(name))
            if not np.isfinite(values).all():
                raise TispipeError(f"shard {path}: {name} holds NaN or infinite values")
            moments[name].add(values)
    return moments


def read_statistics(folder: str | Path, entries: list[dict[str, Any]], columns: tuple[str, ...] = VALUE_COLUMNS) -> TokenStatistics:
    """Two passes over the shards in `entries`: each of `columns`' exact range and moments, then its histogram
    per token class. A labelled row whose labels and values differ in length is an error naming the shard."""
    names = [f"{side}_{column}" for side in SIDES for column in columns]
    moments = column_moments(folder, entries, names)
    histograms = {name: ClassHistogram(m.low, m.high) for name, m in moments.items()}
    rows = labelled_rows = 0
    label_columns = [f"{side}_labels" for side in SIDES]
    for path, batch in _batches(folder, entries, names + label_columns):
        labelled = ~np.logical_or(*(batch.column(c).is_null().to_numpy(zero_copy_only=False) for c in label_columns))
        rows, labelled_rows = rows + batch.num_rows, labelled_rows + int(labelled.sum())
        for side in SIDES:
            labels, label_lengths = _flat(batch.column(f"{side}_labels").filter(labelled))
            for column in columns:
                values, lengths = _flat(batch.column(f"{side}_{column}"))
                if not np.array_equal(label_lengths, lengths[labelled]):
                    raise TispipeError(f"shard {path}: a row has {side} labels and {column} of different lengths (they must line up)")
                starts = np.zeros(values.size, dtype=bool)
                starts[(np.cumsum(lengths) - lengths)[lengths > 0]] = True
                token_labelled = np.repeat(labelled, lengths)
                classes = np.full(values.size, UNLABELLED, dtype=np.int64)
                classes[token_labelled] = token_classes(labels, starts[token_labelled], DECISIVE_LABEL[side])
                histograms[f"{side}_{column}"].add(values, classes)
    return TokenStatistics(rows, labelled_rows, moments, histograms)


def summary(moments: Moments, histogram: ClassHistogram) -> dict[str, Any]:
    """count, mean, std, min and max (exact), the shares of values equal to the min and to the max (exact: where a
    clamp binds, many tokens share its bound's weight) and QUANTILES (to one histogram bin) of one column."""
    if moments.count == 0:
        return {"count": 0}
    return {
        "count": moments.count, "mean": moments.mean, "std": moments.std(), "min": moments.low, "max": moments.high,
        "at_min": moments.at_low / moments.count, "at_max": moments.at_high / moments.count,
        "quantiles": {str(q): histogram.quantile(q) for q in QUANTILES},
    }


def shard_statistics(stats: TokenStatistics) -> dict[str, Any]:
    """The manifest's `weights` and `logratio` summaries per side and, when every row has labels, its `auc`
    (all-token and decision-token AUCs of w_t and of the signed r_t)."""
    out: dict[str, Any] = {
        column: {side: summary(stats.moments[f"{side}_{column}"], stats.histograms[f"{side}_{column}"]) for side in SIDES} for column in VALUE_COLUMNS
    }
    out["auc"] = None
    if stats.labelled_rows and stats.labelled_rows == stats.rows:
        out["auc"] = {manifest_auc_key(side, column, kind): stats.auc(side, column, kind) for kind, _, _ in AUC_KINDS for side in SIDES for column in VALUE_COLUMNS}
    return out


def weight_quality(folder: str | Path, transform: dict[str, Any] | None = None) -> dict[str, Any]:
    """The AUCs (as in the manifest) and mean weight per label kind, over the labelled rows of a finished estimate run.

    With `transform` (compute_weights' options: transform, k, lower, upper, fraction, floor), the weights are
    those `tispipe train` would re-derive from the stored r with it (calibrated: over the manifest's spread
    of r per side): the shards are copied to a temporary folder, their weights rewritten there, and measured.
    """
    manifest = read_manifest(folder)
    verify_shards(folder, manifest)
    columns = (*VALUE_COLUMNS, SURPRISAL_COLUMN)
    if transform is None:
        return _quality(folder, read_statistics(folder, manifest["shards"], columns))
    import shutil
    import tempfile

    import torch

    from tispipe.core.weights import compute_weights

    scales = {side: manifest["logratio"][side]["std"] for side in SIDES}
    mu = {"chosen": 1.0, "rejected": -1.0}

    def weights_of(r: np.ndarray, side: str) -> np.ndarray:
        values = torch.from_numpy(r)[None]
        return compute_weights(values, torch.ones_like(values), mu[side], scale=scales[side], **transform)[0].numpy()

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "shards").mkdir()
        entries = []
        for entry in manifest["shards"]:
            shutil.copyfile(Path(folder) / "shards" / entry["file"], Path(tmp) / "shards" / entry["file"])
            entries.append(rewrite_weights(Path(tmp) / "shards" / entry["file"], weights_of))
        return _quality(folder, read_statistics(tmp, entries, columns))


def _quality(folder: str | Path, stats: TokenStatistics) -> dict[str, Any]:
    result: dict[str, Any] = {"shards": str(folder), "rows": stats.rows, "labelled_rows": stats.labelled_rows}
    if not stats.labelled_rows:
        return result
    for side in ("rejected", "chosen"):
        for kind, _, _ in AUC_KINDS:
            result[f"{side}_{DECISIVE_NAME[side]}{kind}_auc"] = stats.auc(side, "weights", kind)
            result[f"{side}_{DECISIVE_NAME[side]}{kind}_logratio_auc"] = stats.auc(side, "logratio", kind)
            result[f"{side}_{DECISIVE_NAME[side]}{kind}_surprisal_auc"] = stats.auc(side, SURPRISAL_COLUMN, kind)
    for side in SIDES:
        histogram = stats.histograms[f"{side}_weights"]
        kinds = {DECISIVE_NAME[side]: DECISIVE, "neutral": (NEUTRAL,), OPPOSITE_NAME[side]: (OPPOSITE,)}
        for name in ("harmful", "neutral", "helpful"):
            tokens = int(histogram.of(kinds[name]).sum())
            result[f"{side}_{name}_tokens"] = tokens
            result[f"{side}_{name}_mean_weight"] = float(histogram.sums[list(kinds[name])].sum() / tokens) if tokens else None
    return result
