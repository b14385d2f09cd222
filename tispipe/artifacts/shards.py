"""Weight shards on disk: Parquet files of per-token weights plus a JSON manifest.

Layout of an estimate output folder:
    DIR/shards/part-00000.parquet   one row per pair (see SCHEMA)
    DIR/manifest.json               written last; its presence means the run is complete

I/O only: no model code here. Stage one writes with `write_shard`/`write_manifest`; stage two reads with
`read_manifest` and streams rows with `stream_rows`, which never holds more than one record batch
per shard plus the shuffle buffer in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tispipe.artifacts.atomic import atomic_path, atomic_write_json
from tispipe.errors import TispipeError, wrong_path

SCHEMA_VERSION = 1

_ids = pa.list_(pa.int32())
_floats = pa.list_(pa.float32())
# Element t of every per-token column belongs to token t of that response (EOS included).
SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("prompt", pa.string()),  # conversational prompts are stored as their JSON message list
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("prompt_ids", _ids),
        ("chosen_ids", _ids),
        ("rejected_ids", _ids),
        ("chosen_logratio", _floats),  # r_t = log pi+(y_t) - log pi-(y_t)
        ("rejected_logratio", _floats),
        ("chosen_weights", _floats),  # w_t = k * exp(mu * clamp(r_t, L, U)) (or the chosen transform)
        ("rejected_weights", _floats),
        ("chosen_ref_logps", _floats),  # log pi_ref(y_t), so dpo/ipo training can skip the reference model
        ("rejected_ref_logps", _floats),
        ("chosen_labels", pa.list_(pa.int8())),  # ground-truth token labels (+1/-1/0) where the data has them
        ("rejected_labels", pa.list_(pa.int8())),
    ]
)


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shard(path: str | Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write rows atomically as one Parquet file; return its manifest entry (name, rows, sha256).

    Missing optional columns (labels) are written as nulls. Same rows give the same bytes.
    """
    columns = {name: [row.get(name) for row in rows] for name in SCHEMA.names}
    table = pa.table(columns, schema=SCHEMA)
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return shard_entry(path, len(rows))


def rewrite_weights(path: Path, weights_of) -> dict[str, Any]:
    """Replace a shard's weight columns by `weights_of(logratio, side)` of each row's stored r_t (float32 arrays),
    keeping every other column; atomic, and the same stored r give the same bytes. Returns the new entry."""
    rows = pq.read_table(path, schema=SCHEMA).to_pylist()
    for row in rows:
        for side in ("chosen", "rejected"):
            row[f"{side}_weights"] = weights_of(np.asarray(row[f"{side}_logratio"], dtype=np.float32), side)
    return write_shard(path, rows)


def shard_entry(path: Path, rows: int) -> dict[str, Any]:
    """The manifest entry of a complete shard (it opens with `rows` rows, else TispipeError): name, rows, sha256."""
    open_shard(path, expected_rows=rows)
    return {"file": path.name, "rows": rows, "sha256": file_sha256(path)}


