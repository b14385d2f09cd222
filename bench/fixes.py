"""Local experiment behind the recommended train-loop fixes (not part of `make bench`).

Times the dpo forward+backward of the policy on the same pairs three ways, alternating A B C A B C:
  current:  random batches, logits at every position (what tispipe.train.pair_forward does today)
  grouped:  the same pairs batched by length within windows of 16 batches (less padding)
  response: random batches, lm_head applied only at response label positions (no prompt/pad logits)

    .venv-bench/bin/python bench/fixes.py --model runs/base --shards runs/weights-dpo --batches 20 --threads 1
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from tispipe import losses as L
from tispipe.batching import forward_logits, make_pair_batch
from tispipe.logps import token_logps


def step_current(model, batch, b):
    logps = token_logps(forward_logits(model, batch), batch.input_ids[:, 1:])
    return logps


def step_response(model, batch, b):
    hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state[:, :-1]
    rows, cols = batch.response_mask.nonzero(as_tuple=True)
    logits = model.lm_head(hidden[rows, cols])  # (tokens, V): response positions only
    picked = logits.gather(-1, batch.input_ids[:, 1:][rows, cols][:, None])[:, 0] - logits.logsumexp(-1)
    logps = torch.zeros_like(batch.response_mask)
    return logps.index_put((rows, cols), picked)


def run(model, batches, pad_id, forward) -> float:
    start = time.perf_counter()
    for rows in batches:
        b = len(rows)
        batch = make_pair_batch([r["prompt_ids"] for r in rows], [r["chosen_ids"] for r in rows], [r["rejected_ids"] for r in rows], pad_id)
        logps = forward(model, batch, b)
        mask = batch.response_mask
        ref = logps.detach() - 0.01
        loss = L.dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], mask[:b], mask[b:], beta=0.1)[0].mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
    return sum(len(x) for x in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="sdpa").eval()
    shard = sorted(Path(args.shards, "shards").glob("*.parquet"))[0]
    rows = pq.read_table(shard, columns=["prompt_ids", "chosen_ids", "rejected_ids"]).to_pylist()
    random.Random(0).shuffle(rows)
    rows = rows[: args.batches * args.batch_size]
    bs = args.batch_size
    random_batches = [rows[i : i + bs] for i in range(0, len(rows), bs)]
    by_length = sorted(rows, key=lambda r: len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])))
    grouped = [by_length[i : i + bs] for i in range(0, len(by_length), bs)]
    random.Random(1).shuffle(grouped)
    pad_id = model.config.pad_token_id
    run(model, random_batches[:2], pad_id, step_current)  # warm-up
    rates = {"current": [], "grouped": [], "response": []}
    for _ in range(args.repeats):
        rates["current"].append(run(model, random_batches, pad_id, step_current))
        rates["grouped"].append(run(model, grouped, pad_id, step_current))
        rates["response"].append(run(model, random_batches, pad_id, step_response))
    medians = {k: statistics.median(v) for k, v in rates.items()}
    print(json.dumps({"pairs_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
                      "gain_grouped": round(medians["grouped"] / medians["current"], 3),
                      "gain_response_logits": round(medians["response"] / medians["current"], 3)}))


if __name__ == "__main__":
    main()
