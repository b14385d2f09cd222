"""One AdamW step over every weight of a model: torch's default (foreach) kernel against its fused one.

    .venv/bin/python bench/adamw_step.py [--model runs/smollm2] [--threads 2] [--steps 5]

`tispipe train` uses the fused kernel (tispipe/modeling/optim.py), as transformers' Trainer (and so TRL)
does by default. Gradients are random; each kernel takes one step before the timed ones, and the two
alternate twice. Prints one JSON line: seconds per step of each run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="runs/smollm2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    params = [p for p in AutoModelForCausalLM.from_pretrained(args.model).parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3
    seconds: dict[str, list[float]] = {"foreach": [], "fused": []}
    for fused in (False, True, False, True):
        optimizer = torch.optim.AdamW(params, lr=1e-5, fused=fused)
        optimizer.step()
        start = time.perf_counter()
        for _ in range(args.steps):
            optimizer.step()
        seconds["fused" if fused else "foreach"].append(round((time.perf_counter() - start) / args.steps, 4))
    print(json.dumps({"model": args.model, "parameters": sum(p.numel() for p in params), "threads": args.threads, "seconds_per_step": seconds}))


if __name__ == "__main__":
    main()
