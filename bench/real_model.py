"""SmolLM2-135M-Instruct on real HH-RLHF harmless pairs: tispipe against TRL's DPOTrainer, and the estimate's memory.

    .venv-bench/bin/python bench/run.py --only real,real-memory [--threads 2]

Needs runs/smollm2 (`make runs/smollm2/model.safetensors`) and data/real/hh-harmless (`make real-data`).
Training runs on the shards of `tispipe estimate` over the first HH training pairs (SmolLM2 as reference, pi+
and pi-: only the token ids and the reference log-probs matter for speed), prompts cut to 384 tokens and
pairs to 512, as TRL's max_length. Both sides train every weight, then a LoRA adapter (rank 16, alpha 32,
all linear layers), with the sides of run.training. The estimate's memory is that of a real stage-one run:
`--method prompt` (one model, the paper's two system prompts) over 1,000 HH pairs, peak RSS from wait4.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, WORK, load_average, run_child  # noqa: E402
from hh_lengths import length_profile  # noqa: E402

SMOLLM2 = ROOT / "runs" / "smollm2"
HH = ROOT / "data" / "real" / "hh-harmless"
BIN = Path(sys.executable).parent
TRAIN_SIDES = ("tispipe_dpo", "tispipe_tisdpo", "trl_dpo_precomputed", "trl_dpo")
LENGTHS = ("--max-prompt-length", "384", "--max-length", "512")


def _require() -> None:
    if not (SMOLLM2 / "model.safetensors").is_file():
        raise SystemExit("runs/smollm2 is missing: run `make runs/smollm2/model.safetensors` first")
    if not (HH / "train.jsonl").is_file():
        raise SystemExit("data/real/hh-harmless is missing: run `make real-data` first")


def hh_shards(pairs: int, threads: int) -> Path:
    """Shards of the first `pairs` HH training pairs (made once per `pairs`)."""
    out = WORK / f"real-hh-{pairs}"
    if not (out / "manifest.json").is_file():
        run_child([str(BIN / "tispipe"), "estimate", "--data", str(HH), "--split", "train", "--model", str(SMOLLM2),
                   "--pos-model", str(SMOLLM2), "--neg-model", str(SMOLLM2), "--limit", str(pairs), *LENGTHS,
                   "--out", str(out), "--threads", str(threads), "--overwrite"],
                  {"OMP_NUM_THREADS": str(threads)}, log=out.with_suffix(".log"))
    return out


def estimate_memory(pairs: int, threads: int) -> dict:
    """Peak RSS and scoring rate of `tispipe estimate --method prompt` on `pairs` HH pairs with SmolLM2."""
    out = WORK / f"real-estimate-{pairs}"
    shutil.rmtree(out, ignore_errors=True)  # a finished folder with the same settings would be reused, not rescored
    load = load_average()[0]
    args = [str(BIN / "tispipe"), "estimate", "--data", str(HH), "--split", "train", "--model", str(SMOLLM2), "--method", "prompt",
            "--limit", str(pairs), *LENGTHS, "--out", str(out), "--threads", str(threads), "--overwrite"]
    usage = run_child(args, {"OMP_NUM_THREADS": str(threads)}, log=out.with_suffix(".log"))
    run_log = json.loads((out / "estimate-run.json").read_text())
    result = {"command": " ".join(["tispipe", *args[1:]]).replace(str(ROOT) + "/", ""), "pairs": pairs, "threads": threads,
              "peak_rss_mib": round(usage["peak_rss_mib"], 1), "wall_s": round(usage["wall_s"], 1),
              "scoring_tokens_per_s": round(run_log["tokens_per_second"], 1), "load_average_1min": load}
    print(f"  estimate --method prompt, {pairs} HH pairs: peak RSS {result['peak_rss_mib']} MiB, {result['scoring_tokens_per_s']} tokens/s", flush=True)
    return result


def run(training, threads: int, quick: bool) -> dict:
    """train_real_full and train_real_lora: run.training's dicts, one alternating run of every side."""
    _require()
    shards = hh_shards(16 if quick else 128, threads)
    steps, warmup, batch = (3, 1, 2) if quick else (8, 2, 4)
    results = {}
    for lora_r, key in ((0, "train_real_full"), (16, "train_real_lora")):
        print(f"training SmolLM2 at HH lengths ({'LoRA r 16' if lora_r else 'every weight'})", flush=True)
        results[key] = training(SMOLLM2, shards, steps, batch, threads, 1, warmup, f"real-{'lora' if lora_r else 'full'}", TRAIN_SIDES, lora_r=lora_r)
        results[key]["length_profile"] = length_profile(shards)
    return results


def run_memory(threads: int, quick: bool) -> dict:
    """estimate_real_memory: the stage-one run over 1,000 HH pairs."""
    _require()
    print("estimate memory (SmolLM2, HH pairs)", flush=True)
    return {"estimate_real_memory": estimate_memory(20 if quick else 1000, threads)}
