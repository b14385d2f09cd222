"""Preference losses on per-token inputs: DPO, IPO, TIS-DPO (paper Eq. 18) and TDPO1/2.

Every per-token input is (B, T_w) for the chosen response and (B, T_l) for the rejected one, aligned
with its mask: 1 on response tokens (EOS included), 0 on prompt and padding. Masked positions never
contribute, whatever they hold (values are selected with `torch.where`, not multiplied by 0, so a
NaN or inf there cannot leak into the loss or its gradient).

Notation: lr_t = policy_logps_t - ref_logps_t, sums run over masked-in tokens (sums, not means,
as in the authors' code with average_log_prob=False).

Every loss returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); the rewards are
detached metrics in TRL's sense, beta * (summed, possibly weighted, log-ratio).

`LOSSES` at the end is the table `tispipe train --loss` reads: a new loss is its function and one row there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LossOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def masked_sum(values: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) -> (B,) float32: sum_t [mask_t] values_t (* weights_t).

    Each factor is masked before the product, so garbage in either one at a masked position
    gives neither a value nor a NaN gradient (0 * inf) to the other.
    """
    keep = mask.bool()
    values = values.float()
    values = torch.where(keep, values, torch.zeros_like(values))
    if weights is not None:
        weights = weights.float()
        values = values * torch.where(keep, weights, torch.zeros_like(weights))
    return values.sum(-1)


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be positive, not {beta}")


