"""`tispipe reward-model`: a Bradley-Terry reward model trained on preference pairs, for `eval --reward-model`.

The model is the base model's body with a new one-output score head (AutoModelForSequenceClassification,
num_labels=1), trained on each pair's two sequences with loss -log sigmoid(r(x, y_w) - r(x, y_l))
(`losses.bradley_terry_loss`). A sequence is the prompt's token ids followed by the response's, without
its EOS, left padded: exactly what `eval --reward-model` feeds it (`generation.reward_scores`).

Held-out pairs (`--eval-data`, or `--eval-fraction` of `--data` carved by pair_id, `tispipe.data.held_out`)
are scored every `--eval-every` steps and at the end: eval/loss, eval/accuracy (chosen scored strictly
higher) and eval/margin. OUT holds the model and tokenizer (save_pretrained: it loads anywhere),
metrics.jsonl (and `--report-to`'s tracker, as in train), config.yaml, checkpoints/ and reward_model_info.json. Each epoch's order is a seeded
permutation, so a checkpoint records only (epoch, pairs used in it) and `--resume` replays the same
steps exactly; Ctrl-C saves a checkpoint first. OUT is claimed as `tispipe train` claims it (`tispipe.train.output`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from pathlib import Path
from typing import Any

import torch

from tispipe.artifacts.atomic import atomic_write_json, cleaned_up_on_failure, output_lock
from tispipe.artifacts.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_training_state,
    read_state,
    rng_state,
    save_checkpoint,
    save_final_model,
)
from tispipe.artifacts.metrics_log import keep_metrics_until
from tispipe.artifacts.trackers import Tracker, check_report_to
from tispipe.config_files import config_dict, write_config
from tispipe.configs import RewardModelConfig, check_options
from tispipe.console import log_console
from tispipe.core.losses import bradley_terry_loss
from tispipe.data.held_out import carve, read_pairs
from tispipe.errors import TispipeError
from tispipe.modeling.generation import sequence_scores
from tispipe.modeling.models import check_model, load_reward_model, load_tokenizer, resolve_device
from tispipe.modeling.optim import make_scheduler
from tispipe.train.loop import StepLoop, loading_models
from tispipe.train.output import claim_out

INFO_FILE = "reward_model_info.json"


def run(cfg: RewardModelConfig) -> dict[str, Any]:
    """Train, holding OUT's lock; a new OUT that fails before its first checkpoint is removed again."""
    with output_lock(cfg.out), cleaned_up_on_failure(cfg.out, lambda out: latest_checkpoint(out) is not None, resume="add --resume to the same command to continue"):
        return _train(cfg)


def _train(cfg: RewardModelConfig) -> dict[str, Any]:
    validate(cfg)
    out = Path(cfg.out)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    console = log_console()
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    pairs = read_pairs(cfg.data, cfg, cfg.split, tokenizer, console)
    if cfg.eval_data:
        held_out = read_pairs(cfg.eval_data, cfg, cfg.eval_split, tokenizer, console)
    else:
        pairs, held_out = carve(pairs, cfg.eval_fraction, cfg.seed)
    check_model(cfg.model, "--model", tokenizer, cfg.trust_remote_code)
    checkpoint, finished, replaced = claim_out(cfg, out, info_file=INFO_FILE, command="reward-model")
    if finished is not None:
        console.print(f"{out} already holds the finished reward model ({finished['steps']} steps); nothing to do")
        return finished
    torch.manual_seed(cfg.seed)  # the new score head's initial weights
    random.seed(cfg.seed)
    with loading_models(replaced, checkpoint):
        model, _ = load_reward_model(str(checkpoint or cfg.model), device=device, dtype="float32", trust_remote_code=cfg.trust_remote_code, for_training=True,
                                     tokenizer=tokenizer)

    steps_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    total_steps = min(cfg.max_steps or math.inf, cfg.epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, total_steps, "constant")
    state = TrainState(step=0, epoch=0, rows_in_epoch=0)
    if checkpoint is not None:
        state, _ = read_state(checkpoint)
        load_training_state(checkpoint, optimizer, scheduler, device)
        console.print(f"Resuming from {checkpoint} (step {state.step}, epoch {state.epoch}, {state.rows_in_epoch} pairs into it)")
    keep_metrics_until(out / "metrics.jsonl", state.step)  # steps logged after the checkpoint are replayed
    write_config(dataclasses.replace(cfg, resume=False, overwrite=False), out / "config.yaml")
    console.print(
        f"Training a reward model on {len(pairs)} pairs x {cfg.epochs} epoch(s): {total_steps} steps of {cfg.batch_size} pairs; "
        f"{len(held_out)} held-out pairs; {device}"
    )

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    start_step = state.step
    loop = StepLoop(command="reward-model", out=out, console=console, total_steps=total_steps, start=state, rows_per_epoch=len(pairs),
                    save_every=cfg.save_every, save=lambda at: save_checkpoint(out, at, model, optimizer, scheduler, rng_state(), config_dict(cfg)),
                    tracker=Tracker(cfg.report_to, out, out.name, config_dict(cfg)), log_path=out / "metrics.jsonl", label="reward model",
                    step_line=step_line)
    with loop:
        while state.step < total_steps:
            order = epoch_order(len(pairs), cfg.seed, state.epoch)
            batch = [pairs[i] for i in order[state.rows_in_epoch : state.rows_in_epoch + cfg.batch_size]]
            metrics = train_step(model, optimizer, scheduler, batch, eos, pad, device, cfg.max_grad_norm)
            rows = state.rows_in_epoch + len(batch)
            state = TrainState(state.step + 1, state.epoch + 1, 0) if rows >= len(pairs) else TrainState(state.step + 1, state.epoch, rows)
            due = state.step == total_steps or (cfg.eval_every and state.step % cfg.eval_every == 0)
            loop.record(state, metrics, len(batch), measure=(lambda: evaluate(model, held_out, eos, pad, device, 2 * cfg.batch_size)) if due else None)
    metrics = loop.finish(state)
    held_out_metrics = {k: v for k, v in metrics.items() if k.startswith("eval/")}  # measured after the last step
    save_final_model(model, tokenizer, out)
    wall, training_seconds = loop.wall, loop.wall - loop.eval_seconds
    info = {
        "steps": state.step,
        "epochs": round(state.epoch + state.rows_in_epoch / len(pairs), 4),
        "resumed_from_step": start_step if checkpoint is not None else None,
        "train_pairs": len(pairs),
        "held_out_pairs": len(held_out),
        "held_out": {k.removeprefix("eval/"): v for k, v in held_out_metrics.items()},
        "final_metrics": metrics,
        "wall_seconds": round(wall, 3),
        "pairs_per_s": round(loop.pairs_seen / training_seconds, 3) if training_seconds > 0 and loop.pairs_seen else None,
    }
    atomic_write_json(out / INFO_FILE, info)
    console.print(
        f"Done: {state.step} steps; held-out accuracy {held_out_metrics['eval/accuracy']:.3f} on {len(held_out)} pairs "
        f"(loss {held_out_metrics['eval/loss']:.4f}); reward model saved to {out} (use it with: tispipe eval --reward-model {out})"
    )
    return info


