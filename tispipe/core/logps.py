"""Per-token log-probabilities and per-position KL from language-model logits.

Shapes: B = batch, L = full sequence length (prompt + response, padded), T = number of predicted
positions (L - 1 after `shift`), V = vocabulary size. All results are float32 whatever the logits'
dtype: bf16/fp16 logits are upcast one chunk of positions at a time, so no full (B, T, V) float32
copy (or a full log_softmax of it) is ever made just to read one number per position.
"""

from __future__ import annotations

import torch

# Elements of one upcast (B, t, V) chunk: 2**24 float32 = 64 MiB of scratch per tensor.
CHUNK_ELEMENTS = 1 << 24


def shift(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align causal-LM logits with the tokens they predict.

    The logits at position i predict token i + 1, so the first response token is predicted from the
    last prompt position and the logits at the final position predict nothing.

    Args:
        logits: (B, L, V) from a forward pass over `input_ids`.
        input_ids: (B, L) prompt + response (+ padding).
        response_mask: (B, L), 1 on response tokens of `input_ids` (EOS included), 0 on prompt and padding.

    Returns:
        (logits[:, :-1] (B, L-1, V), labels = input_ids[:, 1:] (B, L-1), mask = response_mask[:, 1:] (B, L-1)):
        position t of the three predicts, is, and says whether to count label t. The logits are a view.
    """
    if logits.shape[:2] != input_ids.shape or input_ids.shape != response_mask.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)}, "
            f"response_mask {tuple(response_mask.shape)}"
        )
    return logits[:, :-1], input_ids[:, 1:], response_mask[:, 1:]


def _time_chunks(logits: torch.Tensor) -> list[slice]:
    """Slices of the time axis such that each (B, t, V) chunk has at most CHUNK_ELEMENTS entries."""
    batch, length, vocab = logits.shape
    step = max(1, CHUNK_ELEMENTS // max(1, batch * vocab))
    return [slice(start, start + step) for start in range(0, length, step)]


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] at every position, as `logits[label] - logsumexp(logits)`.

    Args:
        logits: (B, T, V), any float dtype, already aligned with `labels` (see `shift`).
        labels: (B, T) token ids. Padding ids are fine (the caller masks those positions);
            negative ids such as -100 are read as id 0 so the gather stays in range.

    Returns:
        (B, T) float32 log-probabilities, differentiable w.r.t. `logits`.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not align")
    index = labels.clamp(min=0).unsqueeze(-1)
    parts = []
    for span in _time_chunks(logits):
        chunk = logits[:, span].float()
        picked = chunk.gather(-1, index[:, span]).squeeze(-1)
        parts.append(picked - chunk.logsumexp(-1))
    if not parts:
        return logits.new_zeros(labels.shape, dtype=torch.float32)
    return torch.cat(parts, dim=1)


def token_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the vocabulary at every position: sum_v p(v) [log p(v) - log q(v)].

    Both distributions go through log_softmax in float32; `softmax().log()` would turn an underflowed
    probability into -inf and 0 * -inf into NaN.

    The argument order is the KL direction, and the two losses want different ones:
      - TIS-DPO's eta (paper Eqs. 16-17) uses the reverse KL(policy || ref): `token_kl(policy_logits, ref_logits)`.
      - TDPO's SeqKL uses the forward KL(ref || policy): `token_kl(ref_logits, policy_logits)`.

    Args:
        p_logits, q_logits: (B, T, V) logits over the same vocabulary, aligned position by position.

    Returns:
        (B, T) float32, >= 0 up to rounding, differentiable w.r.t. both inputs.
    """
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"p_logits {tuple(p_logits.shape)} and q_logits {tuple(q_logits.shape)} differ in shape")
    parts = []
    for span in _time_chunks(p_logits):
        log_p = torch.log_softmax(p_logits[:, span].float(), dim=-1)
        log_q = torch.log_softmax(q_logits[:, span].float(), dim=-1)
        parts.append((log_p.exp() * (log_p - log_q)).sum(-1))
    if not parts:
        return p_logits.new_zeros(p_logits.shape[:2], dtype=torch.float32)
    return torch.cat(parts, dim=1)


def token_logps_and_kl(
    policy_logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, policy_first: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`token_logps` of both models and their `token_kl` from one log_softmax per model and chunk.

    The same numbers as `token_logps(policy_logits, labels)`, `token_logps(ref_logits, labels)` and
    `token_kl(policy_logits, ref_logits)` (or `token_kl(ref_logits, policy_logits)` with
    policy_first=False), without normalising each logits tensor twice.

    Args:
        policy_logits, ref_logits: (B, T, V), aligned with `labels` (B, T).
        policy_first: KL(policy || ref) (TIS-DPO's eta) if True, KL(ref || policy) (TDPO) if False.

    Returns:
        (policy_logps, ref_logps, kl), each (B, T) float32.
    """
    if policy_logits.shape != ref_logits.shape or policy_logits.shape[:2] != labels.shape:
        raise ValueError(f"policy {tuple(policy_logits.shape)}, ref {tuple(ref_logits.shape)} and labels {tuple(labels.shape)} do not align")
    index = labels.clamp(min=0).unsqueeze(-1)
    policy_parts, ref_parts, kl_parts = [], [], []
    for span in _time_chunks(policy_logits):
        log_policy = torch.log_softmax(policy_logits[:, span].float(), dim=-1)
        log_ref = torch.log_softmax(ref_logits[:, span].float(), dim=-1)
        policy_parts.append(log_policy.gather(-1, index[:, span]).squeeze(-1))
        ref_parts.append(log_ref.gather(-1, index[:, span]).squeeze(-1))
        log_p, log_q = (log_policy, log_ref) if policy_first else (log_ref, log_policy)
        kl_parts.append((log_p.exp() * (log_p - log_q)).sum(-1))
    if not policy_parts:
        empty = policy_logits.new_zeros(labels.shape, dtype=torch.float32)
        return empty, empty.clone(), empty.clone()
    return torch.cat(policy_parts, dim=1), torch.cat(ref_parts, dim=1), torch.cat(kl_parts, dim=1)
