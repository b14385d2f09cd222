"""Hostile inputs of two classes, through the command line: numbers that are not finite (or overflow), and
usage errors. Each must give one `Error:` line, the documented exit code, and no output that looks finished."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from test_shards import make_row
from typer.testing import CliRunner

from tispipe.artifacts.shards import iter_shard_rows, shard_name, write_shard
from tispipe.cli import app
from tispipe.errors import TispipeError

runner = CliRunner()


def tispipe(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("TISPIPE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "tispipe", *args], capture_output=True, text=True, env=env)


# ---------------------------------------------------------------- usage errors: one line, exit 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--batch-size", "abc"], "Error: Invalid value for '--batch-size'"),
        (["train", "--no-such-option"], "Error: No such option: --no-such-option"),
        (["no-such-command"], "Error: No such command 'no-such-command'"),
    ],
)
def test_usage_errors_are_one_error_line_and_exit_2(args, message):
    result = tispipe(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(message), result.stderr
    assert lines[1].startswith("Hint: ") and "--help" in lines[1]
    assert len(lines) == 2 and "╭" not in result.stderr and "Traceback" not in result.stderr


def test_bare_command_still_shows_the_help():
    result = tispipe()
    assert result.returncode == 0 and "Usage: tispipe" in result.stdout and "estimate" in result.stdout


# ---------------------------------------------------------------- numbers that must be finite


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--lr", "inf"], "--lr must be a finite number, not inf"),
        (["train", "--beta", "inf"], "--beta must be a finite number, not inf"),
        (["train", "--beta", "nan"], "--beta must be a finite number, not nan"),
        (["train", "--max-grad-norm", "inf"], "--max-grad-norm must be a finite number"),
        (["estimate", "--k", "inf"], "--k must be a finite number, not inf"),
        (["estimate", "--k", "1e39"], "--k 1e+39 is too large"),
        (["estimate", "--contrast-lr", "inf"], "--contrast-lr must be a finite number"),
        (["eval", "--beta", "inf"], "--beta must be a finite number"),
        (["init-base", "--lr", "inf"], "--lr must be a finite number"),
        (["init-base", "--epochs", "-5"], "--epochs must be positive, not -5.0"),
        (["experiment", "--lrs", "1e-5,inf"], "--lrs '1e-5,inf': 'inf' must be a finite number > 0"),
        (["experiment", "--validation-fraction", "inf"], "--validation-fraction must be a finite number"),
    ],
)
def test_non_finite_options_are_refused_before_anything_is_written(tmp_path, args, message):
    out = tmp_path / "out"
    inputs = {
        "train": ["--shards", str(tmp_path / "shards"), "--model", str(tmp_path / "m"), "--out", str(out)],
        "estimate": ["--data", str(tmp_path / "d.jsonl"), "--model", str(tmp_path / "m"), "--out", str(out)],
        "eval": ["--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl"), "--out", str(out)],
        "init-base": ["--data", str(tmp_path / "d.jsonl"), "--out", str(out)],
        "experiment": ["--data", str(tmp_path), "--base", str(tmp_path / "m"), "--out", str(out)],
    }[args[0]]
    if args[0] == "experiment":  # its option checks come after the inputs exist
        (tmp_path / "train.jsonl").write_text("{}\n")
        (tmp_path / "test.jsonl").write_text("{}\n")
        (tmp_path / "m").mkdir()
    result = runner.invoke(app, [*args, *inputs])
    assert result.exit_code == 1, result.output
    assert f"Error: {message}" in result.output or message in result.output.splitlines()[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_a_shard_value_that_is_not_finite_names_the_row_even_without_pair_ids(tmp_path):
    bad = make_row(0)
    bad["chosen_ref_logps"] = [float("nan")] * len(bad["chosen_ids"])
    path = tmp_path / "shards" / shard_name(0)
    write_shard(path, [make_row(1), bad])
    assert pq.ParquetFile(path).metadata.num_rows == 2
    with pytest.raises(TispipeError, match=r"row 1: column chosen_ref_logps holds NaN"):
        list(iter_shard_rows(path, ["chosen_ref_logps"]))  # pair_id not read
    with pytest.raises(TispipeError, match=r"pair 'p0000': column chosen_ref_logps holds NaN"):
        list(iter_shard_rows(path))
