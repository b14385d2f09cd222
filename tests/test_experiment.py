"""`tispipe experiment --quick`: every method of the comparison runs end to end and the tables are written."""

from __future__ import annotations

import json

import pytest

from tispipe.configs import ESTIMATION_METHODS
from tispipe.errors import TispipeError
from tispipe.studies import experiment, generated_block, jobs, kl_matched, results_page


@pytest.mark.slow  # every method at two lrs and two seeds, in process (about a minute)
def test_quick_experiment_runs_every_method_and_writes_the_tables(tiny_task, tmp_path):
    out, docs = tmp_path / "exp", tmp_path / "docs"
    cfg = experiment.ExperimentConfig(data=str(tiny_task / "data"), base=str(tiny_task / "base"), out=str(out), results=str(docs), quick=True)
    report = experiment.run(cfg)

    names = [m[0] for m in experiment.METHODS]
    assert list(report["methods"]) == ["base", *names]
    assert report["budget"]["steps"] == 4 and report["budget"]["seeds"] == 2 and report["budget"]["lrs"] == [1e-5, 1e-4]
    # the validation split is carved from train by pair_id; nothing of it is trained on, and test is the test file
    train_ids = {json.loads(line)["pair_id"] for line in (out / "data" / "train.jsonl").read_text().splitlines()}
    validation_ids = {json.loads(line)["pair_id"] for line in (out / "data" / "validation.jsonl").read_text().splitlines()}
    assert validation_ids and not train_ids & validation_ids
    assert len(train_ids) + len(validation_ids) == 48 == report["budget"]["validation_pairs"] + len(train_ids)
    assert (out / "data" / "test.jsonl").read_text() == (tiny_task / "data" / "test.jsonl").read_text()
    for name in names:
        row = report["methods"][name]
        lr = row["lr"]
        if name in experiment.ABLATIONS:  # no grid of their own: TIS-DPO(D)'s lr
            assert lr == report["methods"]["TIS-DPO(D)"]["lr"] and name not in report["grid"], name
        else:
            assert lr in (1e-5, 1e-4) and lr == experiment.choose_lr(report["grid"][name]), name
        for seed in (0, 1):
            info = json.loads((experiment.model_dir(out, name, lr, seed) / "train_info.json").read_text())
            assert info["steps"] == 4, name  # the same budget for every method
        for other in (1e-5, 1e-4):  # the grid: every lr with seed 0
            assert (experiment.model_dir(out, name, other, 0) / "train_info.json").is_file() == (name not in experiment.ABLATIONS or other == lr), name
        for key in ("oracle_reward", "harmful_rate", "win_rate_vs_dpo", "pref_accuracy", "kl_per_token"):
            assert row[key]["mean"] is not None and len(row[key]["values"]) == 2, (name, key)
    # DPO against itself ties on every prompt
    assert report["methods"]["DPO"]["win_rate_vs_dpo"]["mean"] == 0.5
    assert report["methods"]["base"]["kl_per_token"]["mean"] == pytest.approx(0.0, abs=1e-6)
    for method in ("prompt", "sft", "dpo", "dpo-vs-base"):
        assert list(report["weight_auc"][method]) == ["exp", "calibrated", "top 20%"]
        for split in ("train", "test"):
            auc = report["weight_auc"][method]["exp"][split]
            assert 0.0 <= auc["chosen_helpful_auc"] <= 1.0 and auc["labelled_rows"] > 0, (method, split)
            assert report["weight_auc"][method]["calibrated"][split]["labelled_rows"] == auc["labelled_rows"]
    # dpo-vs-base scores with the dpo pair's pi+ against the base
    given = json.loads((out / "weights-dpo-vs-base" / "manifest.json").read_text())["contrast"]
    assert given["pos_model"] == str(out / "weights-dpo" / "contrast" / "pos") and given["neg_model"] == str(tiny_task / "base")
    # the validation evals read the validation file, the seed evals the test file
    assert "validation.jsonl" in (out / "logs" / "eval-validation-lr1e-05.yaml").read_text()
    assert "test.jsonl" in (out / "logs" / "eval-seed1.yaml").read_text()

    text = (docs / "results.md").read_text()
    assert (out / "results.md").read_text() == text
    assert json.loads((docs / "report.json").read_text())["methods"].keys() == report["methods"].keys()
    assert "--quick" in text and "tispipe experiment" in text
    for name in names:
        assert f"| {name} | " in text
    assert "| pref acc | margin | KL/token |" in text and report["methods"]["DPO"]["reward_margin"]["mean"] is not None
    assert "### Weight quality per estimation method and transform" in text and "| dpo | exp | test | 0." in text and "| dpo | top 20% | test | 0." in text
    assert "### Other weights from the same contrast" in text
    assert "### The learning-rate grid (validation prompts, seed 0)" in text and "**" in text
    assert "The paper's order (random U(L,U) < equal < without eta < full)" in text and "the paper's D > S > P" in text
    assert "The 5 ablations of TIS-DPO(D) have no grid of their own: each trains at TIS-DPO(D)'s chosen lr" in text
    assert "weights done after" in text and "lr grid after" in text

    # at matched KL: each TIS-DPO method at its best lr within DPO's validation KL, every seed trained and tested there
    block = report["kl_matched"]
    assert block["kl_budget"] == report["grid"]["DPO"][f"{report['methods']['DPO']['lr']:g}"]["kl_per_token"]
    assert block["methods"]["DPO"]["lr"] == report["methods"]["DPO"]["lr"]
    for name in ("TIS-DPO(P)", "TIS-DPO(S)", "TIS-DPO(D)"):
        if name in block["methods"]:
            lr = block["methods"][name]["lr"]
            assert report["grid"][name][f"{lr:g}"]["kl_per_token"] <= block["kl_budget"], name
            assert (experiment.model_dir(out, name, lr, 1) / "train_info.json").is_file() and len(block["methods"][name]["oracle_reward"]["values"]) == 2
        else:
            assert min(m["kl_per_token"] for m in report["grid"][name].values()) > block["kl_budget"], name
            assert name in block["no_lr_within_budget"]
    assert "### At matched KL" in text

    # the generated-data block: DPO, TIS-DPO(P) and TIS-DPO(D) on pairs the base made, at their main-table lrs, and the
    # RLCD stand-in: DPO (at DPO's lr) on pairs a preference model trained on those pairs ranked
    block = report["generated"]
    assert list(block["methods"]) == ["base", "DPO", "TIS-DPO(P)", "TIS-DPO(D)", generated_block.RLCD]
    assert block["generation"]["generated"] == 32 and 0 < block["generation"]["pairs"] <= 32
    noise = block["label_noise"]
    assert noise["pairs"] == block["generation"]["pairs"]
    assert noise["oracle_agrees"] + noise["oracle_ties"] + noise["oracle_disagrees"] == pytest.approx(1.0)
    assert block["methods"]["DPO"]["win_rate_vs_dpo"]["mean"] == 0.5
    for name, lr_of, shards in (("DPO", "DPO", "dpo"), ("TIS-DPO(P)", "TIS-DPO(P)", "prompt"), ("TIS-DPO(D)", "TIS-DPO(D)", "dpo"), (generated_block.RLCD, "DPO", "ranked")):
        lr = report["methods"][lr_of]["lr"]
        assert block["methods"][name]["lr"] == lr
        info = json.loads((generated_block.model_dir(out, name, lr, 1) / "train_info.json").read_text())
        assert info["steps"] == 4 and info["shards"].endswith(f"weights-{shards}"), name
    ranked = block["ranked"]
    assert ranked["generated"] == 32 and ranked["settings"]["candidates"] == generated_block.CANDIDATES and ranked["label_noise"]["pairs"] == ranked["pairs"] > 0
    assert ranked["reward_model"]["train_pairs"] + ranked["reward_model"]["held_out_pairs"] == block["generation"]["pairs"]
    assert 0 <= ranked["reward_model"]["held_out_accuracy"] <= 1
    ranked_rows = [json.loads(line) for path in sorted(generated_block.ranked_dir(out).glob("train-*.jsonl")) for line in path.read_text().splitlines()]
    assert all(row["chosen_reward"] > row["rejected_reward"] and row["chosen_system"] is None for row in ranked_rows)
    assert "### Generated data (paper Table 2, third block)" in text and "*RLCD stand-in (DPO on RM-ranked pairs)*: RLCD itself optimises" in text
    assert "TIS-DPO(D) at lr" in text.split("### Generated data")[1] and "RLCD stand-in (DPO on RM-ranked pairs) at lr" in text
    assert f"prefers the chosen response in {noise['oracle_agrees']:.1%}" in text
    for name in ("results-comparison.png", "results-ablations.png", "results-transforms.png", "results-generated.png", "results-lr.png", "results-frontier.png"):
        assert (docs / name).read_bytes()[:4] == b"\x89PNG" and f"]({name})" in text
    assert json.loads((docs / "results-comparison.json").read_text())["mean"][1] == report["methods"]["DPO"]["oracle_reward"]["mean"]
    lr_figure = json.loads((docs / "results-lr.json").read_text())
    assert lr_figure["DPO"]["validation_oracle_reward"] == [report["grid"]["DPO"][lr]["oracle_reward"] for lr in ("1e-05", "0.0001")]


