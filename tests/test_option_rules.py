"""Every option is checked by its name before any work, whatever the command or preset (tispipe.option_rules):
one `Error:` line naming the option, exit code 1, nothing written."""

from __future__ import annotations

import pytest
from conftest import invoke_cli


@pytest.fixture
def task(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / "data" / name).write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    (tmp_path / "base").mkdir()
    return tmp_path


STUDY = ["--data", "{data}", "--base", "{base}", "--out", "{out}"]


@pytest.mark.parametrize("args, option", [
    # the named cases: --quick replaced these values without looking at them
    (["experiment", "--quick", *STUDY, "--lrs", "1e-5,abc"], "--lrs"),
    (["experiment", "--quick", *STUDY, "--lrs", ""], "--lrs"),
    (["experiment", "--quick", *STUDY, "--seeds", "0"], "--seeds"),
    (["experiment", "--quick", *STUDY, "--jobs", "0"], "--jobs"),
    (["experiment", "--quick", *STUDY, "--temperatures", "0.5,nan"], "--temperatures"),
    (["experiment", *STUDY, "--temperatures", "0.5,nan"], "--temperatures"),  # before any estimate or training
    # beyond them
    (["experiment", "--quick", *STUDY, "--lrs", "1e-5,,1e-4"], "--lrs"),
    (["experiment", "--quick", *STUDY, "--temperatures", "0,0"], "--temperatures"),
    (["experiment", "--quick", *STUDY, "--max-new-tokens", "0"], "--max-new-tokens"),
    (["experiment", "--quick", *STUDY, "--eval-limit", "0"], "--eval-limit"),
    (["contrast-study", "--quick", *STUDY, "--limit", "0"], "--limit"),
    (["contrast-study", "--quick", *STUDY, "--validation-fraction", "1"], "--validation-fraction"),
    (["eval", "--model", "{base}", "--data", "{data}", "--out", "{out}", "--temperatures", "-1"], "--temperatures"),
    (["train", "--shards", "{data}", "--model", "{base}", "--out", "{out}", "--top-fraction", "2"], "--top-fraction"),
    (["train", "--shards", "{data}", "--model", "{base}", "--out", "{out}", "--lora-dropout", "1"], "--lora-dropout"),
    (["generate", "--model", "{base}", "--prompts", "{data}", "--out", "{out}", "--top-p", "0"], "--top-p"),
    (["reward-model", "--model", "{base}", "--data", "{data}", "--out", "{out}", "--eval-fraction", "1"], "--eval-fraction"),
    (["estimate", "--model", "{base}", "--data", "{data}", "--out", "{out}", "--lora-alpha", "0"], "--lora-alpha"),
    (["init-base", "--data", "{data}/train.jsonl", "--out", "{out}", "--num-heads", "0"], "--num-heads"),
    (["inspect", "{data}", "--html-pairs", "0"], "--html-pairs"),
])
def test_a_value_no_command_can_use_is_refused_at_once(task, args, option):
    paths = {"data": task / "data", "base": task / "base", "out": task / "out"}
    result = invoke_cli(*[a.format(**paths) for a in args])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and errors[0].startswith(f"Error: {option}"), result.output
    assert "Traceback" not in result.output
    assert not (task / "out").exists()


def test_a_config_file_value_is_checked_too(task):
    config = task / "experiment.yaml"
    config.write_text("quick: true\nlrs: '1e-5,abc'\n")
    result = invoke_cli("experiment", "--config", config, "--data", task / "data", "--base", task / "base", "--out", task / "out")
    assert result.exit_code == 1 and result.output.startswith("Error: --lrs"), result.output


def test_quick_sets_only_the_options_not_given():
    from tispipe.studies.experiment import ExperimentConfig, quick_settings

    quick = quick_settings(ExperimentConfig(quick=True, seeds=3, lrs="1e-4"))
    assert (quick.seeds, quick.lrs, quick.max_steps, quick.jobs) == (3, "1e-4", 4, 1)
