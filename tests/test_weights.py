import math

import pytest
import torch

from tispipe.core.weights import (
    calibrated_weights,
    compute_weights,
    exp_weights,
    linear_weights,
    random_weights,
    rank_weights,
    top_weights,
)
from tispipe.errors import TispipeError

E = math.exp


def close(got, expected):
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=1e-6)


def test_exp_weights_hand_worked_paper_constants():
    r = torch.tensor([[-1.0, 0.0, 0.3, 2.0]])
    close(exp_weights(r, mu=1.0), [[E(-0.5), 1.0, E(0.3), E(1.5)]])
    close(exp_weights(r, mu=-1.0), [[E(0.5), 1.0, E(-0.3), E(-1.5)]])
    close(exp_weights(r, mu=1.0, k=2.0), [[2 * E(-0.5), 2.0, 2 * E(0.3), 2 * E(1.5)]])


def test_exp_weights_clamp_before_mu():
    # r = 2, mu = -1: clamp(r) = 1.5 gives e^-1.5; clamping mu * r = -2 instead would give e^-0.5.
    r = torch.tensor([2.0])
    close(exp_weights(r, mu=-1.0, lower=-0.5, upper=1.5), [E(-1.5)])


def test_linear_weights_hand_worked():
    r = torch.tensor([[-2.0, -1.5, 0.0, 0.75, 3.0]])
    close(linear_weights(r, mu=1.0), [[0.7, 0.7, 1.0, 1.15, 1.3]])
    close(linear_weights(r, mu=-1.0), [[1.3, 1.3, 1.0, 0.85, 0.7]])


def test_rank_weights_ties_share_average_rank():
    r = torch.tensor([[0.3, -1.0, 2.0, 0.3]])
    mask = torch.ones(1, 4)
    # ascending: -1 (rank 0), 0.3 and 0.3 (ranks 1, 2 -> 1.5), 2 (rank 3); rank / 3 -> [0.5, 0, 1, 0.5]
    close(rank_weights(r, mask, mu=1.0), [[1.0, 0.7, 1.3, 1.0]])
    close(rank_weights(r, mask, mu=-1.0), [[1.0, 1.3, 0.7, 1.0]])


def test_rank_weights_ignore_masked_positions():
    r = torch.tensor([[0.3, -1.0, 2.0, float("nan"), 100.0], [5.0, 1.0, 1.0, 1.0, -7.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0]])
    close(rank_weights(r, mask, mu=1.0), [[1.0, 0.7, 1.3, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0, 0.0]])


def test_rank_weights_single_token_and_empty_rows():
    r = torch.tensor([[4.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[1, 0, 0], [0, 0, 0]])
    close(rank_weights(r, mask, mu=1.0, low=0.5, high=2.0), [[1.25, 0.0, 0.0], [0.0, 0.0, 0.0]])


def _rank_weights_reference(row, mu, low, high):
    """Plain-Python average-rank transform of one unpadded row."""
    values = [mu * v for v in row]
    n = len(values)
    if n == 1:
        return [(low + high) / 2]
    out = []
    for v in values:
        below = sum(u < v for u in values)
        equal = sum(u == v for u in values)
        rank = below + (equal - 1) / 2
        out.append(low + (high - low) * rank / (n - 1))
    return out


@pytest.mark.parametrize("mu", [1.0, -1.0])
def test_rank_weights_vectorised_matches_row_by_row(mu):
    g = torch.Generator().manual_seed(0)
    r = torch.round(torch.randn(6, 12, generator=g) * 2) / 2  # coarse values: many ties
    lengths = [12, 1, 7, 3, 12, 5]
    mask = torch.zeros(6, 12)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    got = rank_weights(r, mask, mu=mu)
    for b, n in enumerate(lengths):
        expected = _rank_weights_reference(r[b, :n].tolist(), mu, 0.7, 1.3)
        torch.testing.assert_close(got[b, :n], torch.tensor(expected), rtol=1e-6, atol=1e-6)
        assert (got[b, n:] == 0).all()


@pytest.mark.parametrize("transform", ["exp", "calibrated", "top", "rank", "linear"])
def test_weights_monotone_in_reward(transform):
    r = torch.linspace(-3, 3, 25).unsqueeze(0)
    mask = torch.ones_like(r)
    chosen = compute_weights(r, mask, mu=1.0, transform=transform)[0]
    rejected = compute_weights(r, mask, mu=-1.0, transform=transform)[0]
    assert (chosen[1:] >= chosen[:-1]).all() and chosen[-1] > chosen[0]
    assert (rejected[1:] <= rejected[:-1]).all() and rejected[-1] < rejected[0]


def test_compute_weights_zero_at_masked_even_with_garbage():
    r = torch.tensor([[0.5, float("nan"), float("inf")], [1.0, -1.0, 1e30]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 0]])
    for transform in ["exp", "calibrated", "top", "rank", "linear"]:
        w = compute_weights(r, mask, mu=1.0, transform=transform, floor=0.1)
        assert torch.isfinite(w).all()
        assert (w[mask == 0] == 0).all()
        assert (w[mask == 1] > 0).all()


