"""tispipe.core.token_histograms and weight_quality.read_statistics: the bounded-memory statistics of a run's
per-token values agree with the exact, sort-everything computations they replace."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tispipe.core.metrics import auc as exact_auc
from tispipe.core.token_histograms import (
    BINS,
    DECISION,
    DECISIVE_REST,
    NEUTRAL,
    OPPOSITE,
    ClassHistogram,
    Moments,
    token_classes,
)


def histogram_of(values, positive) -> ClassHistogram:
    values, positive = np.asarray(values, dtype=np.float32), np.asarray(positive, dtype=bool)
    histogram = ClassHistogram(float(values.min()), float(values.max()))
    histogram.add(values, np.where(positive, DECISION, NEUTRAL))
    return histogram


def test_token_classes_mark_the_first_token_of_each_decisive_span():
    labels = np.array([1, 1, 0, -1, 1, 0, 1, 1, 1, 1])
    starts = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1, 0], dtype=bool)  # a second row begins at token 8
    classes = token_classes(labels, starts, decisive_label=1)
    assert classes.tolist() == [DECISION, DECISIVE_REST, NEUTRAL, OPPOSITE, DECISION, NEUTRAL, DECISION, DECISIVE_REST, DECISION, DECISIVE_REST]
    rejected = token_classes(np.array([-1, -1, 1, 0]), np.array([1, 0, 0, 0], dtype=bool), decisive_label=-1)
    assert rejected.tolist() == [DECISION, DECISIVE_REST, OPPOSITE, NEUTRAL]


def test_moments_merged_chunk_by_chunk_are_the_whole_arrays():
    rng = np.random.default_rng(0)
    values = (rng.normal(size=10_000) * 3 + 1e4).astype(np.float32)  # far from 0: a sum of squares would cancel
    moments = Moments()
    for chunk in np.array_split(values, 37):
        moments.add(chunk)
    exact = values.astype(np.float64)
    assert moments.count == values.size
    assert moments.mean == pytest.approx(exact.mean(), rel=1e-12)
    assert moments.std() == pytest.approx(exact.std(), rel=1e-9)
    assert (moments.low, moments.high) == (float(exact.min()), float(exact.max()))


def test_moments_count_the_values_at_the_min_and_max_across_chunks():
    # clamped weights: many values share each bound; a later chunk lowers the min past earlier ties
    rng = np.random.default_rng(1)
    values = np.clip(rng.normal(size=5_000), -0.5, 1.5).astype(np.float32)
    values[4_990:] = -0.75  # the true min, only in the last chunk
    moments = Moments()
    for chunk in np.array_split(values, 23):
        moments.add(chunk)
    assert (moments.at_low, moments.at_high) == (10, int((values == values.max()).sum()))
    assert moments.at_high > 300


def test_auc_is_the_exact_rank_statistic_when_no_two_distinct_values_share_a_bin():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 60)
        scores = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(n)]  # many exact ties
        positive = [rng.random() < 0.3 for _ in range(n)]
        expected = exact_auc(scores, positive)
        if expected is None or max(scores) == min(scores):
            continue
        histogram = histogram_of(scores, positive)
        assert histogram.auc((DECISION,), (NEUTRAL,)) == pytest.approx(expected, abs=1e-12)
        # ranking by low values instead is the complement
        assert histogram.auc((DECISION,), (NEUTRAL,), descending_values=False) == pytest.approx(1 - expected, abs=1e-12)


def test_auc_quantiles_and_roc_of_a_million_continuous_values_are_within_their_bounds():
    rng = np.random.default_rng(1)
    positive = rng.random(1_000_000) < 0.1
    values = (rng.normal(size=positive.size) + 1.5 * positive).astype(np.float32)
    histogram = histogram_of(values, positive)
    # the stated bound: half the fraction of (positive, negative) pairs that share a bin
    pos, neg = histogram.of((DECISION,)), histogram.of((NEUTRAL,))
    bound = 0.5 * float((pos * neg).sum()) / (pos.sum() * neg.sum())
    order = np.argsort(values)
    ranks = np.empty(values.size)
    ranks[order] = np.arange(1, values.size + 1)  # continuous values: no ties
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    exact = (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    assert bound < 1e-4
    assert abs(histogram.auc((DECISION,), (NEUTRAL,)) - exact) <= bound
    width = (float(values.max()) - float(values.min())) / BINS
    for q in (0.0, 0.01, 0.25, 0.5, 0.99, 1.0):
        assert abs(histogram.quantile(q) - float(np.quantile(values.astype(np.float64), q))) <= width
    curve = histogram.roc((DECISION,), (NEUTRAL,))
    assert np.trapezoid(curve["tpr"], curve["fpr"]) == pytest.approx(histogram.auc((DECISION,), (NEUTRAL,)), abs=1e-9)


def test_quantiles_of_few_values_and_of_one_repeated_value():
    histogram = histogram_of([1.0, 2.0, 3.0, 4.0], [True, False, True, False])
    width = 3.0 / BINS
    for q, expected in ((0.0, 1.0), (0.5, 2.5), (0.75, 3.25), (1.0, 4.0)):
        assert histogram.quantile(q) == pytest.approx(expected, abs=width)
    flat = histogram_of([0.7] * 5, [True, False, False, True, False])
    assert flat.quantile(0.5) == pytest.approx(0.7) and flat.auc((DECISION,), (NEUTRAL,)) == 0.5
    counts, edges = flat.coarse(50)
    assert counts.sum() == 5 and edges[0] == pytest.approx(0.7)


def shard_folder(tmp_path, rows):
    from tispipe.artifacts.shards import shard_name, write_manifest, write_shard

    (tmp_path / "shards").mkdir()
    entries = [write_shard(tmp_path / "shards" / shard_name(i), part) for i, part in enumerate((rows[: len(rows) // 2], rows[len(rows) // 2 :]))]
    write_manifest(tmp_path, {"shards": entries})
    return entries


def test_read_statistics_counts_decision_tokens_across_shards(tmp_path):
    from tispipe.artifacts.weight_quality import read_statistics, shard_statistics

    rows = [
        # chosen: the helpful span's first token (1.6) is the decision token, its second (0.9) is not
        {"pair_id": "p0", "chosen_weights": [1.0, 1.6, 0.9], "chosen_logratio": [0.0, 0.5, -0.1], "chosen_labels": [0, 1, 1],
         "rejected_weights": [1.0, 1.5], "rejected_logratio": [0.0, -0.4], "rejected_labels": [0, -1]},
        {"pair_id": "p1", "chosen_weights": [1.2, 0.8], "chosen_logratio": [0.2, -0.2], "chosen_labels": [0, 0],
         "rejected_weights": [1.1, 0.7], "rejected_logratio": [-0.1, 0.3], "rejected_labels": [0, 1]},
    ]
    entries = shard_folder(tmp_path, rows)
    stats = read_statistics(tmp_path, entries)
    assert (stats.rows, stats.labelled_rows) == (2, 2)
    manifest = shard_statistics(stats)
    auc = manifest["auc"]
    # all tokens: helpful 1.6, 0.9 against neutral 1.0, 1.2, 0.8 -> (3 + 1) / 6; decision: 1.6 against them -> 1
    assert auc["chosen_helpful_by_high_weight"] == pytest.approx(4 / 6)
    assert auc["chosen_helpful_decision_by_high_weight"] == 1.0
    assert auc["chosen_helpful_decision_by_high_logratio"] == 1.0
    # rejected: harmful 1.5 against neutral 1.0, 1.1 and the opposite-label 0.7 (all tokens) or the neutral ones (decision)
    assert auc["rejected_harmful_by_high_weight"] == 1.0 and auc["rejected_harmful_decision_by_low_logratio"] == 1.0
    summary = manifest["weights"]["chosen"]
    assert summary["count"] == 5 and summary["max"] == pytest.approx(1.6) and summary["mean"] == pytest.approx(5.5 / 5)


def test_read_statistics_leaves_unlabelled_rows_out_of_the_aucs(tmp_path):
    from tispipe.artifacts.weight_quality import read_statistics, shard_statistics

    rows = [{"pair_id": "p0", "chosen_weights": [1.0, 2.0], "chosen_logratio": [0.0, 1.0], "chosen_labels": [0, 1],
             "rejected_weights": [1.0, 2.0], "rejected_logratio": [0.0, -1.0], "rejected_labels": [0, -1]},
            {"pair_id": "p1", "chosen_weights": [5.0], "chosen_logratio": [3.0], "rejected_weights": [0.5], "rejected_logratio": [1.0]}]
    stats = read_statistics(tmp_path, shard_folder(tmp_path, rows))
    assert (stats.rows, stats.labelled_rows) == (2, 1)
    assert stats.auc("chosen", "weights") == 1.0  # the unlabelled 5.0 would outrank the helpful token
    assert shard_statistics(stats)["auc"] is None  # the manifest gives AUCs only when every row is labelled
    assert shard_statistics(stats)["weights"]["chosen"]["count"] == 3


def test_labels_that_do_not_line_up_with_the_values_are_an_error_naming_the_shard(tmp_path):
    from tispipe.artifacts.weight_quality import read_statistics
    from tispipe.errors import TispipeError

    rows = [{"pair_id": "p0", "chosen_weights": [1.0, 2.0], "chosen_logratio": [0.0, 1.0], "chosen_labels": [0],
             "rejected_weights": [1.0], "rejected_logratio": [0.0], "rejected_labels": [0]}] * 2
    with pytest.raises(TispipeError, match=r"part-0000\d\.parquet.*chosen labels"):
        read_statistics(tmp_path, shard_folder(tmp_path, rows))

