"""A study's jobs (experiment, contrast-study, weight-study with --jobs 1 run their stages in-process) pass the
same checks as `tispipe <command>`: every option's value (tispipe.option_rules) and where the job writes
(tispipe.artifacts.outputs), before the stage does any work. Sub-runs inside the study's own --out stay allowed."""

from __future__ import annotations

import dataclasses

import pytest

from tispipe.configs import EstimateConfig, EvalConfig, TrainConfig
from tispipe.errors import TispipeError
from tispipe.studies import jobs


@pytest.fixture
def started(monkeypatch):
    """The stages the jobs reached: (stage, out) of each `run(cfg)` called; the stage itself does nothing."""
    import importlib

    calls = []
    for stage in ("estimate", "train", "evaluate"):
        module = importlib.import_module(f"tispipe.{stage}.{stage}")
        monkeypatch.setattr(module, "run", lambda cfg, stage=stage: calls.append((stage, cfg.out)))
    return calls


def study(tmp_path):
    """A study's --out as it is while it runs (its data/ and logs/; no report yet) and a base model folder."""
    out = tmp_path / "study"
    (out / "logs").mkdir(parents=True)
    (out / "data").mkdir()
    (out / "data" / "train.jsonl").write_text("{}\n")
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"")
    return out, base


def failed(runner, label, stage, cfg, *words):
    with pytest.raises(TispipeError) as e:
        runner.add(label, stage, cfg)
    assert e.value.message.startswith(f"{label} failed (exit 1): Error: "), e.value.message
    for word in words:
        assert word in e.value.message, e.value.message


@pytest.mark.parametrize("stage, field, value, flag", [("train", "lr", float("nan"), "--lr"), ("train", "batch_size", 0, "--batch-size"),
                                                       ("estimate", "contrast_lr", -1.0, "--contrast-lr"),
                                                       ("evaluate", "temperatures", "0.5,nan", "--temperatures")])
def test_an_in_process_job_with_a_bad_value_is_refused_before_its_stage_runs(tmp_path, started, stage, field, value, flag):
    out, base = study(tmp_path)
    data = str(out / "data" / "train.jsonl")
    cfg = {"train": TrainConfig(shards=str(out / "weights"), model=str(base), out=str(out / "models" / "m")),
           "estimate": EstimateConfig(data=data, model=str(base), out=str(out / "weights-prompt")),
           "evaluate": EvalConfig(data=data, model=[str(base)], out=str(out / "eval" / "seed-0"))}[stage]
    failed(jobs.Runner(out / "logs", jobs=1, threads=1), "job", stage, dataclasses.replace(cfg, **{field: value}), flag)
    assert started == []


def test_an_in_process_job_that_would_write_over_its_input_is_refused(tmp_path, started):
    out, base = study(tmp_path)
    runner = jobs.Runner(out / "logs", jobs=1, threads=1)
    failed(runner, "train-x", "train", TrainConfig(shards=str(out / "weights"), model=str(base), out=str(base)), "--out", "is the --model input")
    failed(runner, "train-y", "train", TrainConfig(shards=str(out / "weights"), model=str(base), out=str(base / "inside")), "lies inside the --model input")
    assert started == []


def test_an_in_process_job_into_another_commands_run_is_refused(tmp_path, started):
    out, base = study(tmp_path)
    report = out / "eval" / "seed-0"
    report.mkdir(parents=True)
    (report / "report.md").write_text("# an eval report\n")
    failed(jobs.Runner(out / "logs", jobs=1, threads=1), "train-x", "train",
           TrainConfig(shards=str(out / "weights"), model=str(base), out=str(report)), "holds a `tispipe eval` run")
    assert started == []


def test_the_studys_own_layout_still_runs(tmp_path, started):
    """Sub-runs inside the study's --out, one reading another's output, and a finished study run again."""
    out, base = study(tmp_path)
    runner = jobs.Runner(out / "logs", jobs=1, threads=1)
    runner.add("estimate-prompt", "estimate", EstimateConfig(data=str(out / "data" / "train.jsonl"), model=str(base), out=str(out / "weights-prompt")))
    runner.add("train-dpo", "train", TrainConfig(shards=str(out / "weights-prompt"), model=str(base), out=str(out / "models" / "dpo-seed0")))
    runner.add("eval-seed0", "evaluate", EvalConfig(data=str(out / "data" / "train.jsonl"), model=[str(out / "models" / "dpo-seed0")],
                                                     out=str(out / "eval" / "seed-0")))
    (out / "results.md").write_text("# results\n")  # the study finished: its folder is an experiment's, and it may run again
    runner.add("train-dpo-again", "train", TrainConfig(shards=str(out / "weights-prompt"), model=str(base), out=str(out / "models" / "dpo-seed1")))
    assert started == [("estimate", str(out / "weights-prompt")), ("train", str(out / "models" / "dpo-seed0")),
                       ("evaluate", str(out / "eval" / "seed-0")), ("train", str(out / "models" / "dpo-seed1"))]
