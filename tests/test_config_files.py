"""Config resolution: defaults < --config file < command-line flags, and clear errors."""

from dataclasses import dataclass
from typing import Optional

import pytest
import typer
from typer.testing import CliRunner

from tispipe.config_files import read_config_file, resolve, write_config
from tispipe.errors import TispipeError


@dataclass
class DemoConfig:
    out: str
    steps: int = 10
    lr: float = 0.1
    name: str = "x"


demo = typer.Typer()
seen: list[DemoConfig] = []


@demo.command()
def main(
    ctx: typer.Context,
    out: Optional[str] = typer.Option(None),
    steps: int = typer.Option(10),
    lr: float = typer.Option(0.1),
    name: str = typer.Option("x"),
    config: Optional[str] = typer.Option(None),
):
    from tispipe.cli import user_errors

    with user_errors():
        seen.append(resolve(ctx, DemoConfig, config))


def invoke(*args):
    seen.clear()
    result = CliRunner().invoke(demo, list(args))
    return result, (seen[0] if seen else None)


def test_defaults_and_flags():
    result, cfg = invoke("--out", "o", "--steps", "3")
    assert result.exit_code == 0, result.output
    assert cfg == DemoConfig(out="o", steps=3, lr=0.1, name="x")


@pytest.mark.parametrize("suffix,text", [(".toml", 'out = "f"\nsteps = 7\nlr = "0.5"\n'), (".yaml", "out: f\nsteps: 7\nlr: '0.5'\n")])
def test_file_values_fill_in_and_flags_win(tmp_path, suffix, text):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    result, cfg = invoke("--config", str(path), "--steps", "2")
    assert result.exit_code == 0, result.output
    # steps from the command line beats the file; lr from the file is cast to float; name keeps its default
    assert cfg == DemoConfig(out="f", steps=2, lr=0.5, name="x")


def test_dashed_keys_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out: f\n")
    assert read_config_file(path) == {"out": "f"}
    path.write_text("max-length: 3\n")
    assert read_config_file(path) == {"max_length": 3}


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out: f\nstepz: 3\n")
    result, _ = invoke("--config", str(path))
    assert result.exit_code == 1
    assert "Error: config file" in result.output and "stepz" in result.output
    assert "Traceback" not in result.output


def test_missing_required_option():
    result, _ = invoke()
    assert result.exit_code == 1
    assert "Error: missing option --out" in result.output


def test_bad_value_in_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('out = "f"\nsteps = "many"\n')
    result, _ = invoke("--config", str(path))
    assert result.exit_code == 1
    assert "steps" in result.output


@pytest.mark.parametrize("text", ["out: [unclosed\n", "- a\n- b\n"])
def test_broken_or_non_mapping_yaml(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(TispipeError, match=str(path)):
        read_config_file(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(TispipeError, match="does not exist"):
        read_config_file(tmp_path / "nope.toml")


def test_written_config_reads_back(tmp_path):
    cfg = DemoConfig(out="o", steps=4, lr=0.25, name="n")
    write_config(cfg, tmp_path / "config.yaml")
    result, again = invoke("--config", str(tmp_path / "config.yaml"))
    assert result.exit_code == 0, result.output
    assert again == cfg
