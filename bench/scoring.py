"""Scoring throughput: tispipe estimate's scoring loop vs a naive one-sequence-at-a-time loop vs the matmul ceiling.

Both sides score the same pairs with three models (reference, pi+, pi-: three loads of one folder, as
estimate does with --pos-model/--neg-model) and produce per-response-token log-probs. Rates are response
tokens (chosen + rejected, EOS included) per second; the ceiling fraction counts the useful forward FLOPs
(real tokens, no padding) of the three models against dense float32 matmul throughput.

    python bench/scoring.py --model runs/base --shards runs/weights-dpo --pairs 512 --naive-pairs 48 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import forward_flops_per_token, load_average, matmul_gflops  # noqa: E402


def read_items(shards: Path, pairs: int):
    from tispipe.data.pairs import TokenizedPair

    manifest = json.loads((shards / "manifest.json").read_text())
    items = []
    for entry in manifest["shards"]:
        for row in pq.read_table(shards / "shards" / entry["file"], columns=["pair_id", "prompt_ids", "chosen_ids", "rejected_ids"]).to_pylist():
            items.append(TokenizedPair(row["pair_id"], "", "", "", row["prompt_ids"], row["chosen_ids"], row["rejected_ids"], truncated=False))
            if len(items) == pairs:
                return items
    return items


def response_tokens(items) -> int:
    return sum(len(i.chosen_ids) + len(i.rejected_ids) for i in items)


def useful_flops(items, config, models: int = 3) -> float:
    total = 0.0
    for item in items:
        for response in (item.chosen_ids, item.rejected_ids):
            n = len(item.prompt_ids) + len(response)
            total += n * forward_flops_per_token(config, n)
    return models * total


def tispipe_scoring(model: str, items, batch_size: int) -> float:
    """Seconds for tispipe.estimate.score.shard_rows (batched scoring, weights, row building) over `items`."""
    from tispipe.configs import EstimateConfig
    from tispipe.estimate.score import Scorer, shard_rows
    from tispipe.modeling.models import load_tokenizer

    cfg = EstimateConfig(data="", model=model, out="", method="sft", pos_model=model, neg_model=model, batch_size=batch_size)
    scorer = Scorer(cfg, load_tokenizer(model), model, model, "cpu", torch.float32)
    shard_rows(items[:batch_size], scorer, cfg, -0.5, 1.5, lambda *a: None)  # warm-up
    start = time.perf_counter()
    shard_rows(items, scorer, cfg, -0.5, 1.5, lambda *a: None)
    return time.perf_counter() - start


def naive_scoring(model: str, items) -> float:
    """Seconds for the obvious plain-transformers loop: one sequence, one model, one forward at a time."""
    from transformers import AutoModelForCausalLM

    models = [AutoModelForCausalLM.from_pretrained(model).eval() for _ in range(3)]
    start = time.perf_counter()
    with torch.no_grad():
        for item in items:
            for response in (item.chosen_ids, item.rejected_ids):
                ids = torch.tensor([item.prompt_ids + response])
                scores = []
                for m in models:
                    logps = torch.log_softmax(m(ids).logits[0, :-1], dim=-1)
                    picked = logps.gather(-1, ids[0, 1:, None])[:, 0]
                    scores.append(picked[len(item.prompt_ids) - 1 :].tolist())
                _ = [p - n for p, n in zip(scores[1], scores[2])]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--naive-pairs", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(args.model)
    items = read_items(Path(args.shards), args.pairs)
    naive_items = items[: args.naive_pairs]
    gflops = matmul_gflops(args.threads)
    fast, slow, loads = [], [], []
    for _ in range(args.repeats):  # A B A B: a load change hits both sides
        loads.append(load_average()[0])
        fast.append(response_tokens(items) / tispipe_scoring(args.model, items, args.batch_size))
        loads.append(load_average()[0])
        slow.append(response_tokens(naive_items) / naive_scoring(args.model, naive_items))
    tispipe_rate, naive_rate = statistics.median(fast), statistics.median(slow)
    flops_per_response_token = useful_flops(items, config) / response_tokens(items)
    ceiling_rate = gflops * 1e9 / flops_per_response_token
    torch.set_num_threads(args.threads)
    result = {
        "model": args.model,
        "pairs": len(items),
        "naive_pairs": len(naive_items),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "matmul_gflops": round(gflops, 2),
        "forward_flops_per_response_token_3_models": round(flops_per_response_token),
        "tispipe_tokens_per_s": [round(x, 1) for x in fast],
        "naive_tokens_per_s": [round(x, 1) for x in slow],
        "ceiling_tokens_per_s": round(ceiling_rate, 1),
        "scoring_vs_naive": round(tispipe_rate / naive_rate, 2),
        "scoring_ceiling_fraction": round(tispipe_rate / ceiling_rate, 3),
        "load_average_1min": loads,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
