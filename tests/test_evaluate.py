"""`tispipe eval`: the stage's pieces on tiny random models, and one end-to-end CLI run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_jsonl
from typer.testing import CliRunner

from tispipe.artifacts.weight_quality import weight_quality
from tispipe.cli import app
from tispipe.data import toy
from tispipe.data.tokenization import encode_prompt, encode_response
from tispipe.errors import TispipeError
from tispipe.evaluate import evaluate, likelihood
from tispipe.modeling import generation
from tispipe.modeling.models import load_reward_model

pytestmark = pytest.mark.usefixtures("one_thread")


EVAL_LLAMA = dict(num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer, make_tiny_llama):
    """Two tiny random causal LMs and a tiny reward model, saved as HF folders with the tiny tokenizer."""
    from transformers import LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("models")
    make_tiny_llama(root / "a", seed=0, tokenizer=tiny_tokenizer, **EVAL_LLAMA)
    make_tiny_llama(root / "b", seed=1, tokenizer=tiny_tokenizer, **EVAL_LLAMA)
    make_tiny_llama(root / "rm", seed=2, tokenizer=tiny_tokenizer, model_class=LlamaForSequenceClassification, num_labels=1, **EVAL_LLAMA)
    return {name: str(root / name) for name in ("a", "b", "rm")}


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "test.jsonl"
    write_jsonl(path, toy.generate(8, 0, "test"))
    return path


def _lm(path):
    from tispipe.modeling.models import load_model

    return load_model(path, device="cpu", dtype="float32")


# ---------------------------------------------------------------- pieces


def test_parse_temperatures():
    assert evaluate.parse_temperatures("0, 0.5,1") == [0.0, 0.5, 1.0]
    for bad in ("", "a,1", "-1", "0.5,0.5", "inf"):
        with pytest.raises(TispipeError):
            evaluate.parse_temperatures(bad)


def test_likelihood_metrics_of_a_model_that_prefers_chosen():
    values = {
        "chosen_logps": [-9.0, -19.0], "rejected_logps": [-13.0, -9.0],
        "ref_chosen_logps": [-10.0, -20.0], "ref_rejected_logps": [-12.0, -8.0],
        "kl_sums": [1.0, 3.0], "kl_tokens": [10.0, 10.0],
    }
    m = likelihood.likelihood_metrics(values, beta=0.5)
    assert m["pref_accuracy"] == 1.0
    assert m["reward_margin"] == pytest.approx(0.5 * ((1 + 1) + (1 + 1)) / 2)  # each pair: +1 on chosen, -1 on rejected
    assert m["logp_accuracy"] == 0.5  # its own log-probs prefer chosen in pair 0 only
    assert m["kl_per_token"] == pytest.approx(4.0 / 20.0)
    # without a reference the reward is the own log-prob margin, and KL is not measured
    no_ref = likelihood.likelihood_metrics({k: values[k] for k in ("chosen_logps", "rejected_logps")}, beta=0.5)
    assert no_ref["pref_accuracy"] == 0.5 and no_ref["kl_per_token"] is None
    assert no_ref["reward_margin"] == pytest.approx(0.5 * ((-9 + 13) + (-19 + 9)) / 2)


def _pairs(tokenizer, rows):
    from tispipe.data.pairs import TokenizedPair

    return [
        TokenizedPair(r["pair_id"], r["prompt"], r["chosen"], r["rejected"], encode_prompt(tokenizer, r["prompt"]),
                      encode_response(tokenizer, r["chosen"]), encode_response(tokenizer, r["rejected"]), False)
        for r in rows
    ]


def test_likelihood_is_batch_independent_and_zero_kl_against_itself(models, tiny_tokenizer):
    pairs = _pairs(tiny_tokenizer, toy.generate(5, 0, "test"))
    a, b = _lm(models["a"]), _lm(models["b"])
    batched = likelihood.likelihood(a, b, pairs, tiny_tokenizer.pad_token_id, batch_size=4, device="cpu")
    single = likelihood.likelihood(a, b, pairs, tiny_tokenizer.pad_token_id, batch_size=1, device="cpu")
    for key in batched:
        assert batched[key] == pytest.approx(single[key], rel=1e-4, abs=1e-4)
    # the sequence log-prob of pair 0's chosen response, computed by hand without padding
    p = pairs[0]
    ids = torch.tensor([p.prompt_ids + p.chosen_ids])
    logps = torch.log_softmax(a(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    by_hand = logps[torch.arange(len(targets)), targets][len(p.prompt_ids) - 1 :].sum().item()
    assert batched["chosen_logps"][0] == pytest.approx(by_hand, abs=1e-3)
    assert all(k > 0 for k in batched["kl_sums"])
    assert batched["kl_tokens"][0] == len(p.chosen_ids) + len(p.rejected_ids)
    itself = likelihood.likelihood(a, a, pairs, tiny_tokenizer.pad_token_id, batch_size=4, device="cpu")
    assert itself["kl_sums"] == pytest.approx([0.0] * len(pairs), abs=1e-5)
    assert likelihood.likelihood_metrics(itself, 0.1)["pref_accuracy"] == 0.5


def test_left_padded_greedy_generation_matches_one_prompt_at_a_time(models, tiny_tokenizer):
    model = _lm(models["a"])
    prompts = [encode_prompt(tiny_tokenizer, t) for t in ("how can I bake bread?", "tell me", "why is the oven heat safe for a cake?")]
    kwargs = dict(temperature=0.0, max_new_tokens=6, eos_id=tiny_tokenizer.eos_token_id, pad_id=tiny_tokenizer.pad_token_id, seed=0, device="cpu")
    batched = generation.generate(model, prompts, batch_size=3, **kwargs)
    alone = generation.generate(model, prompts, batch_size=1, **kwargs)
    assert batched == alone
    for ids, finished in batched:
        assert tiny_tokenizer.eos_token_id not in ids
        assert finished or len(ids) == 6


def test_sampling_is_seeded(models, tiny_tokenizer):
    model = _lm(models["a"])
    prompts = [encode_prompt(tiny_tokenizer, "how can I bake bread?")] * 4
    kwargs = dict(temperature=1.0, max_new_tokens=6, eos_id=tiny_tokenizer.eos_token_id, pad_id=tiny_tokenizer.pad_token_id, batch_size=4, device="cpu")
    first = generation.generate(model, prompts, seed=3, **kwargs)
    assert generation.generate(model, prompts, seed=3, **kwargs) == first
    assert len({tuple(ids) for ids, _ in first}) > 1  # a random model at T=1 does not repeat itself four times


def test_reward_scores_do_not_depend_on_padding(models):
    rm, tokenizer = load_reward_model(models["rm"], device="cpu", dtype="float32", trust_remote_code=False)
    prompts = ["how can I bake bread?", "tell me"]
    responses = ["first heat the oven then water and flour", "sorry"]
    kwargs = dict(chat_template=True, max_prompt_length=64, device="cpu")
    together = generation.reward_scores(rm, tokenizer, prompts, responses, batch_size=2, **kwargs)
    alone = generation.reward_scores(rm, tokenizer, prompts, responses, batch_size=1, **kwargs)
    assert together == pytest.approx(alone, abs=1e-4)
    assert together[0] != pytest.approx(together[1])


def test_weight_quality_auc_on_hand_made_shards(tmp_path):
    from tispipe.artifacts.shards import shard_name, write_manifest, write_shard

    rows = [
        # the decisive tokens get the highest weights: helpful (+1) in chosen, harmful (-1) in rejected
        {"pair_id": "p0", "chosen_weights": [1.0, 1.5, 1.4], "chosen_labels": [0, 1, 1], "chosen_logratio": [0.0, 0.4, 0.3],
         "rejected_weights": [1.0, 1.6, 1.3, 1.0], "rejected_labels": [0, -1, -1, 0], "rejected_logratio": [0.0, -0.5, -0.3, 0.0],
         "chosen_ref_logps": [-1.0, -1.0, -1.0], "rejected_ref_logps": [-1.0, -3.0, -2.0, -0.5]},
        # one chosen helpful token ties with a neutral one: AUC counts it half
        {"pair_id": "p1", "chosen_weights": [1.0, 1.0], "chosen_labels": [1, 0], "chosen_logratio": [0.0, 0.0],
         "rejected_weights": [0.9, 1.2], "rejected_labels": [1, -1], "rejected_logratio": [0.1, -0.2],
         "chosen_ref_logps": [-1.0, -1.0], "rejected_ref_logps": [-0.2, -4.0]},
        {"pair_id": "p2", "chosen_weights": [1.0], "rejected_weights": [1.0], "chosen_logratio": [0.0], "rejected_logratio": [0.0],
         "chosen_ref_logps": [-1.0], "rejected_ref_logps": [-1.0]},  # no labels: skipped
    ]
    (tmp_path / "shards").mkdir()
    entry = write_shard(tmp_path / "shards" / shard_name(0), rows)
    write_manifest(tmp_path, {"shards": [entry]})
    result = weight_quality(str(tmp_path))
    assert (result["rows"], result["labelled_rows"]) == (3, 2)
    assert result["rejected_harmful_auc"] == 1.0
    # helpful weights 1.5, 1.4, 1.0 against neutral 1.0, 1.0: (2 + 2 + 0.5 + 0.5) / 6
    assert result["chosen_helpful_auc"] == pytest.approx(5 / 6)
    # decision tokens: the first of each helpful span (1.5 in p0, the tied 1.0 in p1) against neutral 1.0, 1.0 -> (2 + 1) / 4
    assert result["chosen_helpful_decision_auc"] == pytest.approx(3 / 4)
    assert result["chosen_helpful_decision_logratio_auc"] == pytest.approx(3 / 4)
    # the surprisal baseline: the harmful tokens are the rejected side's least likely under the reference; chosen is all ties
    assert result["rejected_harmful_surprisal_auc"] == 1.0 and result["chosen_helpful_surprisal_auc"] == 0.5
    assert result["rejected_harmful_mean_weight"] == pytest.approx((1.6 + 1.3 + 1.2) / 3)
    assert result["rejected_neutral_mean_weight"] == pytest.approx(1.0)


# ---------------------------------------------------------------- end to end


def test_eval_cli_end_to_end(models, toy_file, tmp_path):
    out = tmp_path / "report"
    args = ["eval", "--model", models["a"], "--model", models["b"], "--ref", models["a"], "--data", str(toy_file),
            "--out", str(out), "--oracle", "toy", "--reward-model", models["rm"], "--temperatures", "0,1",
            "--samples-per-prompt", "2", "--max-new-tokens", "8", "--batch-size", "4", "--device", "cpu", "--threads", "1"]
    threads = torch.get_num_threads()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads  # --threads applies to the run only
    report = json.loads((out / "report.json").read_text())
    assert report["models"] == [models["a"], models["b"]]
    assert report["baseline"] == models["a"] and report["reference"] == models["a"]
    assert report["scorers"] == ["oracle", "reward_model"]
    assert report["config"]["max_new_tokens"] == 8
    n_prompts = report["prompts"]
    assert 1 <= n_prompts <= 8

    ref_lik = report["results"][models["a"]]["likelihood"]
    assert ref_lik["pairs"] == 8
    assert ref_lik["pref_accuracy"] == 0.5 and ref_lik["reward_margin"] == 0.0  # the reference has zero implicit reward
    assert ref_lik["kl_per_token"] == pytest.approx(0.0, abs=1e-6)
    other = report["results"][models["b"]]
    assert other["likelihood"]["kl_per_token"] > 0
    assert set(other["generation"]) == {"0", "1", "all"}
    pooled = other["generation"]["all"]
    assert pooled["n"] == n_prompts + 2 * n_prompts  # greedy: one response per prompt; T=1: two
    assert other["generation"]["0"]["n"] == n_prompts
    for key in ("harmful_rate", "oracle_reward", "oracle_win_rate", "reward_model_reward", "reward_model_win_rate", "mean_tokens"):
        assert key in pooled
    win = pooled["reward_model_win_rate"]
    assert win["wins"] + win["ties"] + win["losses"] == win["n"] == pooled["n"]
    assert win["low"] <= win["rate"] <= win["high"]
    # the baseline against itself: every comparison is a tie
    self_win = report["results"][models["a"]]["generation"]["all"]["oracle_win_rate"]
    assert (self_win["rate"], self_win["ties"]) == (0.5, self_win["n"])

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * (n_prompts + 2 * n_prompts)
    assert {s["sample"] for s in samples if s["temperature"] == 1} == {0, 1}
    assert all(s["tokens"] <= 8 and s["oracle_reward"] == toy.oracle_reward(s["response"]) for s in samples)

    assert "win vs a [95% CI]" in result.output  # the table names the baseline
    assert "pref acc" in result.output
    md = (out / "report.md").read_text()
    assert "## Comparison" in md and "toy oracle" in md and "reward model" in md
    assert (out / "config.yaml").is_file()

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output


def test_eval_cli_errors_and_skips(models, toy_file, tmp_path):
    runner = CliRunner()
    base = ["eval", "--data", str(toy_file), "--device", "cpu", "--max-new-tokens", "4"]
    bad_oracle = runner.invoke(app, [*base, "--model", models["a"], "--out", str(tmp_path / "x"), "--oracle", "gpt4"])
    assert bad_oracle.exit_code == 1 and "unknown oracle 'gpt4'" in bad_oracle.output
    no_model = runner.invoke(app, [*base, "--out", str(tmp_path / "y")])
    assert no_model.exit_code == 1 and "--model" in no_model.output
    no_rm = runner.invoke(app, [*base, "--model", models["a"], "--out", str(tmp_path / "w"), "--reward-model", str(tmp_path / "nope")])
    assert no_rm.exit_code == 1 and "does not exist" in no_rm.output and not (tmp_path / "w").exists()
    no_shards = runner.invoke(app, [*base, "--model", models["a"], "--out", str(tmp_path / "v"), "--shards", str(tmp_path / "nope")])
    assert no_shards.exit_code == 1 and "does not exist" in no_shards.output
    # a causal LM is not a reward model: a sequence-classification head on it has two outputs
    not_rm = runner.invoke(app, [*base, "--model", models["a"], "--out", str(tmp_path / "u"), "--reward-model", models["a"], "--num-prompts", "2", "--temperatures", "0"])
    assert not_rm.exit_code == 1 and "num_labels=1" in not_rm.output
    # no scorer: likelihood only, with a note; the baseline not among --model is evaluated too
    result = runner.invoke(app, [*base, "--model", models["a"], "--baseline", models["b"], "--out", str(tmp_path / "z")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "z" / "report.json").read_text())
    assert report["models"] == [models["a"], models["b"]] and report["scorers"] == []
    assert "generation" not in report["results"][models["a"]]
    assert report["results"][models["a"]]["likelihood"]["kl_per_token"] is None
    assert any("generation skipped" in n for n in report["notes"])
    assert "no generation scores: no figures" in report["notes"] and not list((tmp_path / "z").glob("*.png"))
