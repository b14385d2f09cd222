"""Forward and backward (or forward only) of one training micro-batch, packed rows (tispipe.modeling.shared_prompt) against the padded layout.

    OMP_NUM_THREADS=1 .venv/bin/python bench/pair_layout.py --model runs/base --shards runs/weights-dpo [--batch 16] [--forward-only]

Micro-batches are the ones `tispipe train` makes (tispipe.train.epoch.length_grouped_steps over windows of 16
steps); each is run in both layouts in the same process, alternating, and the medians are compared. The
positions column counts what the model computes per pair in each layout (real tokens and padding).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from tispipe.artifacts.shards import read_manifest, stream_rows
from tispipe.modeling.batching import make_pair_batch, sequence_token_logps
from tispipe.modeling.models import load_model
from tispipe.modeling.shared_prompt import pack_pairs
from tispipe.train.epoch import length_grouped_steps


def timed(model: torch.nn.Module, micro: list[dict], shared: bool, pad_id: int, forward_only: bool) -> tuple[float, int]:
    prompts, chosen, rejected = ([r[k] for r in micro] for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
    batch = make_pair_batch(prompts, chosen, rejected, pad_id, shared=False)
    if shared:  # whatever make_pair_batch's rule would choose for these lengths
        batch.packed = pack_pairs(prompts, chosen, rejected, pad_id)
    start = time.perf_counter()
    if forward_only:
        with torch.no_grad():
            sequence_token_logps(model, batch)
    else:
        sequence_token_logps(model, batch).sum().backward()
    positions = batch.packed.input_ids.numel() if shared else batch.input_ids.numel()
    return time.perf_counter() - start, positions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--forward-only", action="store_true", help="no_grad forwards, as the estimate's scoring runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(str(args.model)).train().requires_grad_(True)
    pad_id = model.config.pad_token_id
    micro = [m for step in length_grouped_steps(stream_rows(args.shards, read_manifest(args.shards), seed=0), args.batch, 1, 16, "0-0") for m in step][: args.batches + 1]
    times: dict[bool, list[float]] = {True: [], False: []}
    positions: dict[bool, int] = {True: 0, False: 0}
    for i, m in enumerate(micro):
        for shared in (True, False) if i % 2 else (False, True):
            seconds, count = timed(model, m, shared, pad_id, args.forward_only)
            if i:  # the first batch warms up
                times[shared].append(seconds)
                positions[shared] += count
            model.zero_grad(set_to_none=True)
    pairs = args.batch * (len(micro) - 1)
    real = sum(len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for m in micro[1:] for r in m)
    for shared, name in ((True, "packed"), (False, "padded")):
        print(f"{name}: {statistics.median(times[shared]) * 1e3:.1f} ms per batch of {args.batch} (median of {len(times[shared])}), "
              f"{positions[shared] / pairs:.0f} positions per pair ({real / pairs:.0f} real tokens, prompt once)")
    print(f"padded / packed: {statistics.median(times[False]) / statistics.median(times[True]):.2f}")


if __name__ == "__main__":
    main()