def test_the_lr_is_chosen_by_validation_reward_ties_to_the_smaller():
    metrics = lambda reward: {"oracle_reward": reward, "kl_per_token": 0.0}  # noqa: E731
    assert experiment.choose_lr({"1e-05": metrics(1.0), "0.0001": metrics(2.0), "0.0002": metrics(1.5)}) == 1e-4
    assert experiment.choose_lr({"0.0001": metrics(2.0), "1e-05": metrics(2.0)}) == 1e-5  # order of the keys does not matter
    assert experiment.choose_lr({"1e-05": metrics(None), "2e-05": metrics(-1.0)}) == 2e-5
    with pytest.raises(TispipeError, match="no learning rate"):
        experiment.choose_lr({"1e-05": metrics(None)})
    with pytest.raises(TispipeError, match="--lrs"):
        experiment.learning_rates(experiment.ExperimentConfig(lrs="1e-5,fast"))
    with pytest.raises(TispipeError, match="--lrs"):
        experiment.learning_rates(experiment.ExperimentConfig(lrs="0,1e-5"))
    assert experiment.learning_rates(experiment.ExperimentConfig(lrs="1e-4, 1e-5,1e-4")) == [1e-5, 1e-4]


def test_beats_needs_non_overlapping_intervals_and_the_verdict_checks_the_papers_orders():
    entry = lambda values: results_page.mean_std(values)  # noqa: E731
    def row(values, lr=1e-5):
        return {"lr": lr, "oracle_reward": entry(values), "win_rate_vs_dpo": entry([0.5] * len(values))}
    report = {"methods": {"base": row([0.0]), "DPO": row([1.0, 1.2]), "TIS-DPO(D)": row([2.0, 2.2], 5e-5), "TIS-DPO(S)": row([1.5, 1.7]),
                          "TIS-DPO(P)": row([1.6, 1.8]), "TIS-DPO(D) random weights U(L,U)": row([0.5, 0.7]),
                          "TIS-DPO(D) equal weights": row([1.0, 1.4]), "TIS-DPO(D) without eta": row([1.9, 2.3])},
              "weight_auc": {}}
    assert "beats, with non-overlapping mean ± std," in results_page.beats(report, "TIS-DPO(D)", "DPO")
    assert "TIS-DPO(D) at lr 5e-05 (+2.10 ± 0.14)" in results_page.beats(report, "TIS-DPO(D)", "DPO")
    assert "does not beat (the mean ± std intervals overlap)" in results_page.beats(report, "TIS-DPO(D)", "TIS-DPO(D) without eta")
    report["methods"]["DPO"]["pref_accuracy"], report["methods"]["TIS-DPO(D)"]["pref_accuracy"] = entry([0.60, 0.62]), entry([0.70, 0.72])
    assert ("Held-out preference accuracy of the implicit reward: TIS-DPO(D) at lr 5e-05 (+0.71 ± 0.01) beats, with non-overlapping mean ± std,"
            in results_page.verdict(report, [m[0] for m in experiment.METHODS]))
    assert "falls below" in results_page.beats(report, "DPO", "TIS-DPO(D)")
    text = results_page.verdict(report, [m[0] for m in experiment.METHODS])
    assert "The paper's order (random U(L,U) < equal < without eta < full) holds in the means." in text
    assert "TIS-DPO(D) (+2.10) > TIS-DPO(P) (+1.70) > TIS-DPO(S) (+1.60); the paper's D > S > P does not hold" in text
    report["methods"]["TIS-DPO(D) without eta"] = row([2.3, 2.5])
    assert "does not hold in the means." in results_page.verdict(report, [m[0] for m in experiment.METHODS]).split("Estimation")[0]
    assert "Information or step size" not in text
    report["methods"]["TIS-DPO(D) random weights, mean-matched"] = row([1.0, 1.1])
    assert ("Information or step size: random weights with each side's mean estimated weight (the same width as U(L,U)) against the "
            "estimated weights themselves: TIS-DPO(D) at lr 5e-05 (+2.10 ± 0.14) beats") in results_page.verdict(report, [m[0] for m in experiment.METHODS])


