"""Shard I/O: roundtrip, deterministic streaming, exact resume, rank splits, bounded memory, and errors naming the file."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest

import tispipe.artifacts.shards as shards
from tispipe.artifacts.shards import SCHEMA, read_manifest, shard_name, stream_rows, write_manifest, write_shard
from tispipe.errors import TispipeError


def make_row(i: int, labels: bool = True) -> dict:
    n = 2 + i % 4
    row = {
        "pair_id": f"p{i:04d}",
        "prompt": f"prompt {i}",
        "chosen": f"chosen {i}",
        "rejected": f"rejected {i}",
        "prompt_ids": [1, 2, i],
        "chosen_ids": list(range(n)),
        "rejected_ids": list(range(n + 1)),
        "chosen_logratio": [0.1 * i + t for t in range(n)],
        "rejected_logratio": [-0.1 * i - t for t in range(n + 1)],
        "chosen_weights": [1.0 + t for t in range(n)],
        "rejected_weights": [0.5 + t for t in range(n + 1)],
        "chosen_ref_logps": [-1.0 - t for t in range(n)],
        "rejected_ref_logps": [-2.0 - t for t in range(n + 1)],
    }
    if labels:
        row["chosen_labels"] = [1] + [0] * (n - 1)
        row["rejected_labels"] = [-1] + [0] * n
    return row


def write_dataset(out, n_rows: int, shard_size: int) -> dict:
    entries = []
    for index, start in enumerate(range(0, n_rows, shard_size)):
        rows = [make_row(i) for i in range(start, min(n_rows, start + shard_size))]
        entries.append(write_shard(out / "shards" / shard_name(index), rows))
    manifest = {"shards": entries}
    write_manifest(out, manifest)
    return read_manifest(out)


def test_roundtrip_keeps_values_and_types(tmp_path):
    rows = [make_row(i) for i in range(5)] + [make_row(5, labels=False)]
    entry = write_shard(tmp_path / "part-00000.parquet", rows)
    assert entry["rows"] == 6 and entry["file"] == "part-00000.parquet" and len(entry["sha256"]) == 64
    table = pq.read_table(tmp_path / "part-00000.parquet")
    assert table.schema.equals(SCHEMA)
    back = table.to_pylist()
    for original, read in zip(rows, back, strict=True):
        for name in SCHEMA.names:
            expected = original.get(name)
            if name.endswith(("logratio", "weights", "logps")):
                assert read[name] == pytest.approx(expected, rel=1e-7)  # float32 storage
            else:
                assert read[name] == expected
    assert back[-1]["chosen_labels"] is None  # no labels: null, not an empty list
    # the same rows give the same bytes
    again = write_shard(tmp_path / "again.parquet", rows)
    assert again["sha256"] == entry["sha256"]


def test_float32_values_survive_exactly(tmp_path):
    import numpy as np

    values = np.random.default_rng(0).normal(size=50).astype(np.float32)
    row = make_row(0)
    row["chosen_logratio"] = values.tolist()
    row["chosen_ids"] = list(range(50))
    write_shard(tmp_path / "s.parquet", [row])
    read = pq.read_table(tmp_path / "s.parquet").column("chosen_logratio").to_pylist()[0]
    assert np.array_equal(np.asarray(read, dtype=np.float32), values)


def test_stream_is_deterministic_complete_and_shuffled(tmp_path):
    manifest = write_dataset(tmp_path, 53, 10)
    ids = lambda **kw: [r["pair_id"] for r in stream_rows(tmp_path, manifest, shuffle_buffer=8, **kw)]  # noqa: E731
    first = ids(seed=1)
    assert first == ids(seed=1)
    assert sorted(first) == [f"p{i:04d}" for i in range(53)]
    assert first != sorted(first)
    assert ids(seed=2) != first
    assert ids(seed=1, epoch=1) != first


def test_skip_resumes_at_the_exact_position(tmp_path):
    manifest = write_dataset(tmp_path, 40, 7)
    full = [r["pair_id"] for r in stream_rows(tmp_path, manifest, seed=3, epoch=2, shuffle_buffer=5)]
    for skip in (0, 1, 13, 39, 40):
        resumed = [r["pair_id"] for r in stream_rows(tmp_path, manifest, seed=3, epoch=2, shuffle_buffer=5, skip=skip)]
        assert resumed == full[skip:]


def test_rank_split_is_disjoint_and_complete(tmp_path):
    manifest = write_dataset(tmp_path, 31, 6)
    full = [r["pair_id"] for r in stream_rows(tmp_path, manifest, seed=0, shuffle_buffer=4)]
    parts = [[r["pair_id"] for r in stream_rows(tmp_path, manifest, seed=0, shuffle_buffer=4, rank=k, world_size=3)] for k in range(3)]
    assert sum(len(p) for p in parts) == 31
    assert set().union(*parts) == set(full) and all(not (set(a) & set(b)) for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert parts[1] == full[1::3]  # rank k keeps every world_size-th row of the one global order
    # skip counts rows of this rank
    assert [r["pair_id"] for r in stream_rows(tmp_path, manifest, seed=0, shuffle_buffer=4, rank=1, world_size=3, skip=2)] == parts[1][2:]


def test_shuffle_buffer_bounds_rows_in_memory(tmp_path, monkeypatch):
    manifest = write_dataset(tmp_path, 200, 50)
    pulled = [0]
    real = shards.iter_shard_rows

    def counting(*args, **kwargs):
        for row in real(*args, **kwargs):
            pulled[0] += 1
            yield row

    monkeypatch.setattr(shards, "iter_shard_rows", counting)
    stream = stream_rows(tmp_path, manifest, seed=0, shuffle_buffer=16)
    for yielded in range(1, 150):
        next(stream)
        assert pulled[0] - yielded <= 16  # rows read but not yet handed out


def test_columns_selects_columns(tmp_path):
    manifest = write_dataset(tmp_path, 5, 5)
    row = next(stream_rows(tmp_path, manifest, seed=0, columns=["pair_id", "chosen_weights"]))
    assert set(row) == {"pair_id", "chosen_weights"}


def test_truncated_shard_is_an_error_naming_it(tmp_path):
    manifest = write_dataset(tmp_path, 12, 4)
    path = tmp_path / "shards" / "part-00001.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TispipeError, match="part-00001.parquet"):
        list(stream_rows(tmp_path, manifest, seed=0))


def test_garbage_and_missing_shards_are_errors_naming_them(tmp_path):
    manifest = write_dataset(tmp_path, 12, 4)
    (tmp_path / "shards" / "part-00002.parquet").write_text("not parquet at all")
    with pytest.raises(TispipeError, match="part-00002.parquet is not a readable Parquet file"):
        list(stream_rows(tmp_path, manifest, seed=0))
    (tmp_path / "shards" / "part-00002.parquet").unlink()
    with pytest.raises(TispipeError, match="part-00002.parquet is missing"):
        list(stream_rows(tmp_path, manifest, seed=0))


def test_row_count_mismatch_is_an_error(tmp_path):
    manifest = write_dataset(tmp_path, 8, 4)
    manifest["shards"][0]["rows"] = 5
    with pytest.raises(TispipeError, match="part-00000.parquet has 4 rows, the manifest says 5"):
        list(stream_rows(tmp_path, manifest, seed=0))


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(TispipeError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")
    with pytest.raises(TispipeError, match="manifest.json is missing"):
        read_manifest(tmp_path)
    path = tmp_path / "manifest.json"
    path.write_text("{broken")
    with pytest.raises(TispipeError, match=f"{path} is not valid JSON"):
        read_manifest(tmp_path)
    path.write_text(json.dumps({"shards": []}))
    with pytest.raises(TispipeError, match="no schema_version"):
        read_manifest(tmp_path)
    path.write_text(json.dumps({"schema_version": shards.SCHEMA_VERSION + 1, "shards": []}))
    with pytest.raises(TispipeError, match=f"{path} has schema version {shards.SCHEMA_VERSION + 1}, newer"):
        read_manifest(tmp_path)


def test_nan_in_a_shard_is_detected(tmp_path):
    rows = [make_row(0), make_row(1)]
    rows[1]["rejected_weights"][0] = math.nan
    entry = write_shard(tmp_path / "shards" / shard_name(0), rows)
    write_manifest(tmp_path, {"shards": [entry]})
    with pytest.raises(TispipeError, match="part-00000.parquet, pair 'p0001': column rejected_weights holds NaN"):
        list(stream_rows(tmp_path, read_manifest(tmp_path), seed=0))


def test_write_is_atomic_on_failure(tmp_path):
    path = tmp_path / "part-00000.parquet"
    write_shard(path, [make_row(0)])
    before = path.read_bytes()
    bad = make_row(1)
    bad["chosen_ids"] = "not a list"
    with pytest.raises(Exception):  # noqa: B017  (pyarrow's own type error)
        write_shard(path, [bad])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000.parquet"]  # no temporary file left
