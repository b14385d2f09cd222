"""Errors of the environment, not of tispipe: paths of the wrong kind, files that are not UTF-8, folders
that cannot be written. Each is one `Error:` line naming the path and exit code 1, never a traceback."""

from __future__ import annotations

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
    assert one_error(["init-base", "--data", tmp_path, "--out", tmp_path / "base"]) == f"Error: training data {tmp_path} is a folder, not a file"
    assert not (tmp_path / "base").exists()


def test_a_file_given_as_the_shards_folder_says_so(tmp_path):
    shards = tmp_path / "shards.txt"
    shards.write_text("x")
    line = one_error(["train", "--shards", shards, "--model", tmp_path, "--out", tmp_path / "run"])
    assert line == f"Error: shards folder {shards} is a file, not a folder"


@pytest.mark.parametrize("where", ["/proc/tispipe-cannot-be-here", "/sys/tispipe-cannot-be-here"])
def test_an_output_folder_that_cannot_be_made_is_one_line(where):
    line = one_error(["toy-data", "--out", where, "--pairs", 3, "--test-pairs", 1])
    assert where in line
