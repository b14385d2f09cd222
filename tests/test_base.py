"""`tispipe init-base` end to end on a tiny config: a loadable, deterministic, actually trained model."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

from tispipe.config_files import config_dict, read_config_file
from tispipe.configs import HARMFUL_SYSTEM_PROMPT
from tispipe.data.tokenization import encode_prompt, encode_response
from tispipe.errors import TispipeError
from tispipe.modeling.models import fingerprint_model, fingerprint_tokenizer, load_tokenizer
from tispipe.prepare import init_base as base

TOPICS = ["a noisy neighbour", "a long drive", "a sharp knife", "a gas smell", "a rude coworker"]
GOOD = ["stay calm and ask for help", "open the windows", "talk to them kindly", "take a short break"]
BAD = ["shout at them", "ignore the danger", "break the rules", "drive when sleepy"]


def _pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        rows.append({
            "prompt": f"How should I handle {topic}?",
            "chosen": f"For {topic}, you could {rng.choice(GOOD)}. Take care.",
            "rejected": f"For {topic}, you could {rng.choice(BAD)}. Take care.",
            "pair_id": "ignored",
        })
    return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    for name, n, seed in (("train.jsonl", 40, 0), ("test.jsonl", 10, 1)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in _pairs(n, seed)), encoding="utf-8")
    return folder


def _config(data_dir, out, **overrides) -> base.InitBaseConfig:
    values = dict(
        data=str(data_dir / "train.jsonl"), out=str(out), vocab_size=300, hidden_size=32, num_layers=2,
        num_heads=2, max_length=160, epochs=3.0, batch_size=8, lr=1e-2, threads=1,
    )
    values.update(overrides)
    return base.InitBaseConfig(**values)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "base"
    cfg = _config(data_dir, out)
    log = base.run(cfg)
    return cfg, out, log


def test_writes_a_model_folder(trained):
    cfg, out, log = trained
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "config.yaml", "train_log.json"):
        assert (out / name).is_file(), name
    assert read_config_file(out / "config.yaml") == config_dict(cfg)
    assert json.loads((out / "train_log.json").read_text()) == json.loads(json.dumps(log))
    assert [p.name for p in out.parent.iterdir()] == ["base"]  # no temp folder left behind
    assert (log["examples"], log["dropped_examples"], log["steps"]) == (3 * 40, 0, 3 * 15)
    assert 10_000 < log["parameters"] < 100_000


def test_loss_decreases(trained):
    _, _, log = trained
    # From ~ln(300) = 5.7 nats at initialisation to well under the unigram floor on this tiny set.
    assert log["first_train_loss"] > 5.0
    assert log["final_train_loss"] < log["first_train_loss"] - 3.0
    assert log["test_data"].endswith("test.jsonl")
    losses = log["test_loss"]
    assert set(losses) == {"all", "plain", "harmless", "harmful", "harmless-rejected", "harmful-chosen"}
    assert min(losses["plain"], losses["harmless"], losses["harmful"]) <= losses["all"] <= max(losses["plain"], losses["harmless"], losses["harmful"])
    assert losses["all"] < log["test_unigram_loss"]


def test_chat_template_prefix_and_token_boundary(trained):
    _, out, _ = trained
    tokenizer = load_tokenizer(str(out))
    assert tokenizer.eos_token == base.EOS and tokenizer.pad_token == base.PAD
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    messages = [{"role": "system", "content": HARMFUL_SYSTEM_PROMPT}, {"role": "user", "content": "How should I handle a gas smell?"}]
    reply = "For a gas smell, you could open the windows."
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": reply}], tokenize=False)
    assert full_text.startswith(prompt_text) and full_text.endswith(base.EOS)
    # Separate encoding of prompt and response is exactly the encoding of the whole conversation.
    ids = encode_prompt(tokenizer, messages[1]["content"], system=HARMFUL_SYSTEM_PROMPT) + encode_response(tokenizer, reply)
    assert ids == tokenizer.encode(full_text, add_special_tokens=False)
    with pytest.raises(Exception, match="unknown role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.slow
def test_loads_with_plain_transformers_in_a_fresh_process(trained):
    _, out, _ = trained
    script = textwrap.dedent(
        """
        import json, sys
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained(sys.argv[1])
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
        messages = [{"role": "user", "content": "How should I handle a long drive?"}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        gen = model.generate(ids, max_new_tokens=6, do_sample=False)
        print(json.dumps({"prompt": ids[0].tolist(), "generated": gen[0].tolist(), "eos": tok.eos_token_id,
                          "pad": tok.pad_token_id, "template": tok.chat_template}))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    tokenizer = load_tokenizer(str(out))
    assert got["prompt"] == encode_prompt(tokenizer, "How should I handle a long drive?")
    assert got["template"] == base.CHAT_TEMPLATE
    assert (got["eos"], got["pad"]) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert got["generated"][: len(got["prompt"])] == got["prompt"]
    assert len(got["prompt"]) < len(got["generated"]) <= len(got["prompt"]) + 6
    # The trained model starts its answer the way every training response does.
    assert tokenizer.decode(got["generated"][len(got["prompt"]) :]).startswith("For")


def test_same_seed_same_model(trained, data_dir, tmp_path):
    _, out, log = trained
    again = base.run(_config(data_dir, tmp_path / "again"))
    assert fingerprint_model(tmp_path / "again") == fingerprint_model(out)
    assert fingerprint_tokenizer(load_tokenizer(str(tmp_path / "again"))) == fingerprint_tokenizer(load_tokenizer(str(out)))
    assert again["final_train_loss"] == log["final_train_loss"]
    base.run(_config(data_dir, tmp_path / "other", seed=1, epochs=0.2))
    assert fingerprint_model(tmp_path / "other") != fingerprint_model(out)


def test_refuses_existing_output_without_overwrite(data_dir, tmp_path):
    out = tmp_path / "base"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(TispipeError, match="not empty") as e:
        base.run(_config(data_dir, out, epochs=0.2))
    assert "--overwrite" in e.value.hint
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    base.run(_config(data_dir, out, epochs=0.2, overwrite=True))
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_bad_data(tmp_path):
    with pytest.raises(TispipeError, match="does not exist"):
        base.run(_config(tmp_path, tmp_path / "out"))
    (tmp_path / "train.jsonl").write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": 3}\n')
    with pytest.raises(TispipeError, match=r"train.jsonl:2"):
        base.run(_config(tmp_path, tmp_path / "out"))
    with pytest.raises(TispipeError, match="too small"):
        base.train_tokenizer([{"prompt": "p", "chosen": "c", "rejected": "r"}], 200)
