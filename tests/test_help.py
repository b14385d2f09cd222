"""Every command's `--help` reads whole at any width: each option name appears uncut, no line is wider
than the terminal, no help text is cut with "…", and the options are listed in their panels."""

from __future__ import annotations

import dataclasses
import re

import pytest
import typer
from typer.testing import CliRunner

from tispipe import configs
from tispipe.cli import app
from tispipe.help_panels import HELP_PANEL

runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands


def render(args: list[str], columns: int) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": str(columns)}, terminal_width=columns)
    assert result.exit_code == 0, result.output
    return result.output


def names(command) -> list[str]:
    """Every name the command's options answer to (`--lr`, `--no-resume`, `-h`), and its arguments' names."""
    return [name for param in command.params for name in (*param.opts, *getattr(param, "secondary_opts", ()))] + ["-h", "--help"]


def whole(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


@pytest.mark.parametrize("columns", [80, 100, 200])
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_name_whole_and_nothing_cut(name, columns):
    text = render([name], columns)
    assert "…" not in text, f"`tispipe {name} --help` at {columns} columns cuts text:\n{text}"
    wide = [line for line in text.splitlines() if len(line) > columns]
    assert not wide, f"`tispipe {name} --help` has lines over {columns} columns:\n" + "\n".join(wide)
    missing = [option for option in names(COMMANDS[name]) if not whole(option, text)]
    assert not missing, f"`tispipe {name} --help` at {columns} columns lacks {missing} whole:\n{text}"


@pytest.mark.parametrize("columns", [80, 200])
def test_the_command_list_is_whole(columns):
    text = render([], columns)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= columns
    for name in COMMANDS:
        assert whole(name, text), name


def panel_titles(text: str) -> list[str]:
    return re.findall(r"╭─ (.+?) ─", text)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_options_are_listed_in_their_panels_in_order(name):
    """Each option sits under the panel its field names (tispipe.configs), panels in PANELS order,
    --config and --help last."""
    config = type(COMMANDS[name]).config
    text = render([name], 200)
    titles = panel_titles(text)
    expected = [p for p in configs.PANELS if any(f.metadata["panel"] == p for f in dataclasses.fields(config))] + [HELP_PANEL]
    assert titles == expected
    sections = dict(zip(titles, re.split(r"╭─ .+? ─.*\n", text)[1:], strict=True))
    for field in dataclasses.fields(config):
        param = next(p for p in COMMANDS[name].params if p.name == field.name)
        shown = param.opts[0] if param.opts and param.opts[0].startswith("-") else field.name
        assert whole(shown, sections[field.metadata["panel"]]), f"{shown} not under {field.metadata['panel']!r}"
    assert whole("--config", sections[HELP_PANEL]) and whole("--help", sections[HELP_PANEL])


def test_train_help_fits_a_default_terminal():
    """The command with the most options: in panels, not one table, and the help column at least 40
    characters wide at 80 columns (typer's own table left it about 20)."""
    text = render(["train"], 80)
    assert len(panel_titles(text)) >= 8
    line = next(line for line in text.splitlines() if "--gradient-checkpointing /" in line)
    assert len(line) - 2 - line.index("Recompute") >= 40, line


def test_a_field_needs_a_known_panel():
    with pytest.raises(ValueError, match="unknown help panel"):
        configs.option(1, "Help.", panel="Nowhere")


def test_help_shows_required_and_defaults():
    text = render(["train"], 200)
    assert re.search(r"--shards <str> .*\[required\]", text)
    assert re.search(r"--beta <float> .*\[default: 0\.1\]", text)
    assert re.search(r"--resume / --no-resume .*\[default: off\]", text)


def test_loss_help_names_every_loss_in_the_table():
    """`--loss` accepts the keys of tispipe.core.losses.LOSSES; its help (kept free of torch, so --help stays fast) lists them all."""
    from tispipe.core.losses import LOSSES

    help_text = next(f for f in dataclasses.fields(configs.TrainConfig) if f.name == "loss").metadata["help"]
    assert all(whole(name, help_text) for name in LOSSES), (help_text, list(LOSSES))
