"""Contrastive models pi+ / pi- (tispipe.estimate.contrast): settings, example order, saving whole, reuse."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
import torch
from conftest import write_jsonl
from rich.console import Console
from safetensors.torch import load_file

from tispipe.contrast_presets import PAPER_DEFAULTS, SMALL_MODEL_DEFAULTS
from tispipe.data.pairs import DataOptions, load_pairs, tokenize_pairs
from tispipe.errors import TispipeError
from tispipe.estimate import contrast
from tispipe.estimate.contrast import FINGERPRINT_FILE, ContrastSettings, settings_for

pytestmark = pytest.mark.usefixtures("one_thread")

FINGERPRINTS = {"data": "d1", "tokenizer": "t1", "base": "b1"}


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_settings_for_uses_the_presets_and_overrides_one_field_each(method):
    paper = settings_for(method, None, None, None, beta=None, seed=3, preset="paper")
    assert paper == ContrastSettings(method, **PAPER_DEFAULTS[method], seed=3)
    assert settings_for(method, None, None, None, beta=None, seed=3) == ContrastSettings(method, **SMALL_MODEL_DEFAULTS[method], seed=3)
    with pytest.raises(TispipeError, match="--contrast-preset must be one of small, paper"):
        settings_for(method, None, None, None, None, 3, preset="big")
    default = settings_for(method, None, None, None, beta=0.2, seed=3, preset="paper")
    assert default == dataclasses.replace(paper, beta=0.2)
    assert settings_for(method, 1e-3, None, None, 0.2, 3, "paper") == dataclasses.replace(default, lr=1e-3)
    assert settings_for(method, None, 0.5, None, 0.2, 3, "paper") == dataclasses.replace(default, epochs=0.5)
    assert settings_for(method, None, None, 7, 0.2, 3, "paper") == dataclasses.replace(default, batch_size=7)


def test_batches_cover_whole_permutations_then_a_prefix():
    batches = contrast._batches(5, 2, 2.5, torch.Generator().manual_seed(0))
    flat = [i for batch in batches for i in batch]
    assert [len(b) for b in batches] == [2] * 6 + [1]  # ceil(5 * 2.5) = 13 indices
    assert sorted(flat[:5]) == sorted(flat[5:10]) == list(range(5))
    replay = torch.Generator().manual_seed(0)
    third = [torch.randperm(5, generator=replay).tolist() for _ in range(3)][2]
    assert flat[10:] == third[:3]
    assert contrast._batches(5, 2, 2.5, torch.Generator().manual_seed(0)) == batches
    assert contrast._batches(5, 2, 2.5, torch.Generator().manual_seed(1)) != batches


def test_saved_matches_only_the_same_identity(tmp_path):
    settings = settings_for("sft", None, None, None, 0.1, 0)
    identity = contrast._identity(settings, "pos", FINGERPRINTS)
    folder = tmp_path / "pos"
    assert not contrast.saved_matches(folder, identity)  # no folder, no file
    folder.mkdir()
    (folder / FINGERPRINT_FILE).write_text('{"identity": ')
    assert not contrast.saved_matches(folder, identity)
    (folder / "model.safetensors").write_bytes(b"weights")
    from tispipe.modeling.models import fingerprint_model

    (folder / FINGERPRINT_FILE).write_text(json.dumps({"identity": identity}))
    assert not contrast.saved_matches(folder, identity)  # no record of its weights: cannot be verified
    (folder / FINGERPRINT_FILE).write_text(json.dumps({"identity": identity, "weights": fingerprint_model(folder)}))
    assert contrast.saved_matches(folder, identity)
    assert not contrast.saved_matches(folder, contrast._identity(settings, "neg", FINGERPRINTS))
    assert not contrast.saved_matches(folder, contrast._identity(dataclasses.replace(settings, seed=1), "pos", FINGERPRINTS))
    (folder / "model.safetensors").write_bytes(b"changed weights")
    assert not contrast.saved_matches(folder, identity)  # its weights changed since it was saved


def test_save_writes_the_folder_whole_and_clears_stale_leftovers(tmp_path, tiny_tokenizer, make_tiny_llama):
    model = make_tiny_llama()
    identity = contrast._identity(settings_for("sft", None, None, None, 0.1, 0), "pos", FINGERPRINTS)
    parent = tmp_path / "contrast"
    contrast._save(model, tiny_tokenizer, parent / "pos", identity, {"steps": 2})
    assert [p.name for p in parent.iterdir()] == ["pos"]
    names = {p.name for p in (parent / "pos").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", FINGERPRINT_FILE} <= names
    from tispipe.modeling.models import fingerprint_model

    record = {"identity": identity, "training": {"steps": 2}, "weights": fingerprint_model(parent / "pos")}
    assert json.loads((parent / "pos" / FINGERPRINT_FILE).read_text()) == record

    (parent / ".pos.x1y2.tmp").mkdir()  # left by a run killed while saving
    (parent / ".pos.x1y2.tmp" / "model.safetensors").write_bytes(b"half")
    contrast._save(model, tiny_tokenizer, parent / "pos", identity, {"steps": 3})
    assert [p.name for p in parent.iterdir()] == ["pos"]
    assert json.loads((parent / "pos" / FINGERPRINT_FILE).read_text())["training"] == {"steps": 3}


def _differ(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_build_sft_trains_both_sides_then_reuses_them(tmp_path, tiny_tokenizer, make_tiny_llama, monkeypatch):
    base = tmp_path / "base"
    make_tiny_llama(base)
    rows = [{"prompt": f"how can I bake {i} bread", "chosen": "first heat the oven then flour", "rejected": "sorry I cannot do that"} for i in range(8)]
    opts = DataOptions(data=str(write_jsonl(tmp_path / "d.jsonl", rows)), max_length=64, max_prompt_length=32)
    loaded, report = load_pairs(opts)
    pairs = tokenize_pairs(loaded, tiny_tokenizer, opts, report)
    settings = settings_for("sft", 1e-2, 1.0, 4, beta=0.1, seed=0)
    out = tmp_path / "run"

    def build():
        console = Console(file=io.StringIO(), width=200)
        return contrast.build(out, str(base), tiny_tokenizer, pairs, settings, FINGERPRINTS, device="cpu", console=console), console

    first, _ = build()
    assert [first[s]["reused"] for s in ("pos", "neg")] == [False, False]
    assert first["pos"]["training"]["steps"] == first["neg"]["training"]["steps"] == 2  # 8 pairs, batch 4, 1 epoch
    weights = {name: load_file(folder / "model.safetensors") for name, folder in [("base", base), ("pos", out / "contrast" / "pos"), ("neg", out / "contrast" / "neg")]}
    assert _differ(weights["pos"], weights["base"]) and _differ(weights["neg"], weights["base"])
    assert _differ(weights["pos"], weights["neg"])

    def no_training(*args, **kwargs):
        raise AssertionError("reused models must not be trained")

    monkeypatch.setattr(contrast, "train_sft", no_training)
    second, console = build()
    assert [second[s]["reused"] for s in ("pos", "neg")] == [True, True]
    assert console.file.getvalue().count("Reusing") == 2


def test_micro_batches_cut_in_order_within_the_token_budget():
    assert contrast.micro_batches([3, 0, 1, 2], [10, 10, 30, 10], budget=40) == [[3, 0, 1], [2]]  # lengths by index
    assert contrast.micro_batches([0, 1], [100, 5], budget=40) == [[0], [1]]  # a row over the budget goes alone
    assert contrast.micro_batches([0, 1, 2], [5, 5, 5], budget=1000) == [[0, 1, 2]]


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_a_step_split_into_micro_batches_makes_the_same_update(method, tmp_path, tiny_tokenizer, make_tiny_llama, monkeypatch):
    """Gradients of micro-batches, weighted by their units and divided by the step's, are the step's gradient."""
    from tispipe.modeling.models import load_model

    base = tmp_path / "base"
    make_tiny_llama(base)
    rows = [{"prompt": f"how can I bake {i} bread" + " please" * (i % 3), "chosen": "first heat the oven" + " then flour" * (i % 4),
             "rejected": "sorry I cannot" + " do that" * (i % 2)} for i in range(8)]
    opts = DataOptions(data=str(write_jsonl(tmp_path / "d.jsonl", rows)), max_length=64, max_prompt_length=32)
    loaded, report = load_pairs(opts)
    pairs = tokenize_pairs(loaded, tiny_tokenizer, opts, report)
    settings = settings_for(method, 1e-2, 1.0, 8, beta=0.1, seed=0)
    trained = {}
    for budget in (10_000, 40):  # one forward per step, then several
        monkeypatch.setattr(contrast.micro_batches, "__defaults__", (budget,))
        model = load_model(str(base), for_training=True)
        if method == "sft":
            stats = contrast.train_sft(model, pairs, "chosen", settings, tiny_tokenizer.pad_token_id, "sft")
        else:
            ref = contrast.reference_logps(load_model(str(base)), pairs, tiny_tokenizer.pad_token_id, batch_size=8)
            stats = contrast.train_dpo(model, pairs, ref, False, settings, tiny_tokenizer.pad_token_id, "dpo")
        trained[budget] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, stats)
    (one, one_stats), (split, split_stats) = trained[10_000], trained[40]
    assert len(contrast.micro_batches(list(range(8)), [len(p.prompt_ids) + len(p.chosen_ids) for p in pairs], 40)) > 1
    assert one_stats["final_loss"] == pytest.approx(split_stats["final_loss"], rel=1e-5)
    for name in one:  # Adam moves every weight by about lr (1e-2) a step; float summation order moves it by far less
        torch.testing.assert_close(split[name], one[name], rtol=0, atol=1e-4)
    assert _differ(split, {k: v for k, v in load_file(base / "model.safetensors").items()})