def test_unknown_method_and_missing_inputs_are_named(tiny_task, tmp_path):
    with pytest.raises(TispipeError, match="unknown method"):
        experiment.selected_methods(experiment.ExperimentConfig(methods="DPO,KTO"))
    assert [m[0] for m in experiment.selected_methods(experiment.ExperimentConfig(methods="IPO", generated=False))] == ["DPO", "IPO"]
    # the generated block trains its methods at their main-table lrs, so they come along
    assert [m[0] for m in experiment.selected_methods(experiment.ExperimentConfig(methods="IPO"))] == ["DPO", "IPO", "TIS-DPO(P)", "TIS-DPO(D)"]
    # an ablation trains at TIS-DPO(D)'s lr, so TIS-DPO(D) comes along
    assert [m[0] for m in experiment.selected_methods(experiment.ExperimentConfig(methods="TIS-DPO(D) without eta", generated=False))] == [
        "DPO", "TIS-DPO(D)", "TIS-DPO(D) without eta"]
    with pytest.raises(TispipeError, match="does not exist"):
        experiment.run(experiment.ExperimentConfig(data=str(tmp_path), base=str(tiny_task / "base"), out=str(tmp_path / "x")))


def test_mean_std_over_seeds():
    assert results_page.mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "values": [1.0, 2.0, 3.0]}
    assert results_page.mean_std([0.5]) == {"mean": 0.5, "std": None, "values": [0.5]}
    assert results_page.mean_std([]) == {"mean": None, "std": None, "values": []}


