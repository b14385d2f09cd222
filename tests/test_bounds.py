"""Unbounded work is bounded or made visible: a LoRA rank above the adapted layers' width is refused, and a
huge `generate --num-samples` is saved in shards of about --shard-size pairs as it goes (resumable, with a
clear bound on the number of shards)."""

from __future__ import annotations

import json

import pytest
from conftest import invoke_cli, prompt_estimate, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory, make_tiny_llama):
    root = tmp_path_factory.mktemp("bounds")
    prompt_estimate(root, make_tiny_llama)  # base (width 32), pairs.jsonl, weights/
    write_jsonl(root / "two.jsonl", [{"prompt": "how can I bake bread"}, {"prompt": "tell me about water"}])
    return root


def one_error(result):
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize("command", ["train", "estimate"])
def test_a_lora_rank_above_the_layer_width_is_refused_and_nothing_is_written(root, tmp_path, command):
    out = tmp_path / "out"
    args = {"train": ["train", "--shards", root / "weights", "--model", root / "base", "--max-steps", 1],
            "estimate": ["estimate", "--data", root / "pairs.jsonl", "--model", root / "base", "--method", "sft"]}[command]
    line = one_error(invoke_cli(*args, "--out", out, "--lora-r", 100000, "--device", "cpu"))
    assert "--lora-r 100000" in line and "(32)" in line
    assert not out.exists()


def generate(root, out, *extra):
    return invoke_cli("generate", "--model", root / "base", "--prompts", root / "two.jsonl", "--out", out, "--max-new-tokens", 4,
                      "--device", "cpu", *extra)


def test_many_samples_are_saved_in_bounded_shards_and_resume_byte_identical(root, tmp_path):
    out = tmp_path / "pairs"
    result = generate(root, out, "--num-samples", 7, "--shard-size", 4)
    assert result.exit_code == 0, result.output
    assert "14 pairs to sample, saved in 4 shard(s) of at most 4 pairs" in result.output
    shards = {p.name: p.read_bytes() for p in sorted(out.glob("train-*.jsonl"))}
    assert len(shards) == 4 and all(len(text.splitlines()) <= 4 for text in shards.values())
    ids = [json.loads(line)["pair_id"] for text in shards.values() for line in text.splitlines()]
    assert len(ids) == len(set(ids))  # every (prompt, sample) once
    (out / "train-00002.jsonl").unlink()
    (out / "manifest.json").unlink()
    again = generate(root, out, "--num-samples", 7, "--shard-size", 4)
    assert again.exit_code == 0 and "Resuming: 3 of 4 shards" in again.output, again.output
    assert {p.name: p.read_bytes() for p in sorted(out.glob("train-*.jsonl"))} == shards


def test_few_samples_keep_one_shard_per_chunk_of_prompts(root, tmp_path):
    result = generate(root, tmp_path / "pairs", "--num-samples", 2, "--shard-size", 4)
    assert result.exit_code == 0 and "saved in 1 shard(s) of at most 4 pairs" in result.output, result.output


def test_a_request_beyond_the_shard_bound_is_refused_before_any_work(root, tmp_path):
    line = one_error(generate(root, tmp_path / "pairs", "--num-samples", 100_000_000, "--shard-size", 1))
    assert "--num-samples 100,000,000" in line and "--shard-size" in line
    assert not (tmp_path / "pairs").exists()
