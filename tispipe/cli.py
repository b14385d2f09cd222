"""The `tispipe` command line: each command parses its options into a stage's config and runs it.

Heavy imports (torch, transformers) happen inside the commands so that `--help` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

import typer

app = typer.Typer(
    name="tispipe",
    help="Token-level importance-sampling DPO (TIS-DPO): estimate token weights once, train on them many times.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

CONFIG = typer.Option(None, "--config", help="TOML or YAML file of options; flags given on the command line win.")

# Options shared by every command that reads preference data (fields of tispipe.data.DataOptions).
DATA = typer.Option(None, help="Preference data: .jsonl/.json/.parquet/.csv file, folder of them, save_to_disk folder, or hub name.")
SPLIT = typer.Option("train", help="Split to read (for folders with splits and hub data sets).")
LIMIT = typer.Option(None, help="Use only the first N rows.")
FORMAT = typer.Option("auto", help="auto, standard, implicit, conversational or pairwise.")
PROMPT_COLUMN = typer.Option("prompt", help="Column holding the prompt.")
CHOSEN_COLUMN = typer.Option("chosen", help="Column holding the chosen response.")
REJECTED_COLUMN = typer.Option("rejected", help="Column holding the rejected response.")
PREFERENCE_COLUMN = typer.Option(None, help="Pairwise data: column naming the better response (e.g. safer_response_id).")
STRICT = typer.Option(False, help="Fail on the first bad row instead of dropping and counting it.")
MAX_LENGTH = typer.Option(512, help="Longest prompt + response in tokens (responses are cut from the right).")
MAX_PROMPT_LENGTH = typer.Option(256, help="Longest prompt in tokens (cut from the left).")
CHAT_TEMPLATE = typer.Option(True, help="Render string prompts with the tokenizer's chat template when it has one.")
DEVICE = typer.Option("auto", help="auto, cpu, cuda or cuda:N.")
DTYPE = typer.Option("auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16 or float16.")
TRUST_REMOTE_CODE = typer.Option(False, help="Allow model repositories to run their own code.")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a user error as one `Error:` line (and `Hint:`) and exit 1; TISPIPE_DEBUG=1 shows the traceback."""
    from tispipe.errors import TispipeError

    try:
        yield
    except TispipeError as e:
        if os.environ.get("TISPIPE_DEBUG") == "1":
            raise
        typer.echo(f"Error: {e.message}", err=True)
        if e.hint:
            typer.echo(f"Hint: {e.hint}", err=True)
        raise typer.Exit(1)


@app.command("toy-data")
def toy_data(
    ctx: typer.Context,
    out: Optional[Path] = typer.Option(None, help="Folder to write train.jsonl and test.jsonl into."),
    pairs: int = typer.Option(5000, help="Number of training pairs."),
    test_pairs: int = typer.Option(500, help="Number of test pairs."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives byte-identical files."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Generate the synthetic harmlessness preference set (with token-level ground-truth labels)."""
    with user_errors():
        from tispipe import toy
        from tispipe.config import resolve

        toy.run(resolve(ctx, toy.ToyDataConfig, config))


@app.command("init-base")
def init_base(
    ctx: typer.Context,
    data: Optional[Path] = typer.Option(None, help="Training pairs (JSONL) to learn the tokenizer and SFT on."),
    out: Optional[Path] = typer.Option(None, help="Folder for the base model and tokenizer (Hugging Face format)."),
    seed: int = typer.Option(0, help="Random seed."),
    vocab_size: int = typer.Option(2048, help="Byte-level BPE vocabulary size."),
    hidden_size: int = typer.Option(128, help="Model width."),
    num_layers: int = typer.Option(4, help="Transformer layers."),
    num_heads: int = typer.Option(4, help="Attention heads."),
    max_length: int = typer.Option(256, help="Longest training sequence in tokens."),
    epochs: float = typer.Option(1.0, help="Passes over the SFT examples."),
    batch_size: int = typer.Option(32, help="Sequences per optimizer step."),
    lr: float = typer.Option(3e-3, help="Peak learning rate (AdamW, cosine decay)."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)."),
    overwrite: bool = typer.Option(False, help="Replace an existing model in --out."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Train the tiny offline base model (tokenizer + Llama-style LM, SFT on the toy data)."""
    with user_errors():
        from tispipe import base
        from tispipe.config import resolve

        base.run(resolve(ctx, base.InitBaseConfig, config))


def main() -> None:
    app(prog_name="tispipe")


if __name__ == "__main__":
    main()
