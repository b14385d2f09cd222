"""Cost of the always-on shard verification (`tispipe.artifacts.shards.verify_shards`: footer, row count, sha256).

    .venv/bin/python bench/verify_shards.py runs/weights-dpo

Prints the median time to verify the folder's shards (5 runs), in ms and in seconds per GB of shards,
the sha256 rate alone on 1 GiB of random bytes, and what the per-row checks (`shards.check_row`: finite
floats, token ids in the vocabulary, per-token columns that line up) add to reading every row as train does.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from tispipe.artifacts.shards import check_row, file_sha256, read_manifest, shard_paths, verify_shards


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(folder: str) -> None:
    manifest = read_manifest(folder)
    size = sum((Path(folder) / "shards" / entry["file"]).stat().st_size for entry in manifest["shards"])
    seconds = median_seconds(lambda: verify_shards(folder, manifest), 5)
    print(f"{folder}: {len(manifest['shards'])} shards, {size / 1e6:.1f} MB, verified in {seconds * 1000:.1f} ms ({seconds / (size / 1e9):.2f} s/GB)")
    columns = ["pair_id", "prompt_ids", "chosen_ids", "rejected_ids", "chosen_weights", "rejected_weights", "chosen_ref_logps", "rejected_ref_logps"]
    tables = [pq.read_table(path, columns=columns) for path in shard_paths(folder, manifest)]
    rows = [row for table in tables for row in table.to_pylist()]
    read = median_seconds(lambda: [table.to_pylist() for table in tables], 3)
    checked = median_seconds(lambda: [check_row(row, Path(folder), i, vocab_size=1 << 20) for i, row in enumerate(rows)], 3)
    print(f"per-row checks: {checked * 1000:.0f} ms for {len(rows)} rows ({checked / len(rows) * 1e6:.1f} us a row); "
          f"turning the same columns into rows takes {read * 1000:.0f} ms")
    with tempfile.NamedTemporaryFile() as f:
        f.write(os.urandom(1 << 30))
        f.flush()
        print(f"sha256 alone: {median_seconds(lambda: file_sha256(f.name), 3):.2f} s per GiB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/weights-dpo")
