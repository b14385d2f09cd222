"""Shard folders verify themselves: a stage that opens one checks every shard against the manifest's sha256,
the manifest's entries are type-checked, and re-running `estimate` on a finished folder rebuilds what is
missing or damaged, ending byte-identical."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import invoke_cli as invoke
from conftest import prompt_estimate

from tispipe.artifacts.shards import read_manifest
from tispipe.errors import TispipeError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def estimated(tmp_path_factory, make_tiny_llama):
    """A finished prompt-method estimate of 12 pairs in two shards of 6, and the command that made it."""
    root = tmp_path_factory.mktemp("integrity")
    return root, prompt_estimate(root, make_tiny_llama, "--shard-size", 6)


def copy(estimated, tmp_path):
    root, command = estimated
    out = tmp_path / "weights"
    shutil.copytree(root / "weights", out)
    return out, command, {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}, (out / "manifest.json").read_bytes()


def swap_in_another_shard(out):
    shutil.copyfile(out / "shards" / "part-00000.parquet", out / "shards" / "part-00001.parquet")  # same row count, other rows


@pytest.mark.parametrize("stage", ["train", "inspect", "eval"])
def test_a_swapped_shard_is_refused_by_every_reader(estimated, tmp_path, stage):
    root, _ = estimated
    out, _, _, _ = copy(estimated, tmp_path)
    swap_in_another_shard(out)
    args = {
        "train": ["train", "--shards", out, "--model", root / "base", "--out", tmp_path / "run", "--loss", "dpo", "--device", "cpu"],
        "inspect": ["inspect", out],
        "eval": ["eval", "--model", root / "base", "--data", root / "pairs.jsonl", "--split", "train", "--shards", out, "--out", tmp_path / "e",
                 "--device", "cpu"],
    }[stage]
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert "part-00001.parquet is not the one the manifest lists (sha256 differs)" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "e" / "report.json").exists()


def test_a_zeroed_or_missing_sha256_and_bad_entries_are_refused(estimated, tmp_path):
    out, _, _, _ = copy(estimated, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    for entries in ([{**manifest["shards"][0], "sha256": "0" * 64}, manifest["shards"][1]],):
        (out / "manifest.json").write_text(json.dumps({**manifest, "shards": entries}))
        assert "sha256 differs" in invoke("inspect", out).output
    for bad in ([{"file": "part-00000.parquet", "rows": "6", "sha256": "x"}], [{"file": "../../etc/passwd", "rows": 6, "sha256": "0" * 64}], "shards", [7]):
        (out / "manifest.json").write_text(json.dumps({**manifest, "shards": bad}))
        with pytest.raises(TispipeError, match=r"`shards` must be a list of \{file, rows, sha256\} entries"):
            read_manifest(out)


@pytest.mark.parametrize("damage", ["deleted", "swapped", "truncated"])
def test_rerunning_estimate_rebuilds_a_damaged_shard_byte_identical(estimated, tmp_path, damage):
    out, command, shards_before, manifest_before = copy(estimated, tmp_path)
    shard = out / "shards" / "part-00001.parquet"
    if damage == "deleted":
        shard.unlink()
    elif damage == "swapped":
        swap_in_another_shard(out)
    else:
        shard.write_bytes(shard.read_bytes()[:100])
    result = invoke(*command, "--out", out)
    assert result.exit_code == 0, result.output
    assert "rebuilding the missing or damaged shards" in result.output and "nothing to do" not in result.output
    assert {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())} == shards_before
    assert (out / "manifest.json").read_bytes() == manifest_before
    assert "nothing to do" in invoke(*command, "--out", out).output  # and now it is whole again


def tamper(out, change):
    """Rewrite row 2 of the first shard with `change(row)` and give the manifest the new sha256, as someone
    editing the folder by hand would: only the row checks can catch it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tispipe.artifacts.shards import file_sha256

    path = out / "shards" / "part-00000.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    change(rows[2])
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = file_sha256(path)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return rows[2]["pair_id"]


ROW_DAMAGE = {
    "id beyond the vocabulary": (lambda r: r["chosen_ids"].__setitem__(0, 99_999), "token id 99999 in chosen_ids is outside the vocabulary"),
    "negative id": (lambda r: r["rejected_ids"].__setitem__(0, -5), "token id -5 in rejected_ids is outside the vocabulary"),
    "weights too short": (lambda r: r.__setitem__("chosen_weights", r["chosen_weights"][:-2]), "column chosen_weights holds"),
    "log-ratio too long": (lambda r: r.__setitem__("rejected_logratio", r["rejected_logratio"] + [0.0]), "column rejected_logratio holds"),
    "empty response": (lambda r: r.__setitem__("chosen_ids", []), "the chosen response has no tokens"),
}
# train reads the columns its loss needs (here the stored weights, not the log-ratios); inspect reads all but the prompt ids
CASES = [(stage, damage) for damage in ROW_DAMAGE for stage in ("train", "inspect") if (stage, damage) != ("train", "log-ratio too long")]


@pytest.mark.parametrize(("stage", "damage"), CASES)
def test_rows_that_disagree_with_themselves_or_the_model_are_named(estimated, tmp_path, damage, stage):
    root, _ = estimated
    out, _, _, _ = copy(estimated, tmp_path)
    change, message = ROW_DAMAGE[damage]
    pair_id = tamper(out, change)
    args = {
        "train": ["train", "--shards", out, "--model", root / "base", "--out", tmp_path / "run", "--batch-size", 12, "--device", "cpu"],
        "inspect": ["inspect", out, "--pair", 2],
    }[stage]
    result = invoke(*args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0] and repr(pair_id) in errors[0], result.output
    assert not (tmp_path / "run").exists()  # a new run that fails before its first checkpoint leaves nothing
