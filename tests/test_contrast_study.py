"""`tispipe contrast-study --quick` and the validation split it (and `tispipe experiment`) chooses settings on."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tispipe.configs import ContrastStudyConfig
from tispipe.data.held_out import carve_files, is_held_out
from tispipe.errors import TispipeError
from tispipe.studies import contrast_study


def test_carve_files_splits_train_by_pair_id_and_copies_test(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"pair_id": f"p{i}", "prompt": "x", "chosen": "a", "rejected": "b"} for i in range(200)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "test.jsonl").write_text('{"pair_id": "t0"}\n')
    counts = carve_files(data, tmp_path / "out", 0.2, seed=0)
    validation = [json.loads(line)["pair_id"] for line in (tmp_path / "out" / "validation.jsonl").read_text().splitlines()]
    train = [json.loads(line)["pair_id"] for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert counts == {"train": len(train), "validation": len(validation), "test": 1}
    assert sorted(train + validation, key=lambda p: int(p[1:])) == [r["pair_id"] for r in rows] and 20 < len(validation) < 60
    assert all(is_held_out(p, 0.2, 0) for p in validation) and not any(is_held_out(p, 0.2, 0) for p in train)
    assert (tmp_path / "out" / "test.jsonl").read_text() == '{"pair_id": "t0"}\n'
    # the same split whatever the row order
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    carve_files(data, tmp_path / "again", 0.2, seed=0)
    again = [json.loads(line)["pair_id"] for line in (tmp_path / "again" / "validation.jsonl").read_text().splitlines()]
    assert sorted(again) == sorted(validation)
    (data / "train.jsonl").write_text('{"prompt": "no id"}\n')
    with pytest.raises(TispipeError, match=r"train.jsonl line 1: not a JSON object with a pair_id"):
        carve_files(data, tmp_path / "bad", 0.2, seed=0)


def test_carve_files_keeps_a_shipped_validation_split(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"pair_id": "a"}\n{"pair_id": "b"}\n')
    (data / "validation.jsonl").write_text('{"pair_id": "v"}\n')
    (data / "test.jsonl").write_text('{"pair_id": "t"}\n')
    assert carve_files(data, tmp_path / "out", 0.5, seed=0) == {"train": 2, "validation": 1, "test": 1}
    assert (tmp_path / "out" / "train.jsonl").read_text() == (data / "train.jsonl").read_text()
    assert (tmp_path / "out" / "validation.jsonl").read_text() == '{"pair_id": "v"}\n'
    (data / "validation.jsonl").write_text("\n")
    with pytest.raises(TispipeError, match="validation.jsonl 0"):
        carve_files(data, tmp_path / "bad", 0.5, seed=0)


@pytest.mark.slow  # two tiny contrast builds and four scorings (about 20 s)
def test_quick_contrast_study_builds_scores_and_chooses_on_validation(tiny_task, tmp_path):
    out, docs = tmp_path / "study", tmp_path / "docs"
    report = contrast_study.run(ContrastStudyConfig(data=str(tiny_task / "data"), base=str(tiny_task / "base"), out=str(out), results=str(docs), quick=True, jobs=1))
    assert [r["label"] for r in report["rows"]] == [contrast_study.label(s) for s in contrast_study.QUICK_GRID]
    assert report["splits"]["train"] + report["splits"]["validation"] == 48
    for row in report["rows"]:
        settings = json.loads((out / "runs" / row["label"] / "manifest.json").read_text())["settings"]
        assert (settings["contrast_lr"], settings["contrast_epochs"]) == (row["lr"], row["epochs"])
        assert settings["data"].endswith("train.jsonl")  # built on the carved training pairs, never on validation
        validation = json.loads((out / "validation" / f"{row['label']}-pair" / "manifest.json").read_text())
        assert validation["settings"]["data"].endswith("validation.jsonl") and validation["pairs"] == report["splits"]["validation"]
        assert row["score"] == min(row["validation"]["w_decision_chosen"], row["validation"]["w_decision_rejected"])
        assert bool(row["halves"]) == (row["method"] == "dpo")
    for method in ("dpo", "sft"):
        assert report["chosen"][method] == max((r for r in report["rows"] if r["method"] == method), key=lambda r: r["score"])["label"]
    text = (docs / "contrast-study.md").read_text()
    assert text == (out / "contrast-study.md").read_text() and "--quick" in text and "| dpo-lr1e-05-ep0.5-beta0.1" in text
    assert "### The two halves of r for dpo" in text and "tispipe contrast-study" in text
    assert (docs / "contrast-study.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_inputs_and_bad_options_are_named(tiny_task, tmp_path):
    with pytest.raises(TispipeError, match="train.jsonl does not exist"):
        contrast_study.run(ContrastStudyConfig(data=str(tmp_path), base=str(tiny_task / "base"), out=str(tmp_path / "x")))
    with pytest.raises(TispipeError, match="base model folder"):
        contrast_study.run(ContrastStudyConfig(data=str(tiny_task / "data"), base=str(tmp_path / "none"), out=str(tmp_path / "x")))
    with pytest.raises(TispipeError, match="--validation-fraction must be below 1"):
        contrast_study.run(ContrastStudyConfig(data=str(tiny_task / "data"), base=str(tiny_task / "base"), out=str(tmp_path / "x"), validation_fraction=1.0))
    assert not (tmp_path / "x").exists()


def test_the_lora_grid_builds_adapters_of_the_estimators_asked_for(tiny_task, tmp_path):
    cfg = ContrastStudyConfig(data=str(tiny_task / "data"), base=str(tiny_task / "base"), out=str(tmp_path / "study"), quick=True, jobs=1,
                              lora_r=4, estimators="sft", eval_limit=3)
    assert contrast_study.settings(cfg) == [s for s in contrast_study.QUICK_GRID if s[0] == "sft"]
    full = dataclasses.replace(cfg, quick=False)
    assert contrast_study.settings(full) == [s for s in contrast_study.LORA_GRID if s[0] == "sft"] and len(contrast_study.settings(full)) == 4
    assert contrast_study.settings(dataclasses.replace(full, lora_r=0, estimators="dpo,sft")) == contrast_study.GRID
    with pytest.raises(TispipeError, match="--estimators 'prompt'"):
        contrast_study.settings(dataclasses.replace(cfg, estimators="prompt"))

    report = contrast_study.run(cfg)
    [row] = report["rows"]
    manifest = json.loads((tmp_path / "study" / "runs" / row["label"] / "manifest.json").read_text())
    assert manifest["settings"]["lora_r"] == 4 and row["method"] == "sft"
    assert json.loads((tmp_path / "study" / "validation" / f"{row['label']}-pair" / "manifest.json").read_text())["pairs"] == 3
    text = (tmp_path / "study" / "contrast-study.md").read_text()
    assert "as LoRA adapters of rank 4" in text and "scored on 3 validation pairs" in text and "`lora` preset" in text
