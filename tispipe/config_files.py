"""Resolve a command's settings: defaults < `--config FILE` (TOML or YAML) < command-line flags.

Every stage takes one dataclass; the CLI fills it with `resolve` and the stage writes it back
next to its outputs with `write_config`, so a run can be repeated from its own folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import tomllib
import yaml

from tispipe.artifacts.atomic import atomic_write_text
from tispipe.errors import TispipeError, wrong_path

T = TypeVar("T")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a dict with option names as keys (dashes -> underscores)."""
    path = Path(path)
    if not path.is_file():
        raise wrong_path(path, "config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TispipeError(f"config file {path} is not UTF-8 text") from None
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        else:
            values = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise TispipeError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {e}".splitlines()[0])
    if not isinstance(values, dict):
        raise TispipeError(f"config file {path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def resolve(ctx: Any, cls: type[T], config_file: str | Path | None) -> T:
    """Build `cls` from the command's parameters, with values from `config_file` where a flag was not given.

    Keys in the file are the option names (`max-length` or `max_length`). Unknown keys are an error,
    so a typo does not silently fall back to the default.
    """
    from_file = read_config_file(config_file) if config_file else {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = {p.name: p for p in ctx.command.params}
    unknown = sorted(set(from_file) - set(fields) - {"config"})
    if unknown:
        raise TispipeError(
            f"config file {config_file} has unknown key(s): {', '.join(unknown)}",
            hint=f"valid keys: {', '.join(sorted(fields))}",
        )
    values: dict[str, Any] = {}
    for name, field in fields.items():
        given = ctx.params.get(name)
        source = ctx.get_parameter_source(name) if name in ctx.params else None
        # typer vendors its own click, so compare the source by name, not by enum identity
        from_command_line = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
        if from_command_line or name not in from_file:
            value = given
        else:
            value = from_file[name]
            if name in params:
                try:
                    value = params[name].process_value(ctx, value)
                except Exception as e:  # click's BadParameter, from typer's vendored copy
                    raise TispipeError(f"config file {config_file}: bad value for {name!r}: {getattr(e, 'message', e)}")
        if value is None and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise TispipeError(f"missing option --{name.replace('_', '-')}", hint="give it on the command line or in --config")
        if value is None and field.default is not dataclasses.MISSING:
            value = field.default
        values[name] = _plain(value)
    return cls(**values)


def _plain(value: Any) -> Any:
    """Turn click's tuples and Paths into lists and strings so configs serialise and compare cleanly."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_dict(cfg: Any) -> dict[str, Any]:
    return {k: _plain(v) for k, v in dataclasses.asdict(cfg).items()}


def write_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved settings as YAML; `--config` accepts the file as it is."""
    atomic_write_text(path, yaml.safe_dump(config_dict(cfg), sort_keys=False))
