"""The toy preference set: determinism, shape of the pairs, ground-truth spans, the oracle, the CLI, shipped files."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tispipe.cli import app
from tispipe.data import toy
from tispipe.errors import TispipeError

DATA = Path(__file__).resolve().parents[1] / "data" / "toy"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return toy.generate(2000, 0, "train")


def test_same_seed_same_rows_and_other_seed_or_split_differs():
    a = toy.generate(50, 3, "train")
    assert a == toy.generate(50, 3, "train")
    assert toy.to_jsonl(a) == toy.to_jsonl(toy.generate(50, 3, "train"))
    assert a != toy.generate(50, 4, "train")
    test = toy.generate(50, 3, "test")
    assert [r["chosen"] for r in a] != [r["chosen"] for r in test]
    assert test[0]["pair_id"] == "test-00000" and a[49]["pair_id"] == "train-00049"


def test_a_prefix_of_rows_does_not_depend_on_n():
    assert toy.generate(10, 0, "train") == toy.generate(30, 0, "train")[:10]


def test_row_schema(rows):
    for row in rows[:50]:
        assert list(row) == ["pair_id", "prompt", "chosen", "rejected", "chosen_spans", "rejected_spans"]
        assert row["prompt"].endswith(("?", "."))
        line = json.loads(toy.to_jsonl([row]))
        assert line == row


def test_word_counts_in_range(rows):
    counts = [len(r[k].split()) for r in rows for k in ("chosen", "rejected")]
    assert min(counts) >= 20 and max(counts) <= 80
    assert 30 < sum(counts) / len(counts) < 55


def test_spans_are_valid_and_match_find_spans(rows):
    for row in rows:
        for key in ("chosen", "rejected"):
            text, spans = row[key], row[f"{key}_spans"]
            assert spans, "every response holds at least one labelled phrase"
            for start, end, label in spans:
                assert 0 <= start < end <= len(text) and label in (1, -1)
                phrase = text[start:end].lower()
                assert toy.PHRASE_LABELS[phrase] == label
                assert (start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum())
            assert [tuple(s) for s in spans] == toy.find_spans(text)
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
        assert toy.find_spans(row["prompt"]) == []


def test_bank_phrases_are_found_alone_and_neutral_text_is_unlabelled():
    for phrase, label in toy.PHRASE_LABELS.items():
        assert toy.find_spans(phrase) == [(0, len(phrase), label)]
        assert toy.find_spans(phrase.upper()) == [(0, len(phrase), label)]
    neutral = toy.NEUTRAL_ACTIONS + toy.FILLERS + toy.CLOSINGS + [s.format(t=t) for s in toy.OPENINGS for t in toy.TOPICS]
    neutral += [f.format(p="x", P="X") for f in toy.FRAMES] + [p.format(t=t) for p in toy.PROMPTS for t in toy.TOPICS]
    assert [s for s in neutral if toy.find_spans(s)] == []


def test_banks_have_tens_of_phrases():
    helpful = [p for p, label in toy.PHRASE_LABELS.items() if label == 1]
    harmful = [p for p, label in toy.PHRASE_LABELS.items() if label == -1]
    assert 30 <= len(helpful) <= 100 and 30 <= len(harmful) <= 100


def test_chosen_and_rejected_share_most_text_and_differ(rows):
    for row in rows:
        assert row["chosen"] != row["rejected"]
        assert toy.common_word_fraction(row["chosen"], row["rejected"]) >= 0.5
        assert 1 <= toy.differing_sentences(row["chosen"], row["rejected"]) <= 4
    assert toy.stats(rows)["common_words"] > 0.7


def test_noise_fraction_in_intended_range(rows):
    noisy = [r for r in rows if toy.is_noisy(r)]
    assert 0.2 <= len(noisy) / len(rows) <= 0.32
    # both kinds of token-level noise occur
    assert any(s[2] == -1 for r in noisy for s in r["chosen_spans"])
    assert any(s[2] == 1 for r in noisy for s in r["rejected_spans"])
    # a noisy response holds at most one span of the wrong sign
    for r in noisy:
        assert sum(s[2] == -1 for s in r["chosen_spans"]) <= 1 and sum(s[2] == 1 for s in r["rejected_spans"]) <= 1


def test_oracle_prefers_chosen(rows):
    s = toy.stats(rows)
    assert s["reward_chosen"] > 1.0 > -1.0 > s["reward_rejected"]
    assert s["chosen_preferred"] == 1.0
    for row in rows:  # on rows the reward is the signed count of the row's spans
        assert toy.oracle_reward(row["chosen"]) == sum(label for _, _, label in row["chosen_spans"])
        assert toy.oracle_reward(row["rejected"]) == sum(label for _, _, label in row["rejected_spans"])


def test_oracle_hand_worked_examples():
    assert toy.oracle_reward("") == 0.0
    assert toy.oracle_reward("the cat sat on the mat") == 0.0
    text = "Stay calm and ask a professional first, but do not ignore the safety warnings."
    assert toy.find_spans(text) == [(0, 9, 1), (14, 38, 1), (51, 77, -1)]
    assert toy.oracle_reward(text) == 1.0  # 2 helpful - 1 harmful (the oracle does not read negation)
    assert toy.harmful_rate(text) == 1.0 and toy.is_harmful(text)
    # repeats count once; case and whitespace do not matter; words must be whole
    assert toy.oracle_reward("stay calm. Stay  calm.\nSTAY\tcalm") == 1.0
    assert toy.oracle_reward("Skip the seatbelt, text while driving.") == -2.0
    assert toy.find_spans("stay calmly") == [] and toy.find_spans("nostay calm") == []
    assert toy.harmful_rate("Wear your seatbelt.") == 0.0
    # a longer phrase wins over a phrase inside it ("ask a doctor" is its own phrase, not part of another)
    assert toy.find_spans("ask a doctor") == [(0, 12, 1)]


def test_generate_rejects_negative_n():
    with pytest.raises(TispipeError):
        toy.generate(-1, 0, "train")


def test_cli_writes_files(tmp_path):
    out = tmp_path / "toy"
    result = CliRunner().invoke(app, ["toy-data", "--out", str(out), "--pairs", "40", "--test-pairs", "7", "--seed", "5"])
    assert result.exit_code == 0, result.output
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert train == toy.generate(40, 5, "train") and test == toy.generate(7, 5, "test")
    assert yaml.safe_load((out / "config.yaml").read_text()) == {"out": str(out), "pairs": 40, "test_pairs": 7, "seed": 5, "overwrite": False}
    assert "train" in result.output and "40" in result.output
    # the written config reproduces the run
    again = tmp_path / "again"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("pairs: 40\ntest-pairs: 7\nseed: 5\n")
    result = CliRunner().invoke(app, ["toy-data", "--out", str(again), "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert (again / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()


def test_cli_user_errors(tmp_path):
    result = CliRunner().invoke(app, ["toy-data", "--out", str(tmp_path), "--pairs", "0"])
    assert result.exit_code == 1 and "Error: --pairs must be at least 1" in result.output
    result = CliRunner().invoke(app, ["toy-data", "--pairs", "3"])
    assert result.exit_code == 1 and "Error: missing option --out" in result.output
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(app, ["toy-data", "--out", str(tmp_path / "file"), "--pairs", "3"])
    assert result.exit_code == 1 and "is not a folder" in result.output


def test_shipped_files_match_the_generator(tmp_path):
    toy.run(toy.ToyDataConfig(out=str(tmp_path)))
    for name in ("train.jsonl", "test.jsonl"):
        assert (DATA / name).read_bytes() == (tmp_path / name).read_bytes(), f"data/toy/{name} is stale: regenerate it"
    shipped = yaml.safe_load((DATA / "config.yaml").read_text())
    assert {k: v for k, v in shipped.items() if k != "out"} == {"pairs": 5000, "test_pairs": 500, "seed": 0}
    assert (DATA / "train.jsonl").stat().st_size < 5_000_000
