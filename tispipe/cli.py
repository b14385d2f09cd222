"""The `tispipe` command line: each command parses its options into a stage's config and runs it.

Heavy imports (torch, transformers) happen inside the commands so that `--help` stays fast.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

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
    hidden_size: int = typer.Option(96, help="Model width."),
    num_layers: int = typer.Option(3, help="Transformer layers."),
    num_heads: int = typer.Option(4, help="Attention heads."),
    max_length: int = typer.Option(256, help="Longest training sequence in tokens."),
    epochs: float = typer.Option(1.0, help="Passes over the SFT examples."),
    batch_size: int = typer.Option(32, help="Sequences per optimizer step."),
    lr: float = typer.Option(5e-3, help="Peak learning rate (AdamW, cosine decay)."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)."),
    overwrite: bool = typer.Option(False, help="Replace an existing model in --out."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Train the tiny offline base model (tokenizer + Llama-style LM, SFT on the toy data)."""
    with user_errors():
        from tispipe import base
        from tispipe.config import resolve

        base.run(resolve(ctx, base.InitBaseConfig, config))


@app.command("eval")
def eval_cmd(
    ctx: typer.Context,
    model: Optional[list[str]] = typer.Option(None, "--model", help="Model folder (or hub name) to evaluate; repeat for a comparison table."),
    data: Optional[str] = DATA,
    out: Optional[Path] = typer.Option(None, help="Folder for report.json, report.md and samples.jsonl."),
    ref: Optional[str] = typer.Option(None, help="Reference model for implicit rewards and KL (usually the base); without it rewards are the model's own log-probs."),
    reward_model: Optional[str] = typer.Option(None, help="Sequence-classification reward model folder to score generations with."),
    oracle: Optional[str] = typer.Option(None, help="Score generations with a built-in oracle: toy."),
    baseline: Optional[str] = typer.Option(None, help="Model the win rates compare against (default: the first --model)."),
    temperatures: str = typer.Option("0,0.5,1.0", help="Comma-separated sampling temperatures (0 = greedy)."),
    samples_per_prompt: int = typer.Option(1, help="Responses sampled per prompt at each temperature above 0."),
    max_new_tokens: int = typer.Option(64, help="Longest generated response in tokens."),
    num_prompts: int = typer.Option(100, help="Distinct held-out prompts to generate for (0: no generation)."),
    shards: Optional[Path] = typer.Option(None, help="`tispipe estimate` output folder: score its token weights against the data's token labels."),
    batch_size: int = typer.Option(32, help="Pairs or prompts per forward pass."),
    seed: int = typer.Option(0, help="Sampling seed (the same for every model)."),
    beta: float = typer.Option(0.1, help="Scale of the implicit reward beta * (log pi - log ref)."),
    split: str = typer.Option("test", help="Split to read (for folders with splits and hub data sets)."),
    limit: Optional[int] = LIMIT,
    format: str = FORMAT,
    prompt_column: str = PROMPT_COLUMN,
    chosen_column: str = CHOSEN_COLUMN,
    rejected_column: str = REJECTED_COLUMN,
    preference_column: Optional[str] = PREFERENCE_COLUMN,
    strict: bool = STRICT,
    max_length: int = MAX_LENGTH,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
    chat_template: bool = CHAT_TEMPLATE,
    device: str = DEVICE,
    dtype: str = DTYPE,
    trust_remote_code: bool = TRUST_REMOTE_CODE,
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)."),
    overwrite: bool = typer.Option(False, help="Replace an existing report in --out."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Compare models on held-out pairs: preference accuracy, KL, sampled rewards, win rates, weight AUC."""
    with user_errors():
        from tispipe import evaluate
        from tispipe.config import resolve

        evaluate.run(resolve(ctx, evaluate.EvalConfig, config))


@app.command("estimate")
def estimate_cmd(
    ctx: typer.Context,
    data: Optional[str] = DATA,
    model: Optional[str] = typer.Option(None, help="Base model folder (or hub name): the reference, and what pi+/pi- are built from."),
    out: Optional[Path] = typer.Option(None, help="Output folder: shards/, manifest.json, contrast/."),
    method: str = typer.Option("dpo", help="How pi+/pi- are made: prompt (system prompts), sft or dpo (trained on the pairs)."),
    pos_model: Optional[str] = typer.Option(None, help="Use this existing model as pi+ (with --neg-model) instead of building one."),
    neg_model: Optional[str] = typer.Option(None, help="Use this existing model as pi- (with --pos-model)."),
    pos_prompt: Optional[str] = typer.Option(None, help="System prompt of pi+ for --method prompt (default: the paper's harmless prompt)."),
    neg_prompt: Optional[str] = typer.Option(None, help="System prompt of pi- for --method prompt (default: the paper's harmful prompt)."),
    transform: str = typer.Option("exp", help="exp (paper Eq. 19), rank (the authors' rank_based, 0.7 to 1.3) or linear (threshold_and_scale)."),
    k: float = typer.Option(1.0, help="Scale k of the exp transform."),
    lower: Optional[float] = typer.Option(None, help="Clamp bound L on r_t (default: -0.5 for exp, -1.5 for linear)."),
    upper: Optional[float] = typer.Option(None, help="Clamp bound U on r_t (default: 1.5)."),
    shard_size: int = typer.Option(1000, help="Pairs per Parquet shard."),
    batch_size: int = typer.Option(16, help="Pairs per scoring forward pass."),
    contrast_lr: Optional[float] = typer.Option(None, help="Learning rate for building pi+/pi- (default: sft 5e-5, dpo 1e-5)."),
    contrast_epochs: Optional[float] = typer.Option(None, help="Epochs for building pi+/pi- (default: sft 3, dpo 1)."),
    contrast_batch_size: Optional[int] = typer.Option(None, help="Pairs per step for building pi+/pi- (default: sft 32, dpo 16)."),
    contrast_beta: float = typer.Option(0.1, help="DPO beta for building pi+/pi- with --method dpo."),
    split: str = SPLIT,
    limit: Optional[int] = LIMIT,
    format: str = FORMAT,
    prompt_column: str = PROMPT_COLUMN,
    chosen_column: str = CHOSEN_COLUMN,
    rejected_column: str = REJECTED_COLUMN,
    preference_column: Optional[str] = PREFERENCE_COLUMN,
    strict: bool = STRICT,
    max_length: int = MAX_LENGTH,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
    chat_template: bool = CHAT_TEMPLATE,
    device: str = DEVICE,
    dtype: str = DTYPE,
    seed: int = typer.Option(0, help="Random seed for building pi+/pi-."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default; 1 is faster for tiny models on a busy machine)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run in --out made with other settings."),
    trust_remote_code: bool = TRUST_REMOTE_CODE,
    config: Optional[Path] = CONFIG,
) -> None:
    """Stage one: build pi+/pi-, score every response token once, write token weights to Parquet shards."""
    with user_errors():
        from tispipe import estimate
        from tispipe.config import resolve

        estimate.run(resolve(ctx, estimate.EstimateConfig, config))


@app.command("inspect")
def inspect_cmd(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., help="A `tispipe estimate` output folder."),
    pair: int = typer.Option(0, help="Index (in data order) of the pair to show in the terminal."),
    html: Optional[Path] = typer.Option(None, help="Also write a standalone HTML page of many pairs to this file."),
    pairs: int = typer.Option(50, help="Pairs on the HTML page (from --pair on)."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Show token weights: a pair coloured by weight in the terminal, and optionally an HTML page."""
    with user_errors():
        from tispipe import inspect
        from tispipe.config import resolve

        inspect.run(resolve(ctx, inspect.InspectConfig, config))


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    shards: Optional[Path] = typer.Option(None, help="`tispipe estimate` output folder (shards/ + manifest.json)."),
    model: Optional[str] = typer.Option(None, help="Policy to start from (folder or hub name); also the reference unless --ref."),
    out: Optional[Path] = typer.Option(None, help="Output folder: the trained model, metrics.jsonl, checkpoints/."),
    ref: Optional[str] = typer.Option(None, help="Reference model for the KL terms (default: --model). dpo/ipo use the shards' cached reference log-probs."),
    loss: str = typer.Option("tisdpo", help="tisdpo (paper Eq. 18), dpo, ipo, tdpo1 or tdpo2."),
    weighting: str = typer.Option("estimated", help="estimated (from the shards), equal (all 1) or random (uniform between --lower and --upper)."),
    eta_coef: float = typer.Option(1.0, help="Coefficient on TIS-DPO's KL term eta (0: the paper's 'without eta' ablation)."),
    beta: float = typer.Option(0.1, help="Beta of every loss."),
    alpha: float = typer.Option(0.5, help="Alpha of TDPO2."),
    transform: Optional[str] = typer.Option(None, help="Re-derive weights from the stored log-ratios with this transform: exp, rank or linear."),
    k: Optional[float] = typer.Option(None, help="Re-derive weights with this k."),
    mu: Optional[float] = typer.Option(None, help="Re-derive weights with mu = +MU on chosen and -MU on rejected tokens."),
    lower: Optional[float] = typer.Option(None, help="Re-derive weights with this clamp bound L (random weighting: lowest weight)."),
    upper: Optional[float] = typer.Option(None, help="Re-derive weights with this clamp bound U (random weighting: highest weight)."),
    optimizer: str = typer.Option("adamw", help="adamw or rmsprop."),
    lr: float = typer.Option(1e-4, help="Peak learning rate (sized for the toy model; the paper uses 5e-7 on 7B models)."),
    weight_decay: float = typer.Option(0.0, help="Weight decay."),
    warmup_steps: int = typer.Option(10, help="Steps of linear warmup."),
    scheduler: str = typer.Option("constant", help="After warmup: constant or cosine (to 0 at the last step)."),
    epochs: int = typer.Option(1, help="Passes over the shards."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    batch_size: int = typer.Option(16, help="Pairs per micro-batch (one forward of 2x this many sequences)."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    max_grad_norm: float = typer.Option(10.0, help="Gradient-norm clip (0: off)."),
    shuffle_buffer: int = typer.Option(1000, help="Rows in the streaming shuffle buffer (bounds memory)."),
    length_group_steps: int = typer.Option(16, help="Batch pairs of similar length together within windows of N steps (less padding, same rows per epoch); 0: off."),
    save_every: int = typer.Option(0, help="Save a checkpoint every N steps (0: only at the end)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint."),
    overwrite: bool = typer.Option(False, help="Replace an existing run in --out."),
    seed: int = typer.Option(0, help="Seed of the data order and random weights."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default; 1 is faster for tiny models on a busy machine)."),
    fsdp: bool = typer.Option(False, help="Under torchrun: shard the policy with FSDP instead of DDP (GPU; also runs on CPU with gloo)."),
    trust_remote_code: bool = TRUST_REMOTE_CODE,
    config: Optional[Path] = CONFIG,
) -> None:
    """Stage two: train a policy on the weight shards with TIS-DPO (or DPO, IPO, TDPO)."""
    with user_errors():
        from tispipe import train
        from tispipe.config import resolve

        train.run(resolve(ctx, train.TrainConfig, config))


@app.command("experiment")
def experiment_cmd(
    ctx: typer.Context,
    data: str = typer.Option("data/toy", help="Folder holding train.jsonl and test.jsonl (with token span labels)."),
    base: str = typer.Option("runs/base", help="Base model folder every method starts from (and the reference)."),
    out: str = typer.Option("runs/experiment", help="Folder for the trained models, eval reports, logs, report.json and results.md."),
    weights_root: Optional[str] = typer.Option(None, help="Folder holding weights-prompt/-sft/-dpo (default: --out); `runs` reuses make estimate's."),
    results: Optional[str] = typer.Option(None, help="Also write results.md and report.json into this folder (e.g. docs)."),
    seeds: int = typer.Option(3, help="Seeds per method (0..N-1)."),
    lr: float = typer.Option(1e-4, help="Learning rate, the same for every method."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps per run (default: one epoch)."),
    batch_size: int = typer.Option(16, help="Pairs per step, the same for every method."),
    limit: Optional[int] = typer.Option(None, help="Training pairs to use (default: all)."),
    eval_limit: Optional[int] = typer.Option(None, help="Test pairs for accuracy and KL (default: all)."),
    num_prompts: int = typer.Option(100, help="Test prompts to sample responses for."),
    temperatures: str = typer.Option("0,1.0", help="Sampling temperatures (0 = greedy)."),
    max_new_tokens: int = typer.Option(96, help="Longest sampled response in tokens."),
    methods: str = typer.Option("all", help="Comma-separated method names (see tispipe.experiment.METHODS) or all."),
    jobs: int = typer.Option(2, help="tispipe commands run at the same time (1: one after another, in this process)."),
    threads: int = typer.Option(1, help="torch CPU threads per command."),
    quick: bool = typer.Option(False, help="Smoke run (1 seed, 4 steps, 32 pairs, 4 prompts, in this process): checks that every method runs and the table is written."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Train and evaluate DPO, IPO, TDPO2, TIS-DPO(P/S/D) and TIS-DPO(D)'s ablations over seeds; write a results table."""
    with user_errors():
        from tispipe import experiment
        from tispipe.config import resolve

        experiment.run(resolve(ctx, experiment.ExperimentConfig, config))


def main() -> None:
    app(prog_name="tispipe")


if __name__ == "__main__":
    main()