def validate(cfg: RewardModelConfig) -> None:
    check_options(
        cfg, positive=("lr", "batch_size", "epochs", "max_steps"),
        non_negative=("threads", "weight_decay", "warmup_steps", "max_grad_norm", "save_every", "eval_every"),
    )
    check_report_to(cfg.report_to)
    if not 0 < cfg.eval_fraction < 1:
        raise TispipeError(f"--eval-fraction must be between 0 and 1 (exclusive), not {cfg.eval_fraction}")
    if cfg.resume and cfg.overwrite:
        raise TispipeError("give --resume or --overwrite, not both")


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The pairs' order in `epoch`: a permutation that depends on (seed, epoch) alone."""
    key = int.from_bytes(hashlib.sha256(f"reward-model:{seed}:{epoch}".encode()).digest()[:8], "little") & ((1 << 63) - 1)
    return torch.randperm(n, generator=torch.Generator().manual_seed(key)).tolist()


def scored_sequences(pairs: list, eos: int) -> list[list[int]]:
    """The chosen sequences then the rejected ones: prompt ids + response ids without the final EOS."""
    def sequence(prompt: list[int], response: list[int]) -> list[int]:
        return prompt + (response[:-1] if response and response[-1] == eos and len(response) > 1 else response)

    return [sequence(p.prompt_ids, p.chosen_ids) for p in pairs] + [sequence(p.prompt_ids, p.rejected_ids) for p in pairs]


def pair_scores(model, pairs: list, eos: int, pad: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores (B,), rejected scores (B,)), one forward over the 2B sequences."""
    scores = sequence_scores(model, scored_sequences(pairs, eos), pad, device)
    return scores[: len(pairs)], scores[len(pairs) :]


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Sums over the pairs (divided by the caller): loss, accuracy (strictly higher), margin, both rewards."""
    chosen, rejected = chosen.detach(), rejected.detach()
    return {
        "loss": float(bradley_terry_loss(chosen, rejected).sum()),
        "accuracy": float((chosen > rejected).float().sum()),
        "margin": float((chosen - rejected).sum()),
        "rewards/chosen": float(chosen.sum()),
        "rewards/rejected": float(rejected.sum()),
    }


def train_step(model, optimizer, scheduler, batch: list, eos: int, pad: int, device: str, max_grad_norm: float) -> dict[str, float]:
    model.train()
    chosen, rejected = pair_scores(model, batch, eos, pad, device)
    loss = bradley_terry_loss(chosen, rejected).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else float("inf")))
    if not (math.isfinite(grad_norm) and math.isfinite(loss.item())):
        optimizer.zero_grad(set_to_none=True)
        raise TispipeError(f"the loss ({loss.item():.4g}) or the gradient norm ({grad_norm:.4g}) is not finite; stopped before updating", hint="lower --lr")
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    metrics = {k: v / len(batch) for k, v in pair_metrics(chosen, rejected).items()}
    return {**metrics, "grad_norm": grad_norm, "lr": lr}


@torch.no_grad()
def evaluate(model, pairs: list, eos: int, pad: int, device: str, batch_size: int) -> dict[str, float]:
    """eval/loss, eval/accuracy, eval/margin, eval/rewards/chosen|rejected: means over `pairs`."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    for start in range(0, len(pairs), batch_size):
        for name, value in pair_metrics(*pair_scores(model, pairs[start : start + batch_size], eos, pad, device)).items():
            sums[name] = sums.get(name, 0.0) + value
    model.train(was_training)
    return {f"eval/{name}": total / len(pairs) for name, total in sums.items()}


def step_line(m: dict[str, float]) -> str:
    parts = [f"loss {m['loss']:.4f}", f"acc {m['accuracy']:.2f}", f"margin {m['margin']:+.3f}"]
    if "eval/accuracy" in m:
        parts.append(f"eval acc {m['eval/accuracy']:.3f}")
    return "  ".join([*parts, f"|g| {m['grad_norm']:.2f}", f"lr {m['lr']:.1e}", f"{m['pairs_per_s']:.1f} pairs/s", f"ep {m['epoch']:.2f}"])
