"""Where a command may write (tispipe.artifacts.outputs): never over its inputs, into another command's run, or over
files it did not write; eval takes the lock and the "already exists" rule of every stage; what tispipe
saves gets the process's umask modes."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat

import pytest
from conftest import invoke_cli, prompt_estimate

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder):
    """path -> (sha256, mode) of every file and folder under `folder`."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "", stat.S_IMODE(p.stat().st_mode))
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_tiny_llama):
    """base/ (a plain model), pairs.jsonl, weights/ (an estimate), run/ (a finished train), ev/ (an eval)."""
    root = tmp_path_factory.mktemp("outputs")
    prompt_estimate(root, make_tiny_llama)
    result = invoke_cli("train", "--shards", root / "weights", "--model", root / "base", "--out", root / "run", "--loss", "dpo", "--max-steps", 1,
                        "--batch-size", 4, "--device", "cpu")
    assert result.exit_code == 0, result.output
    result = invoke_cli("eval", "--data", root / "pairs.jsonl", "--split", "train", "--model", root / "run", "--out", root / "ev", "--num-prompts", 0, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return root


def refused(result, *words):
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in lines[0], result.output
    return lines[0]


def eval_args(runs, out):
    return ["eval", "--data", runs / "pairs.jsonl", "--split", "train", "--model", runs / "run", "--out", out, "--num-prompts", 0, "--device", "cpu"]


@pytest.mark.parametrize("target, kind", [("weights", "estimate"), ("base", "model folder"), ("run", "--model input")])
def test_eval_never_writes_into_another_run(runs, target, kind):
    before = snapshot(runs / target)
    refused(invoke_cli(*eval_args(runs, runs / target), "--overwrite"), kind)
    assert snapshot(runs / target) == before


def test_an_interrupted_train_run_keeps_its_config_and_resumes(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "run", run)
    (run / "train_info.json").unlink()  # as if killed after its checkpoint
    (run / "training.json").unlink()
    config = (run / "config.yaml").read_bytes()
    refused(invoke_cli(*eval_args(runs, run)), "`tispipe train` run")
    assert (run / "config.yaml").read_bytes() == config


def test_eval_takes_the_already_exists_rule_and_the_lock(runs, tmp_path):
    import subprocess

    out = tmp_path / "ev"
    shutil.copytree(runs / "ev", out)
    refused(invoke_cli(*eval_args(runs, out)), "already exists")
    assert invoke_cli(*eval_args(runs, out), "--overwrite").exit_code == 0  # its own run
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / ".ev.lock").write_text(str(holder.pid))
        refused(invoke_cli(*eval_args(runs, out), "--overwrite"), f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("target", ["weights/manifest.json", "pairs.jsonl", "weights/shards/part-00000.parquet", "run/config.json"])
def test_inspect_html_never_replaces_an_input_or_a_runs_file(runs, target):
    before = (runs / target).read_bytes()
    refused(invoke_cli("inspect", runs / "weights", "--html", runs / target))
    assert (runs / target).read_bytes() == before


def test_inspect_html_replaces_only_its_own_page(runs, tmp_path):
    page = tmp_path / "page.html"
    assert invoke_cli("inspect", runs / "weights", "--html", page).exit_code == 0
    assert invoke_cli("inspect", runs / "weights", "--html", page, "--html-pairs", 2).exit_code == 0
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my notes</html>")
    refused(invoke_cli("inspect", runs / "weights", "--html", mine), "not a page")
    assert mine.read_text() == "<html>my notes</html>"


@pytest.mark.parametrize("command", ["train", "reward-model"])
def test_out_that_is_the_model_or_the_shards_is_refused_before_anything_moves(runs, tmp_path, command):
    base = tmp_path / "base"
    shutil.copytree(runs / "base", base)
    weights = tmp_path / "weights"
    shutil.copytree(runs / "weights", weights)
    before = snapshot(base), snapshot(weights)
    common = ["--device", "cpu", "--max-steps", 1, "--batch-size", 4, "--overwrite"]
    if command == "train":
        refused(invoke_cli("train", "--shards", weights, "--model", base, "--out", weights, *common), "--shards input")
        refused(invoke_cli("train", "--shards", weights, "--model", base, "--out", base, *common), "--model input")
    else:
        refused(invoke_cli("reward-model", "--data", runs / "pairs.jsonl", "--model", base, "--out", base, *common), "--model input")
    assert (snapshot(base), snapshot(weights)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "weights"]  # no hidden holder left


@pytest.mark.parametrize("args, words", [
    (["generate", "--model", "{base}", "--prompts", "{pairs}", "--out", "{run}", "--overwrite"], "`tispipe train` run"),
    (["estimate", "--data", "{pairs}", "--model", "{base}", "--method", "prompt", "--out", "{ev}", "--overwrite"], "`tispipe eval` run"),
    (["estimate", "--data", "{pairs}", "--model", "{base}", "--method", "prompt", "--out", "{run}/weights"], "lies inside"),
    (["toy-data", "--out", "{weights}", "--overwrite"], "`tispipe estimate` run"),
    (["init-base", "--data", "{pairs}", "--out", "{base}", "--overwrite"], "model folder"),
    (["estimate", "--data", "{pairs}", "--model", "{base}", "--method", "prompt", "--out", "{root}"], "contains the --data input"),
    (["experiment", "--data", "{root}", "--base", "{base}", "--out", "{weights}/study", "--quick"], "lies inside"),
])
def test_no_command_writes_into_another_commands_run(runs, args, words):
    names = {"base": runs / "base", "pairs": runs / "pairs.jsonl", "run": runs / "run", "ev": runs / "ev", "weights": runs / "weights", "root": runs}
    before = {name: snapshot(runs / name) for name in ("base", "run", "ev", "weights")}
    refused(invoke_cli(*[a.format(**names) if isinstance(a, str) else a for a in args]), words)
    assert {name: snapshot(runs / name) for name in before} == before


def test_a_failure_after_overwrite_set_the_old_run_aside_puts_it_back(tmp_path):
    from tispipe.artifacts.atomic import SetAside, cleaned_up_on_failure, holder_for
    from tispipe.errors import TispipeError

    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("old run")
    with pytest.raises(TispipeError, match="back in place"), cleaned_up_on_failure(out, saved=lambda _: False):
        SetAside([out], holder_for(out))
        out.mkdir()
        (out / "half").write_text("new")
        raise OSError(28, "No space left on device", str(out / "half"))
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "model.safetensors").read_text() == "old run"


