"""The real data sets (tispipe.data.real_data): reproducible byte for byte, split by prompt, spans on the right words."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tispipe.data import real_data
from tispipe.data.pairs import DataOptions, DataReport, read_rows, tokenize_pairs

REAL = Path(__file__).resolve().parent.parent / "data" / "real"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The conversion of the committed sources, written once for the module."""
    out = tmp_path_factory.mktemp("real")
    real_data.build(out, REAL / "sources")
    return out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_conversion_reproduces_the_committed_sha256sums(converted):
    committed = (REAL / "SHA256SUMS").read_text(encoding="utf-8")
    assert (converted / "SHA256SUMS").read_text(encoding="utf-8") == committed
    listed = dict(line.split("  ")[::-1] for line in committed.splitlines())
    written = {p.relative_to(converted).as_posix() for p in converted.glob("*/*.jsonl")}
    assert set(listed) == written == {f"{name}/{split}.jsonl" for name in real_data.DATASETS for split in real_data.SPLITS}
    for name, digest in listed.items():
        assert hashlib.sha256((converted / name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("name", real_data.DATASETS)
def test_no_prompt_in_two_splits(converted, name):
    prompts = {split: {real_data.prompt_of(r) for r in read_jsonl(converted / name / f"{split}.jsonl")} for split in real_data.SPLITS}
    assert all(prompts.values())
    train, validation, test = prompts.values()
    assert not train & validation and not train & test and not validation & test


def test_word_diff_spans_of_a_hand_made_pair():
    toxic, rewrite = "you are a stupid idiot", "you are wrong"
    rejected_spans, chosen_spans = real_data.diff_spans(toxic, rewrite)
    assert rejected_spans == [[8, 22, -1]] and toxic[8:22] == "a stupid idiot"
    assert chosen_spans == [[8, 13, 1]] and rewrite[8:13] == "wrong"
    # case and the spacing of punctuation are not changes; a span never takes the space around its words
    toxic, rewrite = "some idiots no longer believe it .", "Some people no longer believe it."
    assert real_data.diff_spans(toxic, rewrite) == ([[5, 11, -1]], [[5, 11, 1]])


def test_spans_label_exactly_the_tokens_of_their_words(tiny_tokenizer_no_template):
    tok = tiny_tokenizer_no_template
    toxic, rewrite = "you are a stupid idiot", "you are wrong"
    rejected_spans, chosen_spans = real_data.diff_spans(toxic, rewrite)
    row = {"pair_id": "p", "prompt": "Rewrite:", "chosen": rewrite, "rejected": toxic, "chosen_spans": chosen_spans, "rejected_spans": rejected_spans}
    (pair,) = tokenize_pairs([row], tok, DataOptions(data="hand-made"), DataReport("hand-made", "standard"), labels=True)
    harmful = [t for t, label in zip(pair.rejected_ids, pair.rejected_labels) if label == -1]
    helpful = [t for t, label in zip(pair.chosen_ids, pair.chosen_labels) if label == 1]
    assert tok.decode(harmful) == " a stupid idiot"
    assert tok.decode(helpful) == " wrong"
    assert -1 not in pair.chosen_labels and 1 not in pair.rejected_labels


def test_paradetox_test_split_loads_with_harmful_token_labels(converted, tiny_tokenizer_no_template):
    opts = DataOptions(data=str(converted / "paradetox"), split="test", limit=24)
    rows, report = read_rows(opts)
    pairs = tokenize_pairs(rows, tiny_tokenizer_no_template, opts, report, labels=True)
    assert (report.format, len(pairs), report.dropped) == ("standard", 24, {})
    for pair in pairs:
        assert -1 in pair.rejected_labels and set(pair.rejected_labels) <= {-1, 0}
        assert set(pair.chosen_labels) <= {0, 1}
        assert pair.extra["reference_toxic"] == pair.rejected and pair.extra["reference"] == pair.chosen


# ---------------------------------------------------------------- paradetox, normalized


def test_normalize_rejoins_what_the_comments_split_and_lowers_the_case():
    from tispipe.data.paradetox_normalized import normalize

    assert normalize("i 'm not gonna sell it , you don 't know ( or care ) !") == "i'm not gonna sell it, you don't know (or care)!"
    assert normalize("I'm not gonna sell it, you don't know (or care)!") == "i'm not gonna sell it, you don't know (or care)!"
    assert normalize("y 'all cost $ 5 .") == "y'all cost $5."


def test_normalized_paradetox_keeps_ids_and_splits_rediffs_spans_and_counts_drops(tmp_path):
    from tispipe.data.paradetox_normalized import build

    def row(index, column, toxic, rewrite, references):
        return real_data.paradetox_pair(index, column, toxic, rewrite, references)

    rows = {
        "train": [row(1, 1, "you are an idiot .", "You are wrong.", ["You are wrong.", "you are wrong ."]),
                  row(1, 2, "you are an idiot .", "you are wrong .", ["You are wrong.", "you are wrong ."])],  # the same once normalized
        "validation": [row(2, 1, "this is crap .", "This is bad.", ["This is bad."])],
        "test": [row(3, 1, "shut up , moron", "Shut up,", ["Shut up,"])],
    }
    data = tmp_path / "data"
    for split, split_rows in rows.items():
        real_data.write_jsonl(data / f"{split}.jsonl", split_rows)
    lines = build(data, tmp_path / "out")
    assert lines[0] == "train           1 of 2 pairs; dropped, duplicate rewrite of the same comment: 1"
    (first,) = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert first["pair_id"] == "paradetox-1-neutral1" and first["prompt"].endswith("\nyou are an idiot.")
    assert (first["rejected"], first["chosen"], first["references"]) == ("you are an idiot.", "you are wrong.", ["you are wrong."])
    assert first["rejected_spans"] == [[8, 16, -1]] and first["rejected"][8:16] == "an idiot"
    assert first["chosen_spans"] == [[8, 13, 1]] and first["chosen"][8:13] == "wrong"
    assert [r["pair_id"] for r in read_jsonl(tmp_path / "out" / "test.jsonl")] == ["paradetox-3-neutral1"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    build(data, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
