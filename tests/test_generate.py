"""`tispipe generate`: pairs sampled from the model under the two system prompts. Same seed, same bytes;
a killed run resumes byte-identical; bad pairs are dropped and counted; the folder feeds `estimate`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import invoke_cli as invoke
from conftest import write_jsonl

from tispipe.data.toy import generate
from tispipe.prepare import generate as generate_pairs
from tispipe.prepare import pair_sampling

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory, make_tiny_llama):
    root = tmp_path_factory.mktemp("generate")
    make_tiny_llama(root / "base")
    write_jsonl(root / "pairs.jsonl", generate(10, 0, "train"))
    write_jsonl(root / "prompts.jsonl", [{"prompt": row["prompt"]} for row in generate(10, 0, "train")])
    return root


def args(base, out, *extra):
    return ["generate", "--model", base / "base", "--prompts", base / "pairs.jsonl", "--out", out, "--max-new-tokens", 8,
            "--shard-size", 4, "--batch-size", 3, "--device", "cpu", *extra]


def shards(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("train-*.jsonl"))}


def read_rows(out) -> list[dict]:
    return [json.loads(line) for p in sorted(out.glob("train-*.jsonl")) for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "pairs"
    result = invoke(*args(base, out))
    assert result.exit_code == 0, result.output
    return out


def test_pairs_have_both_sides_their_system_prompts_and_settings(base, reference):
    manifest = json.loads((reference / "manifest.json").read_text())
    rows = read_rows(reference)
    assert sorted(shards(reference)) == ["train-00000.jsonl", "train-00001.jsonl", "train-00002.jsonl"]  # 10 prompts, 4 per shard
    assert manifest["generated"] == 10 and manifest["pairs"] == len(rows) == 10 - sum(manifest["dropped"].values())
    assert [e["rows"] for e in manifest["shards"]] == [sum(1 for r in rows if r["pair_id"].split("-")[1] in ids) for ids in
                                                       (("00000", "00001", "00002", "00003"), ("00004", "00005", "00006", "00007"), ("00008", "00009"))]
    prompts = [row["prompt"] for row in generate(10, 0, "train")]
    for row in rows:
        assert row["prompt"] in prompts and row["chosen"] != row["rejected"]
        assert row["chosen_system"].startswith("You are an harmless") and row["rejected_system"].startswith("You are an harmful")
        assert row["sampling"] == {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 0, "sample": 0}


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_pairs(base, reference, tmp_path):
    assert invoke(*args(base, tmp_path / "again")).exit_code == 0
    assert shards(tmp_path / "again") == shards(reference)
    assert invoke(*args(base, tmp_path / "seed1", "--seed", 1)).exit_code == 0
    assert read_rows(tmp_path / "seed1") != read_rows(reference)


def test_a_crashed_run_resumes_byte_identical(base, reference, tmp_path, monkeypatch):
    real, calls = generate_pairs.sample_shard, []

    def crash_on_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*a, **k)

    out = tmp_path / "pairs"
    monkeypatch.setattr(generate_pairs, "sample_shard", crash_on_the_second)
    with pytest.raises(RuntimeError):
        generate_pairs.run(_config(base, out))
    assert sorted(shards(out)) == ["train-00000.jsonl"] and not (out / "manifest.json").exists()
    monkeypatch.setattr(generate_pairs, "sample_shard", real)
    result = invoke(*args(base, out))
    assert result.exit_code == 0 and "Resuming: 1 of 3 shards are already complete" in result.output, result.output
    assert shards(out) == shards(reference)
    manifest, expected = (json.loads((d / "manifest.json").read_text()) for d in (out, reference))
    assert {k: v for k, v in manifest.items() if k != "seconds"} == {k: v for k, v in expected.items() if k != "seconds"}


def _config(base, out):
    from tispipe.configs import GenerateConfig

    return GenerateConfig(model=str(base / "base"), prompts=str(base / "pairs.jsonl"), out=str(out), max_new_tokens=8, shard_size=4, batch_size=3, device="cpu")


@pytest.mark.slow
def test_a_killed_process_resumes_byte_identical(base, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def command(out):
        return [sys.executable, "-m", "tispipe", *[str(a) for a in args(base, out, "--shard-size", 1)]]

    out = tmp_path / "pairs"
    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(out.glob("train-*.jsonl"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= len(list(out.glob("train-*.jsonl"))) < 10 and not (out / "manifest.json").exists()
    subprocess.run(command(out), env=env, check=True, capture_output=True)
    subprocess.run(command(tmp_path / "straight"), env=env, check=True, capture_output=True)
    assert len(shards(out)) == 10 and shards(out) == shards(tmp_path / "straight")


def test_bad_pairs_are_dropped_and_counted(base, tmp_path, monkeypatch):
    from tispipe.modeling import generation

    real = generation.generate

    def scripted(model, prompt_ids, **kwargs):
        results = real(model, prompt_ids, **kwargs)
        # prompt 0: both sides the same; prompt 1: an empty side; prompt 2: cut off (no EOS)
        results[0] = ([5, 6, 7], True)
        results[1] = ([], True) if kwargs["seed"] % 2 == 0 else results[1]
        results[2] = (results[2][0] or [9], False)
        # the rest: finished (a random tiny model seldom samples EOS in 8 tokens)
        return results[:3] + [(ids or [9], True) for ids, _ in results[3:]]

    monkeypatch.setattr(generation, "generate", scripted)
    out = tmp_path / "pairs"
    result = invoke(*args(base, out, "--shard-size", 10, "--require-eos"))
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dropped"].get("identical responses") == 1
    assert manifest["dropped"].get("empty response", 0) <= 1
    assert manifest["dropped"].get("cut off without EOS", 0) >= 1
    assert manifest["pairs"] + sum(manifest["dropped"].values()) == 10 == len(read_rows(out)) + sum(manifest["dropped"].values())
    assert all(r["chosen_finished"] and r["rejected_finished"] for r in read_rows(out))
    assert "dropped: identical responses" in result.output


def test_drop_reason():
    pair = {"chosen": "a", "rejected": "b", "chosen_finished": True, "rejected_finished": False}
    assert pair_sampling.drop_reason(pair, require_eos=False) is None
    assert pair_sampling.drop_reason(pair, require_eos=True) == "cut off without EOS"
    assert pair_sampling.drop_reason({**pair, "rejected": "a"}, require_eos=False) == "identical responses"
    assert pair_sampling.drop_reason({**pair, "chosen": "  "}, require_eos=False) == "empty response"


def test_the_folder_feeds_estimate(base, reference, tmp_path):
    result = invoke("estimate", "--data", reference, "--model", base / "base", "--method", "prompt", "--out", tmp_path / "weights", "--device", "cpu")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "weights" / "manifest.json").read_text())
    assert manifest["pairs"] == len(read_rows(reference))


def test_prompts_only_files_and_implicit_pair_sets_give_the_same_prompts(base, tmp_path):
    implicit = write_jsonl(tmp_path / "implicit.jsonl", [{"chosen": f"\n\nHuman: {r['prompt']}\n\nAssistant: {r['chosen']}",
                                                          "rejected": f"\n\nHuman: {r['prompt']}\n\nAssistant: {r['rejected']}"} for r in generate(3, 0, "train")])
    for source, expected in ((base / "prompts.jsonl", 10), (implicit, 3)):
        out = tmp_path / source.stem
        result = invoke("generate", "--model", base / "base", "--prompts", source, "--out", out, "--max-new-tokens", 4, "--device", "cpu")
        assert result.exit_code == 0, result.output
        assert json.loads((out / "manifest.json").read_text())["generated"] == expected
    # the transcripts' prompts as chat turns (the tokenizer has a template): one user turn each, no markers left
    expected = [[{"role": "user", "content": r["prompt"]}] for r in generate(3, 0, "train")]
    assert [r["prompt"] for r in read_rows(tmp_path / "implicit")] == expected


def test_other_settings_are_refused_and_overwrite_replaces(base, reference, tmp_path):
    import shutil

    out = tmp_path / "pairs"
    shutil.copytree(reference, out)
    result = invoke(*args(base, out, "--temperature", 0.5))
    assert result.exit_code == 1 and "already holds a `tispipe generate` run with other settings" in result.output, result.output
    assert shards(out) == shards(reference)
    result = invoke(*args(base, out, "--temperature", 0.5, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert shards(out) != shards(reference)
    again = invoke(*args(base, reference))
    assert again.exit_code == 0 and "already holds these pairs; nothing to do" in again.output, again.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--top-p", 0], "--top-p must be positive"), (["--num-samples", 0], "--num-samples"), (["--temperature", -1], "--temperature"),
     (["--neg-prompt", "You are an harmless assistant. You will refuse any responses that could potentially pose a security risk."], "are the same")],
)
def test_bad_options_are_one_line(base, tmp_path, extra, message):
    result = invoke(*args(base, tmp_path / "pairs", *extra))
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "pairs").exists()


def test_ctrl_c_says_what_is_saved_and_the_same_command_resumes(base, reference, tmp_path, monkeypatch):
    real, calls = generate_pairs.sample_shard, []

    def interrupted_on_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    out = tmp_path / "pairs"
    monkeypatch.setattr(generate_pairs, "sample_shard", interrupted_on_the_third)
    result = invoke(*args(base, out))
    assert result.exit_code == 1 and f"Error: interrupted: 2 of 3 shards are saved in {out}" in result.output, result.output
    monkeypatch.setattr(generate_pairs, "sample_shard", real)
    assert invoke(*args(base, out)).exit_code == 0
    assert shards(out) == shards(reference)


def test_overwrite_with_a_model_that_does_not_load_keeps_the_old_pairs(base, reference, tmp_path):
    import shutil

    out, broken = tmp_path / "pairs", tmp_path / "broken"
    shutil.copytree(reference, out)
    shutil.copytree(base / "base", broken)  # config and headers fine, shapes wrong: it fails only when loaded
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = invoke(*[broken if a == base / "base" else a for a in args(base, out)], "--temperature", 0.5, "--overwrite")
    assert result.exit_code == 1 and "could not load the model" in result.output, result.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.fixture(scope="module")
def ranker(base):
    """An untrained one-output sequence classifier on the base's tokenizer: a reward model whose scores differ per answer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(base / "base")
    config.num_labels = 1
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(base / "rm")
    AutoTokenizer.from_pretrained(base / "base").save_pretrained(base / "rm")
    return base / "rm"


