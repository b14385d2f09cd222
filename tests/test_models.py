"""Model and tokenizer loading: user errors name the path, fingerprints are stable and discriminating."""

from __future__ import annotations

import os

import pytest
import torch

from tispipe.errors import TispipeError
from tispipe.modeling.models import (
    fingerprint_model,
    fingerprint_tokenizer,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)

# One layer of width 16 with tied embeddings: the smallest model the loading tests need.
TINY = dict(vocab_size=400, hidden_size=16, intermediate_size=32, num_hidden_layers=1, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=None)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, make_tiny_llama):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    make_tiny_llama(folder, **TINY)
    return folder


@pytest.mark.parametrize("name", ["./no-such-model", "no/such/deep/path"])
def test_missing_relative_path_is_named(name):
    with pytest.raises(TispipeError, match="does not exist") as e:
        load_model(name)
    assert name in e.value.message
    with pytest.raises(TispipeError, match="does not exist"):
        load_tokenizer(name)


def test_missing_absolute_path_is_named(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(TispipeError) as e:
        load_model(missing)
    assert missing in e.value.message


def test_owner_name_under_an_existing_folder_is_local(tmp_path, monkeypatch):
    # `runs/base` could be a Hub name; with a local `runs/` folder it means the path.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(TispipeError, match="does not exist") as e:
        load_model("runs/base")
    assert "runs/base" in e.value.message


def test_folder_without_weights(tmp_path):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(TispipeError, match="no weights") as e:
        load_model(str(folder))
    assert str(folder) in e.value.message
    with pytest.raises(TispipeError) as e:
        fingerprint_model(folder)
    assert str(folder) in e.value.message


def test_folder_without_tokenizer(tmp_path):
    with pytest.raises(TispipeError) as e:
        load_tokenizer(str(tmp_path))
    assert str(tmp_path) in e.value.message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_gpu(tiny_model_dir):
    with pytest.raises(TispipeError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(TispipeError, match="cuda:1"):
        load_model(str(tiny_model_dir), device="cuda:1")
    assert resolve_device("auto") == "cpu"


def test_unknown_device_and_dtype():
    with pytest.raises(TispipeError, match="unknown device"):
        resolve_device("gpu")
    with pytest.raises(TispipeError, match="unknown dtype"):
        resolve_dtype("float8", "cpu")


def test_dtypes():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("auto", "cuda", for_training=True) == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cuda") == torch.float16


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 (no network lookups)")
def test_missing_hub_model_offline_is_one_line():
    name = "tispipe-test-owner/no-such-model"
    with pytest.raises(TispipeError) as e:
        load_model(name)
    assert name in e.value.message and "\n" not in e.value.message
    with pytest.raises(TispipeError) as e:
        load_tokenizer(name)
    assert name in e.value.message and "\n" not in e.value.message


def test_load_model_modes(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32
    trainable = load_model(str(tiny_model_dir), for_training=True, dtype="bfloat16")
    assert trainable.training
    assert all(p.requires_grad for p in trainable.parameters())
    assert next(trainable.parameters()).dtype == torch.bfloat16
    assert torch.equal(trainable.model.embed_tokens.weight, model.model.embed_tokens.weight.to(torch.bfloat16))
    for a, b in zip(model.parameters(), load_model(str(tiny_model_dir)).parameters(), strict=True):
        assert torch.equal(a, b)


def test_model_fingerprint(tmp_path, tiny_model_dir, make_tiny_llama):
    again = tmp_path / "again"
    make_tiny_llama(again, seed=0, **TINY)
    other = tmp_path / "other"
    make_tiny_llama(other, seed=1, **TINY)
    fp = fingerprint_model(tiny_model_dir)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fingerprint_model(str(tiny_model_dir)) == fp
    assert fingerprint_model(again) == fp  # same weights saved twice
    assert fingerprint_model(other) != fp


def test_tokenizer_fingerprint(tmp_path, make_tiny_tokenizer):
    tokenizer = make_tiny_tokenizer()
    fp = fingerprint_tokenizer(tokenizer)
    assert fingerprint_tokenizer(make_tiny_tokenizer()) == fp
    tokenizer.save_pretrained(tmp_path / "tok")
    assert fingerprint_tokenizer(load_tokenizer(str(tmp_path / "tok"))) == fp
    padded = make_tiny_tokenizer()
    padded.backend_tokenizer.enable_padding(pad_id=padded.pad_token_id, pad_token=padded.pad_token)
    assert fingerprint_tokenizer(padded) == fp  # padding settings do not change which ids text gets
    assert fingerprint_tokenizer(make_tiny_tokenizer(chat_template=False)) != fp
    other_special = make_tiny_tokenizer()
    other_special.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    assert fingerprint_tokenizer(other_special) != fp


def test_load_tokenizer_sets_pad(tmp_path, make_tiny_tokenizer):
    make_tiny_tokenizer(pad=False).save_pretrained(tmp_path / "tok")
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id is not None
