"""`--overwrite` loses nothing until the new run has started: inputs that fail to load leave the old run
as it was, and nothing a user made is replaced without `--overwrite`."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import invoke_cli as invoke
from conftest import prompt_estimate

pytestmark = pytest.mark.usefixtures("one_thread")


def files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, make_tiny_llama):
    """A tiny base, a finished prompt-method estimate and a finished dpo training on it."""
    root = tmp_path_factory.mktemp("overwrite")
    prompt_estimate(root, make_tiny_llama)
    result = invoke("train", "--shards", root / "weights", "--model", root / "base", "--out", root / "run", "--loss", "dpo", "--max-steps", 2,
                    "--batch-size", 4, "--device", "cpu")
    assert result.exit_code == 0, result.output
    # A tokenizer that loads and weights that do not: found by the cheap check before OUT is touched ...
    shutil.copytree(root / "base", root / "no-config")
    (root / "no-config" / "config.json").unlink()
    # ... or only when the weights are loaded, after --overwrite has set the old run aside.
    shutil.copytree(root / "base", root / "wrong-shapes")
    config = json.loads((root / "wrong-shapes" / "config.json").read_text())
    (root / "wrong-shapes" / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    return root


BROKEN = {"no-config": "its config.json cannot be read", "wrong-shapes": "could not load the model"}


@pytest.mark.parametrize("broken", BROKEN)
def test_train_overwrite_with_a_model_that_does_not_load_keeps_the_old_run(finished, tmp_path, broken):
    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    before = files(run)
    result = invoke("train", "--shards", finished / "weights", "--model", finished / broken, "--out", run, "--loss", "dpo", "--overwrite", "--device", "cpu")
    assert result.exit_code == 1 and BROKEN[broken] in result.output and "Traceback" not in result.output, result.output
    assert files(run) == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no holder left behind


@pytest.mark.parametrize("broken", BROKEN)
def test_estimate_overwrite_with_a_model_that_does_not_load_keeps_the_old_shards(finished, tmp_path, broken):
    out = tmp_path / "weights"
    shutil.copytree(finished / "weights", out)
    before = files(out)
    result = invoke("estimate", "--data", finished / "pairs.jsonl", "--model", finished / broken, "--method", "prompt", "--out", out, "--k", "2",
                    "--overwrite", "--device", "cpu")
    assert result.exit_code == 1 and BROKEN[broken] in result.output and "Traceback" not in result.output, result.output
    assert files(out) == before
    assert not [p for p in out.iterdir() if p.name.endswith(".replaced")]


def test_train_overwrite_that_starts_replaces_the_old_run(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    result = invoke("train", "--shards", finished / "weights", "--model", finished / "base", "--out", run, "--loss", "dpo", "--max-steps", 1,
                    "--batch-size", 4, "--overwrite", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert '"steps": 1' in (run / "train_info.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_toy_data_does_not_replace_a_users_file_even_with_overwrite(tmp_path):
    mine = tmp_path / "train.jsonl"
    mine.write_text('{"prompt": "mine", "chosen": "a", "rejected": "b"}\n')
    for flags in ([], ["--overwrite"]):  # a command replaces only what it wrote itself
        result = invoke("toy-data", "--out", tmp_path, "--pairs", 4, "--test-pairs", 2, *flags)
        assert result.exit_code == 1 and "no `tispipe toy-data` run wrote" in result.output, result.output
        assert mine.read_text().startswith('{"prompt": "mine"')
    assert invoke("toy-data", "--out", tmp_path / "toy", "--pairs", 4, "--test-pairs", 2).exit_code == 0
    assert invoke("toy-data", "--out", tmp_path / "toy", "--pairs", 4, "--test-pairs", 2, "--overwrite").exit_code == 0  # its own run


@pytest.mark.parametrize("stage", ["train", "estimate"])
def test_a_second_writer_is_refused_naming_the_holder_and_a_stale_lock_is_taken_over(finished, tmp_path, stage):
    import subprocess

    out = tmp_path / "out"
    args = {
        "train": ["train", "--shards", finished / "weights", "--model", finished / "base", "--out", out, "--loss", "dpo", "--max-steps", 1,
                  "--batch-size", 4, "--device", "cpu"],
        "estimate": ["estimate", "--data", finished / "pairs.jsonl", "--model", finished / "base", "--method", "prompt", "--out", out, "--device", "cpu"],
    }[stage]
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / ".out.lock").write_text(str(holder.pid))
        result = invoke(*args)
        assert result.exit_code == 1 and f"is being written by another tispipe run (pid {holder.pid})" in result.output, result.output
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    result = invoke(*args)  # the holder is gone: its lock is stale
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the lock is released at the end
