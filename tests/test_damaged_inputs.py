"""Inputs that are damaged or do not fit together: span labels of the wrong shape, model folders with broken
weights or config, models whose tokenizer or vocabulary differs from the run's. Each is one `Error:` line
naming the input, exit 1, found before OUT is made, so nothing is left behind."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import invoke_cli as invoke
from conftest import prompt_estimate, write_jsonl

from tispipe.data.toy import generate

pytestmark = pytest.mark.usefixtures("one_thread")


def one_error(result) -> str:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_tiny_llama, make_tiny_tokenizer):
    """A tiny base with a finished prompt estimate (ROOT/weights), a model with another tokenizer
    (ROOT/other), one without tokenizer files and fewer embedding rows (ROOT/small), and damaged copies."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("damaged")
    prompt_estimate(root, make_tiny_llama)
    other = make_tiny_tokenizer()
    other.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # same ids, another rendering
    make_tiny_llama(root / "other", tokenizer=other)
    small = make_tiny_llama(vocab_size=300)
    small.save_pretrained(root / "small")
    assert len(AutoTokenizer.from_pretrained(root / "base")) > 300
    for damage in ("truncated", "zero-byte", "random"):
        shutil.copytree(root / "base", root / damage)
        weights = root / damage / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes({"truncated": data[: len(data) // 3], "zero-byte": b"", "random": bytes(range(256)) * 64}[damage])
    return root


SPANS = {
    "not a list": ("x", "spans must be a list of [start, end, label], not str"),
    "too short": ([[1]], "span 0 is [1]; a span is [start, end, label], three integers"),
    "strings": ([["a", "b", 1]], "three integers"),
    "label None": ([[0, 3, None]], "three integers"),
    "label 1.5": ([[0, 3, 1.5]], "three integers"),
    "label 2": ([[0, 3, 2]], "has label 2; labels are +1 helpful, -1 harmful or 0"),
    "start after end": ([[5, 2, 1]], "is not within the text"),
    "beyond the text": ([[0, 99_999, 1]], "is not within the text"),
    "negative start": ([[-3, 2, 1]], "is not within the text"),
}


@pytest.mark.parametrize("case", SPANS)
def test_malformed_span_labels_name_the_file_pair_and_column(world, tmp_path, case):
    spans, message = SPANS[case]
    rows = generate(6, 0, "train")
    rows[3]["rejected_spans"] = spans
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    line = one_error(invoke("estimate", "--data", data, "--model", world / "base", "--method", "prompt", "--out", tmp_path / "w", "--device", "cpu"))
    assert line.startswith(f"Error: {data}, pair {rows[3]['pair_id']!r}, rejected_spans: ") and message in line, line
    assert not (tmp_path / "w").exists()


def stage_args(world, tmp_path, stage, model):
    return {
        "estimate": ["estimate", "--data", world / "pairs.jsonl", "--model", model, "--method", "prompt", "--out", tmp_path / "out", "--device", "cpu"],
        "train": ["train", "--shards", world / "weights", "--model", model, "--out", tmp_path / "out", "--device", "cpu"],
        "eval": ["eval", "--model", model, "--data", world / "pairs.jsonl", "--split", "train", "--oracle", "toy", "--out", tmp_path / "out", "--device", "cpu"],
    }[stage]


@pytest.mark.parametrize("stage", ["estimate", "train", "eval"])
@pytest.mark.parametrize("damage", ["truncated", "zero-byte", "random"])
def test_damaged_weights_are_found_before_out_is_made(world, tmp_path, stage, damage):
    line = one_error(invoke(*stage_args(world, tmp_path, stage, world / damage)))
    assert f"--model {world / damage}: model.safetensors is damaged" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no OUT, no lock, no state file


@pytest.mark.parametrize("stage", ["estimate", "train", "eval"])
def test_a_damaged_config_is_found_before_out_is_made(world, tmp_path, stage):
    model = tmp_path / "model"
    shutil.copytree(world / "base", model)
    (model / "config.json").write_text("{not json")
    line = one_error(invoke(*stage_args(world, tmp_path, stage, model)))
    assert str(model) in line and "config.json" in line  # the tokenizer loader may be the first to read it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize(
    ("option", "args"),
    [
        ("--ref", ["train", "--loss", "tdpo1", "--model", "{base}", "--ref", "{other}", "--shards", "{weights}"]),
        ("--pos-model", ["estimate", "--data", "{pairs}", "--model", "{base}", "--pos-model", "{other}", "--neg-model", "{base}"]),
        ("--neg-model", ["estimate", "--data", "{pairs}", "--model", "{base}", "--pos-model", "{base}", "--neg-model", "{other}"]),
        ("--model", ["eval", "--data", "{pairs}", "--split", "train", "--model", "{base}", "--model", "{other}"]),
    ],
)
def test_every_model_of_a_run_must_share_its_tokenizer(world, tmp_path, option, args):
    names = {"base": world / "base", "other": world / "other", "weights": world / "weights", "pairs": world / "pairs.jsonl"}
    filled = [a.format(**names) if a.startswith("{") else a for a in args]
    line = one_error(invoke(*filled, "--out", tmp_path / "out", "--device", "cpu"))
    assert f"{option} {world / 'other'} has a tokenizer of its own" in line and "differs from the one in use" in line
    assert not (tmp_path / "out").exists()


def test_a_model_with_fewer_embedding_rows_than_the_tokenizer_has_ids(world, tmp_path):
    line = one_error(invoke("train", "--loss", "tdpo1", "--shards", world / "weights", "--model", world / "base", "--ref", world / "small",
                            "--out", tmp_path / "out", "--device", "cpu"))
    assert f"--ref {world / 'small'} has 300 embedding rows, fewer than the" in line
    assert not (tmp_path / "out").exists()


def test_a_folder_without_tokenizer_files_says_so_in_one_sentence(world, tmp_path):
    line = one_error(invoke(*stage_args(world, tmp_path, "estimate", world / "small")))
    assert line == f"Error: folder {world / 'small'} has no tokenizer (none of tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json, vocab.txt)"


def test_a_tokenizer_that_does_not_load_is_reported_whole(world, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(world / "small", model)
    (model / "tokenizer_config.json").write_text(json.dumps({}))
    line = one_error(invoke(*stage_args(world, tmp_path, "estimate", model)))
    assert line.startswith(f"Error: folder {model} has no loadable tokenizer: ") and not line.endswith(": ")


def test_toy_data_refuses_more_pairs_than_it_can_make(tmp_path):
    line = one_error(invoke("toy-data", "--out", tmp_path / "toy", "--pairs", 100_000_000_000))
    assert line == "Error: --pairs 100,000,000,000 is more than the toy generator makes (at most 1,000,000)"
    assert not (tmp_path / "toy").exists()
