"""Write bench/results.md from bench/results.json (plus the hand-written notes in bench/notes.md, if any)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Benchmarks",
        "",
        (f"Command: `{r['command']}` (what `make bench` runs). Date: {m['date']}." if "--only" not in r["command"] else
         f"Last command: `{r['command']}` ({m['date']}), one part of what `make bench` runs; the other sections come from other "
         "runs of bench/run.py, each section with the load averages of its own runs. The machine line below is the last command's."),
        f"Machine: {m['cores']} cores ({m['cpu']}), no GPU; Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"TRL {r.get('trl_version', '1.16.0')}; torch threads {m['threads']} on every side. Load average (1, 5, 15 min) at the start "
        f"{m['load_average_start']}, at the end {m.get('load_average_end')}"
        # the benchmark's own runs hold `threads` cores busy; more than that is other work
        + (": other jobs shared the cores, so absolute rates are low and noisy" if max(m["load_average_start"][0], (m.get("load_average_end") or [0])[0]) > m["threads"] + 0.5
           else " (the benchmark's own runs: the machine was otherwise idle)")
        + "; each comparison alternates its sides (A B C A B C) and the ratios are of medians.",
        "",
        "## Headline",
        "",
        "| key | value | target |",
        "|---|---|---|",
    ]
    targets = {"train_dpo_vs_trl": ">= 3 (toy base)", "train_tisdpo_vs_trl": ">= 2 (toy base)", "train_dpo_vs_trl_hh_large": ">= 2",
               "train_tisdpo_vs_trl_hh_large": ">= 1.5", "train_ceiling_fraction_large": ">= 0.6",
               "train_ceiling_fraction_large_compiled": ">= 0.6 (with --torch-compile)", "scoring_vs_naive": ">= 20",
               "scoring_ceiling_fraction": ">= 0.5 (larger model)", "train_peak_rss_growth_16x": "<= 0.10", "estimate_peak_rss_growth_16x": "<= 0.10",
               "train_dpo_vs_trl_smollm2": ">= 3 (SmolLM2, real HH pairs)", "train_tisdpo_vs_trl_smollm2": ">= 2 (SmolLM2)",
               "train_dpo_vs_trl_smollm2_lora": "(LoRA r 16)", "train_tisdpo_vs_trl_smollm2_lora": "(LoRA r 16)",
               "estimate_peak_rss_mib_smollm2_1000_hh": "< 3072 (1,000 HH pairs)"}
    for key, target in targets.items():
        lines.append(f"| `{key}` | {r.get(key)} | {target} |")
    for tag in ("train_small", "train_large", "train_hh_small", "train_hh_large", "train_real_full", "train_real_lora"):
        if tag not in r:
            continue
        t = r[tag]
        lengths = ""
        if "real" in tag:
            lp = t["length_profile"]
            lengths = (", real HH-RLHF harmless pairs (data/real/hh-harmless, bench/real_model.py), "
                       + (f"LoRA rank {t['lora_r']} on both sides" if t.get("lora_r") else "every weight trained on both sides")
                       + f": prompt median {lp['prompt']['median']} tokens (p90 {lp['prompt']['p90']}), chosen {lp['chosen']['median']}, rejected {lp['rejected']['median']}")
        elif "hh" in tag:
            lengths = " at HH-RLHF's lengths (bench/hh_lengths.py)"
            if "length_profile" in t:
                lp = t["length_profile"]
                lengths += (f": prompt median {lp['prompt']['median']} tokens (p90 {lp['prompt']['p90']}), chosen {lp['chosen']['median']}, "
                            f"rejected {lp['rejected']['median']}; one prompt per pair is {lp['tokens_saved_by_one_prompt'] * 100:.1f}% fewer tokens")
        lines += ["", f"## Training, {t['model']} ({t['parameters'] / 1e6:.2f}M parameters){lengths}", "",
                  f"{t['steps']} steps of {t['batch_size']} pairs per run, rate measured after the first {t['warmup_steps_excluded']} steps, "
                  f"{_count(len(t['pairs_per_s']['tispipe_dpo']), 'run')} per side. 1-min load average before each run: {t['load_average_1min']}.", "",
                  "| side | pairs/s (each run) | median | peak RSS MiB | tokens/s (each run) | pairs/s of the steps measured |", "|---|---|---|---|---|---|"]
        names = {"tispipe_dpo": "tispipe train --loss dpo (cached ref log-probs)", "tispipe_tisdpo": "tispipe train --loss tisdpo (eta: reference forward)",
                 "tispipe_dpo_ungrouped": "tispipe train --loss dpo --length-group-steps 0 (random batches, like TRL's)",
                 "tispipe_dpo_compiled": "tispipe train --loss dpo --torch-compile",
                 "trl_dpo": "TRL DPOTrainer, gradient checkpointing off", "trl_dpo_default": "TRL DPOTrainer, its defaults (gradient checkpointing on)",
                 "trl_dpo_precomputed": "TRL DPOTrainer, precompute_ref_log_probs, gradient checkpointing off"}
        for name, rates in t["pairs_per_s"].items():
            tokens, measured = t.get("tokens_per_s", {}).get(name, "-"), t.get("measured_steps_pairs_per_s", {}).get(name, "-")
            lines.append(f"| {names[name]} | {rates} | {_median(rates)} | {max(t['peak_rss_mib'][name])} | {tokens} | {measured} |")
        if "mean_tokens_per_pair" in t:
            lines += ["", f"tispipe's pairs/s is its tokens/s over the shards' mean of {t['mean_tokens_per_pair']} tokens a pair (each prompt once): "
                      "its length-grouped steps differ in length, so the few measured may be longer or shorter than the mean; TRL's batches are random."]
        lines += ["", f"Ratios: dpo / TRL {t['dpo_vs_trl']}, tisdpo / TRL {t['tisdpo_vs_trl']}"
                  + (f", dpo without length grouping / TRL {t['dpo_ungrouped_vs_trl']}" if "dpo_ungrouped_vs_trl" in t else "")
                  + (f"; against TRL's defaults: dpo {t['dpo_vs_trl_default']}, tisdpo {t['tisdpo_vs_trl_default']}" if "dpo_vs_trl_default" in t else "")
                  + (f"; dpo / TRL with precomputed reference log-probs {t['dpo_vs_trl_precomputed']}" if "dpo_vs_trl_precomputed" in t else "") + "."]
        if "ceiling_fraction" in t:
            lines += ["", f"Training (tispipe dpo) at {t['ceiling_fraction']} of the matmul ceiling ({t['matmul_gflops']} GFLOP/s dense float32, "
                      "same run; useful FLOPs: forward and backward of each prompt once and both responses, no padding)"
                      + (f"; with --torch-compile at {t['ceiling_fraction_compiled']}." if "ceiling_fraction_compiled" in t else ".")]
    for tag in ("scoring_small", "scoring_large"):
        if tag not in r:
            continue
        s = r[tag]
        lines += ["", f"## Scoring, {Path(s['model']).name}", "",
                  f"{s['pairs']} pairs through `tispipe.estimate.score.shard_rows` (reference, pi+, pi-: three models, batch {s['batch_size']}) vs "
                  f"{s['naive_pairs']} pairs through a plain-transformers loop (one sequence, one model per forward); response tokens/s. "
                  f"Dense float32 matmul: {s['matmul_gflops']} GFLOP/s; forward FLOPs per response token (3 models, prompt included): "
                  f"{s['forward_flops_per_response_token_3_models']:,}, so the ceiling is {s['ceiling_tokens_per_s']} tokens/s. "
                  f"1-min load average: {s['load_average_1min']}.", "",
                  "| side | tokens/s (each run) |", "|---|---|",
                  f"| tispipe | {s['tispipe_tokens_per_s']} |", f"| naive loop | {s['naive_tokens_per_s']} |", "",
                  f"tispipe / naive {s['scoring_vs_naive']}; tispipe / ceiling {s['scoring_ceiling_fraction']}."]
    if "memory_train" in r:
        mt = r["memory_train"]
        lines += ["", "## Memory", "",
                  f"`tispipe train --loss dpo --max-steps {mt['steps']} --batch-size {mt['batch_size']}` (the same steps on every folder; "
                  "shards copied and listed in a rewritten manifest), peak RSS from wait4:", "",
                  "| shards | pairs | peak RSS MiB | 1-min load |", "|---|---|---|---|"]
        for key, rss in mt["peak_rss_mib"].items():
            lines.append(f"| {key} | {mt['pairs'][key]} | {rss} | {mt['load_average_1min'][key]} |")
        lines += ["", f"Growth 1x -> 16x: {mt['growth_16x'] * 100:.1f}%."]
    if "memory_estimate" in r:
        lines += ["", "`tispipe estimate --pos-model runs/base --neg-model runs/base` (scoring only) on the first N toy pairs:", "",
                  "| pairs | peak RSS MiB | scoring tokens/s | 1-min load |", "|---|---|---|---|"]
        for key, e in r["memory_estimate"].items():
            lines.append(f"| {key} | {e['peak_rss_mib']} | {e['scoring_tokens_per_s']} | {e['load_average_1min']} |")
    if "estimate_real_memory" in r:
        e = r["estimate_real_memory"]
        lines += ["", f"`{e['command']}` (a real stage-one run: one model, the paper's two system prompts, {e['threads']} threads): "
                  f"peak RSS {e['peak_rss_mib']} MiB, scoring {e['scoring_tokens_per_s']} response tokens/s, {e['wall_s']} s in all "
                  f"(1-min load {e['load_average_1min']})."]
    notes = HERE / "notes.md"
    if notes.is_file():
        lines += ["", notes.read_text().strip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    results = json.loads((HERE / "results.json").read_text())
    (HERE / "results.md").write_text(render(results))


if __name__ == "__main__":
    main()
