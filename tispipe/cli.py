"""The `tispipe` command line: each command's options are the fields of its config (tispipe.configs).

A command parses its options into that dataclass (`tispipe.config_files.resolve`: defaults < --config
file < flags) and calls the stage's `run(cfg)`. The stage module, and with it torch and
transformers, is imported only when the command runs, so `--help` stays fast.
Each command's `--help` lists its options by panel (tispipe.help_panels), whole at any width.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Optional

import typer

from tispipe import configs
from tispipe.help_panels import HELP_PANEL, PanelledCommand

app = typer.Typer(
    name="tispipe",
    help="Token-level importance-sampling DPO (TIS-DPO): estimate token weights once, train on them many times.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

CONFIG_HELP = "TOML or YAML file of options; flags given on the command line win."


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a user error as one `Error:` line (and `Hint:`) and exit 1; TISPIPE_DEBUG=1 shows the traceback."""
    from tispipe.errors import TispipeError

    try:
        yield
    except (TispipeError, OSError) as e:
        if os.environ.get("TISPIPE_DEBUG") == "1":
            raise
        if isinstance(e, OSError):  # the environment, not a bug: a read-only folder, a full disk, a folder where a file should be
            where = " -> ".join(str(name) for name in (e.filename, e.filename2) if name)
            e = TispipeError(f"{e.strerror or e}" + (f": {where}" if where else ""), hint="check that the paths exist, are writable and have room")
        typer.echo(f"Error: {e.message}", err=True)
        if e.hint:
            typer.echo(f"Hint: {e.hint}", err=True)
        raise typer.Exit(1)


def command_fields(cls: type) -> list[dataclasses.Field]:
    """The config's fields in the order its help lists them: the command's own first, then the shared ones."""
    own = cls.__dict__.get("__annotations__", {})
    fields = dataclasses.fields(cls)
    inherited = [f for f in fields if f.name not in own]
    required_first = sorted(inherited, key=lambda f: f.default is not dataclasses.MISSING)  # --data before the options of reading it
    return [f for f in fields if f.name in own] + required_first


def _optional(hint: Any) -> Any:
    """`hint` allowing None (the CLI default of a required option, so `--config` can supply it)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
        return hint
    return Optional[hint]  # noqa: UP045 - typer wants the typing form


def run_stage(command: str, stage: str, cfg: Any) -> Any:
    """`tispipe <command>` on a resolved config: every option checked (tispipe.option_rules) and where it writes
    (tispipe.artifacts.outputs), before any work and before a preset replaces a value; then `tispipe.<stage>.run(cfg)`.
    The one way a stage is started, from the command line and from a study's jobs (tispipe.studies.jobs) alike."""
    from tispipe.artifacts.outputs import check_outputs
    from tispipe.option_rules import check_values

    check_values(cfg)
    check_outputs(command, cfg)
    return importlib.import_module(f"tispipe.{stage}").run(cfg)


def stage_command(cls: type, stage: str, summary: str, name: str = "") -> Callable[..., None]:
    """A typer command whose options are `cls`'s fields; it resolves them, checks them (tispipe.option_rules) and
    where they write (tispipe.artifacts.outputs), and calls `tispipe.<stage>.run`."""
    hints = typing.get_type_hints(cls)
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    for field in command_fields(cls):
        has_default = field.default is not dataclasses.MISSING
        default = field.default if has_default else None
        make = typer.Argument if field.metadata.get("argument") else typer.Option
        declared = make(... if make is typer.Argument else default, help=field.metadata["help"], rich_help_panel=field.metadata["panel"])
        hint = hints[field.name] if has_default else _optional(hints[field.name])
        if make is typer.Argument:
            hint = hints[field.name]
        params.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=declared, annotation=hint))
    params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, help=CONFIG_HELP, rich_help_panel=HELP_PANEL), annotation=Optional[str]))  # noqa: UP045

    def command(ctx: typer.Context, **values: Any) -> None:
        with user_errors():
            from tispipe.config_files import resolve

            run_stage(name, stage, resolve(ctx, cls, values["config"]))

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = summary
    return command


def add_stage(name: str, cls: type, stage: str, summary: str) -> None:
    """Add `tispipe <name>`: `cls`'s options, listed by panel in its --help, running `tispipe.<stage>.run`."""
    help_class = type(f"{cls.__name__}Command", (PanelledCommand,), {"config": cls})
    app.command(name, cls=help_class)(stage_command(cls, stage, summary, name))


add_stage("toy-data", configs.ToyDataConfig, "data.toy", "Generate the synthetic harmlessness preference set (with token-level ground-truth labels).")
add_stage("init-base", configs.InitBaseConfig, "prepare.init_base", "Train the tiny offline base model (tokenizer + Llama-style LM, SFT on the toy data).")
add_stage("convert-gguf", configs.ConvertGgufConfig, "prepare.convert_gguf", "Convert a GGUF model file into a plain Hugging Face folder (exact logits) that every command takes.")
add_stage("estimate", configs.EstimateConfig, "estimate.estimate", "Stage one: build pi+/pi-, score every response token once, write token weights to Parquet shards.")
add_stage("generate", configs.GenerateConfig, "prepare.generate", "Make preference pairs from the model itself: each prompt answered under the good and the bad system prompt.")
add_stage("inspect", configs.InspectConfig, "estimate.inspect_weights", "Show token weights: a pair coloured by weight in the terminal, and optionally an HTML page.")
add_stage("train", configs.TrainConfig, "train.train", "Stage two: train a policy on the weight shards with TIS-DPO (or DPO, IPO, TDPO).")
add_stage("reward-model", configs.RewardModelConfig, "train.reward_model", "Train a Bradley-Terry reward model on preference pairs (held-out accuracy; use it with eval --reward-model).")
add_stage("eval", configs.EvalConfig, "evaluate.evaluate", "Compare models on held-out pairs: preference accuracy, KL, sampled rewards, win rates, weight AUC.")
add_stage("experiment", configs.ExperimentConfig, "studies.experiment", "Train and evaluate DPO, IPO, TDPO2, TIS-DPO(P/S/D) and TIS-DPO(D)'s ablations over seeds; write a results table.")
add_stage("contrast-study", configs.ContrastStudyConfig, "studies.contrast_study", "Build pi+/pi- over a grid of budgets and rank them by decision-token weight AUC on a validation split.")
add_stage("weight-study", configs.WeightStudyConfig, "studies.weight_study", "Score token weights of every estimator (and a surprisal baseline) against a data set's token labels.")


def main() -> None:
    """The `tispipe` entry point. A usage error (unknown option, a value of the wrong type) is one
    `Error:` line and exit code 2, like a user error's one line and exit code 1; no usage box."""
    try:
        code = app(prog_name="tispipe", standalone_mode=False)
    except Exception as e:  # typer's vendored click exceptions: recognised by what they offer
        if type(e).__name__ == "Abort" and os.environ.get("TISPIPE_DEBUG") != "1":  # Ctrl-C outside a stage's own handling
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        if not hasattr(e, "format_message") or os.environ.get("TISPIPE_DEBUG") == "1":
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `tispipe`: the help, as always
            typer.echo(e.format_message())
            sys.exit(0)
        command = getattr(getattr(e, "ctx", None), "command_path", "tispipe")
        typer.echo(f"Error: {e.format_message()}", err=True)
        typer.echo(f"Hint: `{command} --help` lists the options", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