def _logratio_sums(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_t lr_t(y_w), sum_t lr_t(y_l)), each (B,)."""
    chosen = masked_sum(policy_chosen_logps.float() - ref_chosen_logps.float(), chosen_mask)
    rejected = masked_sum(policy_rejected_logps.float() - ref_rejected_logps.float(), rejected_mask)
    return chosen, rejected


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    beta: float,
) -> LossOutput:
    """DPO: loss = -log sigmoid(beta * (sum lr(y_w) - sum lr(y_l))). Rewards: beta * sum lr."""
    _check_beta(beta)
    chosen, rejected = _logratio_sums(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_mask, rejected_mask
    )
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    beta: float,
) -> LossOutput:
    """IPO: loss = (h - 1 / (2 beta))^2 with h = sum lr(y_w) - sum lr(y_l). Rewards: beta * sum lr.

    h uses sums over tokens, like the other losses here. (The IPO paper's h is a sequence log-ratio,
    which is this sum; TRL's IPO instead averages over tokens, giving a length-dependent target.)
    At policy == reference the loss is 1 / (4 beta^2).
    """
    _check_beta(beta)
    chosen, rejected = _logratio_sums(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_mask, rejected_mask
    )
    losses = (chosen - rejected - 1 / (2 * beta)) ** 2
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def tisdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    chosen_weights: torch.Tensor,
    rejected_weights: torch.Tensor,
    chosen_kl: torch.Tensor | None,
    rejected_kl: torch.Tensor | None,
    beta: float,
    eta_coef: float = 1.0,
) -> LossOutput:
    """TIS-DPO, paper Eqs. 15-18: loss = -log sigmoid(u - eta).

        u   = beta * sum_t w^w_t lr_t(y_w) - beta * sum_t w^l_t lr_t(y_l)                 (Eq. 15)
        eta = eta_coef * beta * (sum_t w^w_t KL_t(y_w) - sum_t w^l_t KL_t(y_l))           (Eqs. 16-17)

    KL_t = KL(policy || ref) at the position predicting token t (`token_kl(policy_logits, ref_logits)`).
    A larger chosen KL lowers the logit (raises the loss); a larger rejected KL raises it. This is the
    opposite sign and KL direction of TDPO's delta, so all-ones weights do not give TDPO1.
    The weights are fixed data (no gradient flows into them); nothing is detached on the KL path.
    eta_coef = 1 is the paper; the authors' code uses 0.5 when eta is on, and 0 is the "w/o eta" ablation.

    Args:
        chosen_weights, rejected_weights: (B, T_w), (B, T_l) token weights w_t.
        chosen_kl, rejected_kl: (B, T_w), (B, T_l) per-position KL(policy || ref), or both None, which
            requires eta_coef == 0 (the caller then need not compute full-vocabulary reference logits).

    Rewards: beta * sum_t w_t lr_t per response (the weighted rewards of the paper's Fig. 3).
    """
    _check_beta(beta)
    chosen_logratio = policy_chosen_logps.float() - ref_chosen_logps.float()
    rejected_logratio = policy_rejected_logps.float() - ref_rejected_logps.float()
    weighted_chosen = masked_sum(chosen_logratio, chosen_mask, chosen_weights)
    weighted_rejected = masked_sum(rejected_logratio, rejected_mask, rejected_weights)
    u = beta * (weighted_chosen - weighted_rejected)
    if chosen_kl is None or rejected_kl is None:
        if chosen_kl is not None or rejected_kl is not None:
            raise ValueError("give both chosen_kl and rejected_kl, or neither")
        if eta_coef != 0:
            raise ValueError(f"eta_coef is {eta_coef} but no KL tensors were given; pass eta_coef=0 to turn eta off")
        eta = torch.zeros_like(u)
    else:
        chosen_seq_kl = masked_sum(chosen_kl, chosen_mask, chosen_weights)
        rejected_seq_kl = masked_sum(rejected_kl, rejected_mask, rejected_weights)
        eta = eta_coef * beta * (chosen_seq_kl - rejected_seq_kl)
    losses = -F.logsigmoid(u - eta)
    return losses, (beta * weighted_chosen).detach(), (beta * weighted_rejected).detach()


def tdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    chosen_kl_fwd: torch.Tensor,
    rejected_kl_fwd: torch.Tensor,
    beta: float,
    alpha: float = 0.5,
    variant: int = 2,
) -> LossOutput:
    """TDPO (Zeng et al. 2024) with the forward sequential KL SeqKL(y) = sum_t KL(ref || policy)_t.

        margin = sum lr(y_w) - sum lr(y_l)
        TDPO1: loss = -log sigmoid(beta * (margin - (SeqKL_l - SeqKL_w)))
        TDPO2: loss = -log sigmoid(beta * (margin - alpha * (SeqKL_l - sg(SeqKL_w))))

    sg = stop-gradient, on the chosen KL only; alpha is used by TDPO2 only.

    Args:
        chosen_kl_fwd, rejected_kl_fwd: (B, T_w), (B, T_l) per-position KL(ref || policy),
            i.e. `token_kl(ref_logits, policy_logits)`.
        variant: 1 or 2.

    Rewards: beta * sum lr, as for DPO (the TDPO code logs beta * (sum lr + SeqKL); we keep one
    definition across losses so the curves compare).
    """
    _check_beta(beta)
    if variant not in (1, 2):
        raise ValueError(f"TDPO variant must be 1 or 2, not {variant}")
    chosen, rejected = _logratio_sums(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_mask, rejected_mask
    )
    chosen_seq_kl = masked_sum(chosen_kl_fwd, chosen_mask)
    rejected_seq_kl = masked_sum(rejected_kl_fwd, rejected_mask)
    if variant == 1:
        delta = rejected_seq_kl - chosen_seq_kl
    else:
        delta = alpha * (rejected_seq_kl - chosen_seq_kl.detach())
    losses = -F.logsigmoid(beta * (chosen - rejected - delta))
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """(B,), (B,) -> (B,): the reward model's negative log-likelihood under the Bradley-Terry model,

        P(y_w > y_l | x) = sigmoid(r(x, y_w) - r(x, y_l)),   loss = -log sigmoid(r(x, y_w) - r(x, y_l)),

    the objective DPO's implicit reward is derived from (paper Eq. 2). Scores are the reward model's
    one logit per sequence; the loss is taken in float32 whatever their dtype.
    """
    return -F.logsigmoid(chosen_scores.float() - rejected_scores.float())


def preference_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """Batch means with TRL's names: rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies.

    Accuracy counts pairs whose chosen reward is strictly larger.
    """
    chosen = chosen_rewards.detach().float()
    rejected = rejected_rewards.detach().float()
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
    }


@dataclass(frozen=True)
class PairTerms:
    """One batch of pairs as every loss takes it.

    logps: (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_mask,
        rejected_mask), shapes (B, T_w), (B, T_l), (B, T_w), (B, T_l), (B, T_w), (B, T_l).
    weights: (chosen_weights (B, T_w), rejected_weights (B, T_l)), the token weights w_t.
    kl: per-position KL (chosen (B, T_w), rejected (B, T_l)) in the direction the loss's `Loss.kl` names,
        or None when the reference's full distribution was not computed.
    """

    logps: tuple[torch.Tensor, ...]
    weights: tuple[torch.Tensor, torch.Tensor]
    kl: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class Loss:
    """One row of `LOSSES`: the loss as a function of a batch, and what the batch must hold for it."""

    compute: Callable[[PairTerms, float, float, float], LossOutput]  # (terms, beta, eta_coef, alpha)
    weighted: bool  # reads the token weights
    kl: str | None  # the per-token KL it takes: "policy||ref" (TIS-DPO's eta), "ref||policy" (TDPO's SeqKL), or None
    kl_only_for_eta: bool = False  # the KL enters through eta alone, so eta_coef = 0 needs none

    def needs_kl(self, eta_coef: float) -> bool:
        """Whether a batch needs the reference's full distribution; otherwise cached reference log-probs do."""
        return self.kl is not None and not (self.kl_only_for_eta and eta_coef == 0)


def _tisdpo(terms: PairTerms, beta: float, eta_coef: float, alpha: float) -> LossOutput:
    return tisdpo_loss(*terms.logps, *terms.weights, *(terms.kl or (None, None)), beta=beta, eta_coef=eta_coef)


def _tdpo(variant: int) -> Callable[[PairTerms, float, float, float], LossOutput]:
    def compute(terms: PairTerms, beta: float, eta_coef: float, alpha: float) -> LossOutput:
        if terms.kl is None:
            raise ValueError("TDPO needs the per-token KL(ref || policy)")
        return tdpo_loss(*terms.logps, *terms.kl, beta=beta, alpha=alpha, variant=variant)

    return compute


LOSSES: dict[str, Loss] = {
    "tisdpo": Loss(_tisdpo, weighted=True, kl="policy||ref", kl_only_for_eta=True),
    "dpo": Loss(lambda terms, beta, eta_coef, alpha: dpo_loss(*terms.logps, beta=beta), weighted=False, kl=None),
    "ipo": Loss(lambda terms, beta, eta_coef, alpha: ipo_loss(*terms.logps, beta=beta), weighted=False, kl=None),
    "tdpo1": Loss(_tdpo(1), weighted=False, kl="ref||policy"),
    "tdpo2": Loss(_tdpo(2), weighted=False, kl="ref||policy"),
}
