"""The batch layout (left-padded prompts, right-padded responses) against one-sequence-at-a-time forwards."""

import pytest
import torch

from tispipe.modeling.batching import forward_logits, make_batch, make_pair_batch, sequence_token_logps

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [3]]
RESPONSES = [[20, 21, 22, 23, 24], [30, 31], [40, 41, 42, 43, 44, 45, 46, 47]]


@pytest.fixture(scope="module")
def model(make_tiny_llama):
    return make_tiny_llama(vocab_size=64, num_attention_heads=4, num_key_value_heads=4, pad_token_id=0).eval()


def test_layout_hand_built():
    batch = make_batch([[1, 2], [3]], [[7], [8, 9, 10]], pad_id=0)
    assert batch.prompt_width == 2
    assert batch.input_ids.tolist() == [[1, 2, 7, 0, 0], [0, 3, 8, 9, 10]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 2, 2], [0, 0, 1, 2, 3]]
    assert batch.labels.tolist() == [[7, 0, 0], [8, 9, 10]]
    assert batch.response_mask.tolist() == [[1, 0, 0], [1, 1, 1]]


def test_place_unplace_round_trip_and_length_check():
    batch = make_batch(PROMPTS, RESPONSES, pad_id=0)
    values = [[float(i * 10 + j) for j in range(len(r))] for i, r in enumerate(RESPONSES)]
    placed = batch.place(values)
    assert placed.shape == batch.labels.shape
    assert (placed * (1 - batch.response_mask)).abs().sum() == 0
    assert batch.unplace(placed) == values
    with pytest.raises(ValueError, match="row 1"):
        batch.place([values[0], values[1] + [1.0], values[2]])


def test_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="prompt"):
        make_batch([[]], [[1]], pad_id=0)


def _one_at_a_time(model, prompt, response):
    ids = torch.tensor([prompt + response])
    logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return logps[len(prompt) - 1 :].gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_batched_logps_equal_one_sequence_forwards(model):
    batch = make_batch(PROMPTS, RESPONSES, pad_id=0)
    with torch.no_grad():
        logps = sequence_token_logps(model, batch)
        for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
            torch.testing.assert_close(logps[i, : len(r)], _one_at_a_time(model, p, r), atol=1e-5, rtol=0)
    assert (logps * (1 - batch.response_mask)).abs().sum() == 0


def test_padding_gets_no_gradient_and_gradients_are_finite(model):
    """A row's response log-probs depend on its own tokens only, and padding yields no NaN."""
    batch = make_pair_batch(PROMPTS, RESPONSES, [[1, 2], [3], [4, 5, 6]], pad_id=0)
    embeddings = model.get_input_embeddings()
    inputs = embeddings(batch.input_ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=inputs, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
    (logits[0, batch.prompt_width - 1 : -1] * batch.response_mask[0, :, None]).sum().backward()  # row 0's response
    assert torch.isfinite(inputs.grad).all()
    assert inputs.grad[1:].abs().sum() == 0  # other rows untouched
    assert inputs.grad[0][batch.attention_mask[0] == 0].abs().sum() == 0  # row 0's padding untouched


def test_models_without_logits_to_keep_give_the_same_logits(model):
    class NoKeep(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, use_cache):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache)

    batch = make_batch(PROMPTS, RESPONSES, pad_id=0)
    with torch.no_grad():
        kept = forward_logits(model, batch)
        full = forward_logits(NoKeep(model), batch)
    assert kept.shape == (3, 8, 64)
    torch.testing.assert_close(kept, full)


def test_packed_layout_hand_built():
    """Three pairs of 6, 3 and 3 tokens: rows as wide as the longest pair, the two short pairs share a row."""
    from tispipe.modeling.shared_prompt import CHOSEN, PROMPT, REJECTED, allowed, pack_pairs

    packed = pack_pairs([[1, 2], [7], [10]], [[3, 4], [8], [11]], [[5, 6], [9], [12]], pad_id=0)
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 2, 3], [0, 1, 1, 0, 1, 1]]
    P, C, R = PROMPT, CHOSEN, REJECTED
    assert packed.segment.tolist() == [[P, P, C, C, R, R], [P, C, R, P, C, R]]
    assert packed.pair.tolist() == [[1, 1, 1, 1, 1, 1], [2, 2, 2, 3, 3, 3]]
    # Column p-1 predicts both first tokens, the chosen run's own columns its later tokens, the rejected run's the rejected ones.
    assert packed.keep.tolist() == [[False, True, True, False, True, False], [True, False, False, True, False, False]]
    assert packed.chosen_index.tolist() == [[0, 1], [3, 5], [4, 5]]  # 5 = the zero row past a response's end
    assert packed.rejected_index.tolist() == [[0, 2], [3, 5], [4, 5]]
    ok = allowed(packed)
    assert ok[0, 4].tolist() == [True, True, False, False, True, False]  # rejected sees its prompt, not the chosen run
    assert ok[1, 3].tolist() == [False, False, False, True, False, False]  # the second pair's prompt starts afresh


def test_pairs_shorter_than_a_row_are_placed_first_fit_by_length():
    from tispipe.modeling.shared_prompt import pack_pairs, place_rows

    assert place_rows([6, 3, 3]) == [[0], [1, 2]]
    assert place_rows([2, 9, 5, 4, 7, 2]) == [[1], [4, 0], [2, 3], [5]]
    packed = pack_pairs([[1]] * 4, [[2] * 4, [2], [2], [2] * 2], [[3]] * 4, pad_id=0)  # 6, 3, 3 and 4 tokens
    assert packed.input_ids.shape == (3, 6) and int((packed.pair > 0).sum()) == 16
    assert packed.pair.tolist() == [[1] * 6, [4] * 4 + [0] * 2, [2] * 3 + [3] * 3]


@pytest.mark.parametrize("keeps", [True, False])
def test_packed_pairs_give_the_padded_layouts_logits(model, keeps):
    """Several pairs per packed row, with a model that takes logits_to_keep and with one that does not."""

    class NoKeep(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask, position_ids, use_cache):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache)

    prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14], [15, 16, 17], [18]]
    chosen, rejected = [[20, 21], [22], [23, 24], [25]], [[30], [31, 32, 33], [34], [35, 36]]
    batch = make_pair_batch(prompts, chosen, rejected, pad_id=0)
    assert batch.packed is not None and batch.packed.input_ids.shape == (3, 11)  # pairs of 11, 6, 6 and 4 tokens: 6 + 4 share a row
    plain = make_pair_batch(prompts, chosen, rejected, pad_id=0, shared=False)
    subject = model if keeps else NoKeep(model)
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(subject, batch) * plain.response_mask[..., None],
                                   forward_logits(model, plain) * plain.response_mask[..., None], atol=1e-5, rtol=1e-4)
