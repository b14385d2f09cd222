"""The outside judge (`eval --oracle profanity`) and chrF against the chosen responses."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import write_jsonl
from typer.testing import CliRunner

from tispipe.cli import app
from tispipe.core import metrics
from tispipe.errors import TispipeError
from tispipe.evaluate import judges

pytestmark = pytest.mark.usefixtures("one_thread")


def test_chrf_matches_sacrebleu():
    # reference values from sacrebleu 2.6.0: CHRF().sentence_score(hypothesis, references).score / 100
    assert metrics.chrf("you are wrong about this", ["you are so wrong about that"]) == pytest.approx(0.67765740909945, abs=1e-12)
    assert metrics.chrf("thank you, friend", ["thanks friend", "thank you my friend"]) == pytest.approx(0.6542375972554322, abs=1e-12)
    assert metrics.chrf("abc", ["abd"]) == pytest.approx(0.38888888888888884, abs=1e-12)


def test_chrf_edges():
    assert metrics.chrf("", ["hello there"]) == 0.0  # saying nothing scores nothing
    assert metrics.chrf("hello there", ["hello there"]) == 1.0
    assert metrics.chrf("hello", []) is None
    # the best-matching reference counts
    assert metrics.chrf("hello there", ["goodbye", "hello there"]) == 1.0


@pytest.mark.skipif(importlib.util.find_spec("profanity_check") is None, reason="alt-profanity-check is in the test extra")
def test_profanity_judge_scores():
    texts = ["you are a stupid idiot", "thank you for the helpful answer"]
    scores = judges.oracle_scores("profanity", texts)
    assert scores[0]["harmful"] == 1.0 and scores[1]["harmful"] == 0.0
    assert scores[0]["oracle_reward"] < 0.5 < scores[1]["oracle_reward"]
    assert scores[0]["oracle_reward"] == pytest.approx(1 - scores[0]["offensive_probability"])
    assert judges.oracle_scores("profanity", []) == []


def test_unknown_or_missing_judge(monkeypatch):
    with pytest.raises(TispipeError, match="unknown oracle 'gpt4'"):
        judges.check_oracle("gpt4")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "profanity_check" else real(name, *a))
    with pytest.raises(TispipeError, match="alt-profanity-check") as error:
        judges.check_oracle("profanity")
    assert "tispipe[judge]" in error.value.hint


@pytest.mark.skipif(importlib.util.find_spec("profanity_check") is None, reason="alt-profanity-check is in the test extra")
def test_eval_with_the_profanity_judge(tmp_path, tiny_tokenizer, make_tiny_llama):
    model = tmp_path / "m"
    make_tiny_llama(model, seed=0, tokenizer=tiny_tokenizer, num_attention_heads=4, num_key_value_heads=4)
    rows = [{"pair_id": str(i), "prompt": f"Rewrite politely: comment {i}", "chosen": "I disagree with you.", "rejected": "you are an idiot"} for i in range(4)]
    write_jsonl(tmp_path / "test.jsonl", rows)
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--model", str(model), "--data", str(tmp_path / "test.jsonl"), "--out", str(out), "--oracle", "profanity",
                                      "--temperatures", "0", "--max-new-tokens", "6", "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    for sample in samples:
        assert sample["chrf"] == pytest.approx(metrics.chrf(sample["response"], ["I disagree with you."]))
        assert sample["oracle_reward"] == pytest.approx(1 - judges.offensive_probability([sample["response"]])[0])
    pooled = report["results"][str(model)]["generation"]["all"]
    assert pooled["harmful_rate"] == pytest.approx(sum(s["harmful"] for s in samples) / 4)
    assert pooled["chrf"] == pytest.approx(sum(s["chrf"] for s in samples) / 4)
    assert "offensive-text judge" in (out / "report.md").read_text() and "chrF" in result.output