def test_every_method_builds_a_valid_train_config(tmp_path):
    from tispipe.train import train

    cfg = experiment.ExperimentConfig(out=str(tmp_path), max_steps=120)
    for method in experiment.METHODS + generated_block.METHODS:
        name, estimator, fields = method
        train_cfg = experiment.train_config(cfg, method, 2e-5, 1, tmp_path / f"weights-{estimator}", experiment.model_dir(tmp_path, name, 2e-5, 1))
        assert isinstance(train_cfg, experiment.TrainConfig), name
        train.validate(train_cfg)  # known loss / weighting names, bounds that make sense
        assert all(getattr(train_cfg, k) == v for k, v in fields.items()), name
        assert (train_cfg.lr, train_cfg.max_steps, train_cfg.seed, train_cfg.resume) == (2e-5, 120, 1, True), name
        assert train_cfg.shards == str(tmp_path / f"weights-{estimator}")
        assert train_cfg.out == str(experiment.model_dir(tmp_path, name, 2e-5, 1))
    assert {e for _, e, _ in experiment.METHODS} == set(experiment.ESTIMATORS) == {*ESTIMATION_METHODS, "dpo-vs-base"}


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_failing_job_stops_the_experiment_with_its_log_tail(tmp_path, n_jobs):
    runner = jobs.Runner(tmp_path, jobs=n_jobs, threads=1)
    bad = experiment.EstimateConfig(data=str(tmp_path / "missing.jsonl"), model=str(tmp_path / "no-model"), out=str(tmp_path / "w"))
    with pytest.raises(TispipeError, match=r"estimate-x failed \(exit 1\): Error: .*no-model"):
        runner.add("estimate-x", "estimate", bad)
        runner.finish()  # a worker's job fails when it is waited for
    assert runner.pool is None
    assert runner.commands == [f"tispipe estimate --config {tmp_path / 'estimate-x.yaml'}"]
    assert (tmp_path / "estimate-x.yaml").is_file()


