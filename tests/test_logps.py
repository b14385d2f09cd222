import math

import pytest
import torch

from tispipe.core import logps
from tispipe.core.logps import shift, token_kl, token_logps


def test_token_logps_matches_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    labels = torch.randint(0, 11, (3, 5), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    got = token_logps(logits, labels)
    assert got.shape == (3, 5) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_token_logps_hand_worked():
    # logits [0, log 3] -> probabilities [1/4, 3/4].
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    got = token_logps(logits, torch.tensor([[0, 1]]))
    torch.testing.assert_close(got, torch.tensor([[math.log(0.25), math.log(0.75)]]))


def test_token_logps_bf16_is_computed_in_float32():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 4, 300, generator=g) * 8).to(torch.bfloat16)
    labels = torch.randint(0, 300, (2, 4), generator=g)
    got = token_logps(logits, labels)
    assert got.dtype == torch.float32
    expected = torch.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_chunking_gives_same_values_and_gradients(monkeypatch):
    g = torch.Generator().manual_seed(2)
    p = torch.randn(2, 7, 13, generator=g, requires_grad=True)
    q = torch.randn(2, 7, 13, generator=g)
    labels = torch.randint(0, 13, (2, 7), generator=g)

    def run():
        p.grad = None
        out = token_logps(p, labels).sum() + token_kl(p, q).sum()
        out.backward()
        return out.detach(), p.grad.clone()

    whole_value, whole_grad = run()
    monkeypatch.setattr(logps, "CHUNK_ELEMENTS", 2 * 13 * 3)  # 3 positions per chunk, last chunk ragged
    assert len(logps._time_chunks(p)) == 3
    chunked_value, chunked_grad = run()
    torch.testing.assert_close(chunked_value, whole_value)
    torch.testing.assert_close(chunked_grad, whole_grad)


def test_negative_padding_labels_do_not_crash():
    logits = torch.zeros(1, 3, 4)
    got = token_logps(logits, torch.tensor([[1, -100, 2]]))
    torch.testing.assert_close(got, torch.full((1, 3), math.log(0.25)))


def test_token_kl_hand_worked_and_direction():
    p = torch.tensor([[[0.0, 0.0]]])  # [1/2, 1/2]
    q = torch.tensor([[[0.0, math.log(3.0)]]])  # [1/4, 3/4]
    forward = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    backward = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    torch.testing.assert_close(token_kl(p, q), torch.tensor([[forward]]))
    torch.testing.assert_close(token_kl(q, p), torch.tensor([[backward]]))
    assert abs(forward - backward) > 1e-3


def test_token_kl_matches_definition_nonnegative_and_zero_at_equality():
    g = torch.Generator().manual_seed(3)
    p = torch.randn(2, 6, 9, generator=g) * 3
    q = torch.randn(2, 6, 9, generator=g) * 3
    pp, pq = torch.softmax(p, -1), torch.softmax(q, -1)
    expected = (pp * (pp.log() - pq.log())).sum(-1)
    got = token_kl(p, q)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (got > 0).all()
    assert token_kl(p, p).abs().max() < 1e-6


def test_token_kl_finite_where_softmax_log_is_not():
    # exp(-200) underflows in float32: softmax().log() gives -inf and 0 * -inf = NaN.
    p = torch.tensor([[[0.0, -200.0, 5.0]]], requires_grad=True)
    q = torch.tensor([[[0.0, 3.0, -200.0]]], requires_grad=True)
    naive = (torch.softmax(p, -1) * (torch.softmax(p, -1).log() - torch.softmax(q, -1).log())).sum(-1)
    assert not torch.isfinite(naive).all()
    kl = token_kl(p, q)
    assert torch.isfinite(kl).all() and kl.item() > 0
    kl.sum().backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()


def test_shift_aligns_first_response_token_with_last_prompt_position():
    # prompt = [5, 6], response = [7, 8 (EOS)], one padding slot.
    input_ids = torch.tensor([[5, 6, 7, 8, 0]])
    response_mask = torch.tensor([[0, 0, 1, 1, 0]])
    logits = torch.arange(5.0).view(1, 5, 1).expand(1, 5, 3)  # logits at position i hold the value i
    out_logits, labels, mask = shift(logits, input_ids, response_mask)
    assert labels.tolist() == [[6, 7, 8, 0]]
    assert mask.tolist() == [[0, 1, 1, 0]]
    # The first counted label (7) is predicted from position 1, the last prompt token.
    first = int(mask[0].nonzero()[0])
    assert labels[0, first] == 7 and out_logits[0, first, 0] == 1.0
    assert out_logits.shape == (1, 4, 3)


def test_shift_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        shift(torch.zeros(1, 5, 3), torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4))


@pytest.mark.parametrize("policy_first", [True, False])
def test_fused_logps_and_kl_equal_the_separate_functions(policy_first, monkeypatch):
    from tispipe.core import logps as module

    monkeypatch.setattr(module, "CHUNK_ELEMENTS", 2 * 3 * 11)  # several chunks
    torch.manual_seed(1)
    policy = torch.randn(2, 7, 11, requires_grad=True)
    ref = torch.randn(2, 7, 11)
    labels = torch.randint(0, 11, (2, 7))
    fused = module.token_logps_and_kl(policy, ref, labels, policy_first=policy_first)
    kl = token_kl(policy, ref) if policy_first else token_kl(ref, policy)
    separate = (token_logps(policy, labels), token_logps(ref, labels), kl)
    for a, b in zip(fused, separate):
        torch.testing.assert_close(a, b)
    (grad_fused,) = torch.autograd.grad(fused[0].sum() + fused[2].sum(), policy)
    (grad_separate,) = torch.autograd.grad(separate[0].sum() + separate[2].sum(), policy)
    torch.testing.assert_close(grad_fused, grad_separate)
