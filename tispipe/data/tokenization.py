"""The one tokenization used by estimation, training, evaluation and the base-model SFT.

`prompt_ids + chosen_ids` IS the sequence the models score and train on. The prompt and each
response are encoded separately and concatenated; the boundary is never found by re-encoding the
concatenation, so a BPE merge across the boundary (prompt ends in "a", response starts with "b",
vocabulary has "ab") cannot shift the response tokens or their weights.

Every response ends with EOS, which is scored and weighted like any other response token: whether
to stop is part of the response. A response cut by truncation keeps no EOS: its last kept token is a real
response token, and the model is not taught to stop there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tispipe.errors import TispipeError

Messages = list[dict[str, Any]]


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token pad = eos (no new vocabulary entry, model vocab unchanged).

    Padding positions are always masked out, so reusing EOS as pad changes no score.
    """
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token is None:
        raise TispipeError("the tokenizer has neither a pad token nor an EOS token", hint="use a tokenizer with an EOS token")
    tokenizer.pad_token = tokenizer.eos_token


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise TispipeError(
            "the tokenizer has no EOS token; responses must end with one",
            hint="use a tokenizer with an EOS token (eos_token in tokenizer_config.json)",
        )
    return tokenizer.eos_token_id


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _require_template(tokenizer) -> None:
    if not has_chat_template(tokenizer):
        raise TispipeError(
            "conversational data needs a tokenizer with a chat template",
            hint="use an instruct/chat tokenizer, or convert the data to plain prompt/chosen/rejected strings",
        )


def _with_system(messages: Messages, system: str | None) -> Messages:
    # A conversation that already opens with a system message keeps its own.
    if system and not (messages and messages[0].get("role") == "system"):
        return [{"role": "system", "content": system}, *messages]
    return list(messages)


