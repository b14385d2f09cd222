"""The streaming estimate: pairs read twice, shard by shard, and statistics in numpy arrays."""

from __future__ import annotations

import json

import pytest
from conftest import invoke_cli, prompt_estimate, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def test_estimate_holds_one_shard_of_pairs_at_a_time_and_writes_what_a_full_read_would(tmp_path, make_tiny_llama, monkeypatch):
    """Scoring sees the shards' pairs chunk by chunk; the shards and manifest are those of one in-memory read."""
    from tispipe.data.pairs import load_pairs, tokenize_pairs
    from tispipe.estimate import pairs as estimate_pairs
    from tispipe.estimate import score
    from tispipe.modeling.models import load_tokenizer

    command = prompt_estimate(tmp_path, make_tiny_llama, "--shard-size", 5)
    manifest = json.loads((tmp_path / "weights" / "manifest.json").read_text())
    assert [e["rows"] for e in manifest["shards"]] == [5, 5, 2]
    tokenizer = load_tokenizer(str(tmp_path / "base"))
    from tispipe.configs import EstimateConfig

    cfg = EstimateConfig(data=str(tmp_path / "pairs.jsonl"), model=str(tmp_path / "base"), out="", method="prompt")
    rows, report = load_pairs(cfg.data_options())
    pairs = tokenize_pairs(rows, tokenizer, cfg.data_options(), report, labels=True)
    assert manifest["fingerprints"]["data"] == estimate_pairs.fingerprint_pairs(pairs)
    assert manifest["tokens"] == {"chosen": sum(len(p.chosen_ids) for p in pairs), "rejected": sum(len(p.rejected_ids) for p in pairs)}

    seen = []
    real = score.shard_rows
    monkeypatch.setattr(score, "shard_rows", lambda items, *a: seen.append(len(items)) or real(items, *a))
    again = tmp_path / "again"
    result = invoke_cli(*command, "--shard-size", 5, "--out", again)
    assert result.exit_code == 0, result.output
    assert seen == [5, 5, 2]
    for entry in manifest["shards"]:
        assert (again / "shards" / entry["file"]).read_bytes() == (tmp_path / "weights" / "shards" / entry["file"]).read_bytes()


def test_data_that_changes_between_the_two_reads_is_an_error(tmp_path, make_tiny_llama, monkeypatch):
    from tispipe.data.toy import generate
    from tispipe.estimate import pairs as estimate_pairs

    make_tiny_llama(tmp_path / "base")
    data = write_jsonl(tmp_path / "pairs.jsonl", generate(6, 0, "train"))
    real = estimate_pairs.survey

    def survey_then_change(cfg, tokenizer):
        surveyed = real(cfg, tokenizer)
        write_jsonl(data, generate(6, 1, "train"))  # another process rewrites the file mid-run
        return surveyed

    monkeypatch.setattr("tispipe.estimate.estimate.survey", survey_then_change)
    result = invoke_cli("estimate", "--data", data, "--model", tmp_path / "base", "--method", "prompt", "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 1 and "changed while estimate read it" in result.output and "Traceback" not in result.output, result.output
