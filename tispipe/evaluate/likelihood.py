"""Teacher-forced measurements on held-out pairs, for `tispipe eval` (part 1 of its docstring).

`likelihood` runs the models over the pairs and returns per-pair sums; `likelihood_metrics` turns
them into the report's numbers (implicit rewards, preference accuracy, margins, KL per token).
"""

from __future__ import annotations

from typing import Any

import torch

from tispipe.core import metrics


@torch.no_grad()
def likelihood(model, ref, pairs, pad_id: int, batch_size: int, device: str, progress=None) -> dict[str, list[float]]:
    """Per-pair sequence log-probs of chosen and rejected under `model` (and `ref`), and per-pair KL sums.

    Returns lists over pairs: chosen_logps, rejected_logps (and ref_chosen_logps, ref_rejected_logps,
    kl_sums, kl_tokens when `ref` is given; KL(model || ref) summed over both responses' tokens).
    """
    from tispipe.core.logps import token_logps, token_logps_and_kl
    from tispipe.modeling.batching import forward_logits, make_pair_batch

    out: dict[str, list[float]] = {k: [] for k in ("chosen_logps", "rejected_logps")}
    if ref is not None:
        out.update({k: [] for k in ("ref_chosen_logps", "ref_rejected_logps", "kl_sums", "kl_tokens")})
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        n = len(chunk)
        batch = make_pair_batch([p.prompt_ids for p in chunk], [p.chosen_ids for p in chunk], [p.rejected_ids for p in chunk], pad_id).to(device)
        labels, mask = batch.labels, batch.response_mask
        logits = forward_logits(model, batch)
        if ref is None:
            token_values = token_logps(logits, labels)
        else:
            ref_logits = logits if ref is model else forward_logits(ref, batch)
            token_values, ref_token_values, token_kl = token_logps_and_kl(logits, ref_logits, labels)  # KL(model || ref)
        logps = (token_values * mask).sum(-1).tolist()
        out["chosen_logps"] += logps[:n]
        out["rejected_logps"] += logps[n:]
        if ref is not None:
            ref_logps = (ref_token_values * mask).sum(-1).tolist()
            out["ref_chosen_logps"] += ref_logps[:n]
            out["ref_rejected_logps"] += ref_logps[n:]
            kl = (token_kl * mask).sum(-1)
            tokens = mask.sum(-1)
            out["kl_sums"] += (kl[:n] + kl[n:]).tolist()
            out["kl_tokens"] += (tokens[:n] + tokens[n:]).tolist()
        if progress is not None:
            progress.advance(n)
    return out


def likelihood_metrics(values: dict[str, list[float]], beta: float) -> dict[str, Any]:
    """The numbers of part 1 of tispipe.evaluate.evaluate's docstring from `likelihood`'s per-pair lists."""
    has_ref = "ref_chosen_logps" in values
    zeros = [0.0] * len(values["chosen_logps"])
    chosen = metrics.implicit_rewards(values["chosen_logps"], values["ref_chosen_logps"] if has_ref else zeros, beta)
    rejected = metrics.implicit_rewards(values["rejected_logps"], values["ref_rejected_logps"] if has_ref else zeros, beta)
    kl = sum(values["kl_sums"]) / max(sum(values["kl_tokens"]), 1) if has_ref else None
    return {
        "pairs": len(chosen),
        "pref_accuracy": metrics.preference_accuracy(chosen, rejected),
        "reward_margin": metrics.mean([c - r for c, r in zip(chosen, rejected, strict=True)]),
        "chosen_reward": metrics.mean(chosen),
        "rejected_reward": metrics.mean(rejected),
        "logp_accuracy": metrics.preference_accuracy(values["chosen_logps"], values["rejected_logps"]),
        "chosen_logp": metrics.mean(values["chosen_logps"]),
        "rejected_logp": metrics.mean(values["rejected_logps"]),
        "kl_per_token": kl,
    }
