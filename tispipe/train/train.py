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
import time
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
    damaged,
    latest_checkpoint,
    load_training_state,
    read_state,
    save_final_model,
    save_merged_model,
)
from tispipe.artifacts.metrics_log import MetricsLog, keep_metrics_until, logged_metrics, read_metrics, step_line
from tispipe.artifacts.shards import file_sha256, read_manifest, stream_rows, verify_shards
from tispipe.artifacts.trackers import Tracker, check_report_to
from tispipe.config_files import config_dict, write_config
from tispipe.configs import TrainConfig, check_bounds, check_options
from tispipe.console import ProgressLine, log_console
from tispipe.core.losses import LOSSES
from tispipe.core.weights import TRANSFORMS
from tispipe.errors import TispipeError
from tispipe.modeling import distributed
from tispipe.modeling.adapters import AdapterOff, adapter_summary, add_lora, check_lora, enable_gradient_checkpointing
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
from tispipe.train.output import claim_out
from tispipe.train.step import REDERIVE_OPTIONS, NonFiniteStep, StepContext, WeightPlan, train_step, weight_plan
from tispipe.train.stop import StopRequest
from tispipe.train.validation import due, evaluate, load_held_out

WEIGHTINGS = ("estimated", "equal", "random")
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
        check_checkpoint_world(checkpoint, world, cfg.fsdp)
        if checkpoint_manifest(checkpoint) not in (None, manifest_sha):
            raise TispipeError(
                f"{checkpoint} was trained on other shards than those now in {cfg.shards} (their manifest changed)",
                hint="resume with the shards it was trained on, or start a new run (another --out)",
            )
    if finished is not None:
        console.print(f"{out} already holds the finished run ({finished['steps']} steps); nothing to do")
        return finished
    if checkpoint is None:
        check_reference(cfg, manifest, console)

    # Trained weights stay float32; with --dtype bfloat16 (the GPU default) the forward runs under autocast.
    # Under LoRA the frozen base needs no float32 master copy: it is held in the compute dtype (peft keeps the adapter float32).
    ref_name = cfg.ref or cfg.model
    torch.manual_seed(cfg.seed)  # a new LoRA adapter's initial A matrices
    try:
        policy = load_model(str(checkpoint or cfg.model), device=device, dtype=str(compute_dtype).removeprefix("torch.") if cfg.lora_r else "float32",
                            trust_remote_code=cfg.trust_remote_code, for_training=True)
        if cfg.lora_r and checkpoint is None:
            policy = add_lora(policy, cfg, cfg.model)
        if not needs_ref(cfg):
            ref = None
        elif cfg.lora_r and same_source(ref_name, cfg.model):
            ref = AdapterOff(policy)  # the base under the adapter: no second copy of the weights
        else:
            ref = load_model(ref_name, device=device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    except BaseException as e:
        if replaced is not None:
            replaced.restore()  # --overwrite with models that do not load: the old run is back, nothing lost
        if checkpoint is not None and isinstance(e, TispipeError) and str(checkpoint) in e.message:
            raise TispipeError(e.message, hint=damaged(checkpoint, "model").hint) from e
        raise
    if replaced is not None:
        replaced.discard()
    policy.eval()  # dropout off (as TRL does for DPO): policy == reference at step 0, gradients still flow
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    model = distributed.wrap_policy(policy, cfg.fsdp, device)  # the policy itself in a single process

    rows_per_epoch = sum(int(entry["rows"]) for entry in manifest["shards"])
    if rows_per_epoch < world:
        raise TispipeError(f"the shards hold {rows_per_epoch} pairs, fewer than the {world} processes")
    total_steps = planned_steps(cfg, rows_per_epoch, world)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, total_steps, cfg.scheduler)
    state = TrainState(step=0, epoch=0, rows_in_epoch=0)
    if checkpoint is not None:
        state, _ = read_state(checkpoint)
        load_training_state(checkpoint, optimizer, scheduler, device, distributed.optimizer_loader(model, optimizer, cfg.fsdp))
        console.print(f"Resuming from {checkpoint} (step {state.step}, epoch {state.epoch}, {state.rows_in_epoch} rows into it)")
    else:
        if cfg.resume and out.exists():
            console.print(f"No checkpoint in {out}; starting from the beginning")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
    if rank == 0:
        keep_metrics_until(out / "metrics.jsonl", state.step)  # steps logged after the checkpoint are replayed
        out.mkdir(parents=True, exist_ok=True)
        # --resume/--overwrite are actions, not settings: re-running from config.yaml must not delete this run.
        write_config(dataclasses.replace(cfg, resume=False, overwrite=False), out / "config.yaml")

    ref_note = "cached reference log-probs" if ref is None else "reference: the base, adapter off" if isinstance(ref, AdapterOff) else f"reference {ref_name}"
    ref_note += "".join(f"; {note}" for note in (adapter_summary(policy), "gradient checkpointing" if cfg.gradient_checkpointing else "",
                                                "torch.compile" if cfg.torch_compile else "") if note)
    console.print(
        f"Training {cfg.loss} (weights: {plan.describe}) on {rows_per_epoch} pairs x {cfg.epochs} epoch(s): "
        f"{total_steps} steps of {cfg.batch_size} x {cfg.grad_accum} pairs"
        + (f" x {world} processes ({'FSDP' if cfg.fsdp else 'DDP'})" if world > 1 else "")
        + f"; {ref_note}; {device}"
    )
    if held_out is not None:
        console.print(f"Measuring {held_out.describe} " + (f"every {cfg.eval_every} steps and " if cfg.eval_every else "") + "after the last step")
    autocast = torch.autocast(torch.device(device).type, dtype=compute_dtype) if compute_dtype != torch.float32 else nullcontext()
    # Only the forward goes through the compiled module; checkpoints and the saved model read `model`, whose names it keeps.
    forward_model = torch.compile(model, dynamic=True) if cfg.torch_compile else model
    context = StepContext(forward_model, ref, optimizer, scheduler, cfg, plan, tokenizer.pad_token_id, device, autocast)
    if world > 1:
        # A rank whose share of a step ran out still joins every gradient sync, with a zero-weighted row.
        first = stream_rows(cfg.shards, manifest, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, columns=columns, rank=rank, world_size=world, vocab_size=len(tokenizer))
        context.filler = [next(iter(first))]

    def save(state: TrainState) -> Path:
        return checkpoint_all_ranks(out, state, policy, model, optimizer, scheduler, config_dict(cfg), cfg.fsdp, manifest_sha)

    start_step, pairs_seen, tokens_seen, started, eval_seconds = state.step, 0, 0, time.perf_counter(), 0.0
    metrics: dict[str, float] = {}
    log_path = out / "metrics.jsonl" if rank == 0 else None
    per_step = cfg.batch_size * cfg.grad_accum * world
    tracker = Tracker(cfg.report_to if rank == 0 else "none", out, out.name, config_dict(cfg))
    with StopRequest() as stop, MetricsLog(log_path) as log, tracker, ProgressLine(console, "train", total_steps, state.step) as progress:
        for epoch in range(state.epoch, cfg.epochs):
            if state.step >= total_steps:
                break
            skip = state.rows_in_epoch if epoch == state.epoch else 0
            state = TrainState(state.step, epoch, skip)
            batches = epoch_steps(cfg, manifest, columns, epoch, skip, rank, world, vocab_size=len(tokenizer))
            if world > 1:
                batches = even_steps(batches, math.ceil(rows_per_epoch / per_step) - skip // per_step)
            for micro_batches in batches:
                try:
                    metrics = train_step(context, micro_batches)
                except NonFiniteStep as e:
                    progress.stop()
                    raise TispipeError(
                        f"step {state.step + 1} of {total_steps}: {e.message}; stopped before updating, the model was not saved",
                        hint="lower --lr or --beta; with --loss tisdpo check the weights (tispipe inspect)",
                    ) from None
                pairs = sum(len(m) for m in micro_batches) if world == 1 else metrics["pairs"]  # the global step's pairs
                pairs_seen += pairs
                tokens_seen += int(metrics.pop("tokens"))
                state = TrainState(state.step + 1, epoch, state.rows_in_epoch + pairs)
                elapsed = time.perf_counter() - started - eval_seconds  # the rate of training alone
                metrics.update(step=state.step, epoch=epoch + state.rows_in_epoch / max(1, rows_per_epoch), pairs_per_s=pairs_seen / elapsed,
                               tokens_per_s=tokens_seen / elapsed)
                if held_out is not None and due(cfg, state.step, total_steps):
                    eval_started = time.perf_counter()
                    metrics.update(evaluate(context, held_out))
                    eval_seconds += time.perf_counter() - eval_started
                log.write(metrics)
                tracker.log(metrics, state.step)
                progress.update(state.step, step_line(metrics))
                if state.step >= total_steps:
                    break  # the final checkpoint and model are saved below
                stopping = stop.requested if world == 1 else distributed.all_reduce([stop.requested], "max")[0] > 0
                if (cfg.save_every > 0 and state.step % cfg.save_every == 0) or stopping:
                    path = save(state)
                if stopping:
                    progress.stop()
                    raise TispipeError(
                        f"stopped at step {state.step} of {total_steps}; checkpoint saved to {path}",
                        hint=f"continue with: tispipe train --config {out / 'config.yaml'} --resume",
                    )
            else:
                state = TrainState(state.step, epoch + 1, 0)
    wall = time.perf_counter() - started
    metrics = metrics or logged_metrics(log_path, state.step)  # every step was done by an earlier (killed) process

    save(state)
    full_state = distributed.gathered_model_state(model, cfg.fsdp)
    if rank == 0:
        save_final_model(policy, tokenizer, out, full_state)
        if cfg.merge:
            console.print(f"Merged model (base + adapter) saved to {save_merged_model(out, tokenizer)}")
    info = {
        "steps": state.step,
        "epochs": round(state.epoch + state.rows_in_epoch / max(1, rows_per_epoch), 4),
        "resumed_from_step": start_step if checkpoint is not None else None,
        "pairs_this_run": pairs_seen,
        "wall_seconds": round(wall, 3),
        "pairs_per_s": round(pairs_seen / wall, 3) if wall > 0 else None,
        "final_metrics": metrics,
        "shards": str(cfg.shards),
        "manifest_sha256": manifest_sha,
        "manifest_fingerprints": manifest.get("fingerprints", {}),
    }
    if rank == 0:
        figures.training_figure(read_metrics(out / "metrics.jsonl"), out / "training.png")  # the paper's Fig. 3 (right)
        atomic_write_json(out / "train_info.json", info)
    distributed.barrier()  # no rank returns before OUT is complete
    done = f"{pairs_seen} pairs in {wall:.1f} s ({info['pairs_per_s']} pairs/s)" if pairs_seen else "every step done by the run it resumes"
    console.print(f"Done: {state.step} steps, {done}; final loss {metrics.get('loss', float('nan')):.4f}; model saved to {out}")
    return info


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
        allowed = ("lower", "upper") if cfg.weighting == "random" else ()
        given = [n for n in REDERIVE_OPTIONS if getattr(cfg, n) is not None and n not in allowed]
        if given:
            raise TispipeError(
                f"--{', --'.join(given)} only apply to --weighting estimated (re-deriving weights), not {cfg.weighting}",
                hint="--weighting random takes --lower/--upper as its range",
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


def check_reference(cfg: TrainConfig, manifest: dict[str, Any], console) -> None:
    """Say so when the cached reference log-probs are not those of the model the user may think is the reference."""
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
