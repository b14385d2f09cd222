"""Where a command may write: the one check every command's outputs pass before any work.

Each command's outputs (`--out`, `--html`, `--results`) are compared with its inputs (`--data`,
`--model`, `--shards`, ...) and with the run folders other commands wrote. An output is refused, with one
`Error:` line, when it

- is one of the command's own inputs, lies inside one, or contains one (replacing it would delete the input);
- lies inside a folder another command wrote (an estimate, a training run, an eval report, a model);
- is a folder that holds another command's run, or files no tispipe command wrote: a command replaces
  only what it made itself (`--overwrite` and `--resume` only ever apply to a run of the same command);
- is an existing file that the command did not write (`inspect --html` replaces only its own pages).

The studies' `--results` folders are the exception: experiment, contrast-study and weight-study write files of
their own names there, so one data set's docs folder (docs/real-paradetox) holds the results of each.

A run folder is recognised by the files its command writes (`run_kind`): a marker file only that command
writes (estimate-state.json, train_info.json, ...), else the keys of the config.yaml (or checkpoint) it
recorded, else a model's config.json with weights. `tispipe.cli` calls `check_outputs` for every command
before the stage runs; the stage's own rules (--resume, --overwrite, the lock) apply after it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tispipe.errors import TispipeError

# Config fields that name something a command reads, and those that name what it writes.
INPUT_FIELDS = ("data", "model", "shards", "ref", "prompts", "eval_data", "pos_model", "neg_model", "reward_model", "baseline", "folder", "gguf", "base")
OUTPUT_FIELDS = ("out", "html", "results")
# Files that only one command writes into its output folder.
MARKERS = {
    "estimate": ("estimate-state.json", "estimate-run.json"),
    "generate": ("generate-state.json",),
    "train": ("train_info.json", "training.json"),
    "reward-model": ("reward_model_info.json",),
    "eval": ("samples.jsonl", "report.md"),
    "init-base": ("train_log.json",),
    "convert-gguf": ("gguf.json",),
    "experiment": ("results.md",),
    "contrast-study": ("contrast-study.md", "contrast-study.json"),
    "weight-study": ("weights.md", "weight-study.json"),
}
# Commands whose output folder holds other commands' runs (they write them themselves); any folder is
# theirs to fill, and a command may write inside theirs.
STUDIES = ("experiment", "contrast-study", "weight-study")
WEIGHT_FILES = ("*.safetensors", "*.bin", "adapter_config.json")
HTML_SIGNATURE = "<title>tispipe token weights"  # the title of every page `inspect --html` writes


def _commands() -> dict[str, type]:
    from tispipe import configs

    return {"toy-data": configs.ToyDataConfig, "init-base": configs.InitBaseConfig, "convert-gguf": configs.ConvertGgufConfig,
            "estimate": configs.EstimateConfig, "generate": configs.GenerateConfig, "train": configs.TrainConfig,
            "reward-model": configs.RewardModelConfig, "eval": configs.EvalConfig, "experiment": configs.ExperimentConfig,
            "contrast-study": configs.ContrastStudyConfig, "weight-study": configs.WeightStudyConfig}


def _recorded_settings(folder: Path) -> dict[str, Any] | None:
    """The settings a run recorded: its config.yaml, else its newest checkpoint's state.json."""
    import yaml

    try:
        if (folder / "config.yaml").is_file():
            settings = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8", errors="replace")[:200_000])
            return settings if isinstance(settings, dict) else None
        for state in sorted((folder / "checkpoints").glob("*/state.json"), reverse=True):
            settings = json.loads(state.read_text(encoding="utf-8")).get("config")
            if isinstance(settings, dict):
                return settings
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return None


def _command_of(settings: dict[str, Any]) -> str | None:
    """The command whose options best match the recorded keys (most in common, then fewest others); a
    settings file without `out` is no tispipe run's."""
    if "out" not in settings:
        return None
    keys = set(settings)

    def fit(cls: type) -> tuple[int, int]:
        fields = {f.name for f in dataclasses.fields(cls)}
        return len(keys & fields) - len(keys - fields), -len(fields)

    return max(_commands().items(), key=lambda item: fit(item[1]))[0]


