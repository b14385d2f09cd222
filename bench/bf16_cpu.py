"""Where bfloat16 training time goes on this CPU: one training step of a ~95M-parameter random Llama, profiled.

    .venv/bin/python bench/bf16_cpu.py [--threads 2] [--steps 4] [--batch 8] [--length 256]

The step is what `tispipe train` does for a batch: forward, per-token log-probs of the labels
(log_softmax over the vocabulary, then gather), their sum as the loss, backward. Three ways to run it:
float32; bfloat16 autocast over float32 weights (`tispipe train --dtype bfloat16`: float32 master weights,
each matmul casts its weight); and bfloat16 weights without autocast (no casts at all, which training
cannot use: see tispipe/modeling/models.py: resolve_dtype). Prints seconds per step and the operators
that take the most time (torch.profiler, self CPU time), and writes bench/bf16_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "bf16_cpu.json"


def model(dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=2048, hidden_size=768, intermediate_size=2048, num_hidden_layers=10, num_attention_heads=12,
                         num_key_value_heads=12, max_position_embeddings=1024)
    return LlamaForCausalLM(config).to(dtype).train()


def step(net, ids: torch.Tensor, autocast) -> None:
    with autocast:
        logits = net(input_ids=ids).logits[:, :-1]
    logps = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    loss = -logps.sum(-1).mean()
    loss.backward()
    net.zero_grad(set_to_none=True)


def pair_step(net, batch, autocast) -> None:
    """tispipe's own step on the same tokens: pairs (prompt, chosen, rejected), each prompt once in a packed row
    (tispipe.modeling.batching.forward_logits), log-probs of the response tokens only (tispipe.core.logps)."""
    from tispipe.core.logps import token_logps
    from tispipe.modeling.batching import forward_logits

    with autocast:
        logits = forward_logits(net, batch)
    loss = -(token_logps(logits, batch.labels) * batch.response_mask).sum()
    loss.backward()
    net.zero_grad(set_to_none=True)


def measure(name: str, dtype: torch.dtype, use_autocast: bool, args, pairs: bool = False) -> dict:
    from tispipe.modeling.batching import make_pair_batch

    net = model(dtype)
    ids = torch.randint(0, 2048, (args.batch, args.length), generator=torch.Generator().manual_seed(1))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if use_autocast else nullcontext()
    if pairs:  # the same tokens as pairs: half of each row a prompt, a quarter each response
        prompt, response = args.length // 2, args.length // 4
        rows = ids.tolist()
        batch = make_pair_batch([r[:prompt] for r in rows[::2]], [r[prompt:prompt + response] for r in rows[::2]],
                                [r[prompt:prompt + response] for r in rows[1::2]], 0)
        step_once = lambda: pair_step(net, batch, autocast)  # noqa: E731
    else:
        step_once = lambda: step(net, ids, autocast)  # noqa: E731
    step_once()  # warm-up
    started = time.perf_counter()
    for _ in range(args.steps):
        step_once()
    seconds = (time.perf_counter() - started) / args.steps
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step_once()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    top = [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in events[:8]]
    print(f"{name}: {seconds:.2f} s/step ({args.batch * args.length / seconds:.0f} tokens/s)", flush=True)
    for entry in top:
        print(f"    {entry['share']:6.1%}  {entry['op']} ({entry['calls']} calls)")
    return {"seconds_per_step": round(seconds, 3), "tokens_per_s": round(args.batch * args.length / seconds, 1), "top_ops": top}


def new_shapes(name: str, use_autocast: bool, args) -> dict:
    """tispipe's pair step where every step has lengths not seen before (as length-grouped training steps do): the
    first step at each shape included, since a run of a few hundred steps meets a new shape at most of them."""
    from tispipe.modeling.batching import make_pair_batch

    net = model(torch.float32)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if use_autocast else nullcontext()
    generator = torch.Generator().manual_seed(2)
    seconds = []
    for k in range(args.steps + 1):
        prompt, response = 96 + 8 * k, 48 + 4 * k
        ids = torch.randint(0, 2048, (args.batch, prompt + response), generator=generator).tolist()
        batch = make_pair_batch([r[:prompt] for r in ids], [r[prompt:] for r in ids], [r[prompt:][::-1] for r in ids], 0)
        started = time.perf_counter()
        pair_step(net, batch, autocast)
        seconds.append(time.perf_counter() - started)
    mean = sum(seconds[1:]) / args.steps  # the very first step also pays for everything else's first use
    print(f"{name}: {mean:.2f} s/step over {args.steps} steps of new lengths", flush=True)
    return {"seconds_per_step": round(mean, 3), "each_step": [round(x, 3) for x in seconds]}


def matmul(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an n x n matmul in `dtype` (the kernel's own speed, without the model around it)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"command": f".venv/bin/python bench/bf16_cpu.py --threads {args.threads} --steps {args.steps} --batch {args.batch} --length {args.length}",
               "torch": torch.__version__, "threads": args.threads,
               "matmul_gflops": {"float32": round(matmul(torch.float32), 1), "bfloat16": round(matmul(torch.bfloat16), 1)}}
    print(f"matmul 2048x2048: float32 {results['matmul_gflops']['float32']} GFLOP/s, bfloat16 {results['matmul_gflops']['bfloat16']} GFLOP/s")
    results["float32"] = measure("float32", torch.float32, False, args)
    results["bfloat16_autocast"] = measure("bfloat16 autocast, float32 weights", torch.float32, True, args)
    results["bfloat16_weights"] = measure("bfloat16 weights, no autocast", torch.bfloat16, False, args)
    results["pairs_float32"] = measure("tispipe's pair step, float32", torch.float32, False, args, pairs=True)
    results["pairs_bfloat16_autocast"] = measure("tispipe's pair step, bfloat16 autocast", torch.float32, True, args, pairs=True)
    results["new_shapes_float32"] = new_shapes("tispipe's pair step at new lengths, float32", False, args)
    results["new_shapes_bfloat16_autocast"] = new_shapes("tispipe's pair step at new lengths, bfloat16 autocast", True, args)
    OUT.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
