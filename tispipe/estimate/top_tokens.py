"""`tispipe inspect --top-tokens SHARE`: which tokens a run weights most, and how many of them carry the side's label.

An AUC (tispipe.artifacts.weight_quality) says how well the weights rank labelled tokens; this says what the
highest weights land on instead. Per side, the SHARE of its tokens with the highest w_t are counted by label
(decisive: helpful on chosen, harmful on rejected; opposite; unlabelled), and the unlabelled ones are tallied
by token and by position, so a contrast that finds something the labels leave out (a formatting difference,
the first token of every response) shows by name.

Ties, common where Eq. 19's clamp gives many tokens its bound's weight, are broken by r_t with the side's sign
(chosen +r_t, rejected -r_t): the order Eq. 19 gives before the clamp.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tispipe.artifacts.weight_quality import DECISIVE_LABEL, LOGRATIO_SIGN


@dataclass
class TopTokens:
    """One side's most-weighted tokens. `decisive` and `opposite` are None where the run has no labels."""

    tokens: int  # of the side, in all
    top: int  # how many are counted below
    decisive: int | None
    opposite: int | None
    unlabelled: int
    unlabelled_first: int  # unlabelled ones that are a response's first token
    unlabelled_ids: Counter = field(default_factory=Counter)  # token id -> count


def top_tokens(side: str, rows: Iterable[dict[str, Any]], share: float) -> TopTokens:
    """The `share` (0 < share <= 1) of `side`'s tokens in `rows` (shard rows: {side}_ids, {side}_weights,
    {side}_logratio and, where labelled, {side}_labels) with the highest weight, counted by label."""
    ids, weights, signed, labels, first = [], [], [], [], []
    labelled = True
    for row in rows:
        n = len(row[f"{side}_ids"])
        ids.extend(row[f"{side}_ids"])
        weights.extend(row[f"{side}_weights"])
        signed.extend(LOGRATIO_SIGN[side] * r for r in row[f"{side}_logratio"])
        row_labels = row.get(f"{side}_labels")
        labelled = labelled and row_labels is not None
        labels.extend(row_labels if row_labels is not None else [0] * n)
        first.extend([True] + [False] * (n - 1) if n else [])
    total = len(ids)
    top = min(total, max(1, round(share * total))) if total else 0
    order = np.lexsort((np.asarray(signed, dtype=np.float64), np.asarray(weights, dtype=np.float64)))[::-1][:top]
    chosen_labels = np.asarray(labels, dtype=np.int64)[order]
    unlabelled = order[chosen_labels == 0]
    first_array = np.asarray(first, dtype=bool)
    return TopTokens(
        tokens=total, top=top,
        decisive=int((chosen_labels == DECISIVE_LABEL[side]).sum()) if labelled else None,
        opposite=int((chosen_labels == -DECISIVE_LABEL[side]).sum()) if labelled else None,
        unlabelled=len(unlabelled), unlabelled_first=int(first_array[unlabelled].sum()),
        unlabelled_ids=Counter(int(ids[i]) for i in unlabelled),
    )