def run_kind(folder: str | Path) -> str | None:
    """The command that wrote `folder` ("model" for a model folder no tispipe command recorded), or None."""
    folder = Path(folder)
    try:
        if not folder.is_dir():
            return None
        for command, names in MARKERS.items():
            if any((folder / name).exists() for name in names):
                return command
        settings = _recorded_settings(folder)
        if settings:
            command = _command_of(settings)
            if command is not None:
                return command
        if (folder / "config.json").is_file() and any(next(folder.glob(p), None) for p in WEIGHT_FILES):
            return "model"
        if (folder / "manifest.json").is_file() and (folder / "shards").is_dir():
            return "estimate"
    except OSError:
        return None
    return None


def _describe(kind: str) -> str:
    return "a model folder" if kind == "model" else f"a `tispipe {kind}` run"


def _inputs(cfg: Any) -> list[tuple[str, Path]]:
    """(option, resolved path) of every input that names something on this machine."""
    found = []
    for name in INPUT_FIELDS:
        values = getattr(cfg, name, None)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str) and value and Path(value).exists():
                found.append(("FOLDER" if name == "folder" else "--" + name.replace("_", "-"), Path(value).resolve()))
    return found


def _visible(folder: Path) -> list[Path]:
    """What a folder holds, without the hidden lock and staging files of runs."""
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def check_outputs(command: str, cfg: Any) -> None:
    """Refuse, before any work, an output of `command` (its config `cfg`) that would write over an input or
    over what another command (or no tispipe command) wrote; see the module docstring."""
    inputs = _inputs(cfg)
    for field in OUTPUT_FIELDS:
        value = getattr(cfg, field, None)
        if not isinstance(value, str) or not value:
            continue
        option, path = "--" + field, Path(value).resolve()
        for input_option, source in inputs:
            if path == source:
                raise TispipeError(f"{option} {value} is the {input_option} input", hint=f"choose another {option}: writing there would replace what this command reads")
            if source in path.parents:
                raise TispipeError(f"{option} {value} lies inside the {input_option} input {source}", hint=f"choose an {option} outside it")
            if path in source.parents:
                raise TispipeError(f"{option} {value} contains the {input_option} input {source}", hint=f"choose an {option} that does not hold the inputs")
        for parent in path.parents:
            kind = run_kind(parent)
            if kind is not None and kind not in STUDIES:
                raise TispipeError(f"{option} {value} lies inside {parent}, {_describe(kind)}", hint=f"choose an {option} outside other runs: writing there would mix files into that run")
        if field == "html":
            _check_own_file(option, path, value)
        elif path.is_dir() and _visible(path):
            _check_own_folder(command, option, path, value, field)


def _check_own_folder(command: str, option: str, path: Path, value: str, field: str) -> None:
    kind = run_kind(path)
    if kind == command:
        return  # the stage's own rules (--resume, --overwrite) apply
    if field == "results" and command in STUDIES and kind in STUDIES:
        return  # the studies' results have names of their own (results.*, weights.*, contrast-study.*): one data set's docs folder holds them all
    if kind is not None:
        raise TispipeError(f"{option} {value} holds {_describe(kind)}, not a `tispipe {command}` run; refusing to write into it",
                           hint=f"choose another {option}: a command replaces only what it wrote itself")
    if field == "out" and command not in STUDIES:
        raise TispipeError(f"{option} {value} holds files that no `tispipe {command}` run wrote; refusing to write into it",
                           hint=f"choose a new or empty {option}")


def _check_own_file(option: str, path: Path, value: str) -> None:
    if path.is_dir() or not path.exists():
        return  # the stage says a folder is not a file
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        head = ""
    if HTML_SIGNATURE not in head:
        raise TispipeError(f"{option} {value} exists and is not a page `tispipe inspect` wrote; refusing to replace it", hint=f"choose another {option} file")


def check_new_out(out: str | Path, overwrite: bool, option: str = "--out") -> None:
    """The "already exists" rule of the commands that write a whole folder (init-base, convert-gguf, eval):
    OUT is new or empty, or --overwrite says to replace it (what it holds was checked by `check_outputs`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TispipeError(f"{option} {out} is a file, not a folder", hint=f"choose a folder for {option}")
    if out.is_dir() and _visible(out) and not overwrite:
        raise TispipeError(f"{option} {out} already exists and is not empty", hint=f"pass --overwrite to replace it, or choose another {option}")
