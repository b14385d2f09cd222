"""The one tokenization: prompt and response encoded apart, EOS appended, truncation sides, pad token."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from tispipe.data.tokenization import (
    EncodedPair,
    encode_pair,
    encode_prompt,
    encode_response,
    ensure_pad_token,
    render_prompt,
    response_text,
    truncate_pair,
)
from tispipe.errors import TispipeError

EOS = "<|endoftext|>"
# Text without the special-token strings, so decoding cannot confuse text with special tokens.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).filter(lambda s: "<|" not in s)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=text.filter(bool), chosen=text, rejected=text)
def test_ids_decode_back_to_prompt_and_responses(tiny_tokenizer_no_template, prompt, chosen, rejected):
    tok = tiny_tokenizer_no_template
    pair = encode_pair(tok, prompt, chosen, rejected, max_length=10_000, max_prompt_length=10_000)
    assert not pair.truncated
    assert tok.decode(pair.prompt_ids) == prompt
    assert tok.decode(pair.chosen_ids) == chosen + EOS
    assert tok.decode(pair.rejected_ids) == rejected + EOS
    assert pair.chosen_ids[-1] == pair.rejected_ids[-1] == tok.eos_token_id
    assert pair.chosen_ids.count(tok.eos_token_id) == 1


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=text, system=st.one_of(st.none(), text.filter(bool)))
def test_template_prompt_decodes_to_rendering(tiny_tokenizer, prompt, system):
    ids = encode_prompt(tiny_tokenizer, prompt, system=system)
    rendered = render_prompt(tiny_tokenizer, prompt, system=system)
    assert tiny_tokenizer.decode(ids) == rendered
    assert rendered.endswith("<|user|>\n" + prompt + "<|end|>\n<|assistant|>\n")
    assert rendered.startswith("<|system|>\n" + system) if system else rendered.startswith("<|user|>")


@pytest.fixture(scope="module")
def merging_tokenizer():
    """A BPE whose merge "a"+"b" -> "ab" spans a prompt ending in "a" and a response starting with "b"."""
    vocab = {EOS: 0, "a": 1, "b": 2, "x": 3, "ab": 4}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    bpe.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS)


def test_boundary_merge_does_not_shift_tokens(merging_tokenizer):
    tok = merging_tokenizer
    prompt, response = "xa", "bx"
    naive = tok.encode(prompt + response, add_special_tokens=False)
    apart = tok.encode(prompt, add_special_tokens=False) + tok.encode(response, add_special_tokens=False)
    assert naive == [3, 4, 3]  # the merge crosses the boundary...
    assert apart == [3, 1, 2, 3]  # ...so re-encoding the concatenation would misplace the boundary
    pair = encode_pair(tok, prompt, response, "x", chat_template=False)
    assert pair.prompt_ids == [3, 1]
    assert pair.chosen_ids == [2, 3, 0]  # "b", "x", EOS: the first response token is "b", not part of "ab"
    assert pair.rejected_ids == [3, 0]


def test_response_always_ends_with_one_eos(tiny_tokenizer):
    ids = encode_response(tiny_tokenizer, "hello")
    assert ids[-1] == tiny_tokenizer.eos_token_id
    assert ids[:-1] == tiny_tokenizer.encode("hello", add_special_tokens=False)
    assert encode_response(tiny_tokenizer, "") == [tiny_tokenizer.eos_token_id]


def test_plain_prompt_with_system_without_template(tiny_tokenizer_no_template, tiny_tokenizer):
    assert render_prompt(tiny_tokenizer_no_template, "Q?", system="Be brief.") == "Be brief.\n\nQ?"
    assert render_prompt(tiny_tokenizer_no_template, "Q?") == "Q?"
    # chat_template=False uses the plain text even when the tokenizer has a template
    assert render_prompt(tiny_tokenizer, "Q?", chat_template=False) == "Q?"


def test_messages_need_a_template(tiny_tokenizer_no_template):
    with pytest.raises(TispipeError, match="conversational data needs a tokenizer with a chat template") as e:
        render_prompt(tiny_tokenizer_no_template, [{"role": "user", "content": "hi"}])
    assert e.value.hint


def test_conversational_response_is_rendering_after_prompt(tiny_tokenizer):
    prompt = [{"role": "user", "content": "hi"}]
    answer = [{"role": "assistant", "content": "hello there"}]
    assert response_text(tiny_tokenizer, prompt, answer) == "hello there<|end|>\n"
    # a whole conversation that begins with the prompt turns gives the same response
    assert response_text(tiny_tokenizer, prompt, prompt + answer) == "hello there<|end|>\n"
    pair = encode_pair(tiny_tokenizer, prompt, answer, [{"role": "assistant", "content": "no"}], system="sys")
    full = tiny_tokenizer.apply_chat_template([{"role": "system", "content": "sys"}, *prompt, *answer], tokenize=False)
    assert tiny_tokenizer.decode(pair.prompt_ids + pair.chosen_ids) == full + EOS


def test_template_with_eos_at_turn_end_gives_one_eos(make_tiny_tokenizer):
    tok = make_tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    ids = encode_response(tok, response_text(tok, [{"role": "user", "content": "q"}], [{"role": "assistant", "content": "a"}]))
    assert ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == "a" + EOS


def test_template_that_rewrites_the_prompt_is_an_error(make_tiny_tokenizer):
    tok = make_tiny_tokenizer()
    # renders the generation prompt differently from the start of an assistant turn
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}>>> {% endif %}"
    with pytest.raises(TispipeError, match="does not start with the rendered prompt"):
        response_text(tok, [{"role": "user", "content": "q"}], [{"role": "assistant", "content": "a"}])


def test_bos_added_once(make_tiny_tokenizer):
    tok = make_tiny_tokenizer(chat_template=False)
    from tokenizers import processors

    tok.bos_token = "<|pad|>"  # stand-in BOS id for this test
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<|pad|> $A", special_tokens=[("<|pad|>", bos)])
    assert encode_prompt(tok, "hi") == [bos, *tok.encode("hi", add_special_tokens=False)]
    # a template/text that already starts with BOS does not get a second one
    assert encode_prompt(tok, "<|pad|>hi").count(bos) == 1
    # responses never get BOS
    assert bos not in encode_response(tok, "hi")


def test_truncation_cuts_prompt_left_and_responses_right():
    prompt, chosen, rejected = list(range(10)), [100, 101, 102, 103, 0], [200, 0]
    pair = truncate_pair(prompt, chosen, rejected, max_length=8, max_prompt_length=4)
    assert pair == EncodedPair([6, 7, 8, 9], [100, 101, 102, 103], [200, 0], truncated=True)  # cut chosen lost its EOS
    # long prompt alone, fitting responses: only the prompt's start is lost
    assert truncate_pair(prompt, [1, 0], [2, 0], max_length=100, max_prompt_length=3) == EncodedPair([7, 8, 9], [1, 0], [2, 0], True)
    # everything fits: untouched
    assert truncate_pair([1, 2], [3, 0], [4, 0], max_length=4, max_prompt_length=2) == EncodedPair([1, 2], [3, 0], [4, 0], False)


def test_no_room_for_response_returns_none():
    assert truncate_pair([1, 2, 3], [4, 0], [5, 0], max_length=3, max_prompt_length=3) is None
    assert truncate_pair([], [4, 0], [5, 0], max_length=10, max_prompt_length=5) is None
    assert truncate_pair([1, 2, 3], [4, 0], [5, 0], max_length=4, max_prompt_length=3) == EncodedPair([1, 2, 3], [4], [5], True)


def test_encode_pair_truncates_on_real_text(tiny_tokenizer_no_template):
    tok = tiny_tokenizer_no_template
    prompt = "how can I bake bread " * 20
    pair = encode_pair(tok, prompt, "first then water " * 20, "sorry", max_length=64, max_prompt_length=16)
    assert len(pair.prompt_ids) == 16 and pair.prompt_ids == encode_prompt(tok, prompt)[-16:]
    assert len(pair.prompt_ids) + len(pair.chosen_ids) == 64
    assert pair.chosen_ids[-1] != tok.eos_token_id and pair.rejected_ids[-1] == tok.eos_token_id
    assert pair.truncated


def test_ensure_pad_token(make_tiny_tokenizer):
    tok = make_tiny_tokenizer(pad=False)
    size = len(tok)
    assert tok.pad_token_id is None
    ensure_pad_token(tok)
    assert tok.pad_token_id == tok.eos_token_id and len(tok) == size
    padded = make_tiny_tokenizer(pad=True)
    ensure_pad_token(padded)
    assert padded.pad_token == "<|pad|>" and padded.pad_token_id != padded.eos_token_id


def test_missing_eos_is_an_error(merging_tokenizer):
    tok = PreTrainedTokenizerFast(tokenizer_object=merging_tokenizer.backend_tokenizer)
    with pytest.raises(TispipeError, match="no EOS"):
        encode_response(tok, "ab")
    with pytest.raises(TispipeError, match="neither a pad token nor an EOS"):
        ensure_pad_token(tok)
