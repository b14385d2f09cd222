"""`tispipe convert-gguf`: a GGUF file becomes a plain model folder with the same logits and token ids.

The GGUF here is written on the spot with the gguf package: a two-layer Llama (hidden 32, 4 heads, 2 KV
heads, tied output head) with float32 tensors and the byte-level BPE tokenizer of conftest, stored the way
llama.cpp stores a gpt2-style vocabulary (tokens, token types, merges, special token ids).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from tispipe.cli import app

pytest.importorskip("gguf")
runner = CliRunner()

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 64
TEXT = "Human: how can I bake bread? Assistant: first heat the oven, then 123 minutes!"


def write_tiny_gguf(path, tokenizer_json: str) -> None:
    import gguf
    import numpy as np

    state = json.loads(tokenizer_json)
    tokens = [token for token, _ in sorted(state["model"]["vocab"].items(), key=lambda item: item[1])]
    special = {added["content"]: added["id"] for added in state["added_tokens"]}
    merges = [" ".join(m) if isinstance(m, list) else m for m in state["model"]["merges"]]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny test llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in special else 1 for token in tokens])  # 3: control (special)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(special["<|endoftext|>"])
    writer.add_eos_token_id(special["<|endoftext|>"])
    writer.add_pad_token_id(special["<|pad|>"])

    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int, around: float = 0.0) -> None:  # numpy shape (out, in), as in the HF model
        writer.add_tensor(name, (around + 0.2 * rng.standard_normal(shape)).astype(np.float32))

    head_dim = HIDDEN // HEADS
    tensor("token_embd.weight", len(tokens), HIDDEN)  # no output.weight: the head is tied to the embeddings
    tensor("output_norm.weight", HIDDEN, around=1.0)
    for i in range(LAYERS):
        tensor(f"blk.{i}.attn_norm.weight", HIDDEN, around=1.0)
        tensor(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{i}.attn_k.weight", KV_HEADS * head_dim, HIDDEN)
        tensor(f"blk.{i}.attn_v.weight", KV_HEADS * head_dim, HIDDEN)
        tensor(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{i}.ffn_norm.weight", HIDDEN, around=1.0)
        tensor(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        tensor(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        tensor(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_tokenizer_json):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    write_tiny_gguf(path, tiny_tokenizer_json)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_gguf):
    out = tmp_path_factory.mktemp("converted") / "model"
    result = runner.invoke(app, ["convert-gguf", str(tiny_gguf), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def error_lines(result) -> list[str]:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return lines[errors[0] :]  # the Error line and its Hint; progress lines may come before


def test_the_folder_gives_the_gguf_models_logits_exactly(converted, tiny_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tispipe.modeling.models import load_model, load_tokenizer

    gguf_tokenizer = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name).eval()
    tokenizer = load_tokenizer(str(converted))
    model = load_model(str(converted), dtype="float32")

    ids = tokenizer(TEXT).input_ids
    assert ids == gguf_tokenizer(TEXT).input_ids and len(ids) > 10
    assert tokenizer.decode(ids) == TEXT
    batch = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(model(input_ids=batch).logits, gguf_model(input_ids=batch).logits)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())


def test_gguf_json_records_the_source(converted, tiny_gguf):
    record = json.loads((converted / "gguf.json").read_text())
    assert record["source"] == tiny_gguf.name
    assert record["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert record["bytes"] == tiny_gguf.stat().st_size
    assert record["architecture"] == "LlamaForCausalLM" and record["dtype"] == "float32"
    vocab = json.loads((converted / "config.json").read_text())["vocab_size"]
    assert record["parameters"] == vocab * HIDDEN + LAYERS * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * HIDDEN // 2 + 3 * HIDDEN * FFN + 2 * HIDDEN) + HIDDEN


def test_bfloat16_and_overwrite(converted, tiny_gguf, tmp_path):
    import safetensors.torch

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "old.txt").write_text("old")
    for flags in ([], ["--overwrite"]):  # a folder no convert-gguf run wrote is never replaced
        refused = runner.invoke(app, ["convert-gguf", str(tiny_gguf), "--out", str(mine), "--dtype", "bfloat16", *flags])
        assert "no `tispipe convert-gguf` run wrote" in error_lines(refused)[0] and (mine / "old.txt").exists()
    out = tmp_path / "bf16"
    shutil.copytree(converted, out)
    (out / "old.txt").write_text("old")
    refused = runner.invoke(app, ["convert-gguf", str(tiny_gguf), "--out", str(out), "--dtype", "bfloat16"])
    assert "already exists" in error_lines(refused)[0] and (out / "old.txt").exists()
    result = runner.invoke(app, ["convert-gguf", str(tiny_gguf), "--out", str(out), "--dtype", "bfloat16", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "old.txt").exists()
    weights = safetensors.torch.load_file(out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    full = safetensors.torch.load_file(converted / "model.safetensors")
    assert all(torch.equal(weights[name], full[name].to(torch.bfloat16)) for name in full)
    assert not list(tmp_path.glob(".bf16*.tmp*"))  # the staging folder is gone


def test_a_conversion_that_changes_the_logits_is_refused(tiny_gguf, tmp_path, monkeypatch):
    from tispipe.prepare import convert_gguf as gguf_convert

    exact = gguf_convert.plain_copy

    def off_by_a_little(gguf_model):
        model = exact(gguf_model)
        model.model.norm.weight.data[0] += 1e-3
        return model

    monkeypatch.setattr(gguf_convert, "plain_copy", off_by_a_little)
    result = runner.invoke(app, ["convert-gguf", str(tiny_gguf), "--out", str(tmp_path / "out")])
    assert "does not reproduce the GGUF model's logits exactly" in error_lines(result)[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("name, message", [("missing.gguf", "does not exist"), ("model.bin", "is not a .gguf file")])
def test_wrong_input_file(tmp_path, name, message):
    if name.endswith(".bin"):
        (tmp_path / name).write_bytes(b"GGUF")
    result = runner.invoke(app, ["convert-gguf", str(tmp_path / name), "--out", str(tmp_path / "out")])
    lines = error_lines(result)
    assert name in lines[0] and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_out_holding_the_gguf_is_refused(tiny_gguf):
    result = runner.invoke(app, ["convert-gguf", str(tiny_gguf), "--out", str(tiny_gguf.parent), "--overwrite"])
    assert "contains the --gguf input" in error_lines(result)[0]
    assert tiny_gguf.exists()


def test_damaged_gguf_is_one_error_line(tmp_path):
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"GGUF" + b"\0" * 60)
    result = runner.invoke(app, ["convert-gguf", str(damaged), "--out", str(tmp_path / "out")])
    assert "could not read damaged.gguf" in error_lines(result)[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_without_the_gguf_package(tiny_gguf, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    result = runner.invoke(app, ["convert-gguf", str(tiny_gguf), "--out", str(tmp_path / "out")])
    lines = error_lines(result)
    assert lines == ["Error: reading GGUF files needs the gguf package", "Hint: pip install 'tispipe[gguf]' (or pip install gguf==0.19.0)"]


def test_find_prints_the_packages_gguf_file(tmp_path, monkeypatch, capsys):
    from tispipe.prepare.convert_gguf import main

    package = tmp_path / "site" / "ships_a_model"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "weights" / "b.gguf").write_bytes(b"GGUF")
    (package / "a.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert main(["--find", "ships_a_model"]) == 0
    assert capsys.readouterr().out.strip() == str(package / "a.gguf")
    assert main(["--find", "no_such_package_here"]) == 1
    assert capsys.readouterr().err.startswith("Error: no installed package named 'no_such_package_here'")


def test_help_fits_80_columns():
    result = runner.invoke(app, ["convert-gguf", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0
    assert "--dtype" in result.output and "--overwrite" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
