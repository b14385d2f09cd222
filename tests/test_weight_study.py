"""`tispipe weight-study`: every estimator built once, scored on validation and test, tabulated against the surprisal baseline."""

from __future__ import annotations

import json

import pytest

from tispipe.configs import WeightStudyConfig
from tispipe.errors import TispipeError
from tispipe.studies import weight_study

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow  # two tiny contrast builds and ten scorings (about 30 s)
def test_weight_study_builds_once_scores_both_splits_and_chooses_on_validation(tiny_task, tmp_path):
    out, docs = tmp_path / "study", tmp_path / "docs"
    cfg = WeightStudyConfig(data=str(tiny_task / "data"), base=str(tiny_task / "base"), out=str(out), results=str(docs), jobs=1, limit=24, eval_limit=8)
    report = weight_study.run(cfg)
    assert [r["scoring"] for r in report["rows"]] == [s[0] for s in weight_study.SCORINGS]
    for method in ("sft", "dpo"):  # built on the training pairs only
        settings = json.loads((out / "build" / method / "manifest.json").read_text())["settings"]
        assert settings["data"].endswith("train.jsonl") and settings["limit"] == 24
    for row in report["rows"]:
        for split in ("validation", "test"):
            manifest = json.loads((out / "scores" / f"{weight_study.slug(row['scoring'])}-{split}" / "manifest.json").read_text())
            assert manifest["settings"]["data"].endswith(f"{split}.jsonl") and manifest["pairs"] == row[split]["rows"] <= 8
            quality_of_r = manifest["auc"]["rejected_harmful_decision_by_low_logratio"]
            assert row[split]["r_decision_rejected"] == pytest.approx(quality_of_r)
            assert row[split]["surprisal_decision_rejected"] is not None
    # the surprisal baseline does not depend on the contrast: the same for every scoring of a split
    assert len({r["test"]["surprisal_decision_rejected"] for r in report["rows"]}) == 1
    best = max(report["rows"], key=lambda r: min(r["validation"]["w_decision_chosen"], r["validation"]["w_decision_rejected"]))
    assert report["best"] == best["scoring"]
    text = (docs / "weights.md").read_text()
    assert text == (out / "weights.md").read_text() and f"| {best['scoring']} **(chosen)** |" in text
    assert "surprisal baseline" in text and "tispipe weight-study" in text


def test_bad_estimators_and_missing_inputs_are_named(tiny_task, tmp_path):
    with pytest.raises(TispipeError, match="--estimators 'sft,ppo'"):
        weight_study.run(WeightStudyConfig(data=str(tiny_task / "data"), base=str(tiny_task / "base"), out=str(tmp_path / "x"), estimators="sft,ppo"))
    with pytest.raises(TispipeError, match="train.jsonl does not exist"):
        weight_study.run(WeightStudyConfig(data=str(tmp_path), base=str(tiny_task / "base"), out=str(tmp_path / "x")))
    with pytest.raises(TispipeError, match="--contrast-preset must be one of"):
        weight_study.run(WeightStudyConfig(data=str(tiny_task / "data"), base=str(tiny_task / "base"), out=str(tmp_path / "x"), contrast_preset="huge"))
    assert not (tmp_path / "x").exists()
