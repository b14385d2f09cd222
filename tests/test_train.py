"""Stage two, `tispipe train`: every loss and weighting end to end on tiny shards, resume, checks, memory."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tispipe.artifacts import shards as shards_module
from tispipe.errors import TispipeError
from tispipe.modeling import optim
from tispipe.modeling.shared_prompt import place_rows
from tispipe.train import train
from tispipe.train.epoch import drop_rows, length_grouped_steps, pair_length, step_batches
from tispipe.train.train import TrainConfig

N_PAIRS = 20
LOG2 = math.log(2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_tiny_tokenizer, make_tiny_llama):
    """A tiny random Llama saved with the tiny tokenizer, and shards of random pairs scored by that model.

    Returns (model_dir, shards_dir). Reference log-probs in the shards are the model's own, so the
    policy starts equal to the reference; log-ratios are random and weights follow paper Eq. 19.
    """
    from tispipe.core.weights import compute_weights
    from tispipe.modeling.batching import make_pair_batch, sequence_token_logps
    from tispipe.modeling.models import fingerprint_model, fingerprint_tokenizer, load_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    model_dir, shards_dir = root / "model", root / "shards"
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_llama(model_dir, tokenizer=tokenizer, num_attention_heads=4, max_position_embeddings=64, bos_token_id=tokenizer.eos_token_id).eval()

    gen = torch.Generator().manual_seed(1)
    eos, vocab = tokenizer.eos_token_id, len(tokenizer)

    def ids(low: int, high: int) -> list[int]:
        n = int(torch.randint(low, high, (1,), generator=gen))
        return torch.randint(2, vocab, (n,), generator=gen).tolist()

    rows = []
    for i in range(N_PAIRS):
        prompt, chosen, rejected = ids(2, 6), ids(2, 8) + [eos], ids(2, 8) + [eos]
        batch = make_pair_batch([prompt], [chosen], [rejected], tokenizer.pad_token_id)
        with torch.no_grad():
            ref_chosen, ref_rejected = batch.unplace(sequence_token_logps(model, batch))
        chosen_lr = torch.randn(1, len(chosen), generator=gen)
        rejected_lr = torch.randn(1, len(rejected), generator=gen)
        rows.append({
            "pair_id": f"pair-{i}", "prompt": "p", "chosen": "c", "rejected": "r",
            "prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
            "chosen_logratio": chosen_lr[0].tolist(), "rejected_logratio": rejected_lr[0].tolist(),
            "chosen_weights": compute_weights(chosen_lr, torch.ones_like(chosen_lr), 1.0)[0].tolist(),
            "rejected_weights": compute_weights(rejected_lr, torch.ones_like(rejected_lr), -1.0)[0].tolist(),
            "chosen_ref_logps": ref_chosen, "rejected_ref_logps": ref_rejected,
        })
    entries = [
        shards_module.write_shard(shards_dir / "shards" / shards_module.shard_name(j), rows[start:stop])
        for j, (start, stop) in enumerate([(0, 7), (7, 14), (14, N_PAIRS)])
    ]
    shards_module.write_manifest(shards_dir, {
        "shards": entries,
        "fingerprints": {"tokenizer": fingerprint_tokenizer(load_tokenizer(str(model_dir))), "base": fingerprint_model(model_dir)},
        "settings": {"model": str(model_dir), "transform": "exp", "k": 1.0, "mu": 1.0, "lower": -0.5, "upper": 1.5},
        "weights": {side: {"mean": float(np.mean([w for r in rows for w in r[f"{side}_weights"]]))} for side in ("chosen", "rejected")},
    })
    return model_dir, shards_dir


def config(tiny, out, **overrides) -> TrainConfig:
    model_dir, shards_dir = tiny
    values = {"shards": str(shards_dir), "model": str(model_dir), "out": str(out), "batch_size": 4, "max_steps": 2,
              "warmup_steps": 0, "lr": 1e-3, "device": "cpu", "shuffle_buffer": 8}
    return TrainConfig(**{**values, **overrides})


def read_metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def load_weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", train.WEIGHTINGS)
@pytest.mark.parametrize("loss", train.LOSSES)
def test_every_loss_and_weighting_trains_and_starts_at_log2(tiny, tmp_path, loss, weighting):
    out = tmp_path / "run"
    train.run(config(tiny, out, loss=loss, weighting=weighting))
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    first = metrics[0]
    expected_first = 1 / (4 * 0.1**2) if loss == "ipo" else LOG2  # policy == reference at step 1
    assert first["loss"] == pytest.approx(expected_first, abs=1e-4)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "logratio/chosen", "logratio/chosen_weighted", "grad_norm", "lr", "pairs_per_s", "epoch"):
        assert math.isfinite(metrics[-1][key]), key
    rows = [r for f in sorted((tiny[1] / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    lengths = [len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows]
    per_pair = metrics[-1]["tokens_per_s"] / metrics[-1]["pairs_per_s"]  # tokens per pair trained, each prompt once
    assert min(lengths) <= per_pair <= max(lengths) and per_pair * 8 == pytest.approx(round(per_pair * 8))
    assert ("kl/chosen" in first) == train.needs_ref(config(tiny, out, loss=loss))
    assert metrics[-1]["loss"] != first["loss"]  # the policy moved
    if weighting == "equal":
        assert first["weights/chosen_mean"] == pytest.approx(1.0)
    if weighting == "random":
        assert -0.5 <= first["weights/rejected_mean"] <= 1.5 and first["weights/chosen_mean"] != pytest.approx(1.0)
    if weighting == "random-matched":
        stored = json.loads((tiny[1] / "manifest.json").read_text())["weights"]
        for side in ("chosen", "rejected"):
            assert stored[side]["mean"] - 1 <= first[f"weights/{side}_mean"] <= stored[side]["mean"] + 1


def test_random_matched_weights_centre_the_random_range_on_each_sides_mean_weight():
    """The random-weight ablation at the estimated weights' own mean: the same width as U(L, U), so only the information differs."""
    from tispipe.configs import TrainConfig
    from tispipe.train.step import batch_weights, weight_plan

    manifest = {"settings": {"lower": -0.5, "upper": 1.5}, "weights": {"chosen": {"mean": 1.2}, "rejected": {"mean": 0.9}}}
    plan = weight_plan(TrainConfig(shards="s", model="m", out="o", weighting="random-matched", seed=3), manifest)
    assert plan.side_ranges == (pytest.approx((0.2, 2.2)), pytest.approx((-0.1, 1.9)))
    rows = [{"pair_id": f"p{i}", "prompt_ids": [1, 2], "chosen_ids": [3] * 400, "rejected_ids": [4] * 300} for i in range(4)]
    from tispipe.modeling.batching import make_pair_batch

    batch = make_pair_batch([r["prompt_ids"] for r in rows], [r["chosen_ids"] for r in rows], [r["rejected_ids"] for r in rows], 0)
    weights, mask = batch_weights(plan, batch, rows), batch.response_mask.bool()
    chosen, rejected = weights[:4][mask[:4]], weights[4:][mask[4:]]
    assert 0.2 <= chosen.min() and chosen.max() <= 2.2 and chosen.mean() == pytest.approx(1.2, abs=0.05)
    assert -0.1 <= rejected.min() and rejected.max() <= 1.9 and rejected.mean() == pytest.approx(0.9, abs=0.05)
    with pytest.raises(TispipeError, match="records no mean weight"):
        weight_plan(TrainConfig(shards="s", model="m", out="o", weighting="random-matched"), {"settings": {}})


