"""Peak memory of the streaming estimate at 1x, 4x and 16x pairs (scoring only: --pos-model/--neg-model given).

    .venv/bin/python bench/estimate_memory.py [--threads 1] [--base-pairs 1000]

Toy pairs (`tispipe toy-data`, 16x --base-pairs of them, in runs/bench) are scored by the toy base as the
reference, pi+ and pi-; each run is its own child process, and its peak RSS comes from wait4. Writes
`memory_estimate_streaming` and `estimate_peak_rss_growth_16x` (peak RSS at 16x over 1x, minus 1) into
bench/results.json, next to the other benchmarks' keys.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, WORK, load_average, machine, run_child  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--base-pairs", type=int, default=1000)
    args = parser.parse_args()
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    data = WORK / f"toy-{16 * args.base_pairs}"
    if not (data / "train.jsonl").is_file():
        run_child([str(BIN / "tispipe"), "toy-data", "--out", str(data), "--pairs", str(16 * args.base_pairs), "--test-pairs", "10"], env)
    model = ROOT / "runs" / "base"
    result = {"machine": machine(args.threads), "model": str(model), "runs": {}}
    for times in (1, 4, 16):
        pairs = times * args.base_pairs
        out = WORK / f"estimate-streaming-{pairs}"
        shutil.rmtree(out, ignore_errors=True)
        load = load_average()[0]
        usage = run_child([str(BIN / "tispipe"), "estimate", "--data", str(data / "train.jsonl"), "--limit", str(pairs), "--model", str(model),
                           "--pos-model", str(model), "--neg-model", str(model), "--out", str(out), "--threads", str(args.threads)], env,
                          log=out.with_suffix(".log"))
        run_log = json.loads((out / "estimate-run.json").read_text())
        result["runs"][f"{times}x"] = {"pairs": pairs, "peak_rss_mib": round(usage["peak_rss_mib"], 1), "wall_s": round(usage["wall_s"], 1),
                                       "scoring_tokens_per_s": round(run_log["tokens_per_second"], 1), "load_average_1min": load}
        print(f"  {times}x ({pairs} pairs): {result['runs'][f'{times}x']}", flush=True)
    growth = result["runs"]["16x"]["peak_rss_mib"] / result["runs"]["1x"]["peak_rss_mib"] - 1
    path = ROOT / "bench" / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["memory_estimate_streaming"] = result
    results["estimate_peak_rss_growth_16x"] = round(growth, 4)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"estimate_peak_rss_growth_16x = {growth:.4f}")


if __name__ == "__main__":
    main()
