"""Cost of the always-on shard verification (`tispipe.shards.verify_shards`: footer, row count, sha256).

    .venv/bin/python bench/verify_shards.py runs/weights-dpo

Prints the median time to verify the folder's shards (5 runs), in ms and in seconds per GB of shards,
and the sha256 rate alone on 1 GiB of random bytes.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tispipe.shards import file_sha256, read_manifest, verify_shards


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
    with tempfile.NamedTemporaryFile() as f:
        f.write(os.urandom(1 << 30))
        f.flush()
        print(f"sha256 alone: {median_seconds(lambda: file_sha256(f.name), 3):.2f} s per GiB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/weights-dpo")
