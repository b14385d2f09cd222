"""The shared-prompt layout: each pair is one contiguous run [prompt | chosen | rejected] in a packed row, so
its prompt goes through the model once, and short pairs share a row instead of being padded.

    [p p p c c c r r r r | p p c r r pad]    <- one row holding two pairs, as wide as the batch's longest pair
    positions:  0 1 2 3 4 5 3 4 5 6 | 0 1 2 2 3   (both responses continue their prompt)

Attention (rows, 1, W, W): causal, within the same pair only, and no rejected query sees a chosen key. Every
token then sees exactly what it sees in its own row of tispipe.modeling.batching's padded layout, at the same
positions, so log-probs and gradients are the same to float tolerance, while the prompt's tokens are computed
once instead of twice (real preference data has prompts longer than its responses) and no section of a row
is padded to the batch's longest of its kind. Pairs are placed first-fit by decreasing length into rows of the
longest pair's width, so a row is never wider than the padded layout needs for that pair, and the attention
computed (rows x W^2) is at most the padded layout's. Sliding windows count positions, as the padded
layout's columns do. A padding query attends to itself only (a fully masked row would make SDPA return NaN).

`keep` marks the columns whose logits predict a response token; the model is asked for those only
(`logits_to_keep` as a boolean mask), and `unpack_logits` turns them into the padded layout's logits, chosen
rows then rejected rows, so nothing after the forward changes. `unsupported` says why a model must take the
padded layout instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

PROMPT, CHOSEN, REJECTED = 1, 2, 3  # segment ids; 0 is padding
# Architectures whose packed log-probs tests/test_architectures.py checks against the padded layout.
VERIFIED = frozenset({"llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neox"})


@dataclass
class PackedPairs:
    """Pairs packed into rows.

    input_ids, position_ids: (rows, W) long
    segment:        (rows, W) long, PROMPT / CHOSEN / REJECTED, 0 on padding
    pair:           (rows, W) long, 1 + the pair's index on its tokens, 0 on padding
    keep:           (rows, W) bool, the columns whose logits predict a response token (K of them in all)
    chosen_index:   (B, C) long, chosen token j of pair b is predicted by kept logit chosen_index[b, j]
                    (in the row-major order of `keep`); K (a zero row) past the response's end
    rejected_index: (B, R) long, the same for the rejected responses
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    pair: torch.Tensor
    keep: torch.Tensor
    chosen_index: torch.Tensor
    rejected_index: torch.Tensor

    def to(self, device: str | torch.device) -> PackedPairs:
        return PackedPairs(*(t.to(device) for t in (self.input_ids, self.position_ids, self.segment, self.pair, self.keep, self.chosen_index,
                                                    self.rejected_index)))


def place_rows(lengths: Sequence[int]) -> list[list[int]]:
    """Pair indices per row: first fit by decreasing length into rows as wide as the longest pair."""
    width = max(lengths)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((k for k, room in enumerate(free) if room >= lengths[i]), None)
        if row is None:
            rows.append([])
            free.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= lengths[i]
    return rows


def pack_pairs(prompts: Sequence[Sequence[int]], chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]], pad_id: int) -> PackedPairs:
    """The pairs as contiguous runs [prompt | chosen | rejected] in rows placed by `place_rows`."""
    lengths = [len(p) + len(c) + len(r) for p, c, r in zip(prompts, chosen, rejected, strict=True)]
    rows = place_rows(lengths)
    shape = (len(rows), max(lengths))
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids, segment, pair = (torch.zeros(shape, dtype=torch.long) for _ in range(3))
    keep = torch.zeros(shape, dtype=torch.bool)
    predicts = [(0, 0, 0)] * len(lengths)  # per pair: its row, the column predicting its first tokens, the last chosen column
    for row, members in enumerate(rows):
        start = 0
        for b in members:
            p, c, r = prompts[b], chosen[b], rejected[b]
            for offset, ids, kind, first_position in ((0, p, PROMPT, 0), (len(p), c, CHOSEN, len(p)), (len(p) + len(c), r, REJECTED, len(p))):
                span = slice(start + offset, start + offset + len(ids))
                input_ids[row, span] = torch.as_tensor(list(ids), dtype=torch.long)
                position_ids[row, span] = torch.arange(first_position, first_position + len(ids))
                segment[row, span] = kind
            pair[row, start : start + lengths[b]] = b + 1
            # The prompt's last column predicts both first tokens; each later token is predicted by the one before it.
            keep[row, start + len(p) - 1 : start + len(p) + len(c) - 1] = True
            keep[row, start + len(p) + len(c) : start + lengths[b] - 1] = True
            keep[row, start + len(p) - 1] = True
            predicts[b] = (row, start + len(p) - 1, start + len(p) + len(c) - 1)
            start += lengths[b]
    kept = keep.flatten().cumsum(0).view(shape) - 1  # each kept column's index among the kept logits
    total = int(keep.sum())
    chosen_index = torch.full((len(lengths), max(map(len, chosen))), total, dtype=torch.long)
    rejected_index = torch.full((len(lengths), max(map(len, rejected))), total, dtype=torch.long)
    for b, (row, first, last_chosen) in enumerate(predicts):
        chosen_index[b, : len(chosen[b])] = kept[row, first : first + len(chosen[b])]
        if rejected[b]:
            rejected_index[b, 0] = kept[row, first]
            rejected_index[b, 1 : len(rejected[b])] = kept[row, last_chosen + 1 : last_chosen + len(rejected[b])]
    return PackedPairs(input_ids, position_ids, segment, pair, keep, chosen_index, rejected_index)


