"""A pair whose chosen and rejected differ only past --max-length carries no signal once truncated: it is
dropped and counted like any other bad row (issue 31, class 7), refused with --strict, and a data set left
with no pair is refused before any work."""

from __future__ import annotations

import json

import pytest
from conftest import invoke_cli, write_jsonl

from tispipe.data.pairs import CUT_IDENTICAL, DataOptions, load_pairs, tokenize_pairs
from tispipe.errors import TispipeError

pytestmark = pytest.mark.usefixtures("one_thread")

SHARED = "please tell me about bread " * 30  # about 150 tokens: far past max_length 64
ROWS = [
    {"pair_id": "a", "prompt": "How do I bake bread?", "chosen": "Heat the oven first.", "rejected": "No."},
    {"pair_id": "b", "prompt": "Tell me a fact.", "chosen": "Water is wet.", "rejected": "Cake is safe."},
    {"pair_id": "cut", "prompt": "Why?", "chosen": SHARED + "Yes, here are the steps.", "rejected": SHARED + "Sorry, I cannot."},
]


def test_a_pair_identical_after_truncation_is_dropped_and_counted(tmp_path, tiny_tokenizer):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    opts = DataOptions(data=str(tmp_path / "d.jsonl"), max_length=64, max_prompt_length=32)
    rows, report = load_pairs(opts)
    pairs = tokenize_pairs(rows, tiny_tokenizer, opts, report)
    assert [p.pair_id for p in pairs] == ["a", "b"] and report.kept == 2
    assert report.dropped == {CUT_IDENTICAL: 1} and report.truncated == 0
    # with room for where they differ, the pair is kept (and counted as truncated when cut)
    roomy = DataOptions(data=opts.data, max_length=1024, max_prompt_length=32)
    rows, report = load_pairs(roomy)
    assert [p.pair_id for p in tokenize_pairs(rows, tiny_tokenizer, roomy, report)] == ["a", "b", "cut"] and report.dropped == {}


def test_strict_refuses_a_pair_identical_after_truncation(tmp_path, tiny_tokenizer):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    opts = DataOptions(data=str(tmp_path / "d.jsonl"), max_length=64, max_prompt_length=32, strict=True)
    rows, report = load_pairs(opts)
    with pytest.raises(TispipeError, match="pair 'cut': chosen and rejected are the same once cut to max_length 64"):
        tokenize_pairs(rows, tiny_tokenizer, opts, report)


@pytest.fixture(scope="module")
def base(tmp_path_factory, make_tiny_llama):
    folder = tmp_path_factory.mktemp("cut") / "base"
    make_tiny_llama(folder)
    return folder


def estimate(base, data, out, *flags):
    return invoke_cli("estimate", "--data", data, "--model", base, "--method", "prompt", "--max-length", 64, "--max-prompt-length", 32,
                      "--device", "cpu", "--out", out, *flags)


def test_estimate_drops_the_pair_and_records_the_count(base, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    result = estimate(base, data, tmp_path / "w")
    assert result.exit_code == 0, result.output
    assert f"dropped: {CUT_IDENTICAL}" in " ".join(result.output.split())
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert manifest["data"]["dropped"] == {CUT_IDENTICAL: 1} and manifest["data"]["kept"] == 2, manifest["data"]


def test_estimate_with_every_pair_identical_after_truncation_is_refused(base, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [ROWS[2], {**ROWS[2], "pair_id": "cut2", "rejected": SHARED + "No."}])
    result = estimate(base, data, tmp_path / "w")
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "no pair fits max_length 64" in errors[0] and f"2 {CUT_IDENTICAL}" in errors[0]
    assert not (tmp_path / "w").exists()


def test_eval_drops_the_pair_too(base, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    result = invoke_cli("eval", "--data", data, "--split", "train", "--model", base, "--out", tmp_path / "ev", "--num-prompts", 0,
                        "--max-length", 64, "--max-prompt-length", 32, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"dropped: {CUT_IDENTICAL}" in " ".join(result.output.split())
