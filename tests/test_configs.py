"""The CLI is generated from the config dataclasses (tispipe.configs -> tispipe.cli): every command's options
are exactly its config's fields, with the field's default and help; shared options read the same everywhere."""

from __future__ import annotations

import dataclasses

import pytest
import typer

from tispipe import configs
from tispipe.cli import CONFIG_HELP, app

COMMANDS = {
    "toy-data": configs.ToyDataConfig,
    "init-base": configs.InitBaseConfig,
    "estimate": configs.EstimateConfig,
    "generate": configs.GenerateConfig,
    "inspect": configs.InspectConfig,
    "convert-gguf": configs.ConvertGgufConfig,
    "train": configs.TrainConfig,
    "eval": configs.EvalConfig,
    "reward-model": configs.RewardModelConfig,
    "experiment": configs.ExperimentConfig,
    "contrast-study": configs.ContrastStudyConfig,
    "weight-study": configs.WeightStudyConfig,
}
# The options several commands share are declared once, in these bases.
SHARED_BASES = (configs.DataOptions, configs.ReadOptions, configs.ContrastPromptOptions, configs.ModelOptions, configs.SeedOption, configs.ThreadsOption, configs.OverwriteOption,
                configs.HeldOutOptions, configs.ReportToOption,
                configs.TrainingLoopOptions, configs.TrainingMemoryOptions, configs.StudyOptions)
# Base fields whose meaning is the command's own: what --data holds (one JSONL file for init-base, a folder
# of them for experiment), what --limit counts and what --dtype sets (how models run; what convert-gguf
# saves) differ per command, so their help may too.
OWN_MEANING = {"data", "limit", "dtype"}


def commands() -> dict:
    return typer.main.get_command(app).commands


def params(name: str) -> dict:
    return {p.name: p for p in commands()[name].params}


def test_every_command_has_its_config():
    assert set(commands()) == set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_params_are_the_config_fields_plus_config(name):
    fields = [f.name for f in dataclasses.fields(COMMANDS[name])]
    got = params(name)
    assert set(got) == {*fields, "config"}
    assert got["config"].help == CONFIG_HELP and got["config"].default is None
    for field in dataclasses.fields(COMMANDS[name]):
        if not field.metadata["argument"]:
            assert got[field.name].opts == ["--" + field.name.replace("_", "-")], field.name


@pytest.mark.parametrize("name", COMMANDS)
def test_defaults_match_the_config(name):
    # The CLI fills the config by option name; a renamed field or a drifted default would go unnoticed.
    got = params(name)
    for field in dataclasses.fields(COMMANDS[name]):
        required = field.default is dataclasses.MISSING
        expected = None if required else field.default
        assert got[field.name].default == expected, field.name
        assert type(got[field.name].default) is type(expected), field.name  # 1 is not 1.0, 0 is not False


@pytest.mark.parametrize("name", COMMANDS)
def test_help_is_the_fields_help(name):
    got = params(name)
    for field in dataclasses.fields(COMMANDS[name]):
        assert got[field.name].help == field.metadata["help"], field.name


def test_every_field_has_help():
    classes = {*COMMANDS.values(), *SHARED_BASES}
    missing = sorted(f"{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls) if not f.metadata.get("help", "").strip())
    assert not missing, f"fields without help: {missing}"


def test_shared_options_read_the_same_in_every_command():
    """An option named like a shared one (seed, threads, device, max_length, ...) has one help text in every command."""
    shared = {f.name: f.metadata["help"] for base in SHARED_BASES for f in dataclasses.fields(base) if f.name not in OWN_MEANING}
    assert {"seed", "threads", "device", "max_length", "overwrite"} <= set(shared)
    differing = {}
    for name in COMMANDS:
        for param, p in params(name).items():
            if param in shared and p.help != shared[param]:
                differing.setdefault(param, []).append(f"{name}: {p.help!r}")
    assert not differing, "\n".join(f"--{param.replace('_', '-')} (shared help {shared[param]!r}) differs in {', '.join(where)}" for param, where in differing.items())
