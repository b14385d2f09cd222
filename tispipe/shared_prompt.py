"""The shared-prompt layout: each pair is one packed row, so its prompt goes through the model once.

    [pad p p p | c c c pad | r r r r]     <- one row per pair, L = P + C + R
    positions:  0 1 2 | 3 4 5     | 3 4 5 6   (both responses continue the prompt)

Attention (B, 1, L, L): causal, real keys only, and no rejected query sees a chosen key. Every token then
sees exactly what it sees in its own row of tispipe.batching's padded layout, at the same positions, so
log-probs and gradients are the same to float tolerance, while the prompt's tokens are computed once
instead of twice (real preference data has prompts longer than its responses). Sliding windows count
positions, as the padded layout's columns do. A padding query attends to itself only (a fully masked row
would make SDPA return NaN).

`unpack_logits` turns the packed rows' logits into the padded layout's, chosen rows then rejected rows,
so nothing after the forward changes. `unsupported` says why a model must take the padded layout instead.
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
    """input_ids, position_ids, segment: (B, L) long, L = prompt_width + chosen_width + rejected_width."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    prompt_width: int
    chosen_width: int
    rejected_width: int

    def to(self, device: str | torch.device) -> PackedPairs:
        return PackedPairs(self.input_ids.to(device), self.position_ids.to(device), self.segment.to(device), self.prompt_width, self.chosen_width,
                           self.rejected_width)


def pack_pairs(prompts: Sequence[Sequence[int]], chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]], pad_id: int) -> PackedPairs:
    """One row per pair: its prompt left-padded to the longest, then its chosen and its rejected response, each
    right-padded to the longest of its kind."""
    n = len(prompts)
    p_width, c_width, r_width = (max(len(s) for s in group) for group in (prompts, chosen, rejected))
    length = p_width + c_width + r_width
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, length), dtype=torch.long)
    segment = torch.zeros((n, length), dtype=torch.long)
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected, strict=True)):
        for start, ids, kind, first_position in ((p_width - len(p), p, PROMPT, 0), (p_width, c, CHOSEN, len(p)),
                                                 (p_width + c_width, r, REJECTED, len(p))):
            input_ids[i, start : start + len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
            position_ids[i, start : start + len(ids)] = torch.arange(first_position, first_position + len(ids))
            segment[i, start : start + len(ids)] = kind
    return PackedPairs(input_ids, position_ids, segment, p_width, c_width, r_width)


def allowed(packed: PackedPairs, window: int | None = None) -> torch.Tensor:
    """(B, L, L) bool: query i may attend to key j. With `window`, only keys fewer than `window` positions back."""
    seg, pos = packed.segment, packed.position_ids
    length = seg.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
    ok = causal[None] & (seg[:, None, :] > 0) & ~((seg[:, :, None] == REJECTED) & (seg[:, None, :] == CHOSEN))
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
    """The forward's keyword arguments for the packed rows."""
    mask = attention_mask(inner_model(model).config, packed)
    return dict(input_ids=packed.input_ids, position_ids=packed.position_ids, attention_mask=mask, use_cache=False)


def unpack_logits(logits: torch.Tensor, packed: PackedPairs, width: int) -> torch.Tensor:
    """(2B, width, V) logits predicting each response's tokens, chosen rows then rejected rows (the padded
    layout's, width = its longest response), from the packed rows' logits (B, C + R, V) at columns P-1 .. L-2.

    Chosen token j is predicted at column P-1+j; rejected token 0 at P-1 too (the prompt's last position,
    which sees the prompt only) and rejected token k > 0 at P+C+k-1.
    """
    c_width, r_width = packed.chosen_width, packed.rejected_width
    rejected_columns = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(c_width + 1, c_width + r_width)]).to(logits.device)
    chosen, rejected = logits[:, :c_width], logits.index_select(1, rejected_columns)
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1]))  # noqa: E731
    return torch.cat([pad(chosen), pad(rejected)])