def test_what_tispipe_saves_has_the_umask_modes(runs, tmp_path):
    umask = os.umask(0o022)
    try:
        out = tmp_path / "run"
        result = invoke_cli("train", "--shards", runs / "weights", "--model", runs / "base", "--out", out, "--loss", "dpo", "--max-steps", 1,
                            "--batch-size", 4, "--device", "cpu")
        assert result.exit_code == 0, result.output
    finally:
        os.umask(umask)
    modes = {path: mode for path, (_, mode) in snapshot(out).items()}
    assert modes["model.safetensors"] == 0o644 and modes["checkpoints/step-1/model.safetensors"] == 0o644
    assert {mode for path, mode in modes.items() if (out / path).is_dir()} == {0o755}
    assert {mode for path, mode in modes.items() if (out / path).is_file()} == {0o644}


def test_the_studies_share_a_results_folder_and_nothing_else_writes_into_it(tmp_path):
    from tispipe.artifacts.outputs import check_outputs
    from tispipe.configs import ContrastStudyConfig, TrainConfig, WeightStudyConfig
    from tispipe.errors import TispipeError

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text("# an experiment's results\n")  # `tispipe experiment --results docs` wrote here
    check_outputs("weight-study", WeightStudyConfig(out=str(tmp_path / "ws"), results=str(docs)))
    (docs / "weights.md").write_text("# a weight study's table\n")
    check_outputs("contrast-study", ContrastStudyConfig(out=str(tmp_path / "cs"), results=str(docs)))
    with pytest.raises(TispipeError, match="holds a `tispipe experiment` run"):  # a study's results are not another run's --out
        check_outputs("train", TrainConfig(shards=str(tmp_path / "w"), model=str(tmp_path / "m"), out=str(docs)))
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# an eval report\n")
    with pytest.raises(TispipeError, match="holds a `tispipe eval` run"):
        check_outputs("weight-study", WeightStudyConfig(out=str(tmp_path / "ws"), results=str(report)))
