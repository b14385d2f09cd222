"""`tispipe train`: stream weight shards into a weighted-DPO loop (TIS-DPO, DPO, IPO, TDPO1/2).

One optimizer step = `grad_accum` micro-batches of `batch_size` pairs (TRL's convention: the
effective batch is batch_size * grad_accum). Each micro-batch goes through the policy in one
forward of one packed row per pair, its prompt computed once (`tispipe.modeling.shared_prompt`; two padded
rows per pair for a model that cannot take it), with logits back as chosen rows then rejected rows
(`batching.make_pair_batch`). The frozen
reference model runs only when the loss needs full-vocabulary KL terms (TIS-DPO with eta, TDPO);
DPO, IPO and TIS-DPO without eta use the reference log-probs cached in the shards.

Rows are streamed from the Parquet shards through a bounded, seeded shuffle buffer
(`shards.stream_rows`), so memory does not grow with the data. The stream is a pure function of
(seed, epoch, manifest), so a checkpoint records only (epoch, rows used in that epoch) and a
resumed run replays the same steps with the same losses. Within windows of --length-group-steps
steps (16) the pairs are batched by length (`epoch.length_grouped_steps`), which cuts the padding the forwards spend time on.

Defaults are sized for the tiny toy model: lr 1e-4 with AdamW. The paper's 5e-7 (RMSprop) is for 7B
models; on the toy base (2M parameters, batch 16) TIS-DPO's loss after 40 steps falls from 0.69 to
0.53 at 3e-5, 0.32 at 1e-4, 0.12 at 3e-4 and 0.06 at 1e-3 (sequence KL to the reference ~2, 10, 26, 35).

The parts: order of steps `tispipe.train.epoch`, one step (loss, token weights) `tispipe.train.step`, lr
`tispipe.modeling.optim`, checkpoints and final model `tispipe.artifacts.checkpoint`, DDP/FSDP `tispipe.modeling.distributed`.
"""

from __future__ import annotations