def test_compute_weights_defaults_per_transform():
    r = torch.tensor([[-1.0, 0.0, 0.3, 2.0]])
    mask = torch.ones_like(r)
    close(compute_weights(r, mask, mu=1.0), [[E(-0.5), 1.0, E(0.3), E(1.5)]])  # exp, paper constants
    torch.testing.assert_close(compute_weights(r, mask, 1.0, "linear"), linear_weights(r, 1.0))
    torch.testing.assert_close(compute_weights(r, mask, -1.0, "rank"), rank_weights(r, mask, -1.0))
    close(compute_weights(r, mask, 1.0, "exp", k=0.5, lower=-2.0, upper=0.0), [[0.5 * E(-1.0), 0.5, 0.5, 0.5]])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"lower": 1.0, "upper": 1.0}, ValueError, "^lower"),
        ({"lower": 2.0, "upper": -1.0, "transform": "linear"}, ValueError, "^lower"),
        ({"k": 0.0}, ValueError, "^k must"),
        ({"k": -1.0}, ValueError, "^k must"),
        ({"transform": "rank", "low": 1.5, "high": 0.5}, ValueError, "^low"),
        ({"transform": "softmax"}, ValueError, "^transform"),
        ({"transform": "top", "fraction": 0.0}, ValueError, "^fraction"),
        ({"transform": "top", "fraction": 1.5}, ValueError, "^fraction"),
        ({"transform": "calibrated", "scale": 0.0}, TispipeError, "positive spread of r"),
        ({"transform": "calibrated", "k": 0.0}, ValueError, "^k must"),
    ],
)
def test_compute_weights_rejects_bad_options(kwargs, error, message):
    """The math names its arguments, not the commands' options (the commands check those first: tests/test_estimate.py)."""
    r = torch.zeros(1, 3)
    with pytest.raises(error, match=message):
        compute_weights(r, torch.ones(1, 3), mu=1.0, **kwargs)


def test_random_weights_range_mask_and_seed():
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]] * 50)
    w = random_weights(mask, -0.5, 1.5, torch.Generator().manual_seed(7))
    kept = w[mask == 1]
    assert (kept >= -0.5).all() and (kept <= 1.5).all()
    assert kept.min() < 0 < kept.max()  # the paper's U(L, U) range includes negative weights
    assert (w[mask == 0] == 0).all()
    again = random_weights(mask, -0.5, 1.5, torch.Generator().manual_seed(7))
    other = random_weights(mask, -0.5, 1.5, torch.Generator().manual_seed(8))
    assert torch.equal(w, again) and not torch.equal(w, other)
    with pytest.raises(ValueError, match="^lower"):
        random_weights(mask, 1.0, 0.0, torch.Generator())


