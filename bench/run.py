"""Run every benchmark and write bench/results.json and bench/results.md.

    .venv-bench/bin/python bench/run.py [--threads 1] [--quick]

Training: `tispipe train` (loss dpo with cached reference log-probs; loss tisdpo with eta, which runs the
reference forward) against TRL's DPOTrainer (reference forward each step, its default), same model
folder, the shards' token ids, batch size, learning rate and threads, run A B C A B C ... in one process
tree so load changes hit every side. Rates are pairs/s between the end of warm-up step W and the last
step (model loading, dataset preparation and saving excluded on both sides); ratios are of medians.
Memory: peak RSS (wait4 of the child) of `tispipe train` on 1x/4x/16x copies of the shards with the
same --max-steps, and of `tispipe estimate` (scoring only: --pos-model/--neg-model given).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROOT,
    WORK,
    build_large_model,
    forward_flops_per_token,
    load_average,
    machine,
    matmul_gflops,
    parameter_count,
    python,
    replicate_shards,
    run_child,
)
from hh_lengths import build as build_hh_pairs  # noqa: E402
from hh_lengths import estimate as estimate_hh  # noqa: E402
from hh_lengths import length_profile  # noqa: E402

BIN = Path(sys.executable).parent


def child_env(threads: int) -> dict:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def tispipe_train(model: Path, shards: Path, loss: str, steps: int, batch: int, threads: int, out: Path, extra: tuple[str, ...] = ()) -> dict:
    args = [str(BIN / "tispipe"), "train", "--shards", str(shards), "--model", str(model), "--out", str(out), "--loss", loss,
            "--max-steps", str(steps), "--batch-size", str(batch), "--threads", str(threads), "--lr", "1e-4", "--overwrite", *extra]
    usage = run_child(args, child_env(threads), log=out.with_suffix(".log"))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    pairs = [batch * m["step"] for m in lines]  # every step is a full batch (steps x batch <= pairs)
    times = [p / m["pairs_per_s"] for p, m in zip(pairs, lines)]
    return {**usage, "step_times": times, "step_tokens": [t * m["tokens_per_s"] for t, m in zip(times, lines)]}


def trl_train(model: Path, shards: Path, steps: int, batch: int, threads: int, out: Path, checkpointing: bool = False, precompute: bool = False,
              lora_r: int = 0) -> dict:
    args = [python(), str(ROOT / "bench" / "trl_dpo.py"), "--model", str(model), "--shards", str(shards), "--out", str(out),
            "--steps", str(steps), "--batch-size", str(batch), "--threads", str(threads), "--lora-r", str(lora_r)]
    args += ["--gradient-checkpointing"] if checkpointing else []
    args += ["--precompute-ref-log-probs"] if precompute else []
    log = out.with_suffix(".log")
    usage = run_child(args, child_env(threads), log=log)
    last = [line for line in log.read_text().splitlines() if line.startswith('{"start"')][-1]
    return {**usage, "step_times": json.loads(last)["step_times"]}


def steady_rate(step_times: list[float], batch: int, warmup: int) -> float:
    """Pairs/s from the end of step `warmup` to the end of the last step."""
    return (len(step_times) - warmup) * batch / (step_times[-1] - step_times[warmup - 1])


def steady_token_rate(step_times: list[float], step_tokens: list[float], warmup: int) -> float:
    """Tokens/s (each prompt once) from the end of step `warmup` to the end of the last step."""
    return (step_tokens[-1] - step_tokens[warmup - 1]) / (step_times[-1] - step_times[warmup - 1])


def pair_lengths(shards: Path) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts of every pair in the shards."""
    import pyarrow.parquet as pq

    manifest = json.loads((shards / "manifest.json").read_text())
    lengths = []
    for entry in manifest["shards"]:
        table = pq.read_table(shards / "shards" / entry["file"], columns=["prompt_ids", "chosen_ids", "rejected_ids"]).to_pydict()
        lengths += [(len(p), len(c), len(r)) for p, c, r in zip(table["prompt_ids"], table["chosen_ids"], table["rejected_ids"])]
    return lengths


SIDES = ("tispipe_dpo", "tispipe_tisdpo", "tispipe_dpo_ungrouped", "trl_dpo")


