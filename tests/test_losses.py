import math

import pytest
import torch

from tispipe.core.logps import shift, token_kl, token_logps
from tispipe.core.losses import (
    dpo_loss,
    ipo_loss,
    preference_metrics,
    tdpo_loss,
    tisdpo_loss,
)

LOG2 = math.log(2.0)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x); the losses below are softplus(-logit)."""
    return math.log1p(math.exp(x))


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# One hand-worked pair per batch row. Row 0: chosen has 2 tokens, rejected 1 (padded to 3 and 2).
# Row 1: chosen 3 tokens, rejected 2. Padding slots hold values that must not matter.
PC = t([[-1.0, -2.0, 9.0], [-0.5, -0.5, -0.5]])  # policy chosen logps
RC = t([[-1.5, -2.5, -9.0], [-0.5, -0.5, -0.5]])  # ref chosen: lr_w = [0.5, 0.5] / [0, 0, 0]
PR = t([[-3.0, 4.0], [-1.0, -2.0]])  # policy rejected
RR = t([[-2.0, 0.0], [-2.0, -1.0]])  # ref rejected: lr_l = [-1] / [1, -1]
CM = t([[1, 1, 0], [1, 1, 1]])
RM = t([[1, 0], [1, 1]])
CW = t([[2.0, 0.5, 7.0], [1.0, 1.0, 1.0]])
RW = t([[0.25, 7.0], [3.0, 1.0]])
CKL = t([[0.2, 0.4, 5.0], [0.1, 0.1, 0.1]])
RKL = t([[0.8, 5.0], [0.0, 0.5]])
BETA = 0.5
# Row 0: sum lr_w = 1, sum lr_l = -1; weighted: 2*0.5 + 0.5*0.5 = 1.25 and 0.25*(-1) = -0.25;
#        SeqKL_w = 0.6, SeqKL_l = 0.8; weighted: 2*0.2 + 0.5*0.4 = 0.6 and 0.25*0.8 = 0.2.
# Row 1: sum lr_w = 0, sum lr_l = 0; weighted: 0 and 3*1 - 1 = 2;
#        SeqKL_w = 0.3, SeqKL_l = 0.5; weighted: 0.3 and 0.5.
BASE = (PC, PR, RC, RR, CM, RM)


def test_dpo_hand_worked():
    losses, chosen, rejected = dpo_loss(*BASE, beta=BETA)
    torch.testing.assert_close(losses, t([softplus(-1.0), LOG2]))
    torch.testing.assert_close(chosen, t([0.5, 0.0]))
    torch.testing.assert_close(rejected, t([-0.5, 0.0]))
    assert not chosen.requires_grad


def test_ipo_hand_worked_uses_sums():
    losses, chosen, rejected = ipo_loss(*BASE, beta=BETA)
    # h = 2 and 0, 1 / (2 beta) = 1.
    torch.testing.assert_close(losses, t([1.0, 1.0]))
    torch.testing.assert_close(chosen, t([0.5, 0.0]))
    torch.testing.assert_close(rejected, t([-0.5, 0.0]))


def test_tisdpo_hand_worked():
    losses, chosen, rejected = tisdpo_loss(*BASE, CW, RW, CKL, RKL, beta=BETA)
    # Row 0: u = 0.5 * 1.5 = 0.75, eta = 0.5 * (0.6 - 0.2) = 0.2.
    # Row 1: u = 0.5 * (0 - 2) = -1, eta = 0.5 * (0.3 - 0.5) = -0.1.
    torch.testing.assert_close(losses, t([softplus(-0.55), softplus(0.9)]))
    torch.testing.assert_close(chosen, t([0.625, 0.0]))
    torch.testing.assert_close(rejected, t([-0.125, 1.0]))
    half, _, _ = tisdpo_loss(*BASE, CW, RW, CKL, RKL, beta=BETA, eta_coef=0.5)
    torch.testing.assert_close(half, t([softplus(-0.65), softplus(0.95)]))


def test_tdpo_hand_worked():
    one, chosen, rejected = tdpo_loss(*BASE, CKL, RKL, beta=BETA, variant=1)
    # Row 0: 0.5 * (2 - (0.8 - 0.6)) = 0.9; row 1: 0.5 * (0 - (0.5 - 0.3)) = -0.1.
    torch.testing.assert_close(one, t([softplus(-0.9), softplus(0.1)]))
    torch.testing.assert_close(chosen, t([0.5, 0.0]))  # rewards are beta * sum lr, no KL
    torch.testing.assert_close(rejected, t([-0.5, 0.0]))
    two, _, _ = tdpo_loss(*BASE, CKL, RKL, beta=BETA, alpha=0.5, variant=2)
    # Row 0: 0.5 * (2 - 0.5 * 0.2) = 0.95; row 1: 0.5 * (0 - 0.5 * 0.2) = -0.05.
    torch.testing.assert_close(two, t([softplus(-0.95), softplus(0.05)]))
    # The stop-gradient does not change the value: alpha = 1 gives TDPO1's numbers.
    torch.testing.assert_close(tdpo_loss(*BASE, CKL, RKL, beta=BETA, alpha=1.0, variant=2)[0], one)


def grad_of(x):
    """x.grad, or zeros when no gradient reached x."""
    return torch.zeros_like(x) if x.grad is None else x.grad.clone()


def all_losses(base, cw, rw, ckl, rkl, ckl_fwd, rkl_fwd, beta=BETA):
    """name -> (B,) losses for every loss family on the same inputs."""
    return {
        "dpo": dpo_loss(*base, beta=beta)[0],
        "ipo": ipo_loss(*base, beta=beta)[0],
        "tisdpo": tisdpo_loss(*base, cw, rw, ckl, rkl, beta=beta)[0],
        "tdpo1": tdpo_loss(*base, ckl_fwd, rkl_fwd, beta=beta, variant=1)[0],
        "tdpo2": tdpo_loss(*base, ckl_fwd, rkl_fwd, beta=beta, variant=2)[0],
    }


def make_logits(seed, batch=2, length=6, vocab=7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.zeros(batch, length)
    mask[0, 2:5] = 1  # prompt 2 tokens, response 3, 1 padding
    mask[1, 2:6] = 1
    return torch.randn(batch, length, vocab, generator=g), ids, mask


class Pair:
    """Free policy logits for a chosen and a rejected batch, fixed reference logits; everything via logps.py."""

    def __init__(self, ref_equals_policy=False):
        pol_c, self.ids_c, self.mask_c = make_logits(0)
        pol_r, self.ids_r, self.mask_r = make_logits(1)
        noise = 0.0 if ref_equals_policy else 1.0
        g = torch.Generator().manual_seed(2)
        self.ref_c = pol_c + noise * torch.randn(pol_c.shape, generator=g)
        self.ref_r = pol_r + noise * torch.randn(pol_r.shape, generator=g)
        self.pol_c = pol_c.clone().requires_grad_(True)
        self.pol_r = pol_r.clone().requires_grad_(True)
        self.w_c = 0.5 + torch.rand(2, 5, generator=g)
        self.w_r = 0.5 + torch.rand(2, 5, generator=g)

    def losses(self):
        pc, labels_c, mc = shift(self.pol_c, self.ids_c, self.mask_c)
        pr, labels_r, mr = shift(self.pol_r, self.ids_r, self.mask_r)
        rc, _, _ = shift(self.ref_c, self.ids_c, self.mask_c)
        rr, _, _ = shift(self.ref_r, self.ids_r, self.mask_r)
        base = (
            token_logps(pc, labels_c),
            token_logps(pr, labels_r),
            token_logps(rc, labels_c),
            token_logps(rr, labels_r),
            mc,
            mr,
        )
        return all_losses(
            base, self.w_c, self.w_r,
            token_kl(pc, rc), token_kl(pr, rr),  # reverse KL(policy || ref) for TIS-DPO
            token_kl(rc, pc), token_kl(rr, pr),  # forward KL(ref || policy) for TDPO
        )  # fmt: skip


def test_policy_equals_reference_gives_log2_and_finite_gradients():
    pair = Pair(ref_equals_policy=True)
    for name, losses in pair.losses().items():
        expected = 1 / (4 * BETA**2) if name == "ipo" else LOG2
        torch.testing.assert_close(losses, torch.full((2,), expected), msg=name)
        pair.pol_c.grad = pair.pol_r.grad = None
        losses.mean().backward(retain_graph=True)
        assert torch.isfinite(pair.pol_c.grad).all() and torch.isfinite(pair.pol_r.grad).all(), name
        assert pair.pol_c.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", ["dpo", "ipo", "tisdpo", "tdpo1", "tdpo2"])
def test_one_sgd_step_lowers_the_loss(name):
    pair = Pair()
    before = pair.losses()[name].mean()
    before.backward()
    with torch.no_grad():
        for p in (pair.pol_c, pair.pol_r):
            p -= 0.05 * p.grad
    after = pair.losses()[name].mean()
    assert after < before - 1e-4, (name, before.item(), after.item())


def test_tisdpo_with_unit_weights_and_no_eta_is_dpo():
    g = torch.Generator().manual_seed(3)
    base = tuple(torch.randn(4, 6, generator=g) for _ in range(4)) + (
        (torch.rand(4, 6, generator=g) > 0.3).float(),
        (torch.rand(4, 6, generator=g) > 0.3).float(),
    )
    ones = torch.ones(4, 6)
    dpo = dpo_loss(*base, beta=0.1)
    for kl in [(None, None), (torch.rand(4, 6, generator=g), torch.rand(4, 6, generator=g))]:
        tis = tisdpo_loss(*base, ones, ones, *kl, beta=0.1, eta_coef=0.0)
        for a, b in zip(tis, dpo):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # Scaling every weight by c is DPO at beta * c.
    tis = tisdpo_loss(*base, 3 * ones, 3 * ones, None, None, beta=0.1, eta_coef=0.0)
    torch.testing.assert_close(tis[0], dpo_loss(*base, beta=0.3)[0])


def test_tisdpo_without_kl_requires_eta_off():
    with pytest.raises(ValueError, match="eta_coef"):
        tisdpo_loss(*BASE, CW, RW, None, None, beta=BETA)
    with pytest.raises(ValueError):
        tisdpo_loss(*BASE, CW, RW, CKL, None, beta=BETA, eta_coef=0.0)


def test_tisdpo_eta_sign():
    base_loss = tisdpo_loss(*BASE, CW, RW, CKL, RKL, beta=BETA)[0]
    more_chosen_kl = tisdpo_loss(*BASE, CW, RW, CKL + 0.3 * CM, RKL, beta=BETA)[0]
    more_rejected_kl = tisdpo_loss(*BASE, CW, RW, CKL, RKL + 0.3 * RM, beta=BETA)[0]
    assert (more_chosen_kl > base_loss).all()
    assert (more_rejected_kl < base_loss).all()
    # Opposite to TDPO1, where a larger chosen KL raises the logit.
    tdpo = tdpo_loss(*BASE, CKL, RKL, beta=BETA, variant=1)[0]
    assert (tdpo_loss(*BASE, CKL + 0.3 * CM, RKL, beta=BETA, variant=1)[0] < tdpo).all()


def test_tdpo2_stops_gradient_on_chosen_kl_only():
    alpha = 0.5
    grads = {}
    for variant in (1, 2):
        ckl = CKL.clone().requires_grad_(True)
        rkl = RKL.clone().requires_grad_(True)
        losses = tdpo_loss(*BASE, ckl, rkl, beta=BETA, alpha=alpha, variant=variant)[0]
        losses.sum().backward()
        grads[variant] = (grad_of(ckl), grad_of(rkl), losses.detach())
    # d softplus(-z) / dz = -sigmoid(-z), and z = beta * (margin - c * (K_l - K_w)).
    ckl1, rkl1, loss1 = grads[1]
    s1 = 1 - torch.exp(-loss1)  # sigmoid(-z) = 1 - sigmoid(z) = 1 - exp(-loss)
    torch.testing.assert_close(ckl1, -BETA * s1[:, None] * CM)
    torch.testing.assert_close(rkl1, BETA * s1[:, None] * RM)
    ckl2, rkl2, loss2 = grads[2]
    s2 = 1 - torch.exp(-loss2)
    assert (ckl2 == 0).all()
    torch.testing.assert_close(rkl2, alpha * BETA * s2[:, None] * RM)


@pytest.mark.parametrize("garbage", [1e30, float("inf"), float("nan")])
def test_masked_positions_never_contribute(garbage):
    def corrupt(x, mask):
        return torch.where(mask.bool(), x, torch.full_like(x, garbage))

    def run(pc, pr, rc, rr, cw, rw, ckl, rkl):
        pc = pc.clone().requires_grad_(True)
        pr = pr.clone().requires_grad_(True)
        ckl = ckl.clone().requires_grad_(True)
        out = {}
        for name, losses in all_losses((pc, pr, rc, rr, CM, RM), cw, rw, ckl, rkl, ckl, rkl).items():
            pc.grad = pr.grad = ckl.grad = None
            losses.sum().backward(retain_graph=True)
            out[name] = (losses.detach(), grad_of(pc), grad_of(pr), grad_of(ckl))
        return out

    clean = run(PC, PR, RC, RR, CW, RW, CKL, RKL)
    dirty = run(
        corrupt(PC, CM), corrupt(PR, RM), corrupt(RC, CM), corrupt(RR, RM),
        corrupt(CW, CM), corrupt(RW, RM), corrupt(CKL, CM), corrupt(RKL, RM),
    )  # fmt: skip
    for name in clean:
        for a, b in zip(clean[name], dirty[name]):
            torch.testing.assert_close(a, b, msg=name)
        _, grad_c, grad_r, grad_kl = dirty[name]
        assert (grad_c[CM == 0] == 0).all() and (grad_r[RM == 0] == 0).all() and (grad_kl[CM == 0] == 0).all()


def test_garbage_logits_at_padding_do_not_change_the_loss():
    pair = Pair()
    clean = {k: v.detach() for k, v in pair.losses().items()}
    with torch.no_grad():
        # Positions whose label is padding (mask[:, 1:] == 0) get huge logits, for policy and reference.
        pad = (pair.mask_c[:, 1:] == 0).nonzero()
        for b, pos in pad.tolist():
            pair.pol_c[b, pos] = 1e6
            pair.ref_c[b, pos] = -1e6
    dirty = pair.losses()
    for name, clean_losses in clean.items():
        torch.testing.assert_close(dirty[name], clean_losses, msg=name)
        pair.pol_c.grad = None
        dirty[name].sum().backward(retain_graph=True)
        grad = pair.pol_c.grad
        assert torch.isfinite(grad).all(), name
        for b, pos in pad.tolist():
            assert (grad[b, pos] == 0).all(), name


def test_bool_and_float_masks_agree():
    a = tisdpo_loss(*BASE, CW, RW, CKL, RKL, beta=BETA)[0]
    b = tisdpo_loss(PC, PR, RC, RR, CM.bool(), RM.long(), CW, RW, CKL, RKL, beta=BETA)[0]
    torch.testing.assert_close(a, b)


def test_bad_options():
    with pytest.raises(ValueError, match="^beta must be positive"):
        dpo_loss(*BASE, beta=0.0)
    with pytest.raises(ValueError, match="variant"):
        tdpo_loss(*BASE, CKL, RKL, beta=BETA, variant=3)


def test_preference_metrics():
    metrics = preference_metrics(t([1.0, -1.0, 0.5, 2.0]), t([0.0, 0.0, 0.5, -2.0]))
    assert metrics == pytest.approx(
        {"rewards/chosen": 0.625, "rewards/rejected": -0.375, "rewards/margins": 1.0, "rewards/accuracies": 0.5}
    )
    assert all(isinstance(v, float) for v in metrics.values())
