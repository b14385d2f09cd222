"""Turn tokenized pairs into padded tensors and per-token values back into lists.

One layout everywhere (estimate, train, eval): prompts are left-padded to a common width P and
responses right-padded after them, so every response starts at column P:

    [pad pad p p p | r r r r pad]      <- row with a 3-token prompt, 4-token response
    [p p p p p     | r r pad pad pad]

Position ids count real tokens only, so the padding changes nothing the model computes for real
tokens. The model's logits at position i predict token i+1, so response token j is predicted at
column P-1+j, and `forward_logits` asks the model for logits at columns P-1 .. L-2 only
(`logits_to_keep`): no vocabulary projection or log-softmax is spent on prompt positions.
Every per-token tensor is therefore (N, R) over response positions, R = the longest response:
column j holds response token j, and `response_mask` marks the real ones.

Pairs go through the model in one forward: the batch holds the B chosen sequences first and the
B rejected sequences after them (rows 0..B-1 chosen, B..2B-1 rejected). A pair batch also carries the
shared-prompt layout (tispipe.modeling.shared_prompt: each pair one contiguous run in a packed row, its prompt
computed once, no padding between runs), which `forward_logits` uses for every model that takes it; the
logits come back in the layout above either way.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tispipe.core.logps import token_logps
from tispipe.modeling import shared_prompt
from tispipe.modeling.shared_prompt import PackedPairs


@dataclass
class SequenceBatch:
    """Prompts left-padded to `prompt_width`, responses right-padded after them.

    input_ids:      (N, L) long, L = prompt_width + R
    attention_mask: (N, L) long, 1 on real tokens
    position_ids:   (N, L) long, 0 at each row's first real token
    labels:         (N, R) long, the response tokens (pad_id past each response's end)
    response_mask:  (N, R) float, 1 on real response tokens
    response_lens:  (N,) long
    prompt_width:   P, the column where every response starts
    packed:         the same pairs in the shared-prompt layout (pair batches only)
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    response_mask: torch.Tensor
    response_lens: torch.Tensor
    prompt_width: int
    packed: PackedPairs | None = None

    def to(self, device: str | torch.device) -> SequenceBatch:
        tensors = (self.input_ids, self.attention_mask, self.position_ids, self.labels, self.response_mask, self.response_lens)
        return SequenceBatch(*(t.to(device) for t in tensors), self.prompt_width, None if self.packed is None else self.packed.to(device))

    def place(self, values: Sequence[Sequence[float]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Per-response-token lists as an (N, R) tensor, 0 past each response's end."""
        out = torch.zeros(self.labels.shape, dtype=dtype)
        for i, row in enumerate(values):
            if len(row) != int(self.response_lens[i]):
                raise ValueError(f"row {i}: {len(row)} values for {int(self.response_lens[i])} response tokens")
            out[i, : len(row)] = torch.as_tensor(row, dtype=dtype)
        return out.to(self.labels.device)

    def unplace(self, values: torch.Tensor) -> list[list[float]]:
        """Inverse of `place`: each row's response positions of an (N, R) tensor as a list."""
        values = values.detach().float().cpu()
        return [values[i, : int(n)].tolist() for i, n in enumerate(self.response_lens)]


def make_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int) -> SequenceBatch:
    """Left-pad prompts to the longest, right-pad responses to the longest; prompts need at least one token."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("a prompt needs at least one token to predict the first response token from")
    n = len(prompts)
    width, longest = max(len(p) for p in prompts), max(len(r) for r in responses)
    input_ids = torch.full((n, width + longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width + longest), dtype=torch.long)
    labels = torch.full((n, longest), pad_id, dtype=torch.long)
    response_mask = torch.zeros((n, longest))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        start = width - len(p)
        input_ids[i, start : width + len(r)] = torch.as_tensor(list(p) + list(r), dtype=torch.long)
        attention_mask[i, start : width + len(r)] = 1
        labels[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        response_mask[i, : len(r)] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return SequenceBatch(input_ids, attention_mask, position_ids, labels, response_mask, torch.tensor([len(r) for r in responses]), width)


def make_pair_batch(
    prompts: Sequence[Sequence[int]], chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]], pad_id: int, shared: bool = True
) -> SequenceBatch:
    """The chosen sequences (rows 0..B-1) then the rejected ones (rows B..2B-1), for one concatenated forward;
    with `shared`, the shared-prompt layout of the same pairs too (what `forward_logits` uses where it can).

    The packed rows measured at least as fast as the padded layout at every length tried
    (bench/pair_layout.py, one thread, forward and backward of training's micro-batches): equal on the toy
    base at the toy data's lengths (prompts of about 15 tokens, responses of 40-50), 1.24x faster on the
    14.7M model there, and 1.8x (toy base) and 3.1x (14.7M) at HH-RLHF's lengths (bench/notes.md).
    """
    batch = make_batch(list(prompts) + list(prompts), list(chosen) + list(rejected), pad_id)
    if shared:
        batch.packed = shared_prompt.pack_pairs(prompts, chosen, rejected, pad_id)
    return batch


def _forward_takes(model: torch.nn.Module, option: str) -> bool:
    """Whether the model's forward takes `option` (logits_to_keep, position_ids), looked up once per model."""
    cache = model.__dict__.setdefault("_tispipe_forward_takes", {})
    if option not in cache:
        cache[option] = option in inspect.signature(shared_prompt.inner_model(model).forward).parameters
    return cache[option]


def forward_logits(model: torch.nn.Module, batch: SequenceBatch) -> torch.Tensor:
    """(N, R, V) logits predicting the response tokens: columns P-1 .. L-2 of the sequence.

    Position ids restart at each row's first real token; a model whose forward takes none (ALiBi, as
    Bloom) derives its positions from the attention mask. A pair batch goes through the model in the
    shared-prompt layout when the model takes it (a note says once per model when it does not).
    """
    if batch.packed is not None:
        reason = shared_prompt.unsupported(model)
        if reason is None:
            packed, kwargs = batch.packed, shared_prompt.model_inputs(model, batch.packed)
            if _forward_takes(model, "logits_to_keep"):
                kept = model(**kwargs, logits_to_keep=packed.keep).logits
            else:
                kept = model(**kwargs).logits[packed.keep]
            return shared_prompt.unpack_logits(kept, packed, batch.labels.shape[1])
        _note_once(model, f"each prompt is computed twice per pair (once with each response): {reason}")
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    if _forward_takes(model, "position_ids"):
        kwargs["position_ids"] = batch.position_ids
    return _logits(model, kwargs, batch.labels.shape[1] + 1)


def _logits(model: torch.nn.Module, kwargs: dict, keep: int) -> torch.Tensor:
    """The logits at the last `keep` columns but the very last (which predicts nothing)."""
    if _forward_takes(model, "logits_to_keep"):
        return model(**kwargs, logits_to_keep=keep).logits[:, :-1]
    return model(**kwargs).logits[:, -keep:-1]  # models without the option compute every position


def _note_once(model: torch.nn.Module, text: str) -> None:
    if not model.__dict__.get("_tispipe_noted"):
        from tispipe.console import log_console

        log_console().print(f"[yellow]Note:[/yellow] {text}")
        model.__dict__["_tispipe_noted"] = True


def sequence_token_logps(model: torch.nn.Module, batch: SequenceBatch) -> torch.Tensor:
    """(N, R) float32 log-probability of each response token under `model`, 0 past each response's end."""
    return token_logps(forward_logits(model, batch), batch.labels) * batch.response_mask


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (N, L), padded on the left so every row ends at position L-1.

    For generation and sequence classification, where each row's last real token must sit in the last column.
    """
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, length - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, length - len(s) :] = 1
    return ids, mask


# Padded tokens of one forward while building pi+/pi-. A step of --contrast-batch-size pairs longer than
# this is split into micro-batches whose gradients add up to the step's (the same update, up to float
# summation order). On SmolLM2-135M a LoRA sft step of 16 pairs of up to 512 tokens in one forward was
# killed at 18.7 GiB; in micro-batches of this size it peaks at 8.5 GB (bench/contrast_memory.py,
# docs/real-model.md).
MICRO_BATCH_TOKENS = 2048


def budget_runs(items: Sequence, sizes: Sequence[int], budget: int) -> list[list]:
    """`items` cut in order into runs whose cost (items in the run x the largest size among them) stays within
    `budget`; an item over the budget on its own is a run of its own. `sizes[i]` is item i's."""
    runs: list[list] = []
    current: list = []
    largest = 0
    for item, size in zip(items, sizes, strict=True):
        if current and (len(current) + 1) * max(largest, size) > budget:
            runs.append(current)
            current, largest = [], 0
        current.append(item)
        largest = max(largest, size)
    return runs + [current] if current else runs


def micro_batches(indices: list[int], lengths: Sequence[int], budget: int = MICRO_BATCH_TOKENS) -> list[list[int]]:
    """`indices` cut in order into runs whose padded size (rows x longest row) stays within `budget`;
    a single row longer than the budget is a micro-batch of its own."""
    return budget_runs(indices, [lengths[i] for i in indices], budget)


def logits_width(model: torch.nn.Module) -> int:
    """V of the model's (N, R, V) logits: its output head's rows (the config's vocab_size where it has no head)."""
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else model.config.vocab_size


@torch.inference_mode()
def reference_logps(model, pairs: Sequence, pad_id: int, batch_size: int) -> list[tuple[list[float], list[float]]]:
    """Per-token log pi_ref of (chosen, rejected) for every pair, computed once for DPO training
    (building the dpo pi+/pi- in estimate, and train --eval-data's reference)."""
    device = next(model.parameters()).device
    model.eval()
    out: list[tuple[list[float], list[float]]] = []
    lengths = [2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    for start in range(0, len(pairs), batch_size):
        for micro in micro_batches(list(range(start, min(start + batch_size, len(pairs)))), lengths):  # (N, R, V) logits bounded too
            chunk = [pairs[i] for i in micro]
            batch = make_pair_batch([p.prompt_ids for p in chunk], [p.chosen_ids for p in chunk], [p.rejected_ids for p in chunk], pad_id).to(device)
            values = batch.unplace(sequence_token_logps(model, batch))
            out.extend(zip(values[: len(chunk)], values[len(chunk) :], strict=True))
    return out