import dataclasses
import math
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from tispipe.artifacts import figures
from tispipe.artifacts.atomic import atomic_write_json, cleaned_up_on_failure, output_lock
from tispipe.artifacts.checkpoint import (
    TrainState,
    check_checkpoint_world,
    checkpoint_all_ranks,
    checkpoint_manifest,
    latest_checkpoint,
    load_training_state,
    read_state,
    save_final_model,
    save_merged_model,
)
from tispipe.artifacts.metrics_log import keep_metrics_until, read_metrics, step_line
from tispipe.artifacts.shards import file_sha256, read_manifest, stream_rows, verify_shards
from tispipe.artifacts.trackers import Tracker, check_report_to
from tispipe.artifacts.weight_checks import weight_warnings
from tispipe.config_files import config_dict, write_config
from tispipe.configs import TrainConfig, check_bounds, check_options
from tispipe.console import log_console
from tispipe.core.losses import LOSSES
from tispipe.core.weights import TRANSFORMS
from tispipe.errors import TispipeError
from tispipe.modeling import distributed, shared_prompt
from tispipe.modeling.adapters import AdapterOff, adapter_summary, add_lora, check_lora, enable_gradient_checkpointing
from tispipe.modeling.batching import logits_width
from tispipe.modeling.hub import same_source
from tispipe.modeling.models import (
    check_model,
    fingerprint_model,
    fingerprint_tokenizer,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from tispipe.modeling.optim import make_optimizer, make_scheduler
from tispipe.train.epoch import epoch_steps, even_steps, planned_steps
from tispipe.train.loop import StepLoop, loading_models
from tispipe.train.output import claim_out
from tispipe.train.step import REDERIVE_OPTIONS, NonFiniteStep, StepContext, WeightPlan, train_step, weight_plan
from tispipe.train.validation import due, evaluate, load_held_out

WEIGHTINGS = ("estimated", "equal", "random", "random-matched")
OPTIMIZERS = ("adamw", "rmsprop")
SCHEDULERS = ("constant", "cosine")


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train, holding OUT's lock (rank 0) so that no second run writes into it at the same time; a new OUT
    that the run fails in before its first checkpoint is removed again."""
    if distributed.env_rank() != 0:
        return _train(cfg)
    with output_lock(cfg.out), cleaned_up_on_failure(cfg.out, lambda out: latest_checkpoint(out) is not None, resume="add --resume to the same command to continue"):
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict[str, Any]:
    """Train a policy on the shards in cfg.shards and save it to cfg.out; return train_info.

    Under torchrun (tispipe.modeling.distributed) every rank runs this: the policy is wrapped in
    DistributedDataParallel (or FSDP with cfg.fsdp), rank r streams the rows at positions p % world == r
    of the one global order, and an optimizer step takes batch_size x grad_accum pairs on every rank
    (global batch batch_size x grad_accum x world). Rank 0 alone writes OUT.
    """
    validate(cfg)
    out = Path(cfg.out)
    manifest = read_manifest(cfg.shards)
    # A missing, truncated, miscounted or swapped shard fails now, not mid-run with OUT half written.
    verify_shards(cfg.shards, manifest)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = distributed.setup(resolve_device(cfg.device))
    world, rank = distributed.world_size(), distributed.rank()
    distributed.check_fsdp(cfg.fsdp)
    console = log_console(quiet=rank != 0)
    compute_dtype = resolve_dtype(cfg.dtype, device)
    if compute_dtype == torch.float16:
        raise TispipeError("--dtype float16 is not supported for training (no loss scaling)", hint="use bfloat16 or float32")
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    check_tokenizer(tokenizer, manifest, cfg)
    check_model(cfg.model, "--model", tokenizer, cfg.trust_remote_code)
    if needs_ref(cfg) and cfg.ref:
        check_model(cfg.ref, "--ref", tokenizer, cfg.trust_remote_code)
    plan = weight_plan(cfg, manifest)
    columns = stream_columns(cfg, plan)
    held_out = load_held_out(cfg, manifest, plan, columns, not needs_ref(cfg), tokenizer, device, console)
    # Only now, with the inputs checked, may an existing OUT be replaced.
    # Only rank 0 may delete (--overwrite) or judge OUT; the other ranks follow its decision.
    checkpoint, finished, replaced = claim_out(cfg, out) if rank == 0 else (None, None, None)
    checkpoint, finished = distributed.broadcast_object((checkpoint, finished))
    manifest_sha = file_sha256(Path(cfg.shards) / "manifest.json")
    if checkpoint is not None:
        check_resumable(cfg, checkpoint, world, manifest_sha)
    if finished is not None:
        console.print(f"{out} already holds the finished run ({finished['steps']} steps); nothing to do")
        return finished
    if checkpoint is None:
        check_inputs(cfg, manifest, plan, console)
    with loading_models(replaced, checkpoint):
        policy, ref = load_models(cfg, checkpoint, device, compute_dtype)
    model = distributed.wrap_policy(policy, cfg.fsdp, device)  # the policy itself in a single process

    rows_per_epoch = sum(int(entry["rows"]) for entry in manifest["shards"])
    if rows_per_epoch < world:
        raise TispipeError(f"the shards hold {rows_per_epoch} pairs, fewer than the {world} processes")
    total_steps = planned_steps(cfg, rows_per_epoch, world)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, total_steps, cfg.scheduler)
    state = start_state(cfg, out, checkpoint, optimizer, scheduler, device, distributed.optimizer_loader(model, optimizer, cfg.fsdp), console)

    console.print(
        f"Training {cfg.loss} (weights: {plan.describe}) on {rows_per_epoch} pairs x {cfg.epochs} epoch(s): "
        f"{total_steps} steps of {cfg.batch_size} x {cfg.grad_accum} pairs"
        + (f" x {world} processes ({'FSDP' if cfg.fsdp else 'DDP'})" if world > 1 else "")
        + f"; {describe_models(cfg, policy, ref)}; {device}"
    )
    if held_out is not None:
        console.print(f"Measuring {held_out.describe} " + (f"every {cfg.eval_every} steps and " if cfg.eval_every else "") + "after the last step")
    context = step_context(cfg, model, ref, optimizer, scheduler, plan, tokenizer, device, compute_dtype, manifest, columns)

    def save(state: TrainState) -> Path:
        return checkpoint_all_ranks(out, state, policy, model, optimizer, scheduler, config_dict(cfg), cfg.fsdp, manifest_sha)

    start_step = state.step
    loop = StepLoop(command="train", out=out, console=console, total_steps=total_steps, start=state, rows_per_epoch=rows_per_epoch,
                    save_every=cfg.save_every, save=save, tracker=Tracker(cfg.report_to if rank == 0 else "none", out, out.name, config_dict(cfg)),
                    log_path=out / "metrics.jsonl" if rank == 0 else None, label="train", step_line=step_line,
                    agree=lambda requested: requested if world == 1 else distributed.all_reduce([requested], "max")[0] > 0)
    with loop:
        state = run_steps(loop, context, manifest, columns, state, total_steps, rows_per_epoch, held_out, len(tokenizer))
    metrics = loop.finish(state)
    info = save_run(cfg, out, policy, model, tokenizer, state, metrics, loop, rows_per_epoch, manifest, manifest_sha,
                    resumed_from=start_step if checkpoint is not None else None, console=console)
    done = f"{loop.pairs_seen} pairs in {loop.wall:.1f} s ({info['pairs_per_s']} pairs/s)" if loop.pairs_seen else "every step done by the run it resumes"
    console.print(f"Done: {state.step} steps, {done}; final loss {metrics.get('loss', float('nan')):.4f}; model saved to {out}")
    return info


def step_context(cfg: TrainConfig, model, ref, optimizer, scheduler, plan: WeightPlan, tokenizer, device: str, compute_dtype: torch.dtype,
                 manifest: dict[str, Any], columns: list[str]) -> StepContext:
    """What every step needs: the models, the optimizer, the weight plan, autocast (below float32) and, under torchrun, a filler row."""
    autocast = torch.autocast(torch.device(device).type, dtype=compute_dtype) if compute_dtype != torch.float32 else nullcontext()
    # Only the forward goes through the compiled module; checkpoints and the saved model read `model`, whose names it keeps.
    forward_model = torch.compile(model, dynamic=True) if cfg.torch_compile else model
    context = StepContext(forward_model, ref, optimizer, scheduler, cfg, plan, tokenizer.pad_token_id, device, autocast,
                          logits_width(shared_prompt.inner_model(model)))
    world = distributed.world_size()
    if world > 1:
        # A rank whose share of a step ran out still joins every gradient sync, with a zero-weighted row.
        first = stream_rows(cfg.shards, manifest, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, columns=columns, rank=distributed.rank(),
                            world_size=world, vocab_size=len(tokenizer))
        context.filler = [next(iter(first))]
    return context


def run_steps(loop: StepLoop, context: StepContext, manifest: dict[str, Any], columns: list[str], state: TrainState, total_steps: int,
              rows_per_epoch: int, held_out, vocab_size: int) -> TrainState:
    """Train from `state` to `total_steps` (or to the last epoch's end), each step recorded by `loop`; return the last state."""
    cfg, world, rank = context.cfg, distributed.world_size(), distributed.rank()
    per_step = cfg.batch_size * cfg.grad_accum * world
    for epoch in range(state.epoch, cfg.epochs):
        if state.step >= total_steps:
            break
        skip = state.rows_in_epoch if epoch == state.epoch else 0
        state = TrainState(state.step, epoch, skip)
        batches = epoch_steps(cfg, manifest, columns, epoch, skip, rank, world, vocab_size=vocab_size)
        if world > 1:
            batches = even_steps(batches, math.ceil(rows_per_epoch / per_step) - skip // per_step)
        for micro_batches in batches:
            try:
                metrics = train_step(context, micro_batches)
            except NonFiniteStep as e:
                loop.fail(f"step {state.step + 1} of {total_steps}: {e.message}; stopped before updating, the model was not saved",
                          hint="lower --lr or --beta; with --loss tisdpo check the weights (tispipe inspect)")
            pairs = sum(len(m) for m in micro_batches) if world == 1 else metrics["pairs"]  # the global step's pairs
            state = TrainState(state.step + 1, epoch, state.rows_in_epoch + pairs)
            measure = (lambda: evaluate(context, held_out)) if held_out is not None and due(cfg, state.step, total_steps) else None
            loop.record(state, metrics, pairs, tokens=int(metrics.pop("tokens")), measure=measure)
            if state.step >= total_steps:
                return state  # the final checkpoint and model are saved by the caller
        state = TrainState(state.step, epoch + 1, 0)
    return state


def save_run(cfg: TrainConfig, out: Path, policy, model, tokenizer, state: TrainState, metrics: dict[str, Any], loop: StepLoop, rows_per_epoch: int,
             manifest: dict[str, Any], manifest_sha: str, resumed_from: int | None, console) -> dict[str, Any]:
    """Save the final model (and the merged one with --merge), the training figure and train_info.json; return train_info."""
    rank = distributed.rank()
    full_state = distributed.gathered_model_state(model, cfg.fsdp)
    if rank == 0:
        save_final_model(policy, tokenizer, out, full_state)
        if cfg.merge:
            console.print(f"Merged model (base + adapter) saved to {save_merged_model(out, tokenizer)}")
    info = {
        "steps": state.step,
        "epochs": round(state.epoch + state.rows_in_epoch / max(1, rows_per_epoch), 4),
        "resumed_from_step": resumed_from,
        "pairs_this_run": loop.pairs_seen,
        "wall_seconds": round(loop.wall, 3),
        "pairs_per_s": round(loop.pairs_seen / loop.wall, 3) if loop.wall > 0 else None,
        "final_metrics": metrics,
        "shards": str(cfg.shards),
        "manifest_sha256": manifest_sha,
        "manifest_fingerprints": manifest.get("fingerprints", {}),
    }
    if rank == 0:
        figures.training_figure(read_metrics(out / "metrics.jsonl"), out / "training.png")  # the paper's Fig. 3 (right)
        atomic_write_json(out / "train_info.json", info)
    distributed.barrier()  # no rank returns before OUT is complete
    return info


def check_resumable(cfg: TrainConfig, checkpoint: Path, world: int, manifest_sha: str) -> None:
    """The checkpoint was written by as many processes, and trained on these shards."""
    check_checkpoint_world(checkpoint, world, cfg.fsdp)
    if checkpoint_manifest(checkpoint) not in (None, manifest_sha):
        raise TispipeError(
            f"{checkpoint} was trained on other shards than those now in {cfg.shards} (their manifest changed)",
            hint="resume with the shards it was trained on, or start a new run (another --out)",
        )


def load_models(cfg: TrainConfig, checkpoint: Path | None, device: str, compute_dtype: torch.dtype) -> tuple[Any, Any]:
    """(policy, reference): the policy from the checkpoint or --model (with a new adapter under --lora-r),
    and the reference as the loss needs it: None (cached log-probs), the base under the adapter, or a model."""
    # Trained weights stay float32; with --dtype bfloat16 (the GPU default) the forward runs under autocast.
    # Under LoRA the frozen base needs no float32 master copy: it is held in the compute dtype (peft keeps the adapter float32).
    torch.manual_seed(cfg.seed)  # a new LoRA adapter's initial A matrices
    policy = load_model(str(checkpoint or cfg.model), device=device, dtype=str(compute_dtype).removeprefix("torch.") if cfg.lora_r else "float32",
                        trust_remote_code=cfg.trust_remote_code, for_training=True)
    if cfg.lora_r and checkpoint is None:
        policy = add_lora(policy, cfg, cfg.model)
    ref_name = cfg.ref or cfg.model
    if not needs_ref(cfg):
        ref = None
    elif cfg.lora_r and same_source(ref_name, cfg.model):
        ref = AdapterOff(policy)  # the base under the adapter: no second copy of the weights
    else:
        ref = load_model(ref_name, device=device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    policy.eval()  # dropout off (as TRL does for DPO): policy == reference at step 0, gradients still flow
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    return policy, ref


def describe_models(cfg: TrainConfig, policy, ref) -> str:
    """The run's first line's note on the reference and the memory savers."""
    note = "cached reference log-probs" if ref is None else "reference: the base, adapter off" if isinstance(ref, AdapterOff) else f"reference {cfg.ref or cfg.model}"
    return note + "".join(f"; {extra}" for extra in (adapter_summary(policy), "gradient checkpointing" if cfg.gradient_checkpointing else "",
                                                     "torch.compile" if cfg.torch_compile else "") if extra)


def start_state(cfg, out: Path, checkpoint: Path | None, optimizer, scheduler, device: str, optimizer_loader, console) -> TrainState:
    """The state the run starts from: the checkpoint's (optimizer and scheduler restored), or step 0 with the seeds set.
    Rank 0 then writes OUT's config.yaml and cuts metrics.jsonl back to that step."""
    if checkpoint is None:
        if cfg.resume and out.exists():
            console.print(f"No checkpoint in {out}; starting from the beginning")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        state = TrainState(step=0, epoch=0, rows_in_epoch=0)
    else:
        state, _ = read_state(checkpoint)
        load_training_state(checkpoint, optimizer, scheduler, device, optimizer_loader)
        console.print(f"Resuming from {checkpoint} (step {state.step}, epoch {state.epoch}, {state.rows_in_epoch} rows into it)")
    if distributed.rank() == 0:
        keep_metrics_until(out / "metrics.jsonl", state.step)  # steps logged after the checkpoint are replayed
        out.mkdir(parents=True, exist_ok=True)
        # --resume/--overwrite are actions, not settings: re-running from config.yaml must not delete this run.
        write_config(dataclasses.replace(cfg, resume=False, overwrite=False), out / "config.yaml")
    return state


# ---------------------------------------------------------------------------------------------
# Options, output folder, manifest checks


def validate(cfg: TrainConfig) -> None:
    """Reject bad option values before anything is loaded, naming the option."""
    check_options(
        cfg,
        choices={"loss": tuple(LOSSES), "weighting": WEIGHTINGS, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "transform": TRANSFORMS},
        positive=("beta", "lr", "batch_size", "grad_accum", "epochs", "shuffle_buffer", "k", "max_steps"),
        non_negative=("threads", "eta_coef", "alpha", "weight_decay", "warmup_steps", "max_grad_norm", "save_every", "length_group_steps", "eval_every"),
    )
    if cfg.eval_every and not cfg.eval_data:
        raise TispipeError("--eval-every needs --eval-data (the held-out pairs to measure)")
    check_bounds(cfg.lower, cfg.upper)
    check_report_to(cfg.report_to)
    if cfg.mu is not None and cfg.mu == 0:
        raise TispipeError("--mu must not be 0 (every weight would be k)")
    if cfg.weighting != "estimated":
        allowed = ("lower", "upper") if cfg.weighting.startswith("random") else ()
        given = [n for n in REDERIVE_OPTIONS if getattr(cfg, n) is not None and n not in allowed]
        if given:
            raise TispipeError(
                f"--{', --'.join(given)} only apply to --weighting estimated (re-deriving weights), not {cfg.weighting}",
                hint="--weighting random takes --lower/--upper as its range (random-matched: as its width)",
            )
    if cfg.resume and cfg.overwrite:
        raise TispipeError("give --resume or --overwrite, not both")
    check_lora(cfg)
    if cfg.merge and not cfg.lora_r:
        raise TispipeError("--merge needs --lora-r (a full fine-tune is already a plain model folder)")


def check_tokenizer(tokenizer, manifest: dict[str, Any], cfg: TrainConfig) -> None:
    """The policy must tokenize exactly as the shards were tokenized: same ids, same positions for the weights."""
    expected = (manifest.get("fingerprints") or {}).get("tokenizer")
    if expected is None:
        return
    actual = fingerprint_tokenizer(tokenizer)
    if actual != expected:
        made_with = (manifest.get("settings") or {}).get("model") or "the estimate run's model"
        raise TispipeError(
            f"the tokenizer of --model {cfg.model} (fingerprint {actual}) differs from the one the shards in "
            f"{cfg.shards} were made with ({made_with}, fingerprint {expected})",
            hint="train the model the shards were estimated with, or re-run `tispipe estimate` with this model",
        )


def check_inputs(cfg: TrainConfig, manifest: dict[str, Any], plan: WeightPlan, console) -> None:
    """Before a fresh run's first step: say so when the stored weights carry little of r (tispipe.artifacts.weight_checks)
    or the cached reference log-probs are not those of the model the user may think is the reference."""
    if LOSSES[cfg.loss].weighted and plan.kind == "stored":
        for warning in weight_warnings(manifest):
            console.print(f"[yellow]Warning:[/yellow] the shards' weights: {warning}", highlight=False)
    base_name = (manifest.get("settings") or {}).get("model") or "the estimate run's base model"
    if needs_ref(cfg):
        return
    if cfg.ref is not None:
        console.print(f"[yellow]Note:[/yellow] --ref {cfg.ref} is not used: --loss {cfg.loss} uses the reference log-probs cached in the shards (from {base_name})")
    base = (manifest.get("fingerprints") or {}).get("base")
    if base is not None and Path(cfg.model).is_dir():
        policy = fingerprint_model(cfg.model)
        if policy != base:
            console.print(
                f"[yellow]Warning:[/yellow] --model {cfg.model} (fingerprint {policy}) is not the model the shards' reference "
                f"log-probs come from ({base_name}, fingerprint {base}): the policy does not start at the reference"
            )


def needs_ref(cfg: TrainConfig) -> bool:
    """Only the KL terms need the reference model's full distribution; log-ratios use the cached ref log-probs."""
    return LOSSES[cfg.loss].needs_kl(cfg.eta_coef)


def stream_columns(cfg: TrainConfig, plan: WeightPlan) -> list[str]:
    """Only the Parquet columns this run uses are read (the texts never are)."""
    columns = ["pair_id", "prompt_ids", "chosen_ids", "rejected_ids"]
    if not needs_ref(cfg):
        columns += ["chosen_ref_logps", "rejected_ref_logps"]
    if plan.kind == "stored":
        columns += ["chosen_weights", "rejected_weights"]
    if plan.kind == "rederive":
        columns += ["chosen_logratio", "rejected_logratio"]
    return columns
