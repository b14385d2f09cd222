"""The CLI surface: fast help, every command listed, errors as one line without a traceback."""

import os
import subprocess
import sys

from typer.testing import CliRunner

from tispipe.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("toy-data", "init-base"):
        assert command in result.output


def test_help_does_not_import_torch():
    # `--help` must stay fast: the CLI module imports torch/transformers only inside commands.
    code = "import sys; from tispipe import cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_python_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "tispipe", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "init-base" in result.stdout


def test_user_error_is_one_line_exit_1(tmp_path):
    result = runner.invoke(app, ["init-base", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("Error: ") and "missing.jsonl" in lines[0]
    assert "Traceback" not in result.output


def test_debug_env_shows_traceback(tmp_path):
    env = {**os.environ, "TISPIPE_DEBUG": "1"}
    cmd = [sys.executable, "-m", "tispipe", "init-base", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "Traceback" in result.stderr
