"""`tispipe experiment --quick`: every method of the comparison runs end to end and the tables are written."""

from __future__ import annotations

import json

import pytest

from tispipe import experiment, experiment_report
from tispipe.configs import ESTIMATION_METHODS
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


@pytest.mark.slow  # every method, in process (about 8 s)
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
    assert "### Weight quality per estimation method" in text and "| dpo | test | 0." in text

    # the generated-data block: DPO, TIS-DPO(P) and TIS-DPO(D) on pairs the base made, evaluated like the rest
    block = report["generated"]
    assert list(block["methods"]) == ["base", "DPO", "TIS-DPO(P)", "TIS-DPO(D)"]
    assert block["generation"]["generated"] == 32 and 0 < block["generation"]["pairs"] <= 32
    noise = block["label_noise"]
    assert noise["pairs"] == block["generation"]["pairs"]
    assert noise["oracle_agrees"] + noise["oracle_ties"] + noise["oracle_disagrees"] == pytest.approx(1.0)
    assert block["methods"]["DPO"]["win_rate_vs_dpo"]["mean"] == 0.5
    for name in ("DPO", "TIS-DPO(P)", "TIS-DPO(D)"):
        info = json.loads((experiment.generated.model_dir(out, name, 0) / "train_info.json").read_text())
        assert info["steps"] == 4 and info["shards"].endswith(f"weights-{'prompt' if name == 'TIS-DPO(P)' else 'dpo'}"), name
    assert "### Generated data (paper Table 2, third block)" in text and "RLCD" in text and "left out" in text
    assert f"prefers the chosen response in {noise['oracle_agrees']:.1%}" in text
    for name in ("results-comparison.png", "results-ablations.png", "results-generated.png"):  # drawn from report.json
        assert (docs / name).read_bytes()[:4] == b"\x89PNG" and f"]({name})" in text
    assert json.loads((docs / "results-comparison.json").read_text())["mean"][1] == report["methods"]["DPO"]["oracle_reward"]["mean"]


def test_unknown_method_and_missing_inputs_are_named(tiny_task, tmp_path):
    with pytest.raises(TispipeError, match="unknown method"):
        experiment.selected_methods(experiment.ExperimentConfig(methods="DPO,KTO"))
    assert [m[0] for m in experiment.selected_methods(experiment.ExperimentConfig(methods="IPO"))] == ["DPO", "IPO"]
    with pytest.raises(TispipeError, match="does not exist"):
        experiment.run(experiment.ExperimentConfig(data=str(tmp_path), base=str(tiny_task / "base"), out=str(tmp_path / "x")))


def test_mean_std_over_seeds():
    assert experiment_report.mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "values": [1.0, 2.0, 3.0]}
    assert experiment_report.mean_std([0.5]) == {"mean": 0.5, "std": None, "values": [0.5]}
    assert experiment_report.mean_std([]) == {"mean": None, "std": None, "values": []}


def test_every_method_builds_a_valid_train_config(tmp_path):
    from tispipe import train

    cfg = experiment.ExperimentConfig(out=str(tmp_path), lr=2e-5, max_steps=120)
    for method in experiment.METHODS + experiment.generated.METHODS:
        name, estimator, fields = method
        train_cfg = experiment.train_config(cfg, method, 1, tmp_path / f"weights-{estimator}", experiment.model_dir(tmp_path, name, 1))
        assert isinstance(train_cfg, experiment.TrainConfig), name
        train.validate(train_cfg)  # known loss / weighting names, bounds that make sense
        assert all(getattr(train_cfg, k) == v for k, v in fields.items()), name
        assert (train_cfg.lr, train_cfg.max_steps, train_cfg.seed, train_cfg.resume) == (2e-5, 120, 1, True), name
        assert train_cfg.shards == str(tmp_path / f"weights-{estimator}")
        assert train_cfg.out == str(experiment.model_dir(tmp_path, name, 1))
    assert {e for _, e, _ in experiment.METHODS} == set(ESTIMATION_METHODS)


def test_a_failing_job_stops_the_experiment_with_its_log_tail(tmp_path):
    runner = experiment.Runner(tmp_path, jobs=1, threads=1)
    bad = experiment.EstimateConfig(data=str(tmp_path / "missing.jsonl"), model=str(tmp_path / "no-model"), out=str(tmp_path / "w"))
    with pytest.raises(TispipeError, match=r"estimate-x failed \(exit 1\): Error: .*no-model"):
        runner.add("estimate-x", "estimate", bad)
    assert runner.commands == [f"tispipe estimate --config {tmp_path / 'estimate-x.yaml'}"]
    assert (tmp_path / "estimate-x.yaml").is_file()


@pytest.mark.slow
def test_jobs_in_subprocesses_give_the_same_numbers_as_in_process(tiny_task, tmp_path):
    """--jobs 2 runs each stage as `python -m tispipe COMMAND --config logs/JOB.yaml`; the results match --jobs 1."""
    from dataclasses import replace

    quick = experiment.quick_settings(experiment.ExperimentConfig(data=str(tiny_task / "data"), base=str(tiny_task / "base"),
                                                                  methods="TIS-DPO(P),TIS-DPO(D) equal weights"))
    reports = {jobs: experiment.run(replace(quick, out=str(tmp_path / f"jobs{jobs}"), jobs=jobs)) for jobs in (1, 2)}
    assert list(reports[2]["methods"]) == ["base", "DPO", "TIS-DPO(P)", "TIS-DPO(D) equal weights"]
    assert reports[2]["methods"] == reports[1]["methods"]
    assert reports[2]["weight_auc"] == reports[1]["weight_auc"]
    assert reports[2]["generated"]["methods"] == reports[1]["generated"]["methods"]
    logs = tmp_path / "jobs2" / "logs"
    assert f"tispipe train --config {logs / 'train-dpo-seed0.yaml'}" in reports[2]["commands"]
    assert {p.stem for p in logs.glob("*.yaml")} == {p.stem for p in logs.glob("*.log")}
    # a finished eval is skipped on a re-run with the same settings
    again = experiment.run(replace(quick, out=str(tmp_path / "jobs2"), jobs=2))
    assert again["methods"] == reports[2]["methods"]
