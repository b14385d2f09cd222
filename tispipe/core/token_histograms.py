"""Statistics of per-token values in bounded memory: exact moments, and fine histograms per token class.

A run's r_t and w_t come to one float per response token: millions for a real data set. Holding them
all to sort them (exact quantiles and AUCs) grows with the data; these accumulators do not. Each value
goes into one of BINS equal bins between the column's exact minimum and maximum (known from a first
pass), counted per token class. From the counts:
  - quantiles are exact to within one bin width, (max - min) / BINS;
  - an AUC is the Mann-Whitney statistic with values that share a bin counted as ties, so it is exact
    whenever distinct values never share a bin (tied values always do), and otherwise off by at most
    half the fraction of (positive, negative) pairs that share one;
  - an ROC curve has one point per occupied bin.
Count, mean, std, min and max are exact (float64, merged chunk by chunk).

Token classes, for the side's decisive label (+1 helpful on chosen, -1 harmful on rejected):
DECISION is the first token of a decisive span (where the choice is made: the span's later tokens follow
from it under both contrastive models), DECISIVE_REST the span's other tokens, NEUTRAL label 0, OPPOSITE
the other side's label, UNLABELLED a token of a row without labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BINS = 50 * 1024  # a multiple of the weights figure's 50 bins, so each of its bins is a sum of these
DECISION, DECISIVE_REST, NEUTRAL, OPPOSITE, UNLABELLED = range(5)
CLASSES = 5
DECISIVE = (DECISION, DECISIVE_REST)
LABELLED_OTHER = (NEUTRAL, OPPOSITE)


def token_classes(labels: np.ndarray, starts: np.ndarray, decisive_label: int) -> np.ndarray:
    """(T,) int64 class of each labelled token, from its label (T,) and whether it opens its row (T,) bool.

    A decisive token is a DECISION token when it opens its row or follows a token with another label.
    """
    labels = np.asarray(labels)
    decisive = labels == decisive_label
    previous = np.r_[0, labels[:-1]] if labels.size else labels
    opens_span = decisive & (np.asarray(starts, dtype=bool) | (previous != labels))
    classes = np.full(labels.shape, OPPOSITE, dtype=np.int64)
    classes[labels == 0] = NEUTRAL
    classes[decisive] = DECISIVE_REST
    classes[opens_span] = DECISION
    return classes


@dataclass
class Moments:
    """Exact count, mean, variance (population), min and max of a stream of values, one chunk at a time."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    low: float = float("inf")
    high: float = float("-inf")
    at_low: int = 0  # how many values equal `low` (a clamp's bound gives many the same value)
    at_high: int = 0

    def add(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        v = values.astype(np.float64)
        n, mean = v.size, float(v.mean())
        m2 = float(((v - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        # Chan et al.'s pairwise update: no sum of squares, so no cancellation for values far from 0
        self.m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        low, high = float(v.min()), float(v.max())
        at_low, at_high = int((v == low).sum()), int((v == high).sum())
        self.at_low = at_low if low < self.low else self.at_low + at_low * (low == self.low)
        self.at_high = at_high if high > self.high else self.at_high + at_high * (high == self.high)
        self.low, self.high = min(self.low, low), max(self.high, high)

    def std(self) -> float:
        return (self.m2 / self.count) ** 0.5 if self.count else float("nan")


@dataclass
class ClassHistogram:
    """Counts (CLASSES, BINS) of one column's values per token class over BINS equal bins of [low, high],
    and each class's exact sum of values."""

    low: float
    high: float
    counts: np.ndarray = field(init=False)
    sums: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.counts = np.zeros((CLASSES, BINS), dtype=np.int64)
        self.sums = np.zeros(CLASSES, dtype=np.float64)

    def bin_index(self, values: np.ndarray) -> np.ndarray:
        width = self.high - self.low
        if not width > 0:
            return np.zeros(values.shape, dtype=np.int64)
        scaled = (values.astype(np.float64) - self.low) * (BINS / width)
        return np.clip(scaled.astype(np.int64), 0, BINS - 1)

    def add(self, values: np.ndarray, classes: np.ndarray) -> None:
        """Count `values` (T,) of the token classes `classes` (T,)."""
        flat = classes * BINS + self.bin_index(values)
        self.counts += np.bincount(flat, minlength=CLASSES * BINS).reshape(CLASSES, BINS)
        self.sums += np.bincount(classes, weights=values.astype(np.float64), minlength=CLASSES)

    def edges(self, bins: int = BINS) -> np.ndarray:
        """(bins + 1,) float64 edges of `bins` equal bins over [low, high] (np.histogram's edges)."""
        high = self.high if self.high > self.low else self.low + 1.0
        return np.linspace(self.low, high, bins + 1)

    def of(self, classes: tuple[int, ...] | None = None) -> np.ndarray:
        """(BINS,) counts summed over `classes` (all when None)."""
        return self.counts.sum(0) if classes is None else self.counts[list(classes)].sum(0)

    def coarse(self, bins: int) -> tuple[np.ndarray, np.ndarray]:
        """(counts (bins,), edges (bins + 1,)) of every token, in `bins` bins; BINS must be a multiple of it."""
        return self.of().reshape(bins, BINS // bins).sum(1), self.edges(bins)

    def quantile(self, q: float, classes: tuple[int, ...] | None = None) -> float:
        """np.quantile's linear interpolation between order statistics, each read as the point of its bin
        that its rank within the bin gives (values spread evenly over the bin)."""
        counts = self.of(classes)
        n = int(counts.sum())
        if n == 0:
            return float("nan")
        cumulative = np.cumsum(counts)
        edges = self.edges()

        def order_statistic(k: int) -> float:  # the value of rank k (0-based)
            b = int(np.searchsorted(cumulative, k, side="right"))
            before = int(cumulative[b - 1]) if b else 0
            within = (k - before + 0.5) / counts[b]
            return float(min(max(edges[b] + within * (edges[b + 1] - edges[b]), self.low), self.high))

        h = (n - 1) * q
        k = int(np.floor(h))
        low = order_statistic(k)
        return low if k + 1 >= n else low + (h - k) * (order_statistic(k + 1) - low)

    def ranked(self, positive: tuple[int, ...], negative: tuple[int, ...], descending_values: bool) -> tuple[np.ndarray, np.ndarray]:
        """(positive counts, negative counts), each (BINS,), ordered from the highest score to the lowest.

        The score is the value (`descending_values` True) or minus the value (False: low values rank first).
        """
        pos, neg = self.of(positive), self.of(negative)
        return (pos[::-1], neg[::-1]) if descending_values else (pos, neg)

    def auc(self, positive: tuple[int, ...], negative: tuple[int, ...], descending_values: bool = True) -> float | None:
        """P(score of a positive token > score of a negative one), a shared bin counting half; None when a
        class is empty."""
        pos, neg = self.ranked(positive, negative, descending_values)
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        if n_pos == 0 or n_neg == 0:
            return None
        negatives_below = n_neg - np.cumsum(neg)  # negatives in later (lower-scored) bins
        wins = (pos * negatives_below).sum(dtype=np.float64) + 0.5 * (pos * neg).sum(dtype=np.float64)
        return float(wins / (n_pos * n_neg))

    def roc(self, positive: tuple[int, ...], negative: tuple[int, ...], descending_values: bool = True) -> dict[str, list[float]]:
        """The ROC curve {"fpr", "tpr"} from (0, 0), one point per occupied bin, highest scores first."""
        pos, neg = self.ranked(positive, negative, descending_values)
        occupied = (pos + neg) > 0
        tp, fp = np.cumsum(pos)[occupied], np.cumsum(neg)[occupied]
        n_pos, n_neg = max(int(pos.sum()), 1), max(int(neg.sum()), 1)
        return {"fpr": [0.0, *(fp / n_neg).tolist()], "tpr": [0.0, *(tp / n_pos).tolist()]}
