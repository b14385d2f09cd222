"""Evaluation metrics as pure functions of plain numbers (lists of floats in, floats out).

Conventions shared by every function here:
- a tie counts as half a win (preference accuracy, win rate, AUC), so a model compared with itself,
  or a score that cannot tell two things apart, lands exactly on 0.5;
- an empty input gives None rather than a made-up number, and the report prints it as "n/a".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if len(values) else None


def outcome(score: float, baseline_score: float) -> float:
    """1 for a win, 0.5 for a tie, 0 for a loss."""
    return 1.0 if score > baseline_score else 0.5 if score == baseline_score else 0.0


def preference_accuracy(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float]) -> float | None:
    """Fraction of pairs whose chosen response gets the higher reward; ties count half.

    With implicit DPO rewards r(y) = beta * sum_t [log pi(y_t) - log ref(y_t)], the reference model
    itself has r = 0 for every response and so scores exactly 0.5: no preference, not a wrong one.
    """
    if len(chosen_rewards) != len(rejected_rewards):
        raise ValueError(f"{len(chosen_rewards)} chosen rewards for {len(rejected_rewards)} rejected ones")
    return mean([outcome(c, r) for c, r in zip(chosen_rewards, rejected_rewards, strict=True)])


def implicit_rewards(policy_logps: Sequence[float], ref_logps: Sequence[float], beta: float) -> list[float]:
    """DPO's implicit reward of each response: beta * (log pi(y|x) - log ref(y|x)), sequence log-probs."""
    if len(policy_logps) != len(ref_logps):
        raise ValueError(f"{len(policy_logps)} policy log-probs for {len(ref_logps)} reference ones")
    return [beta * (p - r) for p, r in zip(policy_logps, ref_logps, strict=True)]


@dataclass
class Interval:
    """An estimate with a two-sided 95% confidence interval [low, high] over n observations."""

    estimate: float | None
    low: float | None
    high: float | None
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci(values: Sequence[float], lower: float = -math.inf, upper: float = math.inf) -> Interval:
    """Mean with a normal-approximation 95% interval, mean +- 1.96 * s / sqrt(n), clipped to [lower, upper].

    s is the sample standard deviation (n - 1). One observation gives no spread estimate, so its
    interval is the whole [lower, upper] range. Caveat: when every observation is equal (all wins,
    say) the interval collapses to the point; for small n read it as "no spread seen", not certainty.
    """
    n = len(values)
    if n == 0:
        return Interval(None, None, None, 0)
    m = sum(values) / n
    if n == 1:
        return Interval(m, lower, upper, 1)
    variance = sum((v - m) ** 2 for v in values) / (n - 1)
    half = Z95 * math.sqrt(variance / n)
    return Interval(m, max(lower, m - half), min(upper, m + half), n)


@dataclass
class WinRate:
    """Win rate of scores against baseline scores on the same items (ties half), with its 95% interval."""

    rate: float | None
    low: float | None
    high: float | None
    wins: int
    ties: int
    losses: int
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def win_rate(scores: Sequence[float], baseline_scores: Sequence[float]) -> WinRate:
    """Compare item i of `scores` with item i of `baseline_scores` (same prompt, same sample index).

    The rate is the mean of the outcomes (1 win, 0.5 tie, 0 loss) and its interval is `mean_ci` of
    those outcomes, clipped to [0, 1]. A model against itself ties everywhere: rate 0.5, interval [0.5, 0.5].
    """
    if len(scores) != len(baseline_scores):
        raise ValueError(f"{len(scores)} scores for {len(baseline_scores)} baseline scores")
    outcomes = [outcome(s, b) for s, b in zip(scores, baseline_scores, strict=True)]
    interval = mean_ci(outcomes, 0.0, 1.0)
    wins = sum(o == 1.0 for o in outcomes)
    ties = sum(o == 0.5 for o in outcomes)
    return WinRate(interval.estimate, interval.low, interval.high, wins, ties, len(outcomes) - wins - ties, len(outcomes))


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of `values` in ascending order; tied values share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation: the Pearson correlation of the average ranks of `x` and of `y`.

    None with fewer than 2 values, or when either side is constant (the correlation is undefined).
    """
    if len(x) != len(y):
        raise ValueError(f"{len(x)} values against {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return None
    return cov / math.sqrt(vx * vy)


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties half.

    Computed from the Mann-Whitney U statistic with average ranks, O(n log n):
        AUC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos * n_neg).
    None when there is no positive or no negative (the AUC is undefined).
    """
    if len(scores) != len(positive):
        raise ValueError(f"{len(scores)} scores for {len(positive)} labels")
    n_pos = sum(1 for p in positive if p)
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(scores)
    rank_sum = sum(r for r, p in zip(ranks, positive, strict=True) if p)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def chrf(hypothesis: str, references: Sequence[str], max_order: int = 6, beta: float = 2.0) -> float | None:
    """chrF (Popović, 2015) of `hypothesis` against its best-matching reference, in [0, 1].

    Character n-grams of orders 1..max_order (spaces removed, as sacrebleu's default does), precision
    and recall averaged over the orders, then F_beta with beta = 2 (recall counts twice). An empty
    hypothesis scores 0 against any non-empty reference, so an answer cannot win by saying nothing.
    None when there is no reference.
    """
    if not references:
        return None
    return max(_chrf_one(hypothesis, reference, max_order, beta) for reference in references)


def _char_ngrams(text: str, n: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(len(text) - n + 1):
        counts[text[i:i + n]] = counts.get(text[i:i + n], 0) + 1
    return counts


def _chrf_one(hypothesis: str, reference: str, max_order: int, beta: float) -> float:
    hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
    precisions, recalls = [], []
    for n in range(1, max_order + 1):
        h, r = _char_ngrams(hyp, n), _char_ngrams(ref, n)
        if not h or not r:
            continue  # this order has no n-grams on one side (a text shorter than n)
        matched = sum(min(count, r.get(gram, 0)) for gram, count in h.items())
        precisions.append(matched / sum(h.values()))
        recalls.append(matched / sum(r.values()))
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    return 0.0 if p + r == 0 else (1 + beta**2) * p * r / (beta**2 * p + r)
