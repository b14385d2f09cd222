"""The KL-matched comparison of `tispipe experiment`: TIS-DPO against DPO at the same distance from the base.

A method that tolerates a larger step can win the main table by moving further from the base, not by
learning better. Here each TIS-DPO method gets the lr with the best validation score among the grid's lrs
whose validation KL per token (seed 0) stays within DPO's at DPO's chosen lr (the KL budget), and is trained
with every seed at that lr and evaluated on the test split beside DPO. The budget is DPO's own operating
point, fixed before any test number is seen; a method with no lr inside it gets no row, and the report says so.
"""

from __future__ import annotations

from typing import Any

# the methods compared with DPO at matched KL: the TIS-DPO rows of the paper's Table 1
METHODS = ("TIS-DPO(P)", "TIS-DPO(S)", "TIS-DPO(D)")


def kl_budget(grid: dict[str, dict[str, dict[str, float | None]]], chosen: dict[str, float]) -> float | None:
    """DPO's validation KL per token at its chosen lr (None when that eval measured none)."""
    return grid["DPO"][f"{chosen['DPO']:g}"].get("kl_per_token")


def best_lr(by_lr: dict[str, dict[str, float | None]], select_by: str) -> float | None:
    """The lr (keys: lrs as text) with the highest `select_by`, ties to the smaller lr; None when none has a value.
    The one selection rule of the experiment: each method's chosen lr, and its lr within the KL budget."""
    best: tuple[float, float] | None = None
    for lr in sorted(by_lr, key=float):
        value = by_lr[lr].get(select_by)
        if value is not None and (best is None or value > best[1]):
            best = (float(lr), value)
    return None if best is None else best[0]


def matched_lrs(grid, chosen: dict[str, float], select_by: str) -> dict[str, float | None]:
    """{method: the lr with the highest validation `select_by` among the lrs whose validation KL per token is at
    most the budget (ties to the smaller lr), or None when no lr of the grid stays within it}, for the METHODS run."""
    budget = kl_budget(grid, chosen)
    matched: dict[str, float | None] = {}
    for name in [n for n in METHODS if n in grid]:
        kls = {lr: m.get("kl_per_token") for lr, m in grid[name].items()}
        within = {lr: grid[name][lr] for lr, kl in kls.items() if budget is not None and kl is not None and kl <= budget}
        matched[name] = best_lr(within, select_by)
    return matched


def collect(reports: list[dict[str, Any]], methods, base: str, chosen: dict[str, float], matched: dict[str, float | None], grid,
            model_dir) -> dict[str, Any]:
    """The block of report.json: the budget, DPO at its chosen lr and each matched method at its matched lr (mean ± std
    over the seeds' test evals, as the main table's rows), and the smallest validation KL of the methods left without a row.
    `model_dir(name, lr, seed)` is where a model is."""
    from tispipe.studies.results_page import method_rows

    lrs = {"DPO": chosen["DPO"], **{name: lr for name, lr in matched.items() if lr is not None}}
    picked = [m for m in methods if m[0] in lrs]
    rows = method_rows(reports, picked, base, lambda name, seed: model_dir(name, lrs[name], seed))
    rows.pop("base")
    for name, lr in lrs.items():
        rows[name]["lr"] = lr
    outside = {}
    for name in [n for n, lr in matched.items() if lr is None]:
        kls = [(m["kl_per_token"], float(lr)) for lr, m in grid[name].items() if m.get("kl_per_token") is not None]
        outside[name] = None if not kls else {"kl_per_token": min(kls)[0], "lr": min(kls)[1]}
    return {"kl_budget": kl_budget(grid, chosen), "methods": rows, "no_lr_within_budget": outside}