def test_cached_ref_losses_never_load_the_reference(tiny, tmp_path, monkeypatch):
    loaded = []
    real_load = train.load_model
    monkeypatch.setattr(train, "load_model", lambda name, **kw: loaded.append(name) or real_load(name, **kw))
    for i, (loss, eta) in enumerate([("dpo", 1.0), ("ipo", 1.0), ("tisdpo", 0.0)]):
        train.run(config(tiny, tmp_path / f"r{i}", loss=loss, eta_coef=eta, ref="/nowhere/ref-model"))
    assert loaded == [str(tiny[0])] * 3
    loaded.clear()
    train.run(config(tiny, tmp_path / "kl", loss="tisdpo", eta_coef=1.0))
    assert loaded == [str(tiny[0])] * 2  # policy and reference


def test_tisdpo_with_equal_weights_and_no_eta_is_dpo(tiny, tmp_path):
    train.run(config(tiny, tmp_path / "dpo", loss="dpo", max_steps=3))
    train.run(config(tiny, tmp_path / "tis", loss="tisdpo", weighting="equal", eta_coef=0.0, max_steps=3))
    dpo, tis = read_metrics(tmp_path / "dpo"), read_metrics(tmp_path / "tis")
    assert [m["loss"] for m in tis] == pytest.approx([m["loss"] for m in dpo], abs=1e-6)


