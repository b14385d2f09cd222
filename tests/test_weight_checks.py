"""The estimate's warnings about weights that carry little of r_t: most tokens at a clamp bound, or r_t flat."""

from __future__ import annotations

from tispipe.artifacts.weight_checks import weight_warnings


def manifest(transform="exp", method="dpo", at=(0.0, 0.0), stds=(1.0, 1.0)):
    return {"method": method, "settings": {"transform": transform, "lower": -0.5, "upper": 1.5},
            "weights": {side: {"count": 100, "at_min": at[0], "at_max": at[1]} for side in ("chosen", "rejected")},
            "logratio": {"chosen": {"count": 100, "std": stds[0]}, "rejected": {"count": 100, "std": stds[1]}}}


def test_healthy_weights_get_no_warning():
    assert weight_warnings(manifest(at=(0.1, 0.3), stds=(0.9, 5.5))) == []


def test_weights_mostly_at_a_bound_are_saturated():
    (warning,) = weight_warnings(manifest(at=(0.002, 0.917), stds=(10.07, 8.89)))
    assert "92% of the chosen tokens and 92% of the rejected tokens" in warning
    assert "[-0.5, 1.5]" in warning and "chosen 10.07, rejected 8.89 nats" in warning and "--transform calibrated" in warning
    assert weight_warnings(manifest(at=(0.25, 0.25))) == []  # half at the bounds is not most


def test_flat_logratios_say_tisdpo_trains_as_dpo_and_how_to_separate_the_models():
    (warning,) = weight_warnings(manifest(method="prompt", stds=(0.057, 0.056)))
    assert "std 0.057 / 0.056 nats" in warning and "--method sft or dpo" in warning
    (warning,) = weight_warnings(manifest(method="sft", stds=(0.05, 0.05)))
    assert "--contrast-epochs" in warning
    assert weight_warnings(manifest(method="prompt", stds=(0.057, 0.2))) == []  # one side spreads


def test_transforms_without_a_clamp_or_with_a_rescaled_r_are_not_judged_by_it():
    assert weight_warnings(manifest(transform="top", at=(0.8, 0.2), stds=(0.01, 0.01))) == []
    assert weight_warnings(manifest(transform="rank", at=(0.5, 0.5))) == []
    assert weight_warnings(manifest(transform="calibrated", stds=(0.01, 0.01))) == []  # calibrated widens r first
    assert len(weight_warnings(manifest(transform="calibrated", at=(0.4, 0.4)))) == 1


def test_manifests_without_the_shares_get_no_saturation_warning():
    old = manifest()
    for side in ("chosen", "rejected"):
        del old["weights"][side]["at_min"], old["weights"][side]["at_max"]
    assert weight_warnings(old) == []
