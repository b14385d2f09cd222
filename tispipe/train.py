"""`tispipe train`: stream weight shards into a weighted-DPO loop (TIS-DPO, DPO, IPO, TDPO1/2).

One optimizer step = `grad_accum` micro-batches of `batch_size` pairs (TRL's convention: the
effective batch is batch_size * grad_accum). Each micro-batch goes through the policy in one
forward holding its chosen rows then its rejected rows (`batching.make_pair_batch`). The frozen
reference model runs only when the loss needs full-vocabulary KL terms (TIS-DPO with eta, TDPO);
DPO, IPO and TIS-DPO without eta use the reference log-probs cached in the shards.

Rows are streamed from the Parquet shards through a bounded, seeded shuffle buffer
(`shards.stream_rows`), so memory does not grow with the data. The stream is a pure function of
(seed, epoch, manifest), so a checkpoint records only (epoch, rows used in that epoch) and a
resumed run replays the same steps with the same losses. Within windows of 16 steps the pairs are
batched by length (`length_grouped_steps`), which cuts the padding the forwards spend time on.

Defaults are sized for the tiny toy model: lr 1e-4 with AdamW. The paper's 5e-7 (RMSprop) is for 7B
models; on the toy base (2M parameters, batch 16) TIS-DPO's loss after 40 steps falls from 0.69 to
0.53 at 3e-5, 0.32 at 1e-4, 0.12 at 3e-4 and 0.06 at 1e-3 (sequence KL to the reference ~2, 10, 26, 35).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from tispipe import distributed
from tispipe import losses as L
from tispipe.atomic import atomic_write_json, atomic_write_text
from tispipe.batching import forward_logits, make_pair_batch
from tispipe.checkpoint import (
    TrainState,
    checkpoint_parallel,
    checkpoints_dir,
    latest_checkpoint,
    load_training_state,
    quiet_transformers,
    read_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tispipe.config import config_dict, write_config
from tispipe.configs import TrainConfig
from tispipe.errors import TispipeError
from tispipe.logps import token_logps, token_logps_and_kl
from tispipe.models import (
    fingerprint_tokenizer,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from tispipe.shards import file_sha256, open_shard, read_manifest, shard_paths, stream_rows
from tispipe.weights import DEFAULT_BOUNDS, TRANSFORMS, compute_weights, random_weights

LOSSES = ("tisdpo", "dpo", "ipo", "tdpo1", "tdpo2")
WEIGHTINGS = ("estimated", "equal", "random")
OPTIMIZERS = ("adamw", "rmsprop")
SCHEDULERS = ("constant", "cosine")
REDERIVE_OPTIONS = ("transform", "k", "mu", "lower", "upper")
# Options that may change between a run and its --resume without changing what is trained.
RESUME_MAY_DIFFER = ("resume", "overwrite", "save_every", "device", "threads", "fsdp")




def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train a policy on the shards in cfg.shards and save it to cfg.out; return train_info.

    Under torchrun (tispipe.distributed) every rank runs this: the policy is wrapped in
    DistributedDataParallel (or FSDP with cfg.fsdp), rank r streams the rows at positions p % world == r
    of the one global order, and an optimizer step takes batch_size x grad_accum pairs on every rank
    (global batch batch_size x grad_accum x world). Rank 0 alone writes OUT.
    """
    from rich.console import Console

    console = Console(stderr=True)
    validate(cfg)
    out = Path(cfg.out)
    manifest = read_manifest(cfg.shards)
    # Footers only (cheap): a missing, truncated or miscounted shard fails now, not mid-run with OUT half written.
    for path, entry in zip(shard_paths(cfg.shards, manifest), manifest["shards"]):
        open_shard(path, entry["rows"])
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = distributed.setup(resolve_device(cfg.device))
    world, rank = distributed.world_size(), distributed.rank()
    console.quiet = console.quiet or rank != 0
    compute_dtype = resolve_dtype(cfg.dtype, device)
    if compute_dtype == torch.float16:
        raise TispipeError("--dtype float16 is not supported for training (no loss scaling)", hint="use bfloat16 or float32")
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    check_tokenizer(tokenizer, manifest, cfg)
    plan = weight_plan(cfg, manifest)
    # Only now, with the inputs checked, may an existing OUT be replaced.
    # Only rank 0 may delete (--overwrite) or judge OUT; the other ranks follow its decision.
    checkpoint, finished = distributed.broadcast_object(prepare_out(cfg, out) if rank == 0 else None)
    if checkpoint is not None:
        check_checkpoint_world(checkpoint, world, cfg.fsdp)
    if finished is not None:
        console.print(f"{out} already holds the finished run ({finished['steps']} steps); nothing to do")
        return finished
    if checkpoint is None:
        check_reference(cfg, manifest, console)

    # Master weights stay float32; on GPU the forward runs under bf16 autocast.
    ref_name = cfg.ref or cfg.model
    with quiet_transformers():
        policy = load_model(str(checkpoint or cfg.model), device=device, dtype="float32", trust_remote_code=cfg.trust_remote_code, for_training=True)
        ref = load_model(ref_name, device=device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code) if needs_ref(cfg) else None
    policy.eval()  # dropout off (as TRL does for DPO): policy == reference at step 0, gradients still flow
    model = wrap_policy(policy, cfg, device)  # the policy itself in a single process

    rows_per_epoch = sum(int(entry["rows"]) for entry in manifest["shards"])
    if rows_per_epoch < world:
        raise TispipeError(f"the shards hold {rows_per_epoch} pairs, fewer than the {world} processes")
    total_steps = planned_steps(cfg, rows_per_epoch, world)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, total_steps)
    state = TrainState(step=0, epoch=0, rows_in_epoch=0)
    if checkpoint is not None:
        state, _ = read_state(checkpoint)
        set_rng_state(load_training_state(checkpoint, optimizer, scheduler, device, optimizer_loader(model, optimizer, cfg)))
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

    ref_note = f"reference {ref_name}" if ref is not None else "cached reference log-probs"
    console.print(
        f"Training {cfg.loss} (weights: {plan['describe']}) on {rows_per_epoch} pairs x {cfg.epochs} epoch(s): "
        f"{total_steps} steps of {cfg.batch_size} x {cfg.grad_accum} pairs"
        + (f" x {world} processes ({'FSDP' if cfg.fsdp else 'DDP'})" if world > 1 else "")
        + f"; {ref_note}; {device}"
    )
    columns = stream_columns(cfg, plan)
    autocast = torch.autocast("cuda", dtype=compute_dtype) if device.startswith("cuda") and compute_dtype != torch.float32 else nullcontext()
    context = StepContext(model, ref, optimizer, scheduler, cfg, plan, tokenizer.pad_token_id, device, autocast)
    if world > 1:
        # A rank whose share of a step ran out still joins every gradient sync, with a zero-weighted row.
        first = stream_rows(cfg.shards, manifest, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, columns=columns, rank=rank, world_size=world)
        context.filler = [next(iter(first))]

    start_step, pairs_seen, started = state.step, 0, time.perf_counter()
    metrics: dict[str, float] = {}
    log_path = out / "metrics.jsonl" if rank == 0 else None
    per_step = cfg.batch_size * cfg.grad_accum * world
    with StopRequest() as stop, MetricsLog(log_path) as log, LiveLine(console, total_steps, state.step) as live:
        for epoch in range(state.epoch, cfg.epochs):
            if state.step >= total_steps:
                break
            skip = state.rows_in_epoch if epoch == state.epoch else 0
            state = TrainState(state.step, epoch, skip)
            batches = epoch_steps(cfg, manifest, columns, epoch, skip, rank, world)
            if world > 1:
                batches = even_steps(batches, math.ceil(rows_per_epoch / per_step) - skip // per_step)
            for micro_batches in batches:
                metrics = train_step(context, micro_batches)
                pairs = sum(len(m) for m in micro_batches) if world == 1 else metrics["pairs"]  # the global step's pairs
                pairs_seen += pairs
                state = TrainState(state.step + 1, epoch, state.rows_in_epoch + pairs)
                elapsed = time.perf_counter() - started
                metrics.update(step=state.step, epoch=epoch + state.rows_in_epoch / max(1, rows_per_epoch), pairs_per_s=pairs_seen / elapsed)
                log.write(metrics)
                live.update(metrics)
                if state.step >= total_steps:
                    break  # the final checkpoint and model are saved below
                stopping = stop.requested if world == 1 else distributed.all_reduce([stop.requested], "max")[0] > 0
                if (cfg.save_every > 0 and state.step % cfg.save_every == 0) or stopping:
                    path = checkpoint_all_ranks(out, state, policy, model, optimizer, scheduler, cfg)
                if stopping:
                    live.stop()
                    raise TispipeError(
                        f"stopped at step {state.step} of {total_steps}; checkpoint saved to {path}",
                        hint=f"continue with: tispipe train --config {out / 'config.yaml'} --resume",
                    )
            else:
                state = TrainState(state.step, epoch + 1, 0)
    wall = time.perf_counter() - started

    checkpoint_all_ranks(out, state, policy, model, optimizer, scheduler, cfg)
    full_state = gathered_model_state(model, cfg)
    if rank == 0:
        save_final_model(policy, tokenizer, out, full_state)
    info = {
        "steps": state.step,
        "epochs": round(state.epoch + state.rows_in_epoch / max(1, rows_per_epoch), 4),
        "resumed_from_step": start_step if checkpoint is not None else None,
        "pairs_this_run": pairs_seen,
        "wall_seconds": round(wall, 3),
        "pairs_per_s": round(pairs_seen / wall, 3) if wall > 0 else None,
        "final_metrics": metrics,
        "shards": str(cfg.shards),
        "manifest_sha256": file_sha256(Path(cfg.shards) / "manifest.json"),
        "manifest_fingerprints": manifest.get("fingerprints", {}),
    }
    if rank == 0:
        atomic_write_json(out / "train_info.json", info)
    distributed.barrier()  # no rank returns before OUT is complete
    console.print(
        f"Done: {state.step} steps, {pairs_seen} pairs in {wall:.1f} s ({info['pairs_per_s']} pairs/s); "
        f"final loss {metrics.get('loss', float('nan')):.4f}; model saved to {out}"
    )
    return info


# ---------------------------------------------------------------------------------------------
# Options, output folder, manifest checks


def validate(cfg: TrainConfig) -> None:
    """Reject bad option values before anything is loaded, naming the option."""
    for name, allowed in (("loss", LOSSES), ("weighting", WEIGHTINGS), ("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS)):
        if getattr(cfg, name) not in allowed:
            raise TispipeError(f"--{name} must be one of {', '.join(allowed)}, not {getattr(cfg, name)!r}")
    if cfg.transform is not None and cfg.transform not in TRANSFORMS:
        raise TispipeError(f"--transform must be one of {', '.join(TRANSFORMS)}, not {cfg.transform!r}")
    positive = {"beta": cfg.beta, "lr": cfg.lr, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "epochs": cfg.epochs, "shuffle_buffer": cfg.shuffle_buffer}
    if cfg.k is not None:
        positive["k"] = cfg.k
    if cfg.max_steps is not None:
        positive["max_steps"] = cfg.max_steps
    for name, value in positive.items():
        if not value > 0:
            raise TispipeError(f"--{name.replace('_', '-')} must be positive, not {value}")
    non_negative = {"threads": cfg.threads, "eta_coef": cfg.eta_coef, "alpha": cfg.alpha, "weight_decay": cfg.weight_decay, "warmup_steps": cfg.warmup_steps, "max_grad_norm": cfg.max_grad_norm, "save_every": cfg.save_every, "length_group_steps": cfg.length_group_steps}
    for name, value in non_negative.items():
        if not value >= 0:
            raise TispipeError(f"--{name.replace('_', '-')} must not be negative, not {value}")
    if cfg.lower is not None and cfg.upper is not None and not cfg.lower < cfg.upper:
        raise TispipeError(f"--lower ({cfg.lower}) must be smaller than --upper ({cfg.upper})")
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


def _is_train_folder(out: Path) -> bool:
    return any((out / name).exists() for name in ("config.yaml", "metrics.jsonl", "checkpoints", "train_info.json"))


def prepare_out(cfg: TrainConfig, out: Path) -> tuple[Path | None, dict | None]:
    """Apply --overwrite/--resume to an existing OUT; return (checkpoint to resume from, finished train_info)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        try:  # fail now, not after loading the models
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TispipeError(f"--out {out} is not writable ({e.strerror or e})") from None
        return None, None
    if not out.is_dir():
        raise TispipeError(f"--out {out} is a file, not a folder")
    if not cfg.resume and not cfg.overwrite:
        raise TispipeError(
            f"--out {out} already exists",
            hint="add --resume to continue it, --overwrite to start over, or choose another --out",
        )
    if not _is_train_folder(out):
        raise TispipeError(f"--out {out} holds files that are not a `tispipe train` run; refusing to {'replace' if cfg.overwrite else 'resume'} it")
    if cfg.overwrite:
        shutil.rmtree(out)
        return None, None
    previous = _previous_config(out)
    if previous is not None:
        current = config_dict(cfg)
        differing = sorted(k for k in set(previous) | set(current) if k not in RESUME_MAY_DIFFER and previous.get(k) != current.get(k))
        if differing:
            details = ", ".join(f"{k} ({previous.get(k)!r} -> {current.get(k)!r})" for k in differing)
            raise TispipeError(
                f"--resume with settings that differ from the run in {out}: {details}",
                hint="resume with the original settings, or use --overwrite (or another --out) to start a new run",
            )
    info_path = out / "train_info.json"
    if info_path.is_file():
        return None, json.loads(info_path.read_text(encoding="utf-8"))
    return latest_checkpoint(out), None


def _previous_config(out: Path) -> dict[str, Any] | None:
    path = out / "config.yaml"
    if path.is_file():
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    checkpoint = latest_checkpoint(out)
    return read_state(checkpoint)[1] if checkpoint else None


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
    from tispipe.models import fingerprint_model

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
    return cfg.loss in ("tdpo1", "tdpo2") or (cfg.loss == "tisdpo" and cfg.eta_coef != 0)


def weight_plan(cfg: TrainConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """How each token's weight is obtained: stored, re-derived from stored log-ratios, all ones, or random.

    Re-derivation starts from the settings the shards were made with and replaces the ones given.
    `--mu m` means mu = +m on chosen and -m on rejected tokens (the paper's +1/-1).
    """
    stored = _manifest_weight_settings(manifest)
    if cfg.weighting == "equal":
        return {"kind": "equal", "describe": "all 1"}
    if cfg.weighting == "random":
        default_lower, default_upper = DEFAULT_BOUNDS["exp"]
        lower = cfg.lower if cfg.lower is not None else _first(stored.get("lower"), default_lower)
        upper = cfg.upper if cfg.upper is not None else _first(stored.get("upper"), default_upper)
        if not lower < upper:
            raise TispipeError(f"random weights need --lower < --upper, got [{lower}, {upper}]")
        return {"kind": "random", "lower": lower, "upper": upper, "seed": cfg.seed, "describe": f"uniform in [{lower}, {upper}]"}
    if all(getattr(cfg, n) is None for n in REDERIVE_OPTIONS):
        return {"kind": "stored", "describe": "estimated, as stored"}
    settings = {
        "transform": cfg.transform or stored.get("transform") or "exp",
        "k": _first(cfg.k, stored.get("k"), 1.0),
        "mu": abs(_first(cfg.mu, stored.get("mu"), 1.0)),
        "lower": _first(cfg.lower, stored.get("lower")),
        "upper": _first(cfg.upper, stored.get("upper")),
        "low": _first(stored.get("low"), 0.7),
        "high": _first(stored.get("high"), 1.3),
    }
    if settings["transform"] != stored.get("transform") and cfg.lower is None and cfg.upper is None:
        settings["lower"] = settings["upper"] = None  # the new transform's own default bounds
    # Fail now, not at the first batch, on settings the weight function rejects.
    compute_weights(torch.zeros(1, 1), torch.ones(1, 1), settings["mu"], settings["transform"], settings["k"], settings["lower"], settings["upper"], settings["low"], settings["high"])
    shown = ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)
    return {"kind": "rederive", **settings, "describe": f"re-derived from stored log-ratios ({shown})"}


def _first(*values):
    return next((v for v in values if v is not None), None)


def _manifest_weight_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The estimate run's settings (transform, k, lower, upper; mu is always +1/-1 there)."""
    settings = manifest.get("settings")
    return settings if isinstance(settings, dict) else {}


def stream_columns(cfg: TrainConfig, plan: dict[str, Any]) -> list[str]:
    """Only the Parquet columns this run uses are read (the texts never are)."""
    columns = ["pair_id", "prompt_ids", "chosen_ids", "rejected_ids"]
    if not needs_ref(cfg):
        columns += ["chosen_ref_logps", "rejected_ref_logps"]
    if plan["kind"] == "stored":
        columns += ["chosen_weights", "rejected_weights"]
    if plan["kind"] == "rederive":
        columns += ["chosen_logratio", "rejected_logratio"]
    return columns


def planned_steps(cfg: TrainConfig, rows_per_epoch: int, world: int = 1) -> int:
    per_step = cfg.batch_size * cfg.grad_accum * world
    total = cfg.epochs * math.ceil(rows_per_epoch / per_step)
    return min(total, cfg.max_steps) if cfg.max_steps is not None else total


# ---------------------------------------------------------------------------------------------
# Optimizer, schedule, batching


def make_optimizer(cfg: TrainConfig, policy) -> torch.optim.Optimizer:
    params = [p for p in policy.parameters() if p.requires_grad]
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, warmup_steps: int, total_steps: int, kind: str) -> float:
    """Multiplier of the peak lr at 0-based step `step`: linear warmup (first step already > 0), then constant or cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg.warmup_steps, total_steps, cfg.scheduler))


def epoch_steps(cfg: TrainConfig, manifest: dict[str, Any], columns: list[str], epoch: int, skip: int, rank: int, world: int) -> Iterator[list[list[dict]]]:
    """This rank's optimizer steps of `epoch`, starting `skip` rows (of the global order) into it."""
    stream = functools.partial(stream_rows, cfg.shards, manifest, seed=cfg.seed, epoch=epoch, shuffle_buffer=cfg.shuffle_buffer, columns=columns)
    if not cfg.length_group_steps:
        rows = stream(skip=distributed.rank_skip(skip, rank, world), rank=rank, world_size=world)
        return step_batches(rows, cfg.batch_size, cfg.grad_accum)
    # Grouping runs on the global order (every rank reads all of it anyway) and each rank takes every
    # world-th row of each global micro-batch, so N processes train on the same steps as one process
    # with an N times larger batch. A window is a unit: a resumed run re-reads the window it stopped
    # in and drops the steps it had done.
    window = cfg.batch_size * world * cfg.grad_accum * cfg.length_group_steps
    stream_skip = skip - skip % window
    steps = length_grouped_steps(stream(skip=stream_skip), cfg.batch_size * world, cfg.grad_accum, cfg.length_group_steps, f"{cfg.seed}-{epoch}", stream_skip // window)
    steps = _drop_rows(steps, skip - stream_skip)
    if world == 1:
        return steps
    return ([part for micro in step if (part := micro[rank::world])] for step in steps)


def step_batches(rows: Iterable[dict], batch_size: int, grad_accum: int) -> Iterator[list[list[dict]]]:
    """Group a row stream into optimizer steps of up to `grad_accum` micro-batches of up to `batch_size` rows.

    Lazy: it holds at most one step's rows. The last step of an epoch may be smaller.
    """
    step: list[list[dict]] = []
    micro: list[dict] = []
    for row in rows:
        micro.append(row)
        if len(micro) == batch_size:
            step.append(micro)
            micro = []
            if len(step) == grad_accum:
                yield step
                step = []
    if micro:
        step.append(micro)
    if step:
        yield step


def pair_length(row: dict) -> tuple[int, int]:
    """Sort key of a pair: its longer response, then its prompt (the two widths of `batching.make_batch`)."""
    return max(len(row["chosen_ids"]), len(row["rejected_ids"])), len(row["prompt_ids"])


def length_grouped_steps(
    rows: Iterable[dict], batch_size: int, grad_accum: int, window_steps: int, seed: str, first_window: int = 0
) -> Iterator[list[list[dict]]]:
    """Steps whose micro-batches hold pairs of similar length, so little of each forward is padding.

    The stream is cut into windows of `window_steps` steps' rows; a window is sorted by `pair_length`,
    cut into micro-batches, and those are shuffled (seeded by `seed` and the window's index) and
    grouped `grad_accum` at a time. Steps stay in random order and every row is used once, as in
    `step_batches`; only which pairs share a micro-batch changes. Holds one window of rows.
    """
    window: list[dict] = []
    index = first_window
    for row in itertools.chain(rows, [None]):
        if row is not None:
            window.append(row)
            if len(window) < batch_size * grad_accum * window_steps:
                continue
        if not window:
            break
        window.sort(key=pair_length)
        micro = [window[i : i + batch_size] for i in range(0, len(window), batch_size)]
        full = len(window) // batch_size  # a short micro-batch (the epoch's end) stays last
        micro[:full] = random.Random(f"{seed}-{index}").sample(micro[:full], full)
        for i in range(0, len(micro), grad_accum):
            yield micro[i : i + grad_accum]
        window, index = [], index + 1


def _drop_rows(steps: Iterator[list[list[dict]]], rows: int) -> Iterator[list[list[dict]]]:
    """`steps` without its leading steps holding `rows` rows (those a resumed run has already taken)."""
    while rows > 0 and (step := next(steps, None)) is not None:
        rows -= sum(len(m) for m in step)
    if rows != 0:
        raise TispipeError("the checkpoint's position does not fall between two steps of this run's data order")
    return steps


# ---------------------------------------------------------------------------------------------
# One step


@dataclass
class StepContext:
    policy: Any
    ref: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cfg: TrainConfig
    plan: dict[str, Any]
    pad_id: int
    device: str
    autocast: Any
    filler: list[dict] | None = None  # under torchrun: a row for the zero-weighted passes of a rank with none left


def train_step(ctx: StepContext, micro_batches: list[list[dict]]) -> dict[str, float]:
    """Forward/backward every micro-batch, clip, step; return the step's metrics (means over its pairs).

    Each micro-batch's summed loss is divided by the step's pair count, so the accumulated gradient is
    the gradient of the mean loss over the whole step, whatever the micro-batch sizes.

    Under torchrun the step's pairs are those of every rank: the pair count is summed over the ranks,
    and as DDP/FSDP average the ranks' gradients (sum / world) each rank divides its summed loss by
    (global pairs / world), so the synced gradient is that of sum(all losses) / global pairs, the same
    as one process taking the whole global batch. Every rank runs as many backward passes as the rank
    with the most micro-batches (each last pass syncs gradients); missing ones are zero-weighted.
    """
    n_pairs = sum(len(m) for m in micro_batches)
    passes, divisor, world = len(micro_batches), n_pairs, distributed.world_size()
    if world > 1:
        n_pairs = int(distributed.all_reduce([n_pairs])[0])
        passes = int(distributed.all_reduce([passes], "max")[0])
        divisor = n_pairs / world
    sums: dict[str, float] = defaultdict(float)
    for i in range(passes):
        real = i < len(micro_batches)
        rows = micro_batches[i] if real else ctx.filler
        with gradient_sync(ctx.policy, i == passes - 1):
            pair_losses, per_pair = pair_forward(ctx, rows)
            loss = pair_losses.sum() / divisor
            (loss if real else loss * 0.0).backward()
        for name, values in per_pair.items():
            sums[name] += float(values.sum()) if real else 0.0
    if world > 1:
        names = sorted(sums)
        sums = dict(zip(names, distributed.all_reduce([sums[n] for n in names])))
    params = [p for p in ctx.policy.parameters() if p.requires_grad]
    max_norm = ctx.cfg.max_grad_norm if ctx.cfg.max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
        grad_norm = grad_norm.full_tensor()
    lr = ctx.optimizer.param_groups[0]["lr"]
    ctx.optimizer.step()
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    metrics = {name: total / n_pairs for name, total in sums.items()}
    metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    metrics.update(grad_norm=float(grad_norm), lr=lr, pairs=n_pairs)
    return metrics


def pair_forward(ctx: StepContext, rows: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair losses (B,) with gradient, and detached per-pair metric values (each (B,))."""
    cfg, b = ctx.cfg, len(rows)
    batch = make_pair_batch([r["prompt_ids"] for r in rows], [r["chosen_ids"] for r in rows], [r["rejected_ids"] for r in rows], ctx.pad_id).to(ctx.device)
    labels, mask = batch.labels, batch.response_mask
    with ctx.autocast:
        policy_logits = forward_logits(ctx.policy, batch)
    kl = None
    if ctx.ref is not None:
        with torch.inference_mode(), ctx.autocast:
            ref_logits = forward_logits(ctx.ref, batch)
        ref_logits = ref_logits.clone()  # a normal tensor, usable in autograd
        # TIS-DPO's eta takes KL(policy || ref) (paper Eqs. 16-17); TDPO's SeqKL takes KL(ref || policy).
        policy_logps, ref_logps, kl = token_logps_and_kl(policy_logits, ref_logits, labels, policy_first=cfg.loss == "tisdpo")
    else:
        policy_logps = token_logps(policy_logits, labels)
        ref_logps = _place(batch, rows, "ref_logps")
    weights = token_weights(ctx.plan, batch, rows)

    chosen, rejected = slice(0, b), slice(b, 2 * b)
    args = (policy_logps[chosen], policy_logps[rejected], ref_logps[chosen], ref_logps[rejected], mask[chosen], mask[rejected])
    if cfg.loss == "dpo":
        pair_losses, chosen_rewards, rejected_rewards = L.dpo_loss(*args, beta=cfg.beta)
    elif cfg.loss == "ipo":
        pair_losses, chosen_rewards, rejected_rewards = L.ipo_loss(*args, beta=cfg.beta)
    elif cfg.loss == "tisdpo":
        kl_chosen, kl_rejected = (kl[chosen], kl[rejected]) if kl is not None else (None, None)
        pair_losses, chosen_rewards, rejected_rewards = L.tisdpo_loss(
            *args, weights[chosen], weights[rejected], kl_chosen, kl_rejected, beta=cfg.beta, eta_coef=cfg.eta_coef
        )
    else:
        pair_losses, chosen_rewards, rejected_rewards = L.tdpo_loss(
            *args, kl[chosen], kl[rejected], beta=cfg.beta, alpha=cfg.alpha, variant=int(cfg.loss[-1])
        )

    with torch.no_grad():
        logratio = policy_logps.detach() - ref_logps
        token_counts = mask.sum(-1).clamp(min=1)
        per_pair = {
            "loss": pair_losses.detach(),
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        }
        for side, rows_of_side in (("chosen", chosen), ("rejected", rejected)):
            side_mask = mask[rows_of_side]
            per_pair[f"logps/{side}"] = L.masked_sum(policy_logps.detach()[rows_of_side], side_mask)
            per_pair[f"logratio/{side}"] = L.masked_sum(logratio[rows_of_side], side_mask)
            per_pair[f"logratio/{side}_weighted"] = L.masked_sum(logratio[rows_of_side], side_mask, weights[rows_of_side])
            per_pair[f"weights/{side}_mean"] = L.masked_sum(weights[rows_of_side], side_mask) / token_counts[rows_of_side]
            if kl is not None:
                per_pair[f"kl/{side}"] = L.masked_sum(kl.detach()[rows_of_side], side_mask)
    return pair_losses, per_pair


def _place(batch, rows: list[dict], column: str) -> torch.Tensor:
    """The chosen then rejected per-token lists of `column` (e.g. "ref_logps") as a (2B, L-1) tensor."""
    chosen = [r.get(f"chosen_{column}") for r in rows]
    rejected = [r.get(f"rejected_{column}") for r in rows]
    if any(v is None for v in chosen + rejected):
        raise TispipeError(
            f"the shards hold no {column} for some pairs",
            hint="re-run `tispipe estimate`, or pick a loss/weighting that does not need them",
        )
    try:
        return batch.place(chosen + rejected)
    except ValueError as e:
        ids = [r.get("pair_id") for r in rows]
        raise TispipeError(f"shard column {column} does not line up with the token ids in pairs {ids}: {e}") from None


def token_weights(plan: dict[str, Any], batch, rows: list[dict]) -> torch.Tensor:
    """(2B, L-1) weights, chosen rows first, 0 outside responses."""
    mask = batch.response_mask
    b = len(rows)
    if plan["kind"] == "equal":
        return mask.clone()
    if plan["kind"] == "stored":
        return _place(batch, rows, "weights")
    if plan["kind"] == "random":
        values = [_random_row(plan, r, "chosen") for r in rows] + [_random_row(plan, r, "rejected") for r in rows]
        return batch.place(values)
    logratio = _place(batch, rows, "logratio")
    options = {"transform": plan["transform"], "k": plan["k"], "lower": plan["lower"], "upper": plan["upper"], "low": plan["low"], "high": plan["high"]}
    chosen = compute_weights(logratio[:b], mask[:b], plan["mu"], **options)
    rejected = compute_weights(logratio[b:], mask[b:], -plan["mu"], **options)
    return torch.cat([chosen, rejected])


def _random_row(plan: dict[str, Any], row: dict, side: str) -> list[float]:
    """Uniform weights for one response, a pure function of (seed, pair_id, side): the same in every epoch and after resuming."""
    key = hashlib.sha256(f"{plan['seed']}:{row['pair_id']}:{side}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & ((1 << 63) - 1))
    length = len(row[f"{side}_ids"])
    return random_weights(torch.ones(1, length), plan["lower"], plan["upper"], generator)[0].tolist()


# ---------------------------------------------------------------------------------------------
# Outputs: metrics file, live line, Ctrl-C, final model


class MetricsLog:
    """OUT/metrics.jsonl, one JSON object per step, appended and flushed as it happens (path None: nothing)."""

    def __init__(self, path: Path | None):
        self.path = path

    def __enter__(self):
        self.file = open(self.path, "a", encoding="utf-8") if self.path is not None else None
        return self

    def write(self, metrics: dict[str, float]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(metrics, sort_keys=True) + "\n")
            self.file.flush()

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop logged steps after `step` (and a half-written last line) so a resumed run's log has each step once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class LiveLine:
    """A rich progress bar with the latest metrics on the same line; in a log file (no terminal), a plain
    line every ~5% of the steps instead of one truncated final frame."""

    def __init__(self, console, total_steps: int, done_steps: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console, self.total = console, total_steps
        self.every = max(1, total_steps // 20)
        self.progress = None
        if console.is_terminal:
            self.progress = Progress(
                TextColumn("step"), MofNCompleteColumn(), BarColumn(bar_width=20), TimeRemainingColumn(), TextColumn("{task.fields[line]}"),
                console=console,
            )
            self.task = self.progress.add_task("train", total=total_steps, completed=done_steps, line="")

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def update(self, m: dict[str, float]) -> None:
        parts = [f"loss {m['loss']:.4f}", f"acc {m['rewards/accuracies']:.2f}", f"margin {m['rewards/margins']:+.3f}",
                 f"chosen {m['rewards/chosen']:+.3f}", f"rejected {m['rewards/rejected']:+.3f}"]
        if "kl/chosen" in m:
            parts.append(f"kl {m['kl/chosen']:.3f}/{m['kl/rejected']:.3f}")
        parts += [f"|g| {m['grad_norm']:.2f}", f"lr {m['lr']:.1e}", f"{m['pairs_per_s']:.1f} pairs/s", f"ep {m['epoch']:.2f}"]
        line = "  ".join(parts)
        if self.progress is not None:
            self.progress.update(self.task, completed=m["step"], line=line)
        elif m["step"] % self.every == 0 or m["step"] == self.total:
            self.console.print(f"step {m['step']}/{self.total}  {line}", soft_wrap=True, highlight=False)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __exit__(self, *exc) -> None:
        self.stop()


class StopRequest:
    """First Ctrl-C: finish the current step, save a checkpoint and stop. Second Ctrl-C: stop at once."""

    def __enter__(self):
        self.requested = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        os.write(2, b"\nStopping after this step and saving a checkpoint (Ctrl-C again to quit without saving)\n")

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def save_final_model(policy, tokenizer, out: Path, state_dict: dict | None = None) -> None:
    """The policy (safetensors + config) and its tokenizer in OUT, each file moved into place whole.

    `state_dict`: the full weights gathered from an FSDP-sharded policy (None: the policy's own)."""
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
    try:
        with quiet_transformers():
            if state_dict is None:
                policy.save_pretrained(tmp, safe_serialization=True)
            else:
                policy.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
        for path in tmp.iterdir():
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)



# ---------------------------------------------------------------------------------------------
# torchrun: wrapping the policy, even steps, checkpoints written by rank 0


def wrap_policy(policy, cfg: TrainConfig, device: str):
    """The policy as the step loop drives it: itself in one process, DDP or FSDP under torchrun."""
    if distributed.world_size() == 1:
        if cfg.fsdp:
            raise TispipeError("--fsdp shards the model over several processes: start the run with torchrun", hint="torchrun --nproc-per-node N -m tispipe train ... --fsdp")
        return policy
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard  # FSDP2 (per-parameter sharding); runs on gloo too

        # One FSDP unit per transformer block (the classes transformers names as never to be split),
        # then the rest (embeddings, head): a block's weights are gathered only while it runs.
        block_types = tuple(getattr(policy, "_no_split_modules", None) or ())
        for module in policy.modules():
            if type(module).__name__ in block_types:
                fully_shard(module)
        fully_shard(policy)
        return policy
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(policy, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)


def gradient_sync(model, last: bool):
    """Sync gradients on a step's last backward pass only (accumulation); nothing to do in one process."""
    if distributed.world_size() == 1:
        return nullcontext()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP
        model.set_requires_gradient_sync(last)
        return nullcontext()
    return nullcontext() if last else model.no_sync()  # DDP


def even_steps(steps: Iterable[list[list[dict]]], count: int) -> Iterator[list[list[dict]]]:
    """Exactly `count` steps: a rank whose share of the epoch ran out gets empty steps (it still syncs)."""
    steps = iter(steps)
    for _ in range(count):
        yield next(steps, [])


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def gathered_model_state(model, cfg: TrainConfig) -> dict | None:
    """FSDP: the full weights, gathered on every rank (a collective); None otherwise (the module saves itself)."""
    if distributed.world_size() == 1 or not cfg.fsdp:
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def checkpoint_all_ranks(out: Path, state: TrainState, policy, model, optimizer, scheduler, cfg: TrainConfig) -> Path:
    """Every rank calls this at the same step; rank 0 writes the checkpoint, the others wait for it."""
    world = distributed.world_size()
    if world == 1:
        return save_checkpoint(out, state, policy, optimizer, scheduler, rng_state(), config_dict(cfg))
    model_state = gathered_model_state(model, cfg)
    optimizer_state = None
    if cfg.fsdp:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        optimizer_state = get_optimizer_state_dict(model, optimizer, options=_full_options())
    path = checkpoints_dir(out) / f"step-{state.step}"
    if distributed.is_main():
        path = save_checkpoint(
            out, state, policy, optimizer, scheduler, rng_state(), config_dict(cfg),
            model_state=model_state, optimizer_state=optimizer_state, parallel={"world_size": world, "fsdp": cfg.fsdp},
        )
    distributed.barrier()
    return path


def optimizer_loader(model, optimizer, cfg: TrainConfig):
    """How a checkpoint's optimizer state goes back in: FSDP scatters the full state to the shards; None: load_state_dict."""
    if distributed.world_size() == 1 or not cfg.fsdp:
        return None
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    return lambda full: set_optimizer_state_dict(model, optimizer, optim_state_dict=full, options=_full_options())


def check_checkpoint_world(checkpoint: Path, world: int, fsdp: bool) -> None:
    """A run resumes on as many processes as it started with (the global batch and the data split depend on it)."""
    saved = checkpoint_parallel(checkpoint)
    if saved["world_size"] != world or (world > 1 and saved["fsdp"] != fsdp):
        was = f"{saved['world_size']} process(es)" + (" with --fsdp" if saved["fsdp"] else "")
        now = f"{world} process(es)" + (" with --fsdp" if fsdp and world > 1 else "")
        raise TispipeError(
            f"{checkpoint} was written by a run on {was}; this one has {now}",
            hint=f"resume with the same torchrun --nnodes x --nproc-per-node ({saved['world_size']} in all)" + (" and --fsdp" if saved["fsdp"] else ""),
        )
