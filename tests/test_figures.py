"""tispipe.artifacts.figures: each figure is a valid, non-blank PNG, and the JSON beside it holds the numbers it was drawn from."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tispipe.artifacts import figures


def assert_png(path, min_colours: int = 8):
    """A PNG that opens, has a sensible size and is not one flat colour."""
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]).round(3), axis=0)
    assert len(colours) >= min_colours, f"{path} looks blank ({len(colours)} colours)"
    return json.loads(path.with_suffix(".json").read_text())


def test_training_figure_draws_every_logged_metric(tmp_path):
    records = [{"step": s, "loss": 0.69 - 0.01 * s, "rewards/chosen": 0.01 * s, "rewards/rejected": -0.01 * s, "rewards/margins": 0.02 * s,
                "rewards/accuracies": min(1.0, 0.1 * s), "logratio/chosen_weighted": 0.1 * s, "logratio/rejected_weighted": -0.1 * s} for s in range(1, 11)]
    data = assert_png(figures.training_figure(records, tmp_path / "training.png"))
    assert data["step"] == list(range(1, 11))
    assert data["rewards/chosen"] == [r["rewards/chosen"] for r in records]
    assert "kl/chosen" not in data  # not logged by this loss: the panel says so instead


def test_weights_figure_histograms_and_roc(tmp_path):
    from tispipe.artifacts.shards import shard_name, write_manifest, write_shard
    from tispipe.artifacts.weight_quality import read_statistics

    rng = np.random.default_rng(1)
    rows = []
    for i in range(20):
        row = {"pair_id": f"p{i}"}
        for side, mu in (("chosen", 1), ("rejected", -1)):
            labels = rng.choice([-1, 0, 1], size=25, p=[0.1, 0.8, 0.1])
            r = rng.normal(size=25) + 2.0 * (labels == mu) * mu
            row.update({f"{side}_labels": labels.tolist(), f"{side}_logratio": r.tolist(), f"{side}_weights": np.exp(mu * np.clip(r, -0.5, 1.5)).tolist()})
        rows.append(row)
    (tmp_path / "shards").mkdir()
    entry = write_shard(tmp_path / "shards" / shard_name(0), rows)
    write_manifest(tmp_path, {"shards": [entry]})
    data = assert_png(figures.weights_figure(read_statistics(tmp_path, [entry]), tmp_path / "weights.png"))
    assert sum(data["histograms"]["chosen_weights"]["counts"]) == 500
    weights = np.array([w for row in rows for w in row["chosen_weights"]], dtype=np.float32).astype(np.float64)
    assert data["histograms"]["chosen_weights"]["edges"] == pytest.approx(np.histogram(weights, bins=50)[1].tolist())
    assert set(data["roc"]) == {"chosen_weights", "chosen_logratio", "rejected_weights", "rejected_logratio"}
    assert np.trapezoid(data["roc"]["chosen_weights"]["tpr"], data["roc"]["chosen_weights"]["fpr"]) > 0.8


def eval_report():
    models = ["runs/base", "runs/dpo"]
    gen = {name: {**{f"{t:g}": {"oracle_reward": {"estimate": 1.0 + i + t, "low": 0.8 + i + t, "high": 1.2 + i + t}} for t in (0.0, 1.0)},
                  "all": {"oracle_reward": {"estimate": 1.5 + i}}} for i, name in enumerate(models)}
    return {"models": models, "temperatures": [0.0, 1.0],
            "results": {name: {"generation": gen[name], "likelihood": {"kl_per_token": 0.1 * i}} for i, name in enumerate(models)}}


def test_eval_figures_come_from_the_report(tmp_path):
    report = eval_report()
    data = assert_png(figures.temperature_figure(report, "oracle", tmp_path / "t.png"))
    assert data["models"]["runs/dpo"]["mean"] == [2.0, 3.0]
    data = assert_png(figures.reward_kl_figure(report, "oracle", tmp_path / "kl.png"), min_colours=4)
    assert data["models"]["runs/dpo"] == {"kl_per_token": 0.1, "reward": 2.5}


def test_methods_figure(tmp_path):
    rows = {name: {"oracle_reward": {"mean": m, "std": 0.1}} for name, m in (("base", 1.2), ("DPO", 1.7), ("TIS-DPO(D)", 1.8))}
    data = assert_png(figures.methods_figure(rows, ["base", "DPO", "TIS-DPO(D)", "missing"], tmp_path / "m.png", "title"))
    assert data == {"methods": ["base", "DPO", "TIS-DPO(D)"], "mean": [1.2, 1.7, 1.8], "std": [0.1, 0.1, 0.1]}


def test_the_stages_write_their_figures_beside_their_numbers(tmp_path, make_tiny_llama):
    from conftest import invoke_cli, prompt_estimate

    command = prompt_estimate(tmp_path, make_tiny_llama)
    assert command
    weights = tmp_path / "weights"
    data = assert_png(weights / "weights.png")
    manifest = json.loads((weights / "manifest.json").read_text())
    for side in figures.SIDES:  # every token of the side in the histogram
        assert sum(data["histograms"][f"{side}_weights"]["counts"]) == manifest["tokens"][side]
    assert set(data["roc"]) == {f"{side}_{name}" for side in figures.SIDES for name in ("weights", "logratio")}  # toy rows carry labels

    run = tmp_path / "run"
    result = invoke_cli("train", "--shards", weights, "--model", tmp_path / "base", "--out", run, "--max-steps", 3, "--batch-size", 4, "--device", "cpu")
    assert result.exit_code == 0, result.output
    data = assert_png(run / "training.png")
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert data["loss"] == [m["loss"] for m in logged] and data["kl/chosen"] == [m["kl/chosen"] for m in logged]

    report_dir = tmp_path / "eval"
    result = invoke_cli("eval", "--model", tmp_path / "base", "--model", run, "--ref", tmp_path / "base", "--data", tmp_path / "pairs.jsonl",
                        "--oracle", "toy", "--temperatures", "0,1", "--num-prompts", 3, "--max-new-tokens", 8, "--out", report_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "report.json").read_text())
    data = assert_png(report_dir / "reward_by_temperature.png")
    for name in report["models"]:
        assert data["models"][name]["mean"] == [report["results"][name]["generation"][t]["oracle_reward"]["estimate"] for t in ("0", "1")]
    data = assert_png(report_dir / "reward_vs_kl.png", min_colours=4)
    assert data["models"][str(run)]["kl_per_token"] == report["results"][str(run)]["likelihood"]["kl_per_token"]
    assert "figures: reward_by_temperature.png, reward_vs_kl.png" in report["notes"]


def test_rerunning_estimate_on_an_older_folder_adds_the_tokenizer_copy_and_the_figure(tmp_path, make_tiny_llama):
    import shutil

    from conftest import invoke_cli, prompt_estimate

    command = prompt_estimate(tmp_path, make_tiny_llama)
    weights = tmp_path / "weights"
    shards = {p.name: p.read_bytes() for p in (weights / "shards").iterdir()}
    shutil.rmtree(weights / "tokenizer")
    (weights / "weights.png").unlink()
    result = invoke_cli(*command, "--out", weights)
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    assert (weights / "tokenizer" / "tokenizer.json").is_file()
    assert_png(weights / "weights.png")
    assert {p.name: p.read_bytes() for p in (weights / "shards").iterdir()} == shards


def test_weights_figure_of_float32_values_a_few_ulps_apart(tmp_path):
    """Shards hold float32: a random model's weights can all lie within a few ulps of 1, and its r_t all be 0."""
    from tispipe.artifacts.shards import shard_name, write_manifest, write_shard
    from tispipe.artifacts.weight_quality import read_statistics

    near_one = float(np.nextafter(np.float32(1), np.float32(2), dtype=np.float32))
    row = {"pair_id": "p0", "chosen_weights": [1.0, near_one, 1.0], "rejected_weights": [1.0, near_one, 1.0], "chosen_logratio": [0.0] * 3, "rejected_logratio": [0.0] * 3}
    (tmp_path / "shards").mkdir()
    entry = write_shard(tmp_path / "shards" / shard_name(0), [row])
    write_manifest(tmp_path, {"shards": [entry]})
    data = json.loads(figures.weights_figure(read_statistics(tmp_path, [entry]), tmp_path / "weights.png").with_suffix(".json").read_text())
    assert sum(data["histograms"]["chosen_weights"]["counts"]) == 3 and sum(data["histograms"]["chosen_logratio"]["counts"]) == 3
