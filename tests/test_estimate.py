"""Stage one end to end on a tiny random Llama: r_t against an independent plain-transformers computation,
the weight formula, EOS scoring, token labels, resume, no-op reruns, settings refusal and CLI errors."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import write_jsonl

from tispipe.configs import HARMFUL_SYSTEM_PROMPT, HARMLESS_SYSTEM_PROMPT
from tispipe.estimate.estimate import EstimateConfig, run

N_PAIRS = 12
SHARD_SIZE = 5  # 3 shards: 5, 5, 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("estimate")


@pytest.fixture(scope="module")
def base_dir(workdir, make_tiny_llama):
    """A tiny random Llama (2 layers, width 32) with the conftest tokenizer (chat template, eos, pad)."""
    path = workdir / "base"
    make_tiny_llama(path)
    return path


@pytest.fixture(scope="module")
def data_file(workdir):
    from tispipe.data.toy import generate

    return write_jsonl(workdir / "pairs.jsonl", generate(N_PAIRS, 0, "train"))


def config(data_file, base_dir, out, **overrides) -> EstimateConfig:
    settings = dict(data=str(data_file), model=str(base_dir), out=str(out), shard_size=SHARD_SIZE, batch_size=4, device="cpu")
    # Big steps so the built models differ visibly from the base in a few steps.
    settings.update(contrast_lr=3e-3, contrast_epochs=1.0, contrast_batch_size=4)
    settings.update(overrides)
    return EstimateConfig(**settings)


@pytest.fixture(scope="module")
def runs(workdir, data_file, base_dir):
    """One finished run per method, shared by the tests that only read them."""
    outs = {}
    for method in ("prompt", "sft", "dpo"):
        run(config(data_file, base_dir, workdir / method, method=method))
        outs[method] = workdir / method
    return outs


def read_rows(out) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for entry in manifest["shards"]:
        rows.extend(pq.read_table(out / "shards" / entry["file"]).to_pylist())
    return rows


# ------------------------------------------------------------------ independent reference


def _response_logps(model, prompt_ids: list[int], response_ids: list[int]) -> np.ndarray:
    """log p(response token t | prompt, response_<t), one unpadded sequence, plain transformers + torch."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logps = torch.log_softmax(logits, dim=-1)
    positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(response_ids) - 1)
    return logps[positions, torch.tensor(response_ids)].numpy()


