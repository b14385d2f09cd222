"""Pairs with HH-RLHF's length profile, built offline from the toy vocabulary, and their estimate shards.

HH-RLHF's harmless test split has multi-turn prompts about 2.5 times as long as a response (characters:
prompt median 362, p90 1,101; responses median 111-146). The pairs here draw each length from a
log-normal with that shape, in tokens of the toy tokenizer: prompt median PROMPT_MEDIAN (p90 about 3x
the median), chosen CHOSEN_MEDIAN and rejected REJECTED_MEDIAN tokens, words taken at random from the
toy data's own texts. No download: the token lengths are what matters for speed, not the words.

    .venv/bin/python bench/hh_lengths.py [--pairs 640]    # writes runs/bench/hh/pairs.jsonl and runs/bench/hh/weights
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, WORK, run_child  # noqa: E402

PROMPT_MEDIAN, PROMPT_SIGMA = 90, 0.87  # p90 = median * exp(1.2816 sigma) = about 3.05x the median, as HH's 1,101 / 362
CHOSEN_MEDIAN, REJECTED_MEDIAN, RESPONSE_SIGMA = 32, 36, 0.8
BIN = Path(sys.executable).parent


def _words() -> list[str]:
    words = []
    for line in (ROOT / "data" / "toy" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:2000]:
        row = json.loads(line)
        words += (row["prompt"] + " " + row["chosen"]).split()
    return words


def _text(rng: random.Random, words: list[str], median: int, sigma: float, cap: int) -> str:
    tokens = min(cap, max(2, round(math.exp(rng.gauss(math.log(median), sigma)))))
    return " ".join(rng.choice(words) for _ in range(max(1, round(tokens / 1.3))))  # about 1.3 toy tokens a word


def build(pairs: int, seed: int = 0) -> Path:
    """runs/bench/hh/pairs.jsonl (made once; the same file for a given `pairs` and seed)."""
    out = WORK / "hh" / f"pairs-{pairs}.jsonl"
    if out.is_file():
        return out
    rng, words = random.Random(seed), _words()
    rows = [{"pair_id": f"hh-{i:05d}", "prompt": _text(rng, words, PROMPT_MEDIAN, PROMPT_SIGMA, 400),
             "chosen": _text(rng, words, CHOSEN_MEDIAN, RESPONSE_SIGMA, 200), "rejected": _text(rng, words, REJECTED_MEDIAN, RESPONSE_SIGMA, 200)}
            for i in range(pairs)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.rename(out)
    return out


def estimate(pairs_file: Path, model: Path, threads: int) -> Path:
    """Shards of the pairs, scored with the toy base as reference, pi+ and pi- (the log-ratios are 0: only the
    token ids and the reference log-probs matter here). Prompts up to 384 tokens, sequences up to 512."""
    out = pairs_file.with_name(pairs_file.stem.replace("pairs", "weights"))
    if not (out / "manifest.json").is_file():
        run_child([str(BIN / "tispipe"), "estimate", "--data", str(pairs_file), "--model", str(model), "--pos-model", str(model), "--neg-model", str(model),
                   "--max-prompt-length", "384", "--max-length", "512", "--out", str(out), "--threads", str(threads), "--overwrite"],
                  {"OMP_NUM_THREADS": str(threads)}, log=out.with_suffix(".log"))
    return out


def length_profile(shards: Path) -> dict:
    """Median and p90 token lengths of the shards' prompts and responses, and the prompt's share of a pair's tokens."""
    import pyarrow.parquet as pq

    manifest = json.loads((shards / "manifest.json").read_text())
    lengths: dict[str, list[int]] = {"prompt": [], "chosen": [], "rejected": []}
    for entry in manifest["shards"]:
        table = pq.read_table(shards / "shards" / entry["file"], columns=[f"{k}_ids" for k in lengths]).to_pydict()
        for k in lengths:
            lengths[k] += [len(ids) for ids in table[f"{k}_ids"]]
    profile = {k: {"median": statistics.median(v), "p90": sorted(v)[int(0.9 * len(v))]} for k, v in lengths.items()}
    two_rows = sum(2 * p + c + r for p, c, r in zip(*lengths.values()))
    profile["tokens_saved_by_one_prompt"] = round(sum(lengths["prompt"]) / two_rows, 3)
    return profile


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=640)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    shards = estimate(build(args.pairs), ROOT / "runs" / "base", args.threads)
    print(json.dumps({"shards": str(shards), **length_profile(shards)}))


if __name__ == "__main__":
    main()
