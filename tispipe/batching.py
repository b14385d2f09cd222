"""Turn tokenized pairs into padded tensors and per-token values back into lists.

One convention everywhere (estimate, train, eval): a sequence is `prompt_ids + response_ids`,
right-padded. The model's logits at position i predict token i+1, so every per-token tensor here
is over the L-1 *label* positions: label position j holds token j+1. A response token at sequence
position p therefore sits at label position p-1, and `response_mask` marks exactly those.

Pairs go through the model in one forward: the batch holds the B chosen sequences first and the
B rejected sequences after them (rows 0..B-1 chosen, B..2B-1 rejected).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tispipe.logps import token_logps


@dataclass
class SequenceBatch:
    """Padded prompt+response sequences.

    input_ids:      (N, L) long, right-padded with pad_id
    attention_mask: (N, L) long, 1 on real tokens
    response_mask:  (N, L-1) float, 1 at the label positions of response tokens
    prompt_lens:    (N,) long, tokens in each prompt
    response_lens:  (N,) long, tokens in each response
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    prompt_lens: torch.Tensor
    response_lens: torch.Tensor

    def to(self, device: str | torch.device) -> SequenceBatch:
        return SequenceBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.response_mask, self.prompt_lens, self.response_lens)))

    def place(self, values: Sequence[Sequence[float]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Scatter per-response-token lists into an (N, L-1) tensor at the response label positions (0 elsewhere)."""
        n, length = self.input_ids.shape
        out = torch.zeros(n, length - 1, dtype=dtype)
        for i, row in enumerate(values):
            start = int(self.prompt_lens[i]) - 1
            if len(row) != int(self.response_lens[i]):
                raise ValueError(f"row {i}: {len(row)} values for {int(self.response_lens[i])} response tokens")
            out[i, start : start + len(row)] = torch.as_tensor(row, dtype=dtype)
        return out.to(self.input_ids.device)

    def unplace(self, values: torch.Tensor) -> list[list[float]]:
        """Inverse of `place`: the (N, L-1) tensor's response positions as one list per row."""
        values = values.detach().float().cpu()
        out = []
        for i in range(values.shape[0]):
            start = int(self.prompt_lens[i]) - 1
            out.append(values[i, start : start + int(self.response_lens[i])].tolist())
        return out


def make_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int) -> SequenceBatch:
    """Pad `prompt + response` sequences to one length; prompts must hold at least one token."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    n, length = len(lengths), max(lengths)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    response_mask = torch.zeros((n, length - 1))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not p:
            raise ValueError("a prompt needs at least one token to predict the first response token from")
        input_ids[i, : len(p) + len(r)] = torch.as_tensor(list(p) + list(r), dtype=torch.long)
        attention_mask[i, : len(p) + len(r)] = 1
        response_mask[i, len(p) - 1 : len(p) - 1 + len(r)] = 1
    return SequenceBatch(
        input_ids,
        attention_mask,
        response_mask,
        torch.tensor([len(p) for p in prompts]),
        torch.tensor([len(r) for r in responses]),
    )


def make_pair_batch(prompts: Sequence[Sequence[int]], chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]], pad_id: int) -> SequenceBatch:
    """The chosen sequences (rows 0..B-1) then the rejected ones (rows B..2B-1), for one concatenated forward."""
    return make_batch(list(prompts) + list(prompts), list(chosen) + list(rejected), pad_id)


def forward_logits(model: torch.nn.Module, batch: SequenceBatch) -> torch.Tensor:
    """(N, L-1, V) logits at the label positions (the last position predicts nothing and is dropped)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return logits[:, :-1]


def sequence_token_logps(model: torch.nn.Module, batch: SequenceBatch) -> torch.Tensor:
    """(N, L-1) float32 log-probability of each label token under `model`, 0 outside responses."""
    logits = forward_logits(model, batch)
    return token_logps(logits, batch.input_ids[:, 1:]) * batch.response_mask