def _apply_template(tokenizer, messages: Messages, add_generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except (TemplateError, ValueError, TypeError, KeyError) as e:  # e.g. a template that rejects a role order
        raise TispipeError(f"the tokenizer's chat template failed on a conversation: {e}".splitlines()[0])
    if not isinstance(text, str):
        raise TispipeError("the tokenizer's chat template did not render to text")
    return text


def render_prompt(tokenizer, prompt: str | Messages, system: str | None = None, chat_template: bool = True) -> str:
    """The prompt exactly as the model sees it, as text.

    - a list of messages: the chat template with the generation prompt (system prepended if given);
    - a string, and the tokenizer has a template and `chat_template`: template of [system?, user(prompt)];
    - a string otherwise: `system + "\\n\\n" + prompt` if a system prompt is given, else the prompt.
    """
    if isinstance(prompt, list):
        _require_template(tokenizer)
        return _apply_template(tokenizer, _with_system(prompt, system), add_generation_prompt=True)
    if chat_template and has_chat_template(tokenizer):
        messages = _with_system([{"role": "user", "content": prompt}], system)
        return _apply_template(tokenizer, messages, add_generation_prompt=True)
    return f"{system}\n\n{prompt}" if system else prompt


def _bos_to_add(tokenizer) -> int | None:
    """The BOS id if encoding with special tokens puts one in front (Llama-style), else None."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    cache = getattr(tokenizer, "_tispipe_adds_bos", None)
    if cache is None:
        with_special = tokenizer.encode("x", add_special_tokens=True)
        without = tokenizer.encode("x", add_special_tokens=False)
        cache = bool(with_special) and with_special[0] == bos and (not without or without[0] != bos)
        try:
            tokenizer._tispipe_adds_bos = cache
        except AttributeError:
            pass
    return bos if cache else None


def encode_text(tokenizer, text: str) -> list[int]:
    """Encode text with no special tokens added (special-token strings in the text still map to their ids)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def encode_prompt(tokenizer, prompt: str | Messages, system: str | None = None, chat_template: bool = True) -> list[int]:
    """Token ids of the rendered prompt; BOS only if the tokenizer adds one and the text does not start with it."""
    ids = encode_text(tokenizer, render_prompt(tokenizer, prompt, system, chat_template))
    bos = _bos_to_add(tokenizer)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def encode_response(tokenizer, response: str) -> list[int]:
    """Token ids of a response: encoded without special tokens, then EOS appended (always)."""
    return [*encode_text(tokenizer, response), _eos_id(tokenizer)]


def response_text(tokenizer, prompt: str | Messages, response: str | Messages, system: str | None = None, chat_template: bool = True) -> str:
    """The response as text; for assistant messages, the part of the chat rendering after the rendered prompt.

    `response` may be the assistant turn(s) alone or a whole conversation that begins with the prompt
    messages. A template that ends the assistant turn with the EOS string loses that EOS (and what
    follows it) here, because `encode_response` appends exactly one.
    """
    if isinstance(response, str):
        return response
    _require_template(tokenizer)
    prompt_messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if response[: len(prompt_messages)] == prompt_messages and len(response) > len(prompt_messages):
        response = response[len(prompt_messages) :]
    prompt_messages = _with_system(prompt_messages, system)
    rendered_prompt = _apply_template(tokenizer, prompt_messages, add_generation_prompt=True)
    rendered_full = _apply_template(tokenizer, [*prompt_messages, *response], add_generation_prompt=False)
    if not rendered_full.startswith(rendered_prompt):
        raise TispipeError(
            "the chat template renders prompt + response so that it does not start with the rendered prompt; "
            "the response tokens cannot be separated from the prompt",
            hint="give chosen/rejected as plain strings, or use a tokenizer whose template renders turns independently",
        )
    text = rendered_full[len(rendered_prompt) :]
    eos = tokenizer.eos_token
    if eos and text.rstrip().endswith(eos):
        text = text.rstrip()[: -len(eos)]
    return text


@dataclass
class EncodedPair:
    """Token ids of one preference pair; `prompt_ids + chosen_ids` is the scored/trained sequence."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool


def truncate_pair(
    prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int], *, max_length: int = 512, max_prompt_length: int = 256
) -> EncodedPair | None:
    """Fit prompt + each response into `max_length` tokens.

    The prompt is cut from the LEFT to `max_prompt_length` (its end, next to the response, matters
    most); then each response is cut from the RIGHT to `max_length - len(prompt)` (a cut response
    keeps no EOS). Returns None when no response token fits after the prompt, or when the prompt
    has no token at all (nothing to condition the first response token on).
    """
    if not prompt_ids:
        return None
    prompt = prompt_ids[-max_prompt_length:] if max_prompt_length > 0 else []
    room = max_length - len(prompt)
    if not prompt or room < 1:
        return None
    chosen, rejected = chosen_ids[:room], rejected_ids[:room]
    truncated = len(prompt) < len(prompt_ids) or len(chosen) < len(chosen_ids) or len(rejected) < len(rejected_ids)
    return EncodedPair(list(prompt), list(chosen), list(rejected), truncated)


def encode_pair(
    tokenizer,
    prompt: str | Messages,
    chosen: str | Messages,
    rejected: str | Messages,
    *,
    max_length: int = 512,
    max_prompt_length: int = 256,
    system: str | None = None,
    chat_template: bool = True,
) -> EncodedPair | None:
    """Encode and truncate one pair; None when the prompt leaves no room for a response (see `truncate_pair`)."""
    prompt_ids = encode_prompt(tokenizer, prompt, system, chat_template)
    chosen_ids = encode_response(tokenizer, response_text(tokenizer, prompt, chosen, system, chat_template))
    rejected_ids = encode_response(tokenizer, response_text(tokenizer, prompt, rejected, system, chat_template))
    return truncate_pair(prompt_ids, chosen_ids, rejected_ids, max_length=max_length, max_prompt_length=max_prompt_length)


def token_labels(tokenizer, text: str, spans: Sequence[Sequence[int]], ids: Sequence[int]) -> list[int]:
    """Per-token ground-truth labels for response `ids` (as stored: the text's tokens, then EOS unless truncated).

    Token t gets the label of a span [start, end, label] overlapping its characters, else 0; EOS gets 0.
    Uses the tokenizer's offset mapping on the text; the ids it gives must be the stored ones.
    """
    check_spans(spans, len(text))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    text_ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    n = len(ids)
    if list(ids[: len(text_ids)]) != text_ids[:n] or n > len(text_ids) + 1:
        raise TispipeError("token labels: the offset-mapped token ids differ from the stored response ids")
    labels = []
    for start, end in offsets[:n]:
        label = 0
        for span_start, span_end, span_label in spans:
            if start < span_end and span_start < end:
                label = int(span_label)
                break
        labels.append(label)
    return labels + [0] * (n - len(labels))  # EOS


def check_spans(spans, text_length: int) -> None:
    """Spans must be a list of [start, end, label] with integers 0 <= start < end <= text_length and a
    label of -1, 0 or +1; anything else is a TispipeError saying which span and why."""
    if not isinstance(spans, list):
        raise TispipeError(f"spans must be a list of [start, end, label], not {type(spans).__name__}")
    for i, span in enumerate(spans):
        ok_shape = isinstance(span, list) and len(span) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        if not ok_shape:
            raise TispipeError(f"span {i} is {span!r}; a span is [start, end, label], three integers")
        start, end, label = span
        if not 0 <= start < end <= text_length:
            raise TispipeError(f"span {i} {span!r} is not within the text (0 <= start < end <= {text_length})")
        if label not in (-1, 0, 1):
            raise TispipeError(f"span {i} {span!r} has label {label}; labels are +1 helpful, -1 harmful or 0")