def verify_shards(out_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Every shard the manifest lists is there, opens with its row count, and has its recorded sha256.

    Always on when a stage opens a finished folder: a shard swapped for another run's (same row count)
    or damaged after the run is an error naming it, not silently used. Reading costs about one sha256
    pass over the shard bytes.
    """
    for path, entry in zip(shard_paths(out_dir, manifest), manifest["shards"], strict=True):
        open_shard(path, entry["rows"])
        if file_sha256(path) != entry["sha256"]:
            raise TispipeError(
                f"shard {path} is not the one the manifest lists (sha256 differs): it was replaced or damaged after the run",
                hint="re-run the same `tispipe estimate` to rebuild it, or use the shards of that run",
            )


def shard_sizes(pairs: int, shard_size: int) -> list[int]:
    """Rows of each shard when `pairs` pairs are cut into shards of `shard_size` in data order."""
    return [min(shard_size, pairs - start) for start in range(0, pairs, shard_size)]


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Load DIR/manifest.json, checking it exists, parses and has a schema version this code reads."""
    path = Path(out_dir) / "manifest.json"
    if not Path(out_dir).is_dir():
        raise wrong_path(out_dir, "shards folder", want="folder", hint="run `tispipe estimate --out DIR` first")
    if not path.is_file():
        raise TispipeError(
            f"{path} is missing: {out_dir} is not a finished estimate run",
            hint="run (or resume) `tispipe estimate` with this --out",
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TispipeError(f"{path} is not valid JSON: {e}")
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int):
        raise TispipeError(f"{path} has no schema_version: not a tispipe manifest")
    if version > SCHEMA_VERSION:
        raise TispipeError(
            f"{path} has schema version {version}, newer than this tispipe reads ({SCHEMA_VERSION})",
            hint="upgrade tispipe",
        )
    entries = manifest.get("shards")
    if not isinstance(entries, list) or not all(_is_entry(e) for e in entries):
        raise TispipeError(f"{path}: `shards` must be a list of {{file, rows, sha256}} entries (a file name, a row count, a hex digest)")
    return manifest


def _is_entry(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    file, rows, sha = entry.get("file"), entry.get("rows"), entry.get("sha256")
    return (isinstance(file, str) and file == Path(file).name and isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0
            and isinstance(sha, str) and len(sha) == 64)


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(Path(out_dir) / "manifest.json", {"schema_version": SCHEMA_VERSION, **manifest})


def shard_paths(out_dir: str | Path, manifest: dict[str, Any]) -> list[Path]:
    return [Path(out_dir) / "shards" / entry["file"] for entry in manifest["shards"]]


def open_shard(path: Path, expected_rows: int | None = None) -> pq.ParquetFile:
    """Open a shard, turning a missing, truncated or non-Parquet file into an error that names it."""
    if not path.is_file():
        raise TispipeError(f"shard {path} is missing", hint="re-run `tispipe estimate` with the same --out to rebuild it")
    try:
        shard = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise TispipeError(f"shard {path} is not a readable Parquet file ({str(e).splitlines()[0]})")
    if expected_rows is not None and shard.metadata.num_rows != expected_rows:
        raise TispipeError(f"shard {path} has {shard.metadata.num_rows} rows, the manifest says {expected_rows}")
    return shard


FLOAT_COLUMNS = [f"{side}_{name}" for side in ("chosen", "rejected") for name in ("logratio", "weights", "ref_logps")]
PER_TOKEN = ("logratio", "weights", "ref_logps", "labels")  # one value per response token, as `{side}_ids`


def check_row(row: dict[str, Any], path: Path, index: int, vocab_size: int | None = None) -> None:
    """A row read from a shard agrees with itself and with the model: every float finite (a NaN reference
    log-prob would silently turn every parameter NaN), every token id in [0, vocab_size), every response
    non-empty with one value per token in each per-token column. Only the columns read are checked."""
    where = f"shard {path}, " + (f"pair {row['pair_id']!r}" if "pair_id" in row else f"row {index}")
    for name in FLOAT_COLUMNS:
        values = row.get(name)
        if values is not None and not all(math.isfinite(v) for v in values):
            raise TispipeError(f"{where}: column {name} holds NaN or infinite values")
    for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
        ids = row.get(column)
        low, high = (min(ids), max(ids)) if ids else (0, 0)
        if low < 0 or (vocab_size is not None and high >= vocab_size):
            bad = low if low < 0 else high
            limit = f"0..{vocab_size - 1}" if vocab_size is not None else "0 or more"
            raise TispipeError(f"{where}: token id {bad} in {column} is outside the vocabulary ({limit})", hint="re-run `tispipe estimate` with the model you train")
    for side in ("chosen", "rejected"):
        ids = row.get(f"{side}_ids")
        if ids is None:
            continue
        if not ids:
            raise TispipeError(f"{where}: the {side} response has no tokens")
        for name in PER_TOKEN:
            values = row.get(f"{side}_{name}")
            if values is not None and len(values) != len(ids):
                raise TispipeError(f"{where}: column {side}_{name} holds {len(values)} values for {len(ids)} {side} tokens")


def iter_shard_rows(
    path: Path, columns: list[str] | None = None, expected_rows: int | None = None, batch_size: int = 256, vocab_size: int | None = None
) -> Iterator[dict[str, Any]]:
    """Yield the rows of one shard as dicts, one record batch in memory at a time, each checked by `check_row`."""
    shard = open_shard(path, expected_rows)
    try:
        index = 0
        for batch in shard.iter_batches(batch_size=batch_size, columns=columns):
            for row in batch.to_pylist():
                check_row(row, path, index, vocab_size)
                index += 1
                yield row
    except (pa.ArrowInvalid, OSError) as e:
        raise TispipeError(f"shard {path} is corrupt ({str(e).splitlines()[0]})")


def stream_rows(
    out_dir: str | Path,
    manifest: dict[str, Any],
    *,
    seed: int,
    epoch: int = 0,
    shuffle_buffer: int = 1000,
    columns: list[str] | None = None,
    skip: int = 0,
    rank: int = 0,
    world_size: int = 1,
    vocab_size: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the rows of all shards in a seeded, approximately shuffled order.

    Shards are visited in an order permuted by (seed, epoch); rows pass through a bounded shuffle
    buffer of `shuffle_buffer` rows, so memory does not grow with the data. The order is a pure
    function of (seed, epoch, manifest), so a resumed run replays it and drops the first `skip` rows
    to land on the exact position it stopped at. With world_size > 1 each rank keeps every
    world_size-th row of the same global order, so ranks see disjoint parts. Token ids must be below
    `vocab_size` (`check_row`).
    """
    rng = random.Random(f"{seed}-{epoch}")
    entries = list(zip(shard_paths(out_dir, manifest), manifest["shards"]))
    rng.shuffle(entries)

    def global_order() -> Iterator[dict[str, Any]]:
        buffer: list[dict[str, Any]] = []
        for path, entry in entries:
            for row in iter_shard_rows(path, columns, entry["rows"], vocab_size=vocab_size):
                if len(buffer) < shuffle_buffer:
                    buffer.append(row)
                    continue
                i = rng.randrange(len(buffer))
                buffer[i], row = row, buffer[i]
                yield row
        rng.shuffle(buffer)
        yield from buffer

    for position, row in enumerate(global_order()):
        if position % world_size != rank:
            continue
        if skip > 0:
            skip -= 1
            continue
        yield row
