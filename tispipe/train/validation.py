"""Held-out pairs measured while `tispipe train` runs (--eval-data, --eval-every): eval/ metrics, TRL's names.

--eval-data is either
- a `tispipe estimate` folder of held-out pairs: its rows are read like the training shards and weighted
  by the run's own weight plan, so eval/loss is the training loss on pairs it never trains on; or
- any pair source --data reads, tokenized with the reading settings the training shards were made with.
  Those pairs carry no token weights, so every token counts once (weights 1; --weighting random keeps
  its seeded random weights), and when the loss uses cached reference log-probs they are computed once,
  at the start, with the reference model (--ref, else --model).

The metrics are those of a training step (`step.pair_forward`) averaged over the held-out pairs,
prefixed `eval/`: eval/loss, eval/rewards/accuracies, eval/rewards/margins, eval/rewards/chosen, ...
Under torchrun every process measures all of them (the same forwards on every rank, as FSDP needs).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tispipe.artifacts.shards import iter_shard_rows, read_manifest, shard_paths, verify_shards
from tispipe.configs import TrainConfig
from tispipe.data.held_out import read_options_of, read_pairs
from tispipe.errors import TispipeError
from tispipe.train.step import StepContext, WeightPlan, logits_runs, pair_forward

EVAL_PREFIX = "eval/"


@dataclass
class HeldOutPairs:
    rows: list[dict[str, Any]]  # shard-row dicts: pair_id, prompt_ids, chosen_ids, rejected_ids, and what the loss reads
    plan: WeightPlan
    describe: str  # for the run's first lines


def load_held_out(cfg: TrainConfig, manifest: dict[str, Any], plan: WeightPlan, columns: list[str], cached_ref: bool, tokenizer, device: str,
                  console) -> HeldOutPairs | None:
    """The run's held-out pairs (None without --eval-data); `columns`: the shard columns training reads,
    `cached_ref`: whether the loss takes reference log-probs from the rows."""
    if not cfg.eval_data:
        return None
    folder = Path(cfg.eval_data)
    if (folder / "manifest.json").is_file():
        eval_manifest = read_manifest(folder)
        verify_shards(folder, eval_manifest)
        ours, theirs = (manifest.get("fingerprints") or {}).get("tokenizer"), (eval_manifest.get("fingerprints") or {}).get("tokenizer")
        if ours and theirs and ours != theirs:
            raise TispipeError(f"--eval-data {folder} was tokenized with another tokenizer (fingerprint {theirs}) than --shards (fingerprint {ours})")
        rows = [row for path, entry in zip(shard_paths(folder, eval_manifest), eval_manifest["shards"], strict=True)
                for row in iter_shard_rows(path, columns, entry["rows"], vocab_size=len(tokenizer))]
        return HeldOutPairs(rows, plan, f"{len(rows)} held-out pairs from the estimate folder {folder} (weights: {plan.describe})")

    pairs = read_pairs(cfg.eval_data, read_options_of(manifest.get("settings") or {}), cfg.eval_split, tokenizer, console)
    rows = [{"pair_id": p.pair_id, "prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids} for p in pairs]
    if cached_ref:
        from tispipe.modeling.batching import reference_logps
        from tispipe.modeling.models import load_model

        ref = load_model(cfg.ref or cfg.model, device=device, dtype="float32", trust_remote_code=cfg.trust_remote_code)
        for row, (chosen, rejected) in zip(rows, reference_logps(ref, pairs, tokenizer.pad_token_id, 2 * cfg.batch_size), strict=True):
            row["chosen_ref_logps"], row["rejected_ref_logps"] = chosen, rejected
        del ref
    if plan.kind != "random":
        plan = WeightPlan(kind="equal", describe="all 1: pairs without estimated weights")
    return HeldOutPairs(rows, plan, f"{len(rows)} held-out pairs from {cfg.eval_data} (weights: {plan.describe})")


@torch.no_grad()
def evaluate(ctx: StepContext, held_out: HeldOutPairs) -> dict[str, float]:
    """eval/<name>: the mean over the held-out pairs of each per-pair metric a training step reports."""
    context = dataclasses.replace(ctx, plan=held_out.plan)
    sums: dict[str, float] = defaultdict(float)
    for start in range(0, len(held_out.rows), ctx.cfg.batch_size):
        for run in logits_runs(ctx, held_out.rows[start : start + ctx.cfg.batch_size]):  # bounded as a training step is
            _, per_pair = pair_forward(context, run)
            for name, values in per_pair.items():
                sums[name] += float(values.sum())
    n = len(held_out.rows)
    metrics = {f"{EVAL_PREFIX}{name}": total / n for name, total in sums.items()}
    metrics[f"{EVAL_PREFIX}rewards/margins"] = metrics[f"{EVAL_PREFIX}rewards/chosen"] - metrics[f"{EVAL_PREFIX}rewards/rejected"]
    return metrics


def due(cfg: TrainConfig, step: int, total_steps: int) -> bool:
    """Measure after this step: every --eval-every steps, and after the last one."""
    return bool(cfg.eval_data) and ((cfg.eval_every > 0 and step % cfg.eval_every == 0) or step == total_steps)
