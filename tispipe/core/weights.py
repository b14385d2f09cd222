"""Token weights w_t from the contrastive log-ratio r_t = log pi+(y_t | s_t) - log pi-(y_t | s_t).

Shapes: (B, T) for `logratio`, `mask` (1 on response tokens, 0 on padding) and every result.
The sign convention is the paper's: mu = +1 for the chosen response (weight rises with reward) and
mu = -1 for the rejected one (weight falls with reward). Every transform is monotone in mu * r.
Weights are fixed data for training: nothing here needs gradients.
"""

from __future__ import annotations

import torch

from tispipe.errors import TispipeError

TRANSFORMS = ("exp", "calibrated", "top", "rank", "linear")

# Default clamp bounds per transform: paper Eq. 19 / section 7.1 for exp (and for calibrated, on r / scale),
# the authors' threshold_and_scale for linear. Rank and top ignore them.
DEFAULT_BOUNDS = {"exp": (-0.5, 1.5), "calibrated": (-0.5, 1.5), "linear": (-1.5, 1.5), "rank": (None, None), "top": (None, None)}


def _check_bounds(lower: float, upper: float) -> None:
    if not lower < upper:
        raise ValueError(f"lower ({lower}) must be smaller than upper ({upper})")


def exp_weights(
    logratio: torch.Tensor, mu: float, k: float = 1.0, lower: float = -0.5, upper: float = 1.5
) -> torch.Tensor:
    """Paper Eq. 19: w_t = k * exp(mu * clamp(r_t, lower, upper)).

    The clamp applies to the raw log-ratio, before mu, so with the defaults a chosen weight (mu = +1)
    lies in [e^-0.5, e^1.5] and a rejected weight (mu = -1) in [e^-1.5, e^0.5]. No renormalisation.
    """
    return k * torch.exp(mu * logratio.float().clamp(lower, upper))


def calibrated_weights(
    logratio: torch.Tensor, mu: float, scale: float, k: float = 1.0, lower: float = -0.5, upper: float = 1.5
) -> torch.Tensor:
    """Eq. 19 on r_t in units of its own spread: w_t = k * exp(mu * clamp(r_t / scale, lower, upper)).

    `scale` is the standard deviation of r over every response token of that side in the data set
    (the estimate manifest's `logratio.<side>.std`), so the paper's bounds [-0.5, 1.5] mean half a
    std and 1.5 std whatever the size of the contrastive models' log-ratios.
    """
    if not scale > 0:
        raise TispipeError(f"the calibrated transform needs a positive spread of r, not {scale}", hint="every stored log-ratio of that side is the same")
    return exp_weights(logratio.float() / scale, mu, k=k, lower=lower, upper=upper)


