"""One optimizer step of `tispipe train`: forward/backward of its micro-batches, the loss, the token weights.

Per-token tensors follow `tispipe.modeling.batching`: (2B, R) over response positions, R = the longest
response in the micro-batch, rows 0..B-1 the chosen responses and B..2B-1 the rejected ones.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from tispipe.configs import TrainConfig, check_bounds, check_weight_options
from tispipe.core import losses
from tispipe.core.logps import token_logps, token_logps_and_kl
from tispipe.core.weights import DEFAULT_BOUNDS, TRANSFORMS, compute_weights, random_weights
from tispipe.errors import TispipeError
from tispipe.modeling import distributed
from tispipe.modeling.batching import budget_runs, forward_logits, make_pair_batch

# The options that re-derive token weights from the stored log-ratios (--weighting estimated).
REDERIVE_OPTIONS = ("transform", "k", "mu", "lower", "upper", "top_fraction", "floor")

# Elements of the (2B, R, V) logits one training forward may hold; a micro-batch over it runs as smaller
# forwards in the same step, whose gradients add up to the same update. On CPU, 2**24 (64 MiB in float32):
# LoRA r 16 on SmolLM2 (49,152-token vocabulary), 4 steps of 16 HH pairs of up to 512 tokens, 2 threads, peaks
# at 3.7 GB (dpo) and 3.9 GB (tisdpo), against 10.3 and 12.0 GB at 2**27, which ran slower (dpo 0.59 pairs/s
# against 0.78-0.93 at 2**24, tisdpo 0.43 against 0.54-0.64); in one forward both were killed at 24 GB
# (docs/real-model.md). The toy model's steps stay far below it. On an accelerator, 2**28 (1 GiB per float32
# copy) keeps several pairs per forward; not measured there.
TRAIN_LOGITS_ELEMENTS = 1 << 24
ACCELERATOR_LOGITS_ELEMENTS = 1 << 28


@dataclass(frozen=True)
class WeightPlan:
    """How each token's weight is obtained.

    kind: "stored" (the shards' weights), "rederive" (`compute_weights` on the stored log-ratios with
    transform/k/mu/lower/upper/fraction/floor; rank and linear keep their default output range; calibrated
    divides each side's r by `scales`, the std of r over that side's tokens in the manifest), "equal" (all 1)
    or "random" (uniform in [lower, upper], or in each side's `side_ranges`, seeded by `seed`); `describe` says
    which, for the run's first line.
    """

    kind: str
    describe: str
    transform: str | None = None
    k: float | None = None
    mu: float | None = None
    lower: float | None = None
    upper: float | None = None
    fraction: float = 0.2
    floor: float = 0.0
    scales: tuple[float, float] = (1.0, 1.0)  # (chosen, rejected)
    seed: int | None = None
    side_ranges: tuple[tuple[float, float], tuple[float, float]] | None = None  # random: (chosen, rejected) ranges instead of [lower, upper]


def weight_plan(cfg: TrainConfig, manifest: dict[str, Any]) -> WeightPlan:
    """The run's WeightPlan: stored, re-derived from stored log-ratios, all ones, or random.

    Re-derivation starts from the settings the shards were made with and replaces the ones given.
    `--mu m` means mu = +m on chosen and -m on rejected tokens (the paper's +1/-1).
    """
    stored = _manifest_weight_settings(manifest)
    if cfg.weighting == "equal":
        return WeightPlan(kind="equal", describe="all 1")
    if cfg.weighting in ("random", "random-matched"):
        default_lower, default_upper = DEFAULT_BOUNDS["exp"]
        lower = cfg.lower if cfg.lower is not None else _first(stored.get("lower"), default_lower)
        upper = cfg.upper if cfg.upper is not None else _first(stored.get("upper"), default_upper)
        check_bounds(lower, upper)
        if cfg.weighting == "random":
            return WeightPlan(kind="random", describe=f"uniform in [{lower}, {upper}]", lower=lower, upper=upper, seed=cfg.seed)
        means = _side_statistic(manifest, "weights", "mean", "mean weight", "--weighting random-matched")
        half = (upper - lower) / 2
        ranges = tuple((mean - half, mean + half) for mean in means)
        shown = "; ".join(f"{side} [{a:.3g}, {b:.3g}]" for side, (a, b) in zip(("chosen", "rejected"), ranges, strict=True))
        return WeightPlan(kind="random", describe=f"uniform, {upper - lower:g} wide around the stored weights' mean: {shown}", seed=cfg.seed,
                          side_ranges=ranges)
    if all(getattr(cfg, n) is None for n in REDERIVE_OPTIONS):
        return WeightPlan(kind="stored", describe="estimated, as stored")
    settings = {
        "transform": cfg.transform or stored.get("transform") or "exp",
        "k": _first(cfg.k, stored.get("k"), 1.0),
        "mu": abs(_first(cfg.mu, 1.0)),
        "lower": _first(cfg.lower, stored.get("lower")),
        "upper": _first(cfg.upper, stored.get("upper")),
        "fraction": _first(cfg.top_fraction, stored.get("top_fraction"), 0.2),
        "floor": _first(cfg.floor, stored.get("floor"), 0.0),
    }
    if settings["transform"] != stored.get("transform") and cfg.lower is None and cfg.upper is None:
        settings["lower"] = settings["upper"] = None  # the new transform's own default bounds
    if settings["transform"] == "calibrated":
        settings["scales"] = _side_statistic(manifest, "logratio", "std", "spread of r", "--transform calibrated")
    shown = ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None and (k not in ("fraction", "floor") or settings["transform"] == "top"))
    plan = WeightPlan(kind="rederive", describe=f"re-derived from stored log-ratios ({shown})", **settings)
    # Fail now, not at the first batch, on settings the weight function rejects.
    if plan.transform not in TRANSFORMS:
        raise TispipeError(f"the shards' manifest names a weight transform this version does not know ({plan.transform!r})",
                           hint=f"give --transform ({', '.join(TRANSFORMS)})")
    default_lower, default_upper = DEFAULT_BOUNDS[plan.transform]
    check_weight_options(plan.transform, plan.k, _first(plan.lower, default_lower), _first(plan.upper, default_upper), plan.fraction)
    for side in (0, 1):
        compute_weights(torch.zeros(1, 1), torch.ones(1, 1), plan.mu, **_rederive_options(plan, side))
    return plan


def _side_statistic(manifest: dict[str, Any], column: str, statistic: str, what: str, needed_by: str) -> tuple[float, float]:
    """(chosen, rejected) `statistic` of a column over every response token, as the estimate's manifest recorded it:
    `weights` `mean` (--weighting random-matched), `logratio` `std` (the spread of r, --transform calibrated)."""
    try:
        return tuple(float(manifest[column][side][statistic]) for side in ("chosen", "rejected"))  # type: ignore[return-value]
    except (KeyError, TypeError, ValueError):
        raise TispipeError(f"the shards' manifest records no {what} ({column}.chosen.{statistic}), which {needed_by} needs",
                           hint="re-run `tispipe estimate` with this version") from None


def _first(*values):
    return next((v for v in values if v is not None), None)


def _manifest_weight_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The estimate run's settings (transform, k, lower, upper; its mu is always +1 chosen, -1 rejected)."""
    settings = manifest.get("settings")
    return settings if isinstance(settings, dict) else {}


def _rederive_options(plan: WeightPlan, side: int) -> dict[str, Any]:
    """`compute_weights`'s keyword arguments besides mu, for side 0 (chosen) or 1 (rejected)."""
    return {"transform": plan.transform, "k": plan.k, "lower": plan.lower, "upper": plan.upper, "fraction": plan.fraction, "floor": plan.floor,
            "scale": plan.scales[side]}


class NonFiniteStep(TispipeError):
    """A step whose loss or gradient is NaN or infinite: nothing was updated (train.run names the step)."""


@dataclass
class StepContext:
    policy: Any  # the policy as trained: itself, or DDP/FSDP-wrapped under torchrun
    ref: Any  # the frozen reference model, None when the loss uses the shards' cached log-probs
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cfg: TrainConfig
    plan: WeightPlan
    pad_id: int
    device: str
    autocast: Any
    vocab: int  # V of the policy's logits (tispipe.modeling.batching.logits_width)
    filler: list[dict] | None = None  # under torchrun: a row for the zero-weighted passes of a rank with none left


def train_step(ctx: StepContext, micro_batches: list[list[dict]]) -> dict[str, float]:
    """Forward/backward every micro-batch, clip, step; return the step's metrics (means over its pairs; `pairs`
    and `tokens`, each prompt counted once, are the step's totals).

    Each micro-batch's summed loss is divided by the step's pair count, so the accumulated gradient is
    the gradient of the mean loss over the whole step, whatever the micro-batch sizes.

    Under torchrun the step's pairs are those of every rank: the pair count is summed over the ranks,
    and as DDP/FSDP average the ranks' gradients (sum / world) each rank divides its summed loss by
    (global pairs / world), so the synced gradient is that of sum(all losses) / global pairs, the same
    as one process taking the whole global batch. Every rank runs as many backward passes as the rank
    with the most micro-batches (each last pass syncs gradients); missing ones are zero-weighted.

    A micro-batch whose logits exceed TRAIN_LOGITS_ELEMENTS (on CPU; ACCELERATOR_LOGITS_ELEMENTS elsewhere)
    runs as several forwards (`logits_runs`); the divisor stays the step's pair count, so the update is the same.
    """
    micro_batches = [run for micro in micro_batches for run in logits_runs(ctx, micro)]
    n_pairs = sum(len(m) for m in micro_batches)
    n_tokens = sum(len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for m in micro_batches for r in m)
    passes, divisor, world = len(micro_batches), n_pairs, distributed.world_size()
    if world > 1:
        n_pairs, n_tokens = (int(v) for v in distributed.all_reduce([n_pairs, n_tokens]))
        passes = int(distributed.all_reduce([passes], "max")[0])
        divisor = n_pairs / world
    sums: dict[str, float] = defaultdict(float)
    for i in range(passes):
        real = i < len(micro_batches)
        rows = micro_batches[i] if real else ctx.filler
        with distributed.gradient_sync(ctx.policy, i == passes - 1):
            pair_losses, per_pair = pair_forward(ctx, rows)
            loss = pair_losses.sum() / divisor
            (loss if real else loss * 0.0).backward()
        for name, values in per_pair.items():
            sums[name] += float(values.sum()) if real else 0.0
    if world > 1:
        names = sorted(sums)
        sums = dict(zip(names, distributed.all_reduce([sums[n] for n in names])))
    params = [p for p in ctx.policy.parameters() if p.requires_grad]
    max_norm = ctx.cfg.max_grad_norm if ctx.cfg.max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
        grad_norm = grad_norm.full_tensor()
    if not (math.isfinite(float(grad_norm)) and math.isfinite(sums["loss"])):
        # Checked before the update, on every rank alike (synced gradients): the weights stay as they were.
        ctx.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteStep(f"the loss ({sums['loss'] / n_pairs:.4g}) or the gradient norm ({float(grad_norm):.4g}) is not finite")
    lr = ctx.optimizer.param_groups[0]["lr"]
    ctx.optimizer.step()
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    metrics = {name: total / n_pairs for name, total in sums.items()}
    metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    metrics.update(grad_norm=float(grad_norm), lr=lr, pairs=n_pairs, tokens=n_tokens)
    return metrics


def logits_runs(ctx: StepContext, rows: list[dict]) -> list[list[dict]]:
    """`rows` (pairs) cut in order into runs whose (2B, R, V) logits stay within the device's budget
    (TRAIN_LOGITS_ELEMENTS on CPU, ACCELERATOR_LOGITS_ELEMENTS elsewhere): one `pair_forward` each."""
    budget = TRAIN_LOGITS_ELEMENTS if torch.device(ctx.device).type == "cpu" else ACCELERATOR_LOGITS_ELEMENTS
    return budget_runs(rows, [2 * max(len(r["chosen_ids"]), len(r["rejected_ids"]), 1) * ctx.vocab for r in rows], budget)


def pair_forward(ctx: StepContext, rows: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair losses (B,) with gradient, and detached per-pair metric values (each (B,))."""
    cfg, b = ctx.cfg, len(rows)
    batch = make_pair_batch([r["prompt_ids"] for r in rows], [r["chosen_ids"] for r in rows], [r["rejected_ids"] for r in rows], ctx.pad_id).to(ctx.device)
    labels, mask = batch.labels, batch.response_mask  # (2B, R)
    with ctx.autocast:
        policy_logits = forward_logits(ctx.policy, batch)
    loss = losses.LOSSES[cfg.loss]
    kl = None
    if ctx.ref is not None:
        with torch.inference_mode(), ctx.autocast:
            ref_logits = forward_logits(ctx.ref, batch)
        ref_logits = ref_logits.clone()  # a normal tensor, usable in autograd
        policy_logps, ref_logps, kl = token_logps_and_kl(policy_logits, ref_logits, labels, policy_first=loss.kl == "policy||ref")
    else:
        policy_logps = token_logps(policy_logits, labels)
        ref_logps = _place(batch, rows, "ref_logps")
    weights = batch_weights(ctx.plan, batch, rows)

    chosen, rejected = slice(0, b), slice(b, 2 * b)
    terms = losses.PairTerms(
        logps=(policy_logps[chosen], policy_logps[rejected], ref_logps[chosen], ref_logps[rejected], mask[chosen], mask[rejected]),
        weights=(weights[chosen], weights[rejected]),
        kl=(kl[chosen], kl[rejected]) if kl is not None else None,
    )
    pair_losses, chosen_rewards, rejected_rewards = loss.compute(terms, cfg.beta, cfg.eta_coef, cfg.alpha)

    with torch.no_grad():
        logratio = policy_logps.detach() - ref_logps
        token_counts = mask.sum(-1).clamp(min=1)
        per_pair = {
            "loss": pair_losses.detach(),
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        }
        for side, rows_of_side in (("chosen", chosen), ("rejected", rejected)):
            side_mask = mask[rows_of_side]
            per_pair[f"logps/{side}"] = losses.masked_sum(policy_logps.detach()[rows_of_side], side_mask)
            per_pair[f"logratio/{side}"] = losses.masked_sum(logratio[rows_of_side], side_mask)
            per_pair[f"logratio/{side}_weighted"] = losses.masked_sum(logratio[rows_of_side], side_mask, weights[rows_of_side])
            per_pair[f"weights/{side}_mean"] = losses.masked_sum(weights[rows_of_side], side_mask) / token_counts[rows_of_side]
            if kl is not None:
                per_pair[f"kl/{side}"] = losses.masked_sum(kl.detach()[rows_of_side], side_mask)
    return pair_losses, per_pair


def _place(batch, rows: list[dict], column: str) -> torch.Tensor:
    """The chosen then rejected per-token lists of shard column `column` (e.g. "ref_logps") as a (2B, R) tensor."""
    chosen = [r.get(f"chosen_{column}") for r in rows]
    rejected = [r.get(f"rejected_{column}") for r in rows]
    if any(v is None for v in chosen + rejected):
        raise TispipeError(
            f"the shards hold no {column} for some pairs",
            hint="re-run `tispipe estimate`, or pick a loss/weighting that does not need them",
        )
    try:
        return batch.place(chosen + rejected)
    except ValueError as e:
        ids = [r.get("pair_id") for r in rows]
        raise TispipeError(f"shard column {column} does not line up with the token ids in pairs {ids}: {e}") from None


def batch_weights(plan: WeightPlan, batch, rows: list[dict]) -> torch.Tensor:
    """The micro-batch's token weights per `plan`: (2B, R), chosen rows first, 0 outside responses."""
    mask = batch.response_mask
    b = len(rows)
    if plan.kind == "equal":
        return mask.clone()
    if plan.kind == "stored":
        return _place(batch, rows, "weights")
    if plan.kind == "random":
        values = [_random_row(plan, r, "chosen") for r in rows] + [_random_row(plan, r, "rejected") for r in rows]
        return batch.place(values)
    logratio = _place(batch, rows, "logratio")
    chosen = compute_weights(logratio[:b], mask[:b], plan.mu, **_rederive_options(plan, 0))
    rejected = compute_weights(logratio[b:], mask[b:], -plan.mu, **_rederive_options(plan, 1))
    return torch.cat([chosen, rejected])


def _random_row(plan: WeightPlan, row: dict, side: str) -> list[float]:
    """Uniform weights for one response, a pure function of (seed, pair_id, side): the same in every epoch and after resuming."""
    key = hashlib.sha256(f"{plan.seed}:{row['pair_id']}:{side}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & ((1 << 63) - 1))
    length = len(row[f"{side}_ids"])
    lower, upper = plan.side_ranges[("chosen", "rejected").index(side)] if plan.side_ranges else (plan.lower, plan.upper)
    return random_weights(torch.ones(1, length), lower, upper, generator)[0].tolist()