def test_a_queued_job_starts_once_the_jobs_it_needs_have_finished_and_a_free_worker_takes_the_first_ready_one(tmp_path):
    from concurrent.futures import Future

    class Pool:  # the worker pool, with each job's end in the test's hands
        def __init__(self):
            self.jobs: dict[str, Future] = {}

        def submit(self, fn, logs, label, *args):
            self.jobs[label] = Future()
            return self.jobs[label]

    runner = jobs.Runner(tmp_path, jobs=2, threads=1)
    runner.pool = pool = Pool()
    cfg = lambda name: experiment.EstimateConfig(data="d.jsonl", model="m", out=str(tmp_path / name))  # noqa: E731
    runner.add("a", "estimate", cfg("a"))
    runner.add("b", "estimate", cfg("b"), after=["a"])
    runner.add("c", "estimate", cfg("c"))  # ready: it starts before b, which waits for a
    runner.add("d", "estimate", cfg("d"), after=["b", "c"])
    assert list(pool.jobs) == ["a", "c"] and [item[0] for item in runner.queued] == ["b", "d"]
    pool.jobs["c"].set_result(0)
    runner._reap()
    runner._start_ready()
    assert list(pool.jobs) == ["a", "c"]  # a free worker, but b and d still wait for a
    pool.jobs["a"].set_result(0)
    runner._reap()
    runner._start_ready()
    assert list(pool.jobs) == ["a", "c", "b"]
    pool.jobs["b"].set_result(0)
    runner._reap()
    runner._start_ready()
    assert list(pool.jobs) == ["a", "c", "b", "d"] and not runner.queued
    pool.jobs["d"].set_result(0)
    runner.wait()
    assert list(runner.finished) == ["c", "a", "b", "d"]
    with pytest.raises(ValueError, match="never added: e"):
        runner.add("f", "estimate", cfg("f"), after=["e"])


@pytest.mark.slow
def test_jobs_in_subprocesses_give_the_same_numbers_as_in_process(tiny_task, tmp_path):
    """--jobs 2 runs the stages in a pool of two worker processes; the results match --jobs 1 (every job in this process)."""
    from dataclasses import replace

    quick = experiment.quick_settings(experiment.ExperimentConfig(data=str(tiny_task / "data"), base=str(tiny_task / "base"),
                                                                  methods="TIS-DPO(P),TIS-DPO(D) equal weights", generated=False))
    reports = {n: experiment.run(replace(quick, out=str(tmp_path / f"jobs{n}"), jobs=n)) for n in (1, 2)}
    # DPO: the win rates need it; TIS-DPO(D): its ablation trains at its lr
    assert list(reports[2]["methods"]) == ["base", "DPO", "TIS-DPO(P)", "TIS-DPO(D)", "TIS-DPO(D) equal weights"]
    assert reports[2]["methods"] == reports[1]["methods"]
    assert reports[2]["weight_auc"] == reports[1]["weight_auc"]
    assert "generated" not in reports[2]
    logs = tmp_path / "jobs2" / "logs"
    assert f"tispipe train --config {logs / 'train-dpo-lr1e-05-seed0.yaml'}" in reports[2]["commands"]
    assert {p.stem for p in logs.glob("*.yaml")} == {p.stem for p in logs.glob("*.log")}
    # a finished eval is skipped on a re-run with the same settings
    again = experiment.run(replace(quick, out=str(tmp_path / "jobs2"), jobs=2))
    assert again["methods"] == reports[2]["methods"]


def test_weightless_losses_train_on_an_estimate_that_runs_anyway():
    by_name = {m[0]: m for m in experiment.METHODS}
    pick = lambda *names: [by_name[n] for n in names]  # noqa: E731
    assert experiment.needed_estimators(pick("DPO", "TIS-DPO(S)")) == ["sft"]  # no dpo pair is built for DPO alone
    assert [experiment.shard_estimator(m, ["sft"]) for m in pick("DPO", "TIS-DPO(S)")] == ["sft", "sft"]
    assert experiment.needed_estimators(pick("DPO")) == ["dpo"]
    assert experiment.needed_estimators(pick("DPO", "IPO", "TIS-DPO(D vs base)")) == ["dpo", "dpo-vs-base"]
    assert experiment.needed_estimators(experiment.METHODS) == ["prompt", "sft", "dpo", "dpo-vs-base"]
    assert experiment.shard_estimator(by_name["TIS-DPO(P)"], ["sft"]) == "prompt"  # a weighted method keeps its own