def top_weights(logratio: torch.Tensor, mask: torch.Tensor, mu: float, fraction: float = 0.2, floor: float = 0.0) -> torch.Tensor:
    """Selection, the SePO way: within each row, weight 1 on the ceil(fraction * n) tokens with the highest
    mu * r_t (at least one; among equal values the earlier token first) and `floor` on the others; 0 at masked positions."""
    valid = mask.bool()
    keyed = torch.where(valid, mu * logratio.float(), torch.full_like(logratio, float("-inf"), dtype=torch.float32))
    order = torch.sort(keyed, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    selected = rank < (fraction * valid.sum(-1, keepdim=True)).ceil().clamp(min=1)
    weights = torch.where(selected, torch.ones_like(keyed), torch.full_like(keyed, floor))
    return torch.where(valid, weights, torch.zeros_like(weights))


def rank_weights(
    logratio: torch.Tensor, mask: torch.Tensor, mu: float, low: float = 0.7, high: float = 1.3
) -> torch.Tensor:
    """Within each row, rank mu * r_t ascending over the masked-in positions and map rank / (n - 1) onto [low, high].

    Tied values share their average rank (the authors' stable sort instead favoured later tokens).
    A row with one token gets (low + high) / 2; masked positions get 0. Vectorised with a sort and two
    `searchsorted` calls: rank_lo = #{values < v}, rank_hi = #{values <= v} - 1, rank = their mean.
    """
    valid = mask.bool()
    values = mu * logratio.float()
    if not torch.isfinite(values[valid]).all():
        raise TispipeError("token log-ratios contain NaN or infinity; cannot rank them")
    # Masked positions sort after every real value, so they never count as "smaller than" one.
    keyed = torch.where(valid, values, torch.full_like(values, float("inf")))
    ordered, _ = keyed.sort(dim=-1)
    count_below = torch.searchsorted(ordered, keyed.contiguous(), right=False)
    count_at_or_below = torch.searchsorted(ordered, keyed.contiguous(), right=True)
    rank = (count_below + count_at_or_below - 1).float() / 2
    n = valid.sum(-1, keepdim=True).float()
    fraction = torch.where(n > 1, rank / (n - 1).clamp(min=1), torch.full_like(rank, 0.5))
    weights = low + (high - low) * fraction
    return torch.where(valid, weights, torch.zeros_like(weights))


def linear_weights(
    logratio: torch.Tensor,
    mu: float,
    lower: float = -1.5,
    upper: float = 1.5,
    low: float = 0.7,
    high: float = 1.3,
) -> torch.Tensor:
    """Clamp mu * r_t to [lower, upper], then map that interval linearly onto [low, high].

    This is the authors' threshold_and_scale; with the defaults w = 0.7 + 0.2 * (clamp(mu r) + 1.5),
    so w = 1 at r = 0.
    """
    clamped = (mu * logratio.float()).clamp(lower, upper)
    return low + (high - low) * (clamped - lower) / (upper - lower)


def random_weights(
    mask: torch.Tensor, lower: float, upper: float, generator: torch.Generator
) -> torch.Tensor:
    """Uniform weights in [lower, upper] on masked-in positions, 0 elsewhere (the paper's random-weight ablation).

    Draws on the generator's device (CPU for a default `torch.Generator()`), then moves to `mask`'s device.
    """
    _check_bounds(lower, upper)
    draws = torch.rand(mask.shape, generator=generator, device=generator.device)
    weights = lower + (upper - lower) * draws.to(mask.device)
    return torch.where(mask.bool(), weights, torch.zeros_like(weights))


def compute_weights(
    logratio: torch.Tensor,
    mask: torch.Tensor,
    mu: float,
    transform: str = "exp",
    k: float = 1.0,
    lower: float | None = None,
    upper: float | None = None,
    low: float = 0.7,
    high: float = 1.3,
    scale: float = 1.0,
    fraction: float = 0.2,
    floor: float = 0.0,
) -> torch.Tensor:
    """Token weights (B, T) for one side of a pair, 0 at masked positions.

    Args:
        logratio: (B, T) r_t = log pi+ - log pi- per response token.
        mask: (B, T) 1 on response tokens.
        mu: +1 for chosen, -1 for rejected (any non-zero float is accepted).
        transform: "exp" (paper Eq. 19, uses k, lower, upper), "calibrated" (Eq. 19 on r / scale),
            "top" (1 on the top `fraction` of each row, `floor` elsewhere), "rank" (uses low, high),
            "linear" (threshold_and_scale, uses lower, upper, low, high).
        k: scale of the exp transform, > 0.
        lower, upper: clamp bounds; None means the transform's default (exp: -0.5, 1.5; linear: -1.5, 1.5).
        low, high: output range of the rank and linear transforms.
        scale: the spread of r on this side (calibrated only), > 0.
        fraction: share of each row's tokens that `top` selects, in (0, 1]; floor: the others' weight.

    Raises:
        ValueError naming the argument; the commands check the same values first, naming their options
        (`tispipe.configs.check_weight_options`).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, not {transform!r}")
    if logratio.shape != mask.shape:
        raise ValueError(f"logratio {tuple(logratio.shape)} and mask {tuple(mask.shape)} differ in shape")
    default_lower, default_upper = DEFAULT_BOUNDS[transform]
    lower = default_lower if lower is None else lower
    upper = default_upper if upper is None else upper
    if transform in ("exp", "calibrated", "linear"):
        _check_bounds(lower, upper)
    if transform in ("exp", "calibrated") and not k > 0:
        raise ValueError(f"k must be positive, not {k}")
    if transform in ("rank", "linear") and not low <= high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    if transform == "top" and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")

    if transform == "exp":
        weights = exp_weights(logratio, mu, k=k, lower=lower, upper=upper)
    elif transform == "calibrated":
        weights = calibrated_weights(logratio, mu, scale, k=k, lower=lower, upper=upper)
    elif transform == "top":
        weights = top_weights(logratio, mask, mu, fraction=fraction, floor=floor)
    elif transform == "rank":
        weights = rank_weights(logratio, mask, mu, low=low, high=high)
    else:
        weights = linear_weights(logratio, mu, lower=lower, upper=upper, low=low, high=high)
    return torch.where(mask.bool(), weights, torch.zeros_like(weights))