def test_dpo_lowers_the_loss_on_a_fixed_batch(tiny, tmp_path):
    out = tmp_path / "run"
    train.run(config(tiny, out, loss="dpo", batch_size=N_PAIRS, max_steps=None, epochs=4))
    losses = [m["loss"] for m in read_metrics(out)]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.01
    assert read_metrics(out)[-1]["rewards/margins"] > 0


def test_training_on_saturated_stored_weights_warns_and_only_where_they_are_used(tiny, tmp_path, capsys):
    import shutil

    model_dir, shards_dir = tiny
    copy = tmp_path / "shards"
    shutil.copytree(shards_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for side in ("chosen", "rejected"):
        manifest["weights"][side].update(count=100, at_min=0.3, at_max=0.6)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    saturated = (model_dir, copy)
    shown = lambda: " ".join(capsys.readouterr().err.split())  # noqa: E731
    train.run(config(saturated, tmp_path / "tisdpo", max_steps=1))
    assert "Warning: the shards' weights: 90% of the chosen tokens and 90% of the rejected tokens have a weight at a clamp bound" in shown()
    train.run(config(saturated, tmp_path / "dpo", max_steps=1, loss="dpo"))  # dpo reads no weights
    train.run(config(saturated, tmp_path / "rederived", max_steps=1, transform="top"))  # not the stored weights
    assert "clamp bound" not in shown()


def test_rederived_weights_use_the_new_settings(tiny, tmp_path):
    train.run(config(tiny, tmp_path / "stored", max_steps=1))
    train.run(config(tiny, tmp_path / "k2", max_steps=1, k=2.0))
    stored, doubled = read_metrics(tmp_path / "stored")[0], read_metrics(tmp_path / "k2")[0]
    assert doubled["weights/chosen_mean"] == pytest.approx(2 * stored["weights/chosen_mean"], rel=1e-5)
    assert doubled["weights/rejected_mean"] == pytest.approx(2 * stored["weights/rejected_mean"], rel=1e-5)


def test_calibrated_and_top_weights_are_rederived_from_the_stored_log_ratios(tiny, tmp_path):
    """One step over every pair: the logged mean weight (a mean over pairs of each response's mean) is that of the
    transform applied to the stored r."""
    import shutil

    from tispipe.core.weights import compute_weights

    model_dir, shards_dir = tiny
    rows = [row for path in sorted((shards_dir / "shards").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    with pytest.raises(TispipeError, match="records no spread of r"):
        train.run(config(tiny, tmp_path / "none", max_steps=1, transform="calibrated"))
    copy = tmp_path / "shards"
    shutil.copytree(shards_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["logratio"] = {"chosen": {"std": 0.5}, "rejected": {"std": 2.0}}
    shards_module.write_manifest(copy, manifest)
    everything = dict(shards=str(copy), max_steps=1, batch_size=N_PAIRS, loss="dpo")
    cases = {"calibrated": ({"transform": "calibrated"}, {"scale": 0.5}, {"scale": 2.0}),
             "top": ({"transform": "top", "top_fraction": 0.3, "floor": 0.1}, {"fraction": 0.3, "floor": 0.1}, {"fraction": 0.3, "floor": 0.1})}
    for name, (options, chosen_options, rejected_options) in cases.items():
        train.run(config(tiny, tmp_path / name, **everything, **options))
        logged = read_metrics(tmp_path / name)[0]
        for side, mu, side_options in (("chosen", 1.0, chosen_options), ("rejected", -1.0, rejected_options)):
            weights = [compute_weights(torch.tensor([r[f"{side}_logratio"]]), torch.ones(1, len(r[f"{side}_logratio"])), mu, options["transform"],
                                       **side_options) for r in rows]
            expected = sum(float(w.mean()) for w in weights) / len(weights)
            assert logged[f"weights/{side}_mean"] == pytest.approx(expected, rel=1e-5), (name, side)


def _interrupt_after(monkeypatch, n_steps, how):
    """Make the n-th train_step be the last: a real SIGINT (Ctrl-C path) or a crash with no checkpoint."""
    calls = []
    real_step = train.train_step

    def step(ctx, micro_batches):
        calls.append(1)
        if how == "crash" and len(calls) > n_steps:
            raise RuntimeError("simulated crash")
        metrics = real_step(ctx, micro_batches)
        if how == "sigint" and len(calls) == n_steps:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics

    monkeypatch.setattr(train, "train_step", step)


@pytest.mark.parametrize("how", ["sigint", "crash", "early-crash"])
def test_resume_gives_the_same_losses_and_weights(tiny, tmp_path, monkeypatch, how):
    # tisdpo with eta (runs the reference), random weights, cosine schedule, accumulation and two epochs
    # with a partial last step: everything that carries state across a checkpoint.
    settings = dict(loss="tisdpo", weighting="random", scheduler="cosine", warmup_steps=2, batch_size=3, grad_accum=2,
                    epochs=2, max_steps=None, save_every=2, seed=3, overwrite=how == "sigint")
    train.run(config(tiny, tmp_path / "straight", **settings))
    straight = read_metrics(tmp_path / "straight")
    assert len(straight) == 8  # ceil(20 / 6) = 4 steps per epoch

    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1 if how == "early-crash" else 5, how.removeprefix("early-"))
        with pytest.raises(TispipeError if how == "sigint" else RuntimeError) as error:
            train.run(config(tiny, interrupted, **settings))
    folder = interrupted / "checkpoints"
    checkpoints = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    if how == "sigint":
        assert "step-5" in str(error.value.message) and "--resume" in error.value.hint
        assert checkpoints == ["step-4", "step-5"]
    elif how == "crash":
        assert checkpoints == ["step-2", "step-4"]  # periodic only, the newest two
        assert len(read_metrics(interrupted)) == 5  # step 5 was logged, then lost with the crash
    else:
        assert not interrupted.exists()  # a new run that fails before its first checkpoint leaves nothing; resuming starts over
    if how == "sigint":  # the command the hint prints
        from typer.testing import CliRunner

        from tispipe.cli import app

        command = error.value.hint.split("continue with: tispipe ")[1].split()
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
    else:
        train.run(config(tiny, interrupted, resume=True, **{**settings, "overwrite": False}))
    resumed = read_metrics(interrupted)
    assert [m["step"] for m in resumed] == list(range(1, 9))
    assert [m["loss"] for m in resumed] == pytest.approx([m["loss"] for m in straight], abs=1e-6)
    a, b = load_weights(tmp_path / "straight"), load_weights(interrupted)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_out_folder_rules(tiny, tmp_path):
    out = tmp_path / "run"
    train.run(config(tiny, out))
    with pytest.raises(TispipeError) as error:
        train.run(config(tiny, out))
    assert "already exists" in error.value.message and "--resume" in error.value.hint
    with pytest.raises(TispipeError) as error:
        train.run(config(tiny, out, resume=True, beta=0.2, lr=5e-4))
    assert "beta (0.1 -> 0.2)" in error.value.message and "lr" in error.value.message
    assert "max_steps" not in error.value.message
    info = train.run(config(tiny, out, resume=True))  # finished: nothing to do
    assert info["steps"] == 2 and len(read_metrics(out)) == 2
    train.run(config(tiny, out, overwrite=True, max_steps=1))
    assert len(read_metrics(out)) == 1
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(TispipeError, match="not a `tispipe train` run"):
        train.run(config(tiny, other, overwrite=True))
    assert (other / "notes.txt").exists()


def test_bad_options_are_named(tiny, tmp_path):
    for overrides, fragment in [({"beta": 0.0}, "--beta"), ({"lower": 1.0, "upper": 0.5}, "--lower"), ({"k": -1.0}, "--k"),
                                ({"loss": "kto"}, "--loss"), ({"weighting": "equal", "k": 2.0}, "--k")]:
        with pytest.raises(TispipeError, match=fragment):
            train.run(config(tiny, tmp_path / "x", **overrides))
    assert not (tmp_path / "x").exists()


def test_tokenizer_mismatch_names_both(tiny, tmp_path):
    model_dir, shards_dir = tiny
    copy = tmp_path / "shards"
    shutil.copytree(shards_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["fingerprints"]["tokenizer"] = "0123456789abcdef"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TispipeError) as error:
        train.run(config((model_dir, copy), tmp_path / "run"))
    assert "0123456789abcdef" in error.value.message and str(model_dir) in error.value.message
    actual = json.loads((shards_dir / "manifest.json").read_text())["fingerprints"]["tokenizer"]
    assert actual in error.value.message


def test_final_model_loads_in_transformers(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    train.run(config(tiny, out, max_steps=3))
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token_id == model.config.eos_token_id
    initial = load_weights(tiny[0])
    final = load_weights(out)
    assert any(not torch.equal(initial[k], final[k]) for k in initial)
    info = json.loads((out / "train_info.json").read_text())
    assert info["steps"] == 3 and info["pairs_per_s"] > 0 and info["manifest_fingerprints"]["tokenizer"]
    assert (out / "config.yaml").is_file()


def test_step_batches_is_lazy_and_groups_steps():
    pulled = []

    def endless():
        i = 0
        while True:
            pulled.append(i)
            yield i
            i += 1

    steps = step_batches(endless(), batch_size=3, grad_accum=2)
    for _ in range(4):
        step = next(steps)
        assert [len(m) for m in step] == [3, 3]
        assert len(pulled) == sum(len(m) for m in step) * (_ + 1)  # nothing read ahead
    assert [[len(m) for m in s] for s in step_batches(range(10), 3, 2)] == [[3, 3], [3, 1]]


@pytest.mark.parametrize("group_steps, bound", [(0, 3), (2, 3 + 2 * 2)])
def test_streaming_holds_a_bounded_number_of_rows(tiny, tmp_path, monkeypatch, group_steps, bound):
    """Rows read from the shards minus rows trained on never exceeds the shuffle buffer (plus one length-grouping window)."""
    read = [0]
    real_iter = shards_module.iter_shard_rows

    def counting(*args, **kwargs):
        for row in real_iter(*args, **kwargs):
            read[0] += 1
            yield row

    outstanding = []
    consumed = [0]
    real_step = train.train_step

    def step(ctx, micro_batches):
        consumed[0] += sum(len(m) for m in micro_batches)
        outstanding.append(read[0] - consumed[0])
        return real_step(ctx, micro_batches)

    monkeypatch.setattr(shards_module, "iter_shard_rows", counting)
    monkeypatch.setattr(train, "train_step", step)
    train.run(config(tiny, tmp_path / "run", loss="dpo", batch_size=2, shuffle_buffer=3, max_steps=None, length_group_steps=group_steps))
    assert consumed[0] == N_PAIRS and len(outstanding) == 10
    assert max(outstanding) <= bound


def test_lr_schedule():
    assert [optim.lr_factor(s, 2, 10, "constant") for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    cosine = [optim.lr_factor(s, 2, 10, "cosine") for s in range(10)]
    assert cosine[:3] == [0.5, 1.0, 1.0] and cosine[6] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(cosine[1:], cosine[2:], strict=False))


def test_cli_train_and_user_errors(tiny, tmp_path):
    from typer.testing import CliRunner

    from tispipe.cli import app

    model_dir, shards_dir = tiny
    out = tmp_path / "run"
    args = ["train", "--shards", str(shards_dir), "--model", str(model_dir), "--out", str(out), "--device", "cpu",
            "--loss", "dpo", "--batch-size", "4", "--max-steps", "2", "--lr", "1e-3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(read_metrics(out)) == 2
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "Error:" in result.output and "--resume" in result.output
    result = CliRunner().invoke(app, [*args, "--resume", "--beta", "0.5"])
    assert result.exit_code == 1 and "beta" in result.output


def _pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"pair_id": str(i), "prompt_ids": [1] * rng.randint(1, 9), "chosen_ids": [2] * rng.randint(1, 60), "rejected_ids": [3] * rng.randint(1, 60)} for i in range(n)]


def test_length_grouped_steps_use_every_row_once_with_less_padding():
    rows = _pairs(203)
    steps = list(length_grouped_steps(rows, batch_size=4, grad_accum=2, window_steps=5, seed="0-0"))
    micro = [m for step in steps for m in step]
    assert sorted(r["pair_id"] for m in micro for r in m) == sorted(r["pair_id"] for r in rows)
    assert [len(m) for m in micro[:-1]] == [4] * 50 and len(micro[-1]) == 3  # the short micro-batch comes last
    assert [sum(len(m) for m in s) for s in steps] == [8] * 25 + [3]

    def padded(batches):  # positions of the left-padded prompt + right-padded response layout
        return sum(len(m) * (max(len(r["prompt_ids"]) for r in m) + max(max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in m)) for m in batches)

    def packed(batches):  # positions of tispipe.modeling.shared_prompt's rows
        return sum(len(place_rows(lengths)) * max(lengths) for lengths in ([pair_length(r) for r in m] for m in batches))

    plain = [m for step in step_batches(rows, 4, 2) for m in step]
    assert packed(micro) < 0.9 * packed(plain)  # 0.85 here
    assert padded(micro) < 0.95 * padded(plain)  # the layout of models that take no packed rows
    again = list(length_grouped_steps(rows, 4, 2, 5, "0-0"))
    other = list(length_grouped_steps(rows, 4, 2, 5, "1-0"))
    assert again == steps and other != steps  # a pure function of (rows, seed)


@pytest.mark.parametrize("done_steps", [0, 3, 5, 7, 25])
def test_length_grouped_steps_resume_inside_a_window(done_steps):
    """What epoch_steps does on resume: re-read from the window's start, drop the done steps."""
    rows = _pairs(203)
    full = list(length_grouped_steps(rows, 4, 2, 5, "0-0"))
    skip = sum(len(m) for step in full[:done_steps] for m in step)
    window = 4 * 2 * 5
    stream_skip = skip - skip % window
    resumed = drop_rows(length_grouped_steps(rows[stream_skip:], 4, 2, 5, "0-0", stream_skip // window), skip - stream_skip)
    assert list(resumed) == full[done_steps:]
    with pytest.raises(TispipeError, match="between two steps"):
        drop_rows(iter(full), 3)


def test_nan_reference_logps_stop_dpo_before_anything_is_saved(tiny, tmp_path):
    """The finite check covers every float column, so a NaN reference log-prob cannot turn the model NaN."""
    import pyarrow.parquet as pq

    shards_dir = tmp_path / "shards"
    shutil.copytree(tiny[1], shards_dir)
    first = shards_dir / "shards" / shards_module.shard_name(0)
    rows = pq.read_table(first).to_pylist()
    rows[0]["chosen_ref_logps"] = [float("nan")] * len(rows[0]["chosen_ids"])
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    manifest["shards"][0] = shards_module.write_shard(first, rows)  # as an estimate that scored a NaN would record it
    (shards_dir / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    with pytest.raises(TispipeError, match="column chosen_ref_logps holds NaN"):
        train.run(config((tiny[0], shards_dir), out, loss="dpo", max_steps=None))
    assert not (out / "model.safetensors").exists() and not (out / "train_info.json").exists()


def test_a_step_whose_loss_turns_non_finite_stops_naming_the_step(tiny, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TispipeError, match=r"step \d+ of 5: the loss .* not finite; stopped before updating") as caught:
        train.run(config(tiny, out, loss="dpo", lr=1e30, max_grad_norm=0, max_steps=5))
    assert not caught.value.message.startswith("step 1 ")  # the first step is finite: it is a later one that blows up
    assert not (out / "model.safetensors").exists() and not (out / "train_info.json").exists()


def test_resume_with_another_spelling_of_the_same_paths_is_the_same_run(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train.run(config(tiny, "run", loss="dpo", max_steps=4, save_every=2))
    (tmp_path / "run" / "train_info.json").unlink()  # as if stopped after its last checkpoint
    info = train.run(config(tiny, str((tmp_path / "run").resolve()), loss="dpo", max_steps=4, save_every=2, resume=True))
    assert info["resumed_from_step"] == 4


def test_resume_refuses_shards_other_than_those_it_was_trained_on(tiny, tmp_path):
    shards_dir = tmp_path / "shards"
    shutil.copytree(tiny[1], shards_dir)
    train.run(config((tiny[0], shards_dir), tmp_path / "run", loss="dpo", max_steps=4, save_every=2))
    (tmp_path / "run" / "train_info.json").unlink()
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    (shards_dir / "manifest.json").write_text(json.dumps({**manifest, "pairs": 999}))  # another estimate's manifest
    with pytest.raises(TispipeError, match="was trained on other shards"):
        train.run(config((tiny[0], shards_dir), tmp_path / "run", loss="dpo", max_steps=4, save_every=2, resume=True))


@pytest.mark.slow
def test_torch_compile_gives_the_eager_runs_losses_and_weights(tiny, tmp_path):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train.run(config(tiny, eager, loss="tisdpo", max_steps=3))
    train.run(config(tiny, compiled, loss="tisdpo", max_steps=3, torch_compile=True))
    a, b = read_metrics(eager), read_metrics(compiled)
    assert [m["loss"] for m in b] == pytest.approx([m["loss"] for m in a], abs=1e-5)
    x, y = load_weights(eager), load_weights(compiled)
    assert x.keys() == y.keys()  # saved under the model's own names, not the compiled wrapper's
    for name in x:
        torch.testing.assert_close(y[name], x[name], atol=1e-5, rtol=1e-4)


def test_a_step_over_the_logits_budget_runs_in_smaller_forwards_to_the_same_update(tiny, tmp_path, monkeypatch):
    from tispipe.train import step as step_module

    whole = tmp_path / "whole"
    train.run(config(tiny, whole, loss="tisdpo", max_steps=3))  # tisdpo with eta: the reference and KL terms per forward too
    forwards = []
    real_forward = step_module.pair_forward
    monkeypatch.setattr(step_module, "pair_forward", lambda ctx, rows: forwards.append(len(rows)) or real_forward(ctx, rows))
    vocab = json.loads((tiny[0] / "config.json").read_text())["vocab_size"]
    budget = 2 * 2 * 9 * vocab  # at most two pairs of the longest responses (8 tokens and EOS) per forward
    monkeypatch.setattr(step_module, "TRAIN_LOGITS_ELEMENTS", budget)
    split = tmp_path / "split"
    train.run(config(tiny, split, loss="tisdpo", max_steps=3))
    assert len(forwards) > 3 and max(forwards) < 4 and sum(forwards) == 3 * 4  # every pair once, in more forwards than steps
    a, b = read_metrics(whole), read_metrics(split)
    for name in ("loss", "rewards/margins", "grad_norm", "weights/chosen_mean"):
        assert [m[name] for m in b] == pytest.approx([m[name] for m in a], rel=1e-5, abs=1e-6), name
    x, y = load_weights(whole), load_weights(split)
    for name in x:
        torch.testing.assert_close(y[name], x[name], atol=1e-5, rtol=1e-4)  # Adam after float sums in another order