def _chat_prompt_ids(tokenizer, prompt: str, system: str | None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("method", ["prompt", "sft", "dpo"])
def test_logratio_matches_plain_transformers(runs, base_dir, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = runs[method]
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    if method == "prompt":
        pos = neg = base
    else:
        pos = AutoModelForCausalLM.from_pretrained(out / "contrast" / "pos").eval()
        neg = AutoModelForCausalLM.from_pretrained(out / "contrast" / "neg").eval()
    rows = read_rows(out)
    assert len(rows) == N_PAIRS
    worst = 0.0
    for row in rows[:6]:
        prompt_ids = _chat_prompt_ids(tokenizer, row["prompt"], None)
        assert row["prompt_ids"] == prompt_ids
        if method == "prompt":
            pos_prompt = _chat_prompt_ids(tokenizer, row["prompt"], HARMLESS_SYSTEM_PROMPT)
            neg_prompt = _chat_prompt_ids(tokenizer, row["prompt"], HARMFUL_SYSTEM_PROMPT)
        else:
            pos_prompt = neg_prompt = prompt_ids
        for side in ("chosen", "rejected"):
            ids = row[f"{side}_ids"]
            assert ids == tokenizer.encode(row[side], add_special_tokens=False) + [tokenizer.eos_token_id]  # EOS is a scored token
            expected = _response_logps(pos, pos_prompt, ids) - _response_logps(neg, neg_prompt, ids)
            stored = np.asarray(row[f"{side}_logratio"])
            assert stored.shape == expected.shape
            np.testing.assert_allclose(stored, expected, atol=1e-5, rtol=0)
            np.testing.assert_allclose(row[f"{side}_ref_logps"], _response_logps(base, prompt_ids, ids), atol=1e-5, rtol=0)
            worst = max(worst, float(np.abs(expected).max()))
    assert worst > 1e-3, "pi+ and pi- are (nearly) the same model: the comparison proves nothing"


def test_weights_follow_the_formula(runs):
    manifest = json.loads((runs["dpo"] / "manifest.json").read_text())
    assert manifest["settings"]["lower"] == -0.5 and manifest["settings"]["upper"] == 1.5
    for row in read_rows(runs["dpo"]):
        for side, mu in (("chosen", 1.0), ("rejected", -1.0)):
            r = np.asarray(row[f"{side}_logratio"], dtype=np.float32)
            expected = np.exp(mu * np.clip(r.astype(np.float64), -0.5, 1.5))
            np.testing.assert_allclose(row[f"{side}_weights"], expected, rtol=1e-6)
            assert len(row[f"{side}_weights"]) == len(row[f"{side}_ids"])


def test_rank_transform_and_k(data_file, base_dir, workdir):
    out = workdir / "rank"
    run(config(data_file, base_dir, out, method="prompt", transform="rank", limit=4))
    for row in read_rows(out):
        w = np.asarray(row["chosen_weights"])
        assert w.min() == pytest.approx(0.7) and w.max() == pytest.approx(1.3)
        # rank order follows r_t for chosen, -r_t for rejected
        r = np.asarray(row["rejected_logratio"])
        assert np.argmax(row["rejected_weights"]) == np.argmin(r)
    out = workdir / "k2"
    run(config(data_file, base_dir, out, method="prompt", k=2.0, lower=-0.1, upper=0.1, limit=4))
    for row in read_rows(out):
        r = np.asarray(row["chosen_logratio"], dtype=np.float64)
        np.testing.assert_allclose(row["chosen_weights"], 2.0 * np.exp(np.clip(r, -0.1, 0.1)), rtol=1e-6)


def test_the_manifest_counts_the_weights_at_the_clamp_and_the_run_warns_when_most_are(data_file, base_dir, workdir, capsys):
    out = workdir / "narrow-clamp"
    run(config(data_file, base_dir, out, method="prompt", lower=-1e-4, upper=1e-4, limit=4))
    manifest = json.loads((out / "manifest.json").read_text())
    rows = read_rows(out)
    for side in ("chosen", "rejected"):
        w = np.concatenate([np.asarray(row[f"{side}_weights"], dtype=np.float64) for row in rows])
        stats = manifest["weights"][side]
        assert (stats["at_min"], stats["at_max"]) == (np.mean(w == w.min()), np.mean(w == w.max()))
        assert stats["at_min"] + stats["at_max"] > 0.9  # a window of 2e-4 nats holds almost no r_t
    err = " ".join(capsys.readouterr().err.split())
    assert "Warning:" in err and "have a weight at a clamp bound (r_t outside [-0.0001, 0.0001]" in err


def test_token_labels_mark_the_spans(runs, base_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    rows = read_rows(runs["prompt"])
    source = {json.loads(line)["pair_id"]: json.loads(line) for line in (runs["prompt"].parent / "pairs.jsonl").read_text().splitlines()}
    harmful_seen = 0
    for row in rows:
        spans = source[row["pair_id"]]["rejected_spans"]
        labels, ids = row["rejected_labels"], row["rejected_ids"]
        assert len(labels) == len(ids) and labels[-1] == 0  # EOS unlabelled
        phrases = " ".join(row["rejected"][s:e] for s, e, label in spans if label == -1)
        for token_id, label in zip(ids, labels, strict=True):
            if label == -1:
                harmful_seen += 1
                assert tokenizer.decode([token_id]).strip() in phrases
        # every harmful span has at least one labelled token
        assert (-1 in labels) == any(label == -1 for _, _, label in spans)
    assert harmful_seen > 0


def test_manifest_contents(runs):
    manifest = json.loads((runs["dpo"] / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert set(manifest["fingerprints"]) == {"data", "tokenizer", "base", "pos", "neg"}
    assert manifest["fingerprints"]["pos"] != manifest["fingerprints"]["neg"] != manifest["fingerprints"]["base"]
    assert [e["rows"] for e in manifest["shards"]] == [5, 5, 2]
    assert manifest["pairs"] == N_PAIRS and manifest["data"]["kept"] == N_PAIRS
    assert manifest["contrast"]["settings"]["lr"] == 3e-3 and manifest["contrast"]["paper_defaults"]["lr"] == 1e-5
    for side in ("chosen", "rejected"):
        stats = manifest["weights"][side]
        assert stats["count"] == manifest["tokens"][side]
        assert stats["min"] <= stats["quantiles"]["0.5"] <= stats["max"]
    for value in manifest["auc"].values():
        assert 0.0 <= value <= 1.0
    from tispipe.artifacts.shards import file_sha256

    for entry in manifest["shards"]:
        assert file_sha256(runs["dpo"] / "shards" / entry["file"]) == entry["sha256"]


def test_resume_after_interruption_is_byte_identical(data_file, base_dir, workdir, runs, monkeypatch):
    import tispipe.artifacts.shards

    out = workdir / "resumed"
    real_write = tispipe.artifacts.shards.write_shard
    calls = []

    def write_then_die(path, rows):
        real_write(path, rows)
        calls.append(path)
        raise KeyboardInterrupt("killed after the first shard")

    monkeypatch.setattr(tispipe.artifacts.shards, "write_shard", write_then_die)
    from tispipe.errors import TispipeError

    with pytest.raises(TispipeError, match="interrupted: 1 of 3 shards are saved"):  # Ctrl-C becomes a one-line error
        run(config(data_file, base_dir, out, method="prompt"))
    monkeypatch.setattr(tispipe.artifacts.shards, "write_shard", real_write)
    assert len(calls) == 1 and not (out / "manifest.json").exists()
    first_mtime = os.stat(out / "shards" / "part-00000.parquet").st_mtime_ns
    result = run(config(data_file, base_dir, out, method="prompt"))
    assert result["timings"]["scored_pairs"] == N_PAIRS - SHARD_SIZE  # shard 0 was not scored again
    assert os.stat(out / "shards" / "part-00000.parquet").st_mtime_ns == first_mtime
    reference = runs["prompt"]
    for name in ["manifest.json", *(f"shards/part-0000{i}.parquet" for i in range(3))]:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_rerun_with_same_settings_is_a_noop(data_file, base_dir, runs):
    out = runs["dpo"]
    files = [out / "manifest.json", *sorted((out / "shards").iterdir()), out / "contrast" / "pos" / "model.safetensors"]
    before = [os.stat(f).st_mtime_ns for f in files]
    threads = torch.get_num_threads()
    try:
        result = run(config(data_file, base_dir, out, method="dpo", threads=1))  # the thread count does not change the output
    finally:
        torch.set_num_threads(threads)
    assert result["skipped"]
    assert [os.stat(f).st_mtime_ns for f in files] == before


def test_other_settings_refused_then_overwrite_reuses_contrast(data_file, base_dir, workdir, runs):
    from typer.testing import CliRunner

    from tispipe.cli import app

    out = workdir / "overwrite"
    shutil.copytree(runs["dpo"], out)
    args = ["estimate", "--data", str(data_file), "--model", str(base_dir), "--out", str(out), "--method", "dpo", "--device", "cpu",
            "--shard-size", str(SHARD_SIZE), "--batch-size", "4", "--contrast-lr", "3e-3", "--contrast-epochs", "1", "--contrast-batch-size", "4"]
    result = CliRunner().invoke(app, [*args, "--k", "2"])
    assert result.exit_code == 1
    assert "Error:" in result.output and "differs in: k" in result.output and "--overwrite" in result.output
    weights_file = out / "contrast" / "pos" / "model.safetensors"
    before = os.stat(weights_file).st_mtime_ns
    result = CliRunner().invoke(app, [*args, "--k", "2", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert os.stat(weights_file).st_mtime_ns == before  # same data/base/contrast settings: reused, not retrained
    row = read_rows(out)[0]
    np.testing.assert_allclose(row["chosen_weights"], 2 * np.exp(np.clip(np.asarray(row["chosen_logratio"], dtype=np.float64), -0.5, 1.5)), rtol=1e-6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lower", "1", "--upper", "1"], "--lower (1.0) must be smaller than --upper (1.0)"),
        (["--k", "0"], "--k must be positive"),
        (["--method", "magic"], "--method must be one of prompt, sft, dpo"),
        (["--transform", "sqrt"], "--transform must be one of"),
        (["--pos-model", "somewhere"], "--pos-model and --neg-model go together"),
        (["--data", "/nonexistent/pairs.jsonl"], "/nonexistent/pairs.jsonl"),
    ],
)
def test_cli_errors(data_file, base_dir, workdir, extra, message):
    from typer.testing import CliRunner

    from tispipe.cli import app

    args = ["estimate", "--data", str(data_file), "--model", str(base_dir), "--out", str(workdir / "errors"), "--method", "prompt", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "Error: " in result.output and message in result.output
    assert "Traceback" not in result.output


def test_unwritable_shards_folder(data_file, base_dir, workdir):
    from typer.testing import CliRunner

    from tispipe.cli import app

    blocker = workdir / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    result = CliRunner().invoke(app, ["estimate", "--data", str(data_file), "--model", str(base_dir), "--out", str(out), "--method", "prompt", "--limit", "2"])
    assert result.exit_code == 1
    assert f"Error: shards folder {out / 'shards'} is not writable" in result.output


def test_nan_scores_are_an_error(data_file, base_dir, workdir):
    from safetensors.torch import load_file, save_file

    broken = workdir / "nan-model"
    shutil.copytree(base_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    name = next(n for n in tensors if "norm" in n)
    tensors[name][0] = math.nan
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    from tispipe.errors import TispipeError

    with pytest.raises(TispipeError, match=r"pair 'train-0000\d': the chosen scores hold NaN"):
        run(config(data_file, base_dir, workdir / "nan", method="prompt", pos_model=str(broken), neg_model=str(base_dir), limit=2))


def test_inspect_terminal_and_html(runs, tmp_path):
    from typer.testing import CliRunner

    from tispipe.cli import app

    page = tmp_path / "weights.html"
    result = CliRunner().invoke(app, ["inspect", str(runs["dpo"]), "--pair", "1", "--html", str(page), "--html-pairs", "20"])
    assert result.exit_code == 0, result.output
    rows = read_rows(runs["dpo"])
    assert rows[1]["pair_id"] in result.output
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<tr><td colspan") == N_PAIRS - 1  # pairs 1..11
    first = rows[1]
    assert f"w_t = {first['chosen_weights'][0]:.4f}" in text
    assert text.count('class="t') == sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows[1:])
    result = CliRunner().invoke(app, ["inspect", str(runs["dpo"]), "--pair", "99"])
    assert result.exit_code == 1 and "out of range" in result.output


def test_one_sided_logratio_takes_each_side_against_the_base(tmp_path, make_tiny_llama):
    """--logratio one-sided: chosen r = log base - log pi-, rejected r = log pi+ - log base; the same numbers as
    the paper's pair r with the base in place of pi+ (chosen side) or of pi- (rejected side)."""
    import pyarrow.parquet as pq
    from conftest import invoke_cli

    from tispipe.data.toy import generate

    for name, seed in (("base", 0), ("pos", 1), ("neg", 2)):
        make_tiny_llama(tmp_path / name, seed=seed)
    write_jsonl(tmp_path / "pairs.jsonl", generate(8, 0, "train"))
    common = ["estimate", "--data", tmp_path / "pairs.jsonl", "--model", tmp_path / "base", "--device", "cpu"]
    runs = {"one-sided": ("pos", "neg", "one-sided"), "chosen": ("base", "neg", "pair"), "rejected": ("pos", "base", "pair")}
    rows = {}
    for label, (pos, neg, logratio) in runs.items():
        result = invoke_cli(*common, "--pos-model", tmp_path / pos, "--neg-model", tmp_path / neg, "--logratio", logratio, "--out", tmp_path / label)
        assert result.exit_code == 0, result.output
        rows[label] = pq.read_table(tmp_path / label / "shards" / "part-00000.parquet").to_pylist()
    for one_sided, chosen, rejected in zip(rows["one-sided"], rows["chosen"], rows["rejected"]):
        assert one_sided["chosen_logratio"] == chosen["chosen_logratio"] and one_sided["rejected_logratio"] == rejected["rejected_logratio"]
        assert one_sided["chosen_ref_logps"] == chosen["chosen_ref_logps"]
    manifest = json.loads((tmp_path / "one-sided" / "manifest.json").read_text())
    assert manifest["settings"]["logratio"] == "one-sided"
    bad = invoke_cli(*common, "--logratio", "both", "--out", tmp_path / "bad")
    assert bad.exit_code == 1 and "--logratio must be one of pair, one-sided" in bad.output


def test_logits_parts_cut_in_order_within_the_budget():
    from types import SimpleNamespace

    from tispipe.estimate.score import logits_parts

    pairs = [SimpleNamespace(chosen_ids=[1] * c, rejected_ids=[1] * r) for c, r in [(2, 3), (3, 1), (9, 2), (1, 1)]]
    # 2 rows a pair, vocabulary 10: a run of n pairs with longest response R holds n * 2 * R * 10 logits
    assert [len(p) for p in logits_parts(pairs, 2, 10, budget=130)] == [2, 1, 1]  # 2*2*3*10 = 120; with the third, 3*2*9*10
    assert [len(p) for p in logits_parts(pairs, 2, 10, budget=10)] == [1, 1, 1, 1]  # each over the budget alone
    assert [len(p) for p in logits_parts(pairs, 2, 10, budget=10_000)] == [4]


@pytest.mark.parametrize("method", ["prompt", "sft"])
def test_scoring_in_parts_writes_the_same_shards(data_file, base_dir, workdir, runs, monkeypatch, method):
    """A logits budget of one pair per forward (every batch cut into parts) scores the same numbers."""
    import tispipe.estimate.score

    cut = []
    real = tispipe.estimate.score.logits_parts
    monkeypatch.setattr(tispipe.estimate.score, "logits_parts", lambda items, rows, vocab: cut.append(len(items)) or real(items, rows, vocab, budget=1))
    out = workdir / f"parts-{method}"
    run(config(data_file, base_dir, out, method=method))
    assert max(cut) > 1  # batches of several pairs were cut
    ours, reference = read_rows(out), read_rows(runs[method])
    assert [r["pair_id"] for r in ours] == [r["pair_id"] for r in reference]
    for mine, theirs in zip(ours, reference):
        for column in ("chosen_logratio", "rejected_logratio", "chosen_ref_logps", "rejected_ref_logps"):
            np.testing.assert_allclose(mine[column], theirs[column], rtol=1e-5, atol=1e-5)
