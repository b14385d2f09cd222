"""`tispipe experiment --quick`: every method of the comparison runs end to end and the tables are written."""

from __future__ import annotations

import json

import pytest

from tispipe import experiment
from tispipe.errors import TispipeError


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    """Toy data (48 train / 16 test pairs, with span labels) and a tiny base model trained on it."""
    from tispipe import base, toy

    root = tmp_path_factory.mktemp("task")
    toy.run(toy.ToyDataConfig(out=str(root / "data"), pairs=48, test_pairs=16))
    base.run(base.InitBaseConfig(data=str(root / "data" / "train.jsonl"), out=str(root / "base"), vocab_size=300, hidden_size=32,
                                 num_layers=1, num_heads=2, max_length=160, epochs=1.0, batch_size=16, lr=1e-2, threads=1))
    return root


def test_quick_experiment_runs_every_method_and_writes_the_tables(tiny_task, tmp_path):
    out, docs = tmp_path / "exp", tmp_path / "docs"
    cfg = experiment.ExperimentConfig(data=str(tiny_task / "data"), base=str(tiny_task / "base"), out=str(out), results=str(docs), quick=True)
    report = experiment.run(cfg)

    names = [m[0] for m in experiment.METHODS]
    assert list(report["methods"]) == ["base", *names]
    assert report["budget"]["steps"] == 4 and report["budget"]["seeds"] == 1
    for name in names:
        row = report["methods"][name]
        info = json.loads((experiment.model_dir(out, name, 0) / "train_info.json").read_text())
        assert info["steps"] == 4, name  # the same budget for every method
        for key in ("oracle_reward", "harmful_rate", "win_rate_vs_dpo", "pref_accuracy", "kl_per_token"):
            assert row[key]["mean"] is not None and len(row[key]["values"]) == 1, (name, key)
        assert row[key]["std"] is None  # one seed: no spread to report
    # DPO against itself ties on every prompt
    assert report["methods"]["DPO"]["win_rate_vs_dpo"]["mean"] == 0.5
    assert report["methods"]["base"]["kl_per_token"]["mean"] == pytest.approx(0.0, abs=1e-6)
    for method in ("prompt", "sft", "dpo"):
        for split in ("train", "test"):
            auc = report["weight_auc"][method][split]
            assert 0.0 <= auc["chosen_helpful_auc"] <= 1.0 and auc["labelled_rows"] > 0, (method, split)

    text = (docs / "results.md").read_text()
    assert (out / "results.md").read_text() == text
    assert json.loads((docs / "report.json").read_text())["methods"].keys() == report["methods"].keys()
    assert "--quick" in text and "tispipe experiment" in text
    for name in names:
        assert f"| {name} |" in text
    assert "### Weight quality per estimation method" in text and "| dpo | 0." in text


def test_unknown_method_and_missing_inputs_are_named(tiny_task, tmp_path):
    with pytest.raises(TispipeError, match="unknown method"):
        experiment.selected_methods(experiment.ExperimentConfig(methods="DPO,KTO"))
    assert [m[0] for m in experiment.selected_methods(experiment.ExperimentConfig(methods="IPO"))] == ["DPO", "IPO"]
    with pytest.raises(TispipeError, match="does not exist"):
        experiment.run(experiment.ExperimentConfig(data=str(tmp_path), base=str(tiny_task / "base"), out=str(tmp_path / "x")))


def test_mean_std_over_seeds():
    assert experiment.mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "values": [1.0, 2.0, 3.0]}
    assert experiment.mean_std([0.5]) == {"mean": 0.5, "std": None, "values": [0.5]}
    assert experiment.mean_std([]) == {"mean": None, "std": None, "values": []}
