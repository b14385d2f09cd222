"""Errors of the environment, not of tispipe: paths of the wrong kind, files that are not UTF-8, folders
that cannot be written. Each is one `Error:` line naming the path and exit code 1, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tispipe.cli import app

runner = CliRunner()


def one_error(args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def test_a_folder_given_as_the_config_file_says_so(tmp_path):
    assert one_error(["toy-data", "--config", tmp_path]) == f"Error: config file {tmp_path} is a folder, not a file"


def test_a_config_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"out: \xff\xfe\n")
    assert one_error(["toy-data", "--config", path]) == f"Error: config file {path} is not UTF-8 text"


def test_init_base_data_that_is_not_utf8_or_a_folder(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n\xff\n')
    assert one_error(["init-base", "--data", data, "--out", tmp_path / "base"]) == f"Error: {data}:2: not UTF-8 text"
    (tmp_path / "folder").mkdir()
    assert one_error(["init-base", "--data", tmp_path / "folder", "--out", tmp_path / "base"]) == f"Error: training data {tmp_path / 'folder'} is a folder, not a file"
    assert not (tmp_path / "base").exists()


def test_a_file_given_as_the_shards_folder_says_so(tmp_path):
    shards = tmp_path / "shards.txt"
    shards.write_text("x")
    line = one_error(["train", "--shards", shards, "--model", tmp_path / "base", "--out", tmp_path / "run"])
    assert line == f"Error: shards folder {shards} is a file, not a folder"


@pytest.mark.parametrize("where", ["/proc/tispipe-cannot-be-here", "/sys/tispipe-cannot-be-here"])
def test_an_output_folder_that_cannot_be_made_is_one_line(where):
    line = one_error(["toy-data", "--out", where, "--pairs", 3, "--test-pairs", 1])
    assert where in line


@pytest.fixture(scope="module")
def estimated(tmp_path_factory, make_tiny_llama):
    """A tiny base, 12 toy pairs and a finished prompt estimate of them in two shards."""
    from conftest import prompt_estimate

    root = tmp_path_factory.mktemp("environment")
    prompt_estimate(root, make_tiny_llama, "--shard-size", 6)
    return root


def command(root, stage: str, out) -> list:
    return {
        "toy-data": ["toy-data", "--out", out, "--pairs", 3, "--test-pairs", 1],
        "init-base": ["init-base", "--data", root / "pairs.jsonl", "--out", out, "--epochs", 1],
        "estimate": ["estimate", "--data", root / "pairs.jsonl", "--model", root / "base", "--method", "prompt", "--out", out, "--device", "cpu"],
        "train": ["train", "--shards", root / "weights", "--model", root / "base", "--out", out, "--max-steps", 1, "--device", "cpu"],
        "eval": ["eval", "--model", root / "base", "--data", root / "pairs.jsonl", "--split", "train", "--oracle", "toy", "--num-prompts", 2,
                 "--max-new-tokens", 4, "--out", out, "--device", "cpu"],
        "inspect": ["inspect", root / "weights", "--html", out / "page.html"],
    }[stage]


@pytest.mark.parametrize("stage", ["toy-data", "init-base", "estimate", "train", "eval", "inspect"])
def test_every_stage_checks_that_out_is_writable_before_it_works(estimated, stage):
    # /sys is read-only even for root, so this holds in containers where permissions do not
    line = one_error(command(estimated, stage, Path("/sys/tispipe-read-only")))
    assert "/sys/tispipe-read-only" in line and "not writable" in line, line


def no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_full_disk_during_estimate_keeps_the_finished_shards_and_resumes(estimated, tmp_path, monkeypatch):
    from tispipe.artifacts import shards

    real, written = shards.write_shard, []

    def second_fails(*args, **kwargs):
        if written:
            no_space()
        written.append(1)
        return real(*args, **kwargs)

    out = tmp_path / "weights"
    monkeypatch.setattr(shards, "write_shard", second_fails)
    line = one_error([*command(estimated, "estimate", out), "--shard-size", 6])
    assert line == f"Error: writing {out}: No space left on device; what it finished is kept: re-run the same command to resume"
    assert [p.name for p in (out / "shards").glob("*.parquet")] == ["part-00000.parquet"]
    monkeypatch.setattr(shards, "write_shard", real)
    assert runner.invoke(app, [str(a) for a in [*command(estimated, "estimate", out), "--shard-size", 6]]).exit_code == 0
    for name in ("part-00000.parquet", "part-00001.parquet"):
        assert (out / "shards" / name).read_bytes() == (estimated / "weights" / "shards" / name).read_bytes()


@pytest.mark.parametrize("stage", ["toy-data", "eval"])
def test_a_full_disk_leaves_no_half_made_output(estimated, tmp_path, monkeypatch, stage):
    from tispipe.data import toy
    from tispipe.evaluate import evaluate

    if stage == "eval":
        monkeypatch.setattr(evaluate, "render_markdown", no_space)
    else:
        monkeypatch.setattr(toy, "to_jsonl", no_space)
    out = tmp_path / "out"
    line = one_error(command(estimated, stage, out))
    assert line == f"Error: writing {out}: No space left on device; nothing of it was kept"
    assert not out.exists()


def test_a_full_disk_during_eval_overwrite_keeps_the_old_report_whole(estimated, tmp_path, monkeypatch):
    from tispipe.evaluate import evaluate

    out = tmp_path / "out"
    assert runner.invoke(app, [str(a) for a in command(estimated, "eval", out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(evaluate, "render_markdown", no_space)
    one_error([*command(estimated, "eval", out), "--overwrite", "--temperatures", "0.5"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # not a new samples.jsonl beside an old report


@pytest.mark.parametrize("stage", ["toy-data", "train"])
def test_an_out_nested_in_folders_that_do_not_exist_yet_is_made(estimated, tmp_path, stage):
    # the writability probe removes the folders it made; the stage must still make them all
    out = tmp_path / "a" / "b" / "c"
    result = runner.invoke(app, [str(a) for a in command(estimated, stage, out)])
    assert result.exit_code == 0, result.output
    assert out.is_dir() and any(out.iterdir())