def test_the_generated_block_needs_the_toy_oracle(tiny_task, tmp_path):
    cfg = experiment.ExperimentConfig(data=str(tiny_task / "data"), base=str(tiny_task / "base"), out=str(tmp_path / "x"), oracle="profanity", generated=True)
    with pytest.raises(TispipeError, match="needs --oracle toy"):
        experiment.run(cfg)
    assert not (tmp_path / "x").exists()


def test_the_grid_table_says_when_a_chosen_lr_sits_on_an_edge():
    def report(chosen: dict[str, float]) -> dict:
        grid = {name: {lr: {"oracle_reward": 1.0, "pref_accuracy": 0.5, "kl_per_token": 0.1} for lr in ("1e-05", "0.0001", "0.001")} for name in chosen}
        return {"grid": grid, "methods": {name: {"lr": lr} for name, lr in chosen.items()}}

    text = results_page.grid_table(report({"DPO": 1e-4, "TIS-DPO(D)": 1e-3, "IPO": 1e-3}), ["DPO", "IPO", "TIS-DPO(D)"])
    assert "IPO, TIS-DPO(D) chose the grid's largest lr (0.001): their best may lie beyond the grid" in text
    assert "smallest" not in text and "DPO chose" not in text
    text = results_page.grid_table(report({"DPO": 1e-5, "TIS-DPO(D)": 1e-4}), ["DPO", "TIS-DPO(D)"])
    assert "DPO chose the grid's smallest lr (1e-05): its best may lie beyond the grid" in text and "largest" not in text
    assert "beyond the grid" not in results_page.grid_table(report({"DPO": 1e-4}), ["DPO"])


def test_kl_matched_lrs_stay_within_dpos_validation_kl():
    def grid_of(points: dict[str, tuple[float, float]]) -> dict:
        return {lr: {"oracle_reward": reward, "pref_accuracy": 0.5, "kl_per_token": kl} for lr, (reward, kl) in points.items()}

    grid = {"DPO": grid_of({"1e-05": (1.0, 0.02), "2e-05": (1.5, 0.04), "0.0002": (1.2, 0.5)}),
            "TIS-DPO(D)": grid_of({"1e-05": (1.1, 0.01), "2e-05": (1.3, 0.04), "0.0002": (2.0, 1.0)}),
            "TIS-DPO(P)": grid_of({"1e-05": (1.0, 0.05), "0.0002": (1.9, 0.9)}),
            "IPO": grid_of({"1e-05": (1.0, 0.01)})}
    chosen = {"DPO": 2e-5, "TIS-DPO(D)": 2e-4, "TIS-DPO(P)": 2e-4, "IPO": 1e-5}
    assert kl_matched.kl_budget(grid, chosen) == 0.04
    # the best lr within the budget (a KL equal to it counts), and none for a method whose smallest KL exceeds it; IPO is not compared
    assert kl_matched.matched_lrs(grid, chosen, "oracle_reward") == {"TIS-DPO(P)": None, "TIS-DPO(D)": 2e-5}

    entry = results_page.mean_std
    row = lambda values, kl, lr: {"lr": lr, "weights": "dpo", "oracle_reward": entry(values), "kl_per_token": entry(kl)}  # noqa: E731
    block = {"kl_budget": 0.04, "methods": {"DPO": row([1.0, 1.1], [0.04, 0.05], 2e-5), "TIS-DPO(D)": row([1.5, 1.6], [0.03, 0.04], 2e-5)},
             "no_lr_within_budget": {"TIS-DPO(P)": {"kl_per_token": 0.05, "lr": 1e-5}}}
    text = results_page.render_kl_matched(block)
    assert "### At matched KL" in text and "at most DPO's at its chosen lr (0.0400)" in text
    assert "- At matched KL: TIS-DPO(D) at lr 2e-05 (+1.55 ± 0.07) beats, with non-overlapping mean ± std, DPO at lr 2e-05" in text
    assert "No lr of the grid keeps TIS-DPO(P)'s validation KL within the budget (its smallest: 0.0500 at lr 1e-05)" in text
    block["methods"]["TIS-DPO(D)"] = row([1.0, 1.2], [0.03, 0.04], 1e-5)
    assert "TIS-DPO(D) at lr 1e-05 (+1.10 ± 0.14) does not beat" in results_page.render_kl_matched(block)