def allowed(packed: PackedPairs, window: int | None = None) -> torch.Tensor:
    """(rows, W, W) bool: query i may attend to key j. With `window`, only keys fewer than `window` positions back."""
    seg, pos, pair = packed.segment, packed.position_ids, packed.pair
    length = seg.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
    ok = causal[None] & (pair[:, :, None] == pair[:, None, :]) & (pair[:, None, :] > 0)
    ok &= ~((seg[:, :, None] == REJECTED) & (seg[:, None, :] == CHOSEN))
    if window is not None:
        ok &= (pos[:, :, None] - pos[:, None, :]) < window
    return ok | torch.eye(length, dtype=torch.bool, device=seg.device)[None]


def _as_mask(ok: torch.Tensor, implementation: str) -> torch.Tensor:
    """(B, 1, L, L): bool for SDPA, additive float for eager attention (which adds the mask to its scores)."""
    if implementation == "sdpa":
        return ok[:, None]
    return torch.zeros(ok.shape, dtype=torch.float32, device=ok.device).masked_fill_(~ok, torch.finfo(torch.float32).min)[:, None]


def attention_mask(config, packed: PackedPairs):
    """What the model's forward takes as `attention_mask`: one 4-D mask, or one per layer type when its layers
    differ (sliding and full attention, as Gemma2's)."""
    implementation = config._attn_implementation
    window = getattr(config, "sliding_window", None)
    layer_types = set(getattr(config, "layer_types", None) or [])
    if "sliding_attention" in layer_types:
        return {"full_attention": _as_mask(allowed(packed), implementation), "sliding_attention": _as_mask(allowed(packed, window), implementation)}
    return _as_mask(allowed(packed, window if not layer_types else None), implementation)


def inner_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside DistributedDataParallel, adapters.AdapterOff/AdapterOn and a PeftModel."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "peft_model", inner)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def unsupported(model: torch.nn.Module) -> str | None:
    """Why `model` must take the padded layout instead (None: it takes the packed one), looked up once per model."""
    cache = model.__dict__
    if "_tispipe_packed_unsupported" not in cache:
        inner = inner_model(model)
        config = getattr(inner, "config", None)
        model_type = getattr(config, "model_type", type(inner).__name__)
        implementation = getattr(config, "_attn_implementation", None)
        layer_types = set(getattr(config, "layer_types", None) or []) - {"full_attention", "sliding_attention"}
        reason = None
        if model_type not in VERIFIED:
            reason = f"model type {model_type!r} is not among those tested with it ({', '.join(sorted(VERIFIED))})"
        elif implementation not in ("sdpa", "eager"):
            reason = f"{implementation} attention takes no custom attention mask"
        elif layer_types:
            reason = f"its {', '.join(sorted(layer_types))} layers take no custom attention mask"
        cache["_tispipe_packed_unsupported"] = reason
    return cache["_tispipe_packed_unsupported"]


def model_inputs(model: torch.nn.Module, packed: PackedPairs) -> dict:
    """The forward's keyword arguments for the packed rows (logits_to_keep left to the caller)."""
    mask = attention_mask(inner_model(model).config, packed)
    return dict(input_ids=packed.input_ids, position_ids=packed.position_ids, attention_mask=mask, use_cache=False)


def unpack_logits(kept: torch.Tensor, packed: PackedPairs, width: int) -> torch.Tensor:
    """(2B, width, V) logits predicting each response's tokens, chosen rows then rejected rows (the padded
    layout's, width = its longest response, zeros past each response's end), from the kept logits (K, V)."""
    table = torch.cat([kept, kept.new_zeros(1, kept.shape[-1])])
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1]))  # noqa: E731
    return torch.cat([pad(table[packed.chosen_index]), pad(table[packed.rejected_index])])
