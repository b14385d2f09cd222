"""The memory table of real-scale training on this CPU: a ~100M-parameter random Llama (built from config, no download).

    .venv/bin/python bench/memory_table.py [--threads 2] [--steps 6] [--batch 4] [--quick]

Training (`tispipe train --loss tisdpo`, with eta, so the reference runs every step): full fine-tuning
against LoRA (r 16, the reference is the base with the adapter off), each with and without
--gradient-checkpointing, in float32 and with --dtype bfloat16 (autocast; float32 master weights). Stage
one (`tispipe estimate`, scoring only): three full models (base, pi+, pi-) against one base carrying two
LoRA adapters. Each run is its own child process; peak RSS comes from wait4 on it, pairs/s and tokens/s
from the run's own record. Writes bench/memory.json and bench/memory.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, WORK, build_large_model, load_average, machine, parameter_count, run_child  # noqa: E402

BIN = Path(sys.executable).parent


def env(threads: int) -> dict:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def tispipe(*args) -> list[str]:
    return [str(BIN / "tispipe"), *map(str, args)]


def random_adapter(model: Path, out: Path, r: int, seed: int) -> Path:
    """A LoRA adapter on `model` with random A and B (what a trained pi+/pi- costs in memory)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model)
    base.name_or_path = str(model.resolve())
    peft_model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False))
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=32, help="pairs scored by stage one")
    parser.add_argument("--quick", action="store_true", help="a small model and 2 steps, to check the harness")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    size = dict(hidden=64, layers=2, heads=2) if args.quick else dict(hidden=768, layers=10, heads=12)
    model = build_large_model(WORK / ("model-quick" if args.quick else "model-100m"), ROOT / "runs" / "base", **size)
    steps = 2 if args.quick else args.steps
    results = {"machine": machine(args.threads), "model": str(model), "parameters": parameter_count(model), "steps": steps, "batch_size": args.batch,
               "loss": "tisdpo (with eta: the reference runs every step)", "lora_r": 16, "train": {}, "estimate": {}}
    print(f"model: {results['parameters'] / 1e6:.1f}M parameters", flush=True)

    shards = WORK / f"memory-shards-{model.name}"  # scored by this model
    if not (shards / "manifest.json").is_file():
        run_child(tispipe("estimate", "--data", "data/toy/train.jsonl", "--limit", 64, "--model", model, "--method", "prompt", "--out", shards, "--overwrite"),
                  env(args.threads), log=shards.with_suffix(".log"))

    for lora, checkpointing, dtype in itertools.product((False, True), (False, True), ("float32", "bfloat16")):
        name = f"{'lora' if lora else 'full'}, checkpointing {'on' if checkpointing else 'off'}, {dtype}"
        out = WORK / f"memory-{'lora' if lora else 'full'}-{int(checkpointing)}-{dtype}"
        shutil.rmtree(out, ignore_errors=True)
        flags = (["--lora-r", 16] if lora else []) + (["--gradient-checkpointing"] if checkpointing else []) + ["--dtype", dtype]
        load = load_average()[0]
        usage = run_child(tispipe("train", "--shards", shards, "--model", model, "--out", out, "--max-steps", steps, "--batch-size", args.batch,
                                  "--warmup-steps", 1, *flags), env(args.threads), log=out.with_suffix(".log"))
        info = json.loads((out / "train_info.json").read_text())
        results["train"][name] = {"peak_rss_mib": round(usage["peak_rss_mib"], 1), "pairs_per_s": info["pairs_per_s"],
                                  "final_loss": info["final_metrics"]["loss"], "load_average_1min": load}
        print(f"  train {name}: {results['train'][name]}", flush=True)

    copies = {side: WORK / f"memory-{model.name}-{side}-full" for side in ("pos", "neg")}
    for folder in copies.values():
        if not (folder / "model.safetensors").is_file():
            shutil.copytree(model, folder, dirs_exist_ok=True)
    adapters = {side: random_adapter(model, WORK / f"memory-{model.name}-{side}-adapter", 16, seed) for seed, side in enumerate(("pos", "neg"))}
    for name, (pos, neg) in {"three full models": (copies["pos"], copies["neg"]), "one base + two LoRA adapters": (adapters["pos"], adapters["neg"])}.items():
        out = WORK / f"memory-estimate-{name.split()[0]}"
        shutil.rmtree(out, ignore_errors=True)
        load = load_average()[0]
        usage = run_child(tispipe("estimate", "--data", "data/toy/train.jsonl", "--limit", args.pairs, "--model", model, "--pos-model", pos, "--neg-model", neg,
                                  "--out", out), env(args.threads), log=out.with_suffix(".log"))
        run_log = json.loads((out / "estimate-run.json").read_text())
        results["estimate"][name] = {"peak_rss_mib": round(usage["peak_rss_mib"], 1), "tokens_per_s": round(run_log["tokens_per_second"], 1), "load_average_1min": load}
        print(f"  estimate, {name}: {results['estimate'][name]}", flush=True)

    target = ROOT / "bench" / ("memory-quick.json" if args.quick else "memory.json")
    target.write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Memory on this CPU: a {results['parameters'] / 1e6:.1f}M-parameter random Llama\n",
             f"`.venv/bin/python bench/memory_table.py --threads {args.threads}`, {results['machine']['date']}, {results['machine']['cpu']}, "
             f"{args.threads} threads; train: --loss tisdpo (eta on), {steps} steps of {args.batch} pairs; LoRA r=16 on every linear layer.\n",
             "| training | peak RSS (MiB) | pairs/s |", "|---|---|---|"]
    lines += [f"| {k} | {v['peak_rss_mib']:.0f} | {v['pairs_per_s']:.2f} |" for k, v in results["train"].items()]
    lines += ["", f"| stage one, scoring {args.pairs} pairs | peak RSS (MiB) | tokens/s |", "|---|---|---|"]
    lines += [f"| {k} | {v['peak_rss_mib']:.0f} | {v['tokens_per_s']:.0f} |" for k, v in results["estimate"].items()]
    target.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(target.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