def training(model: Path, shards: Path, steps: int, batch: int, threads: int, repeats: int, warmup: int, tag: str, sides: tuple[str, ...] = SIDES,
             lora_r: int = 0) -> dict:
    """trl_dpo: gradient checkpointing off (like for like); trl_dpo_default: TRL's default config (checkpointing on);
    trl_dpo_precomputed: reference log-probs computed before training (precompute_ref_log_probs), as tispipe's dpo has them.

    tispipe_*: its defaults (pairs batched by length within 16-step windows); tispipe_dpo_ungrouped:
    --length-group-steps 0, batches as the shuffled stream comes, like TRL's random batches;
    tispipe_dpo_compiled: --torch-compile (its compilation falls in the warm-up steps left out).
    lora_r > 0: every side trains a LoRA adapter of that rank (alpha 2r, all linear layers) instead of every weight.

    A run measures a few steps, and tispipe's length-grouped steps differ in length far more than random
    ones (at HH lengths, 509 to 2,914 tokens a step of 8 pairs), so the few steps measured may hold longer or
    shorter pairs than the data's mean. tispipe's pairs/s is therefore its measured tokens/s over the mean
    tokens of a pair in the shards: the rate a whole epoch would run at. TRL's batches are random, so its
    measured pairs/s already has the data's mean in expectation.
    """
    lengths = pair_lengths(shards)
    mean_tokens = sum(map(sum, lengths)) / len(lengths)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    token_rates: dict[str, list[float]] = {name: [] for name in sides if name.startswith("tispipe")}
    measured: dict[str, list[float]] = {name: [] for name in token_rates}  # pairs/s of the steps measured, unnormalised
    rss: dict[str, list[float]] = {k: [] for k in rates}
    loads = []
    for r in range(repeats):
        for name in rates:
            loads.append(load_average()[0])
            out = WORK / f"{tag}-{name}-{r}"
            if name.startswith("trl"):
                result = trl_train(model, shards, steps, batch, threads, out, checkpointing=name == "trl_dpo_default", precompute=name == "trl_dpo_precomputed",
                                   lora_r=lora_r)
            else:
                extra = ("--length-group-steps", "0") if name.endswith("ungrouped") else ("--torch-compile",) if name.endswith("compiled") else ()
                extra += ("--lora-r", str(lora_r)) if lora_r else ()
                result = tispipe_train(model, shards, name.split("_")[1], steps, batch, threads, out, extra)
            if name in token_rates:
                token_rates[name].append(round(steady_token_rate(result["step_times"], result["step_tokens"], warmup), 1))
                measured[name].append(round(steady_rate(result["step_times"], batch, warmup), 2))
                rates[name].append(round(token_rates[name][-1] / mean_tokens, 2))
            else:
                rates[name].append(round(steady_rate(result["step_times"], batch, warmup), 2))
            rss[name].append(round(result["peak_rss_mib"], 1))
            print(f"  {tag} {name} run {r}: {rates[name][-1]} pairs/s, peak RSS {rss[name][-1]} MiB, load {loads[-1]}", flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    # tispipe_dpo over trl_dpo is dpo_vs_trl; over trl_dpo_default, dpo_vs_trl_default; and so on
    ratios = {f"{ours.removeprefix('tispipe_')}_vs_trl{theirs.removeprefix('trl_dpo')}": round(median[ours] / median[theirs], 2)
              for ours in rates if ours.startswith("tispipe") for theirs in rates if theirs.startswith("trl")}
    return {
        "model": str(model.relative_to(ROOT)), "parameters": parameter_count(model), "steps": steps, "warmup_steps_excluded": warmup,
        "batch_size": batch, "threads": threads, "lora_r": lora_r, "pairs_per_s": rates, "median_pairs_per_s": median, "peak_rss_mib": rss, "load_average_1min": loads,
        "mean_tokens_per_pair": round(mean_tokens, 1), "tokens_per_s": token_rates, "median_tokens_per_s": {k: statistics.median(v) for k, v in token_rates.items()},
        "measured_steps_pairs_per_s": measured,
        **ratios,
    }


def training_ceiling_fraction(model: Path, shards: Path, tokens_per_s: float, gflops: float) -> float:
    """Useful training FLOPs per second over the matmul ceiling measured in the same run.

    Useful FLOPs of a pair: forward and backward (3x the forward) of its prompt once and both responses, each
    token at `forward_flops_per_token` with the context its sequence averages (tispipe.modeling.shared_prompt's work;
    padding and a second prompt are not useful work). Averaged per token over the shards' pairs, times the
    tokens/s trained.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    flops, tokens = 0.0, 0
    for p, c, r in pair_lengths(shards):
        flops += 3 * (p * forward_flops_per_token(config, p) + c * forward_flops_per_token(config, p + c) + r * forward_flops_per_token(config, p + r))
        tokens += p + c + r
    return round(flops / tokens * tokens_per_s / (gflops * 1e9), 3)


def scoring(model: Path, shards: Path, threads: int, pairs: int, naive_pairs: int, repeats: int) -> dict:
    args = [python(), str(ROOT / "bench" / "scoring.py"), "--model", str(model), "--shards", str(shards), "--pairs", str(pairs),
            "--naive-pairs", str(naive_pairs), "--threads", str(threads), "--repeats", str(repeats)]
    out = subprocess.run(args, env={**os.environ, "HF_HUB_OFFLINE": "1", **child_env(threads)}, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(model: Path, shards: Path, steps: int, batch: int, threads: int) -> dict:
    result = {"steps": steps, "batch_size": batch, "loss": "dpo", "peak_rss_mib": {}, "pairs": {}, "load_average_1min": {}}
    for times in (1, 4, 16):
        folder = replicate_shards(shards, WORK / f"shards-{times}x", times)
        result["load_average_1min"][f"{times}x"] = load_average()[0]
        usage = tispipe_train(model, folder, "dpo", steps, batch, threads, WORK / f"mem-{times}x")
        result["peak_rss_mib"][f"{times}x"] = round(usage["peak_rss_mib"], 1)
        result["pairs"][f"{times}x"] = json.loads((folder / "manifest.json").read_text())["pairs"]
        print(f"  memory {times}x shards: peak RSS {result['peak_rss_mib'][f'{times}x']} MiB", flush=True)
    result["growth_16x"] = round(result["peak_rss_mib"]["16x"] / result["peak_rss_mib"]["1x"] - 1, 4)
    return result


def estimate_memory(model: Path, threads: int, limits: list[int]) -> dict:
    result = {}
    for limit in limits:
        out = WORK / f"estimate-{limit}"
        shutil.rmtree(out, ignore_errors=True)  # a finished folder with the same settings would be reused, not rescored
        args = [str(BIN / "tispipe"), "estimate", "--data", "data/toy/train.jsonl", "--model", str(model), "--pos-model", str(model),
                "--neg-model", str(model), "--limit", str(limit), "--out", str(out), "--overwrite"]
        usage = run_child(args, child_env(threads), log=out.with_suffix(".log"))
        run_log = json.loads((out / "estimate-run.json").read_text())
        result[str(limit)] = {"peak_rss_mib": round(usage["peak_rss_mib"], 1), "scoring_tokens_per_s": round(run_log["tokens_per_second"], 1),
                              "load_average_1min": load_average()[0]}
        print(f"  estimate --limit {limit}: peak RSS {result[str(limit)]['peak_rss_mib']} MiB", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny runs to check the harness")
    parser.add_argument("--only", default="scoring,train,memory,large,hh,real,real-memory", help="comma-separated parts to run")
    args = parser.parse_args()
    quick, parts = args.quick, set(args.only.split(","))
    WORK.mkdir(parents=True, exist_ok=True)
    base, shards = ROOT / "runs" / "base", ROOT / "runs" / "weights-dpo"
    if parts - {"real", "real-memory"} and not (shards / "manifest.json").is_file():  # the toy parts train and score on the toy estimate
        raise SystemExit("runs/weights-dpo is missing: run `make estimate` first")
    results_path = ROOT / "bench" / "results.json"
    results: dict = {}  # this run's parts; a partial run merges them into the file as it is when they are done
    results["machine"] = machine(args.threads)
    results["command"] = " ".join([".venv-bench/bin/python", "bench/run.py", *sys.argv[1:]])
    large = build_large_model(WORK / "large", base) if parts & {"scoring", "large", "hh"} else None

    if "scoring" in parts:
        print("scoring (tiny model)", flush=True)
        results["scoring_small"] = scoring(base, shards, args.threads, 64 if quick else 512, 8 if quick else 48, 1 if quick else 2)
        print("scoring (larger model)", flush=True)
        results["scoring_large"] = scoring(large, shards, args.threads, 32 if quick else 128, 4 if quick else 12, 1 if quick else 2)
    if "train" in parts:
        print("training (tiny model)", flush=True)
        results["train_small"] = training(base, shards, 6 if quick else 40, 16, args.threads, 1 if quick else 3, 2 if quick else 5, "small",
                                          (*SIDES, "trl_dpo_default"))
    if "large" in parts:
        print("training (larger model)", flush=True)
        results["train_large"] = training(large, shards, 4 if quick else 8, 8, args.threads, 1 if quick else 2, 2 if quick else 2, "large")
    if "hh" in parts:
        # HH-RLHF's lengths (bench/hh_lengths.py): prompts about 2.5x a response, where computing each prompt once pays
        hh = estimate_hh(build_hh_pairs(64 if quick else 640), base, args.threads)
        hh_sides = ("tispipe_dpo", "tispipe_tisdpo", "trl_dpo_precomputed", "trl_dpo")
        print("training at HH lengths (tiny model)", flush=True)
        results["train_hh_small"] = training(base, hh, 4 if quick else 24, 16, args.threads, 1 if quick else 2, 2 if quick else 4, "hh-small", hh_sides)
        print("training at HH lengths (larger model)", flush=True)
        results["train_hh_large"] = training(large, hh, 3 if quick else 8, 8, args.threads, 1 if quick else 2, 1 if quick else 2, "hh-large",
                                             (*hh_sides[:2], "tispipe_dpo_compiled", *hh_sides[2:]))
        gflops = matmul_gflops(args.threads)
        tokens_per_s = results["train_hh_large"]["median_tokens_per_s"]
        results["train_hh_large"].update(length_profile=length_profile(hh), matmul_gflops=round(gflops, 2),
                                         ceiling_fraction=training_ceiling_fraction(large, hh, tokens_per_s["tispipe_dpo"], gflops),
                                         ceiling_fraction_compiled=training_ceiling_fraction(large, hh, tokens_per_s["tispipe_dpo_compiled"], gflops))
    if "real" in parts:
        from real_model import run as run_real

        results.update(run_real(training, args.threads, quick))
    if "real-memory" in parts:
        from real_model import run_memory

        results.update(run_memory(args.threads, quick))
    if "memory" in parts:
        print("memory", flush=True)
        results["memory_train"] = memory(base, shards, 10 if quick else 60, 16, args.threads)
        results["memory_estimate"] = estimate_memory(base, args.threads, [200] if quick else [500, 2000])

    if args.only != parser.get_default("only") and results_path.is_file():  # re-read: another partial run may have written since
        results = {**json.loads(results_path.read_text()), **results}
    # The headline keys (plain numbers).
    if "scoring_small" in results:
        results["scoring_vs_naive"] = results["scoring_small"]["scoring_vs_naive"]
        results["scoring_ceiling_fraction"] = results["scoring_large"]["scoring_ceiling_fraction"]
    if "train_small" in results:
        results["train_dpo_vs_trl"] = results["train_small"]["dpo_vs_trl"]
        results["train_tisdpo_vs_trl"] = results["train_small"]["tisdpo_vs_trl"]
    if "memory_train" in results:
        results["train_peak_rss_growth_16x"] = results["memory_train"]["growth_16x"]
    if "train_hh_large" in results:
        results["train_dpo_vs_trl_hh_large"] = results["train_hh_large"]["dpo_vs_trl_precomputed"]  # both with cached reference log-probs
        results["train_tisdpo_vs_trl_hh_large"] = results["train_hh_large"]["tisdpo_vs_trl"]  # both with a live reference forward
        results["train_ceiling_fraction_large"] = results["train_hh_large"]["ceiling_fraction"]
        results["train_ceiling_fraction_large_compiled"] = results["train_hh_large"]["ceiling_fraction_compiled"]
    if "train_real_full" in results:
        results["train_dpo_vs_trl_smollm2"] = results["train_real_full"]["dpo_vs_trl_precomputed"]
        results["train_tisdpo_vs_trl_smollm2"] = results["train_real_full"]["tisdpo_vs_trl"]
        results["train_dpo_vs_trl_smollm2_lora"] = results["train_real_lora"]["dpo_vs_trl_precomputed"]
        results["train_tisdpo_vs_trl_smollm2_lora"] = results["train_real_lora"]["tisdpo_vs_trl"]
    if "estimate_real_memory" in results:
        results["estimate_peak_rss_mib_smollm2_1000_hh"] = results["estimate_real_memory"]["peak_rss_mib"]
    results["machine"]["load_average_end"] = load_average()
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    from report import main as write_markdown

    write_markdown()
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"bench finished in {time.time() - started:.0f} s")
