"""`tispipe reward-model`: the Bradley-Terry loss, the held-out split, training, resume, and its use by eval."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import invoke_cli, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bradley_terry_loss_is_the_negative_log_sigmoid_of_the_score_difference():
    from tispipe.core.losses import bradley_terry_loss

    chosen = torch.tensor([2.0, 0.0, 1.0], requires_grad=True)
    rejected = torch.tensor([0.0, 2.0, 1.0])
    loss = bradley_terry_loss(chosen, rejected)
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(-2)), math.log1p(math.exp(2)), math.log(2)])
    loss.sum().backward()
    assert (chosen.grad < 0).all()  # descending the loss raises every chosen score


def test_spearman_on_hand_made_cases():
    from tispipe.core.metrics import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)  # ties share ranks (scipy.stats.spearmanr)
    assert spearman([1, 2, 3], [7, 7, 7]) is None and spearman([1], [2]) is None


def test_held_out_split_is_decided_per_pair_id_and_keeps_both_sides():
    from types import SimpleNamespace

    from tispipe.data.held_out import carve
    from tispipe.errors import TispipeError

    pairs = [SimpleNamespace(pair_id=f"p{i}") for i in range(400)]
    kept, held = carve(pairs, 0.25, seed=0)
    assert 60 < len(held) < 140 and len(kept) + len(held) == 400
    kept_reversed, held_reversed = carve(pairs[::-1], 0.25, seed=0)
    assert {p.pair_id for p in held_reversed} == {p.pair_id for p in held}  # the order of the rows does not matter
    assert {p.pair_id for p in carve(pairs, 0.25, seed=1)[1]} != {p.pair_id for p in held}
    with pytest.raises(TispipeError, match="leaves 0 to train on"):
        carve(pairs[:3], 0.9999999, seed=0)


@pytest.fixture()
def toy_setup(tmp_path, make_tiny_llama):
    from tispipe.data.toy import generate

    make_tiny_llama(tmp_path / "base")
    write_jsonl(tmp_path / "pairs.jsonl", generate(40, 0, "train"))
    write_jsonl(tmp_path / "test.jsonl", generate(12, 1, "test"))
    return tmp_path


def reward_model(root, out, *flags):
    return invoke_cli("reward-model", "--data", root / "pairs.jsonl", "--model", root / "base", "--out", out, "--batch-size", 8, "--lr", 1e-3, "--epochs", 2,
                      "--device", "cpu", *flags)


def test_reward_model_trains_saves_a_loadable_classifier_and_scores_as_eval_does(toy_setup):
    from transformers import AutoModelForSequenceClassification

    from tispipe.configs import DataOptions
    from tispipe.data.held_out import read_pairs
    from tispipe.modeling.generation import reward_scores
    from tispipe.modeling.models import load_reward_model
    from tispipe.train.reward_model import pair_scores

    out = toy_setup / "rm"
    result = reward_model(toy_setup, out, "--eval-data", toy_setup / "test.jsonl", "--max-steps", 6, "--eval-every", 2, "--report-to", "tensorboard")
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output and "tispipe eval --reward-model" in result.output
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 1
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in logged if "eval/accuracy" in m] == [2, 4, 6]
    info = json.loads((out / "reward_model_info.json").read_text())
    assert info["held_out_pairs"] == 12 and info["train_pairs"] == 40 and info["steps"] == 6
    assert info["held_out"]["accuracy"] == logged[-1]["eval/accuracy"] and 0 <= info["held_out"]["accuracy"] <= 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [s.step for s in events.Scalars("eval/accuracy")] == [2, 4, 6]
    assert [s.value for s in events.Scalars("loss")] == pytest.approx([m["loss"] for m in logged], rel=1e-6)

    # The scores training and its held-out accuracy use are the ones `eval --reward-model` computes from the texts.
    model, tokenizer = load_reward_model(str(out), device="cpu", dtype="float32", trust_remote_code=False)
    pairs = read_pairs(str(toy_setup / "test.jsonl"), DataOptions(data=""), "train", tokenizer)
    with torch.no_grad():
        chosen, rejected = pair_scores(model, pairs, tokenizer.eos_token_id, tokenizer.pad_token_id, "cpu")
    from_text = reward_scores(model, tokenizer, [p.prompt for p in pairs], [p.chosen for p in pairs], chat_template=True, max_prompt_length=256,
                              batch_size=5, device="cpu")
    assert chosen.tolist() == pytest.approx(from_text, abs=1e-5)
    assert (chosen > rejected).float().mean().item() == pytest.approx(info["held_out"]["accuracy"])

    report_dir = toy_setup / "eval"
    result = invoke_cli("eval", "--model", toy_setup / "base", "--data", toy_setup / "test.jsonl", "--oracle", "toy", "--reward-model", out,
                        "--temperatures", "0,1", "--num-prompts", 4, "--max-new-tokens", 8, "--out", report_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "report.json").read_text())
    agreement = report["reward_model_vs_oracle"]
    samples = [json.loads(line) for line in (report_dir / "samples.jsonl").read_text().splitlines()]
    assert agreement["all"]["samples"] == len(samples) == 8
    from tispipe.core.metrics import spearman

    assert agreement["all"]["spearman"] == spearman([s["rm_reward"] for s in samples], [s["oracle_reward"] for s in samples])
    assert "Reward model against the toy oracle" in (report_dir / "report.md").read_text()


def test_reward_model_resumes_to_the_same_bytes_and_a_finished_run_is_not_redone(toy_setup):
    whole, resumed = toy_setup / "whole", toy_setup / "resumed"
    assert reward_model(toy_setup, whole, "--max-steps", 8).exit_code == 0
    result = reward_model(toy_setup, resumed, "--max-steps", 8, "--save-every", 3)
    assert result.exit_code == 0, result.output
    # As if killed just after the step-6 checkpoint: the final files and the last checkpoint are gone.
    for name in ("model.safetensors", "reward_model_info.json"):
        (resumed / name).unlink()
    shutil.rmtree(resumed / "checkpoints" / "step-8")
    result = reward_model(toy_setup, resumed, "--max-steps", 8, "--save-every", 3, "--resume")
    assert result.exit_code == 0 and "Resuming from" in result.output and "step 6" in result.output, result.output
    assert (resumed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    logged = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == list(range(1, 9))

    result = reward_model(toy_setup, resumed, "--max-steps", 8, "--save-every", 3, "--resume")
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    result = reward_model(toy_setup, resumed, "--max-steps", 8)
    assert result.exit_code == 1 and "already exists" in result.output


@pytest.mark.parametrize(("flags", "message"), [
    (("--eval-fraction", 1.5), "--eval-fraction must be between 0 and 1"),
    (("--eval-data", "nowhere.jsonl"), "nowhere.jsonl"),
    (("--lr", 0), "--lr must be positive"),
    (("--resume", "--overwrite"), "not both"),
])
def test_reward_model_bad_options_are_one_line_and_leave_no_folder(toy_setup, flags, message):
    out = toy_setup / "rm"
    result = reward_model(toy_setup, out, *flags)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
    assert not out.exists()