def test_calibrated_weights_are_eq19_on_r_in_units_of_its_spread():
    r = torch.tensor([[-2.0, -0.1, 0.0, 0.4, 5.0]])
    close(calibrated_weights(r, 1.0, scale=0.2), [[E(-0.5), E(-0.5), 1.0, E(1.5), E(1.5)]])  # r / 0.2 = -10, -0.5, 0, 2, 25
    close(calibrated_weights(r, -1.0, scale=2.0), [[E(0.5), E(0.05), 1.0, E(-0.2), E(-1.5)]])  # clamp before mu, as Eq. 19
    # scale-free: the same weights for r and for r * c with the spread scaled alike
    torch.testing.assert_close(calibrated_weights(3 * r, 1.0, scale=0.6, k=2.0), calibrated_weights(r, 1.0, scale=0.2, k=2.0))
    torch.testing.assert_close(compute_weights(r, torch.ones_like(r), 1.0, "calibrated", scale=0.2), calibrated_weights(r, 1.0, 0.2))


def test_top_weights_select_the_top_fraction_of_each_row_by_mu_r():
    r = torch.tensor([[0.1, 0.9, -0.3, 0.9, 0.0, 0.5], [3.0, 1.0, 2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    # ceil(0.4 * 6) = 3 of row 0 (0.9, 0.9, 0.5); ceil(0.4 * 3) = 2 of row 1; masked positions 0
    close(top_weights(r, mask, 1.0, fraction=0.4), [[0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 0, 0]])
    # mu = -1 selects the lowest r; a floor instead of 0 for the others
    close(top_weights(r, mask, -1.0, fraction=0.4, floor=0.25), [[1, 0.25, 1, 0.25, 1, 0.25], [0.25, 1, 1, 0, 0, 0]])
    # at least one token per row, and ties go to the earlier token
    close(top_weights(torch.tensor([[0.5, 0.5, 0.5]]), torch.ones(1, 3), 1.0, fraction=0.01), [[1, 0, 0]])
    close(top_weights(r, mask, 1.0, fraction=1.0), mask.float().tolist())


def test_estimate_calibrated_and_top_write_the_transform_of_the_stored_log_ratios(tmp_path, make_tiny_llama):
    """--transform calibrated rewrites every shard's weights once the spread of r per side is known, and records
    it; a run stopped after the scoring (shards with the placeholder weights) ends with the same bytes."""
    import json

    import pyarrow.parquet as pq
    from conftest import invoke_cli, prompt_estimate

    from tispipe.artifacts.shards import file_sha256

    command = prompt_estimate(tmp_path, make_tiny_llama, "--transform", "calibrated", "--shard-size", "5")
    manifest = json.loads((tmp_path / "weights" / "manifest.json").read_text())
    scales = manifest["calibration"]["logratio_std"]
    assert scales["chosen"] == pytest.approx(manifest["logratio"]["chosen"]["std"]) and scales["chosen"] > 0
    shards = sorted((tmp_path / "weights" / "shards").glob("*.parquet"))
    assert len(shards) == 3
    for path in shards:
        for row in pq.read_table(path).to_pylist():
            for side, mu in (("chosen", 1.0), ("rejected", -1.0)):
                expected = calibrated_weights(torch.tensor([row[f"{side}_logratio"]]), mu, scales[side])[0]
                torch.testing.assert_close(torch.tensor(row[f"{side}_weights"]), expected, rtol=1e-6, atol=1e-7)
    hashes = [file_sha256(p) for p in shards]
    # an interrupted run: the manifest not yet written, one shard still with the exp placeholder weights
    (tmp_path / "weights" / "manifest.json").unlink()
    uncalibrated = invoke_cli(*command, "--out", tmp_path / "plain", "--transform", "exp", "--shard-size", "5")
    assert uncalibrated.exit_code == 0
    (tmp_path / "plain" / "shards" / shards[1].name).replace(shards[1])
    assert invoke_cli(*command, "--out", tmp_path / "weights").exit_code == 0
    assert [file_sha256(p) for p in shards] == hashes
    top = invoke_cli(*command, "--out", tmp_path / "top", "--transform", "top", "--top-fraction", "0.25")
    assert top.exit_code == 0, top.output
    for row in pq.read_table(sorted((tmp_path / "top" / "shards").glob("*.parquet"))[0]).to_pylist():
        r = torch.tensor([row["chosen_logratio"]])
        assert row["chosen_weights"] == top_weights(r, torch.ones_like(r), 1.0, fraction=0.25)[0].tolist()
