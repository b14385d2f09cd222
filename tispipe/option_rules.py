"""Every option's value, checked by its name before any work, whatever the command, preset or --config file.

An option means the same thing in every command that has it (`--batch-size` is a count, `--lr` a positive
rate, `--temperatures` a list of numbers >= 0), so its rule is written once here and `tispipe.cli` applies
it to every command's resolved config before the stage runs. A preset (`experiment --quick`,
`--contrast-preset`) replaces values only after they were checked: an option given is never silently
ignored, even when the preset sets its own. The stages keep their own checks of how options combine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from typing import Any

from tispipe.configs import check_options
from tispipe.errors import TispipeError

AT_LEAST_ONE = ("seeds", "jobs", "batch_size", "num_samples", "max_new_tokens", "shard_size", "html_pairs", "samples_per_prompt", "grad_accum",
                "max_length", "max_prompt_length", "hidden_size", "num_layers", "num_heads", "contrast_batch_size", "max_steps", "limit",
                "eval_limit", "pairs", "shuffle_buffer")
POSITIVE = ("lr", "beta", "k", "contrast_lr", "contrast_epochs", "contrast_beta", "epochs", "lora_alpha", "validation_fraction", "eval_fraction",
            "top_fraction", "top_p", "top_tokens")
NON_NEGATIVE = ("threads", "lora_r", "eval_every", "save_every", "warmup_steps", "num_prompts", "pair", "test_pairs", "weight_decay", "max_grad_norm",
                "lora_dropout", "eta_coef", "temperature", "length_group_steps", "alpha", "floor")
# upper bounds: (value must be below, or at most, this)
BELOW = {"validation_fraction": 1.0, "eval_fraction": 1.0, "lora_dropout": 1.0}
AT_MOST = {"top_fraction": 1.0, "top_p": 1.0, "top_tokens": 1.0}
# comma-separated numbers: (smallest allowed, whether the smallest itself is allowed)
NUMBER_LISTS = {"lrs": (0.0, False), "temperatures": (0.0, True)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_numbers(name: str, text: Any, minimum: float, inclusive: bool) -> list[float]:
    """"0,0.5,1" -> [0.0, 0.5, 1.0]: one or more finite numbers above (or at) `minimum`, none repeated."""
    parts = [p.strip() for p in str(text).split(",")]
    shown = f"{_flag(name)} {str(text)!r}"
    if not str(text).strip():
        raise TispipeError(f"{shown} is empty: give one or more comma-separated numbers")
    if any(not p for p in parts):
        raise TispipeError(f"{shown} has an empty item: give comma-separated numbers (e.g. 0,0.5,1.0)")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise TispipeError(f"{shown}: {part!r} is not a number") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise TispipeError(f"{shown}: {part!r} must be a finite number {'>=' if inclusive else '>'} {minimum:g}")
        values.append(value)
    if len(set(values)) != len(values):
        raise TispipeError(f"{shown} repeats a value")
    return values


def check_values(cfg: Any) -> None:
    """Refuse, naming the option, any value of `cfg` that no command could use (see the module docstring)."""
    names = {f.name for f in dataclasses.fields(cfg)}
    pick = lambda group: tuple(n for n in group if n in names)  # noqa: E731
    for name in pick(AT_LEAST_ONE) + pick(POSITIVE) + pick(NON_NEGATIVE):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TispipeError(f"{_flag(name)} must be a number, not {value!r}")
    check_options(cfg, at_least_one=pick(AT_LEAST_ONE), positive=pick(POSITIVE), non_negative=pick(NON_NEGATIVE))
    for name, bound in BELOW.items():
        if name in names and getattr(cfg, name) is not None and not getattr(cfg, name) < bound:
            span = f"between 0 and {bound:g} (exclusive)" if name in POSITIVE else f"below {bound:g}"
            raise TispipeError(f"{_flag(name)} must be {span}, not {getattr(cfg, name)}")
    for name, bound in AT_MOST.items():
        if name in names and getattr(cfg, name) is not None and not getattr(cfg, name) <= bound:
            raise TispipeError(f"{_flag(name)} must be at most {bound:g}, not {getattr(cfg, name)}")
    for name, (minimum, inclusive) in NUMBER_LISTS.items():
        if name in names:
            parse_numbers(name, getattr(cfg, name), minimum, inclusive)


# the judges of `eval --oracle` (tispipe.evaluate.judges); checked here so a study checks its evals' oracle too
ORACLES = ("toy", "profanity")


def check_oracle(name: str) -> None:
    """A clear error for an unknown oracle or a judge whose package is missing, before any work."""
    if name not in ORACLES:
        raise TispipeError(f"unknown oracle {name!r}", hint=f"known: {', '.join(ORACLES)}")
    if name == "profanity" and importlib.util.find_spec("profanity_check") is None:
        raise TispipeError("--oracle profanity needs the alt-profanity-check package", hint="pip install 'tispipe[judge]'")