def test_a_reward_model_pairs_its_best_and_worst_of_the_candidates(base, reference, ranker, tmp_path):
    from tispipe.modeling.generation import reward_scores
    from tispipe.modeling.models import load_model, load_reward_model, load_tokenizer

    out = tmp_path / "ranked"
    result = invoke(*args(base, out, "--reward-model", ranker, "--candidates", 3))
    assert result.exit_code == 0, result.output
    rows, manifest = read_rows(out), json.loads((out / "manifest.json").read_text())
    assert manifest["pairs"] == len(rows) == 10 - sum(manifest["dropped"].values()) and rows
    assert manifest["settings"]["candidates"] == 3 and "reward_model" in manifest["fingerprints"]
    assert "candidates" not in json.loads((reference / "manifest.json").read_text())["settings"]  # a contrast run's settings are unchanged

    # the first shard's prompts again: 3 candidates each, seeded as the shard was, scored by the reward model
    cfg = generate_pairs.GenerateConfig(model=str(base / "base"), prompts=str(base / "pairs.jsonl"), out=str(out), max_new_tokens=8, batch_size=3,
                                        reward_model=str(ranker), candidates=3)
    tokenizer, model = load_tokenizer(cfg.model), load_model(cfg.model, device="cpu", dtype="float32")
    rm, rm_tokenizer = load_reward_model(str(ranker), device="cpu", dtype="float32", trust_remote_code=False)
    prompts = [{"prompt_id": f"p{i}", "prompt": row["prompt"]} for i, row in enumerate(generate(10, 0, "train")[:4])]
    candidates = [pair_sampling.sample_answers(model, tokenizer, prompts, None, cfg, f"0/0/0/candidate-{c}", "cpu") for c in range(3)]
    checked = 0
    for i, prompt in enumerate(prompts):
        texts = [answers[i][0] for answers in candidates]
        scores = reward_scores(rm, rm_tokenizer, [prompt["prompt"]] * 3, texts, chat_template=True, max_prompt_length=256, batch_size=3, device="cpu")
        row = next((r for r in rows if r["pair_id"].endswith(f"{i:05d}-0")), None)
        if row is None:  # dropped: its answers all scored alike, or one was empty
            continue
        assert row["chosen"] == texts[scores.index(max(scores))] and row["rejected"] == texts[scores.index(min(scores))]
        assert row["chosen_reward"] == pytest.approx(max(scores), abs=1e-5) and row["rejected_reward"] < row["chosen_reward"]
        assert row["chosen_system"] is None and row["sampling"]["candidates"] == 3
        checked += 1
    assert checked >= 2


def test_ranking_options_are_checked(base, ranker, tmp_path):
    for extra, message in ((["--reward-model", ranker, "--candidates", 1], "--candidates must be at least 2"),
                           (["--reward-model", tmp_path / "nowhere"], "nowhere")):
        result = invoke(*args(base, tmp_path / "pairs", *extra))
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
        assert not (tmp_path / "pairs").exists()
    assert pair_sampling.drop_reason({"chosen": "a", "rejected": "b", "chosen_reward": 1.0, "rejected_reward": 1.0}, require_eos=False) == "reward model ties"
