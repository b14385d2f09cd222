"""Evaluation metrics on hand-worked cases, plus brute-force cross-checks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tispipe.core.metrics import (
    auc,
    average_ranks,
    implicit_rewards,
    mean,
    mean_ci,
    preference_accuracy,
    win_rate,
)


def test_model_that_prefers_chosen_gets_accuracy_one():
    # fake sequence log-probs: the policy raised chosen and lowered rejected relative to the reference
    ref_chosen, ref_rejected = [-10.0, -20.0, -5.0], [-12.0, -8.0, -5.0]
    policy_chosen = [c + 1.0 for c in ref_chosen]
    policy_rejected = [r - 1.0 for r in ref_rejected]
    chosen = implicit_rewards(policy_chosen, ref_chosen, beta=0.1)
    rejected = implicit_rewards(policy_rejected, ref_rejected, beta=0.1)
    assert chosen == pytest.approx([0.1, 0.1, 0.1])
    assert rejected == pytest.approx([-0.1, -0.1, -0.1])
    assert preference_accuracy(chosen, rejected) == 1.0
    assert preference_accuracy(rejected, chosen) == 0.0


def test_reference_against_itself_is_all_ties():
    logps = [-3.0, -7.5]
    zero = implicit_rewards(logps, logps, beta=0.1)
    assert zero == [0.0, 0.0]
    assert preference_accuracy(zero, zero) == 0.5


def test_preference_accuracy_counts_ties_half():
    assert preference_accuracy([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert preference_accuracy([], []) is None
    with pytest.raises(ValueError):
        preference_accuracy([1.0], [])


def test_win_rate_against_itself_is_half_with_a_point_interval():
    scores = [0.0, 1.0, -2.0, 3.0, 1.0]
    result = win_rate(scores, scores)
    assert (result.rate, result.low, result.high) == (0.5, 0.5, 0.5)
    assert (result.wins, result.ties, result.losses, result.n) == (0, 5, 0, 5)


def test_win_rate_hand_example():
    # outcomes: win, loss, tie, win -> (1 + 0 + 0.5 + 1) / 4
    result = win_rate([2.0, 0.0, 1.0, 5.0], [1.0, 1.0, 1.0, -1.0])
    assert result.rate == pytest.approx(0.625)
    assert (result.wins, result.ties, result.losses) == (2, 1, 1)
    # squared deviations from 0.625 sum to 0.6875; sample variance 0.6875 / 3; half-width 1.96 * sd / 2
    half = 1.959963984540054 * math.sqrt(0.6875 / 3 / 4)
    assert result.low == pytest.approx(0.625 - half)
    assert result.high == pytest.approx(min(1.0, 0.625 + half))
    assert result.low <= result.rate <= result.high


def test_win_rate_interval_is_clipped_and_shrinks_with_n():
    small = win_rate([1.0, 0.0, 1.0, 1.0], [0.0] * 4)
    large = win_rate([1.0, 0.0, 1.0, 1.0] * 25, [0.0] * 100)
    assert small.rate == large.rate == 0.875
    assert 0.0 <= small.low < large.low <= 0.875 <= large.high < small.high <= 1.0
    assert win_rate([], []).rate is None


def test_mean_ci():
    interval = mean_ci([1.0, 2.0, 3.0])
    assert interval.estimate == 2.0
    assert interval.low == pytest.approx(2.0 - 1.959963984540054 / math.sqrt(3))
    assert mean_ci([4.0]).low == -math.inf  # one observation: no spread estimate
    assert mean_ci([]).estimate is None
    assert mean([]) is None and mean([1.0, 2.0]) == 1.5


def test_average_ranks_share_ties():
    assert average_ranks([10.0, 20.0, 10.0, 30.0]) == [1.5, 3.0, 1.5, 4.0]


def test_auc_hand_examples():
    assert auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    # one positive (0.5) against negatives 0.5 (tie), 0.2 (win), 0.7 (loss): (0.5 + 1 + 0) / 3
    assert auc([0.5, 0.5, 0.2, 0.7], [True, False, False, False]) == pytest.approx(0.5)
    # all scores equal: nothing separates the classes
    assert auc([1.0] * 5, [True, False, True, False, False]) == 0.5
    assert auc([1.0, 2.0], [True, True]) is None
    assert auc([], []) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=30))
def test_auc_matches_pairwise_count(items):
    scores = [float(s) for s, _ in items]  # small integer range: many ties
    labels = [p for _, p in items]
    pos = [s for s, p in zip(scores, labels, strict=True) if p]
    neg = [s for s, p in zip(scores, labels, strict=True) if not p]
    if not pos or not neg:
        assert auc(scores, labels) is None
        return
    brute = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg) / (len(pos) * len(neg))
    assert auc(scores, labels) == pytest.approx(brute)
    # flipping the scores mirrors the AUC
    assert auc([-s for s in scores], labels) == pytest.approx(1 - brute)
