"""`train --report-to`: each backend receives the metrics metrics.jsonl holds, read back from what it wrote
(tensorboard event files, wandb's offline run file, trackio's local database); and `train --eval-data`."""

from __future__ import annotations

import json

import pytest
from conftest import invoke_cli, prompt_estimate, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def train(root, out, *flags):
    return invoke_cli("train", "--shards", root / "weights", "--model", root / "base", "--out", out, "--max-steps", 3, "--batch-size", 4,
                      "--device", "cpu", *flags)


def logged(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_report_to_tensorboard_writes_the_logged_metrics(tmp_path, make_tiny_llama):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    prompt_estimate(tmp_path, make_tiny_llama)
    run = tmp_path / "run"
    result = invoke_cli("train", "--shards", tmp_path / "weights", "--model", tmp_path / "base", "--out", run, "--max-steps", 3, "--batch-size", 4,
                        "--report-to", "tensorboard", "--device", "cpu")
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "rewards/chosen", "rewards/margins", "kl/rejected"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [m["step"] for m in logged]
        assert [s.value for s in scalars] == pytest.approx([m[key] for m in logged], rel=1e-6)


@pytest.mark.parametrize(("backend", "message"), [("wandb", "needs the wandb package"), ("mlflow", "is not one of none, tensorboard, wandb, trackio")])
def test_report_to_a_backend_that_cannot_run_is_refused_before_anything_is_written(tmp_path, monkeypatch, backend, message):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))  # as where it is not installed
    result = invoke_cli("train", "--shards", tmp_path / "weights", "--model", tmp_path / "base", "--out", tmp_path / "run", "--report-to", backend)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_report_to_wandb_offline_writes_every_metric_name_into_its_run_file(tmp_path, make_tiny_llama, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    prompt_estimate(tmp_path, make_tiny_llama)
    run = tmp_path / "run"
    result = train(tmp_path, run, "--report-to", "wandb")
    assert result.exit_code == 0, result.output
    # wandb 0.31 writes a binary record log with no public reader; its history records hold each key
    # and each value's JSON as plain UTF-8, which is what is checked here.
    run_files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    data = run_files[0].read_bytes()
    rows = logged(run)
    for key in ("loss", "rewards/chosen", "rewards/margins", "kl/rejected", "grad_norm"):
        assert key.encode() in data
    assert json.dumps(rows[-1]["loss"]).encode() in data


def test_report_to_trackio_logs_each_step_into_its_local_database(tmp_path, make_tiny_llama, monkeypatch):
    import sqlite3

    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is first imported
    prompt_estimate(tmp_path, make_tiny_llama)
    run = tmp_path / "run"
    result = train(tmp_path, run, "--report-to", "trackio")
    assert result.exit_code == 0, result.output
    import trackio.utils

    database = trackio.utils.TRACKIO_DIR / "tispipe.db"
    from tispipe.artifacts.trackers import _run_id

    name = f"run-{_run_id(run)[:8]}"  # a run folder called `run` elsewhere is another trackio run
    with sqlite3.connect(database) as db:
        stored = db.execute("select step, metrics from metrics where run_name = ? order by step", (name,)).fetchall()
    rows = logged(run)
    assert [step for step, _ in stored] == [m["step"] for m in rows]
    for (_, metrics), row in zip(stored, rows, strict=True):
        metrics = json.loads(metrics)
        for key in ("loss", "rewards/chosen", "rewards/accuracies"):
            assert metrics[key] == pytest.approx(row[key], rel=1e-6)
    assert "Trackio" in result.stderr and "Trackio" not in result.stdout  # trackio's messages go where tispipe's progress goes


def test_train_eval_data_from_a_pair_file_logs_eval_metrics_of_the_model_after_each_due_step(tmp_path, make_tiny_llama, monkeypatch):
    from tispipe.data.toy import generate

    prompt_estimate(tmp_path, make_tiny_llama)
    write_jsonl(tmp_path / "held.jsonl", generate(6, 5, "test"))
    run = tmp_path / "run"
    result = train(tmp_path, run, "--max-steps", 5, "--eval-data", tmp_path / "held.jsonl", "--eval-every", 2, "--loss", "dpo", "--epochs", 2)
    assert result.exit_code == 0, result.output
    assert "Measuring 6 held-out pairs" in result.output
    rows = logged(run)
    assert [m["step"] for m in rows if "eval/loss" in m] == [2, 4, 5]  # every 2 steps and after the last
    last = rows[-1]
    assert last["eval/weights/chosen_mean"] == 1.0  # a pair file has no estimated weights
    assert last["eval/rewards/margins"] == pytest.approx(last["eval/rewards/chosen"] - last["eval/rewards/rejected"])
    drawn = json.loads((run / "training.json").read_text())  # the figure's numbers: held-out points beside the training lines
    assert drawn["eval/loss"] == {"step": [2, 4, 5], "value": [m["eval/loss"] for m in rows if "eval/loss" in m]}

    # The same numbers from the saved model: DPO's loss on the held-out pairs against the base as reference.
    import torch

    from tispipe.configs import DataOptions
    from tispipe.core.losses import dpo_loss
    from tispipe.data.held_out import read_pairs
    from tispipe.modeling.batching import make_pair_batch, sequence_token_logps
    from tispipe.modeling.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(run))
    pairs = read_pairs(str(tmp_path / "held.jsonl"), DataOptions(data=""), "test", tokenizer)
    batch = make_pair_batch([p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs], [p.rejected_ids for p in pairs], tokenizer.pad_token_id)
    with torch.no_grad():
        policy = sequence_token_logps(load_model(str(run)), batch)
        ref = sequence_token_logps(load_model(str(tmp_path / "base")), batch)
    n, mask = len(pairs), batch.response_mask
    losses, chosen, rejected = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], mask[:n], mask[n:], beta=0.1)
    assert last["eval/loss"] == pytest.approx(losses.mean().item(), rel=1e-4)
    assert last["eval/rewards/accuracies"] == pytest.approx((chosen > rejected).float().mean().item())

    # Under a logits budget of one pair per forward (training and held-out alike) the same numbers come out.
    from tispipe.train import step as step_module

    monkeypatch.setattr(step_module, "TRAIN_LOGITS_ELEMENTS", 1)
    split = tmp_path / "split"
    result = train(tmp_path, split, "--max-steps", 5, "--eval-data", tmp_path / "held.jsonl", "--eval-every", 2, "--loss", "dpo", "--epochs", 2)
    assert result.exit_code == 0, result.output
    for name in ("eval/loss", "eval/rewards/margins", "eval/rewards/accuracies"):
        assert [m[name] for m in logged(split) if name in m] == pytest.approx([m[name] for m in rows if name in m], rel=1e-4, abs=1e-6), name


def test_train_eval_data_from_an_estimate_folder_uses_its_weights(tmp_path, make_tiny_llama):
    prompt_estimate(tmp_path, make_tiny_llama)
    run = tmp_path / "run"
    result = train(tmp_path, run, "--eval-data", tmp_path / "weights")
    assert result.exit_code == 0, result.output
    rows = logged(run)
    assert [m["step"] for m in rows if "eval/loss" in m] == [3]
    # The training shards as held-out data: their stored weights, the mean training sees over a whole pass.
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "weights" / "shards")
    per_pair = [sum(w) / len(w) for w in table.column("chosen_weights").to_pylist()]
    assert rows[-1]["eval/weights/chosen_mean"] == pytest.approx(sum(per_pair) / len(per_pair), rel=1e-5)
    assert rows[-1]["eval/weights/chosen_mean"] != 1.0


@pytest.mark.parametrize(("flags", "message"), [
    (("--eval-every", 2), "--eval-every needs --eval-data"),
    (("--eval-data", "missing.jsonl"), "missing.jsonl"),
])
def test_train_bad_eval_options_fail_before_the_run_folder_is_made(tmp_path, make_tiny_llama, flags, message):
    prompt_estimate(tmp_path, make_tiny_llama)
    result = train(tmp_path, tmp_path / "run", *flags)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_an_error_in_a_trackers_thread_is_one_error_line_not_a_traceback(tmp_path, make_tiny_llama, monkeypatch, capfd):
    """tensorboard writes its event file in a thread of its own: a folder it cannot write (read-only) fails
    there, and is reported as any other error."""
    import threading

    from torch.utils.tensorboard import SummaryWriter

    def failing_write(self, *args, **kwargs):
        def fail():
            raise OSError(30, "Read-only file system", str(tmp_path / "run" / "tensorboard" / "events"))

        thread = threading.Thread(target=fail)
        thread.start()
        thread.join()

    prompt_estimate(tmp_path, make_tiny_llama)
    monkeypatch.setattr(SummaryWriter, "add_scalar", failing_write)
    hook = threading.excepthook
    result = train(tmp_path, tmp_path / "run", "--report-to", "tensorboard")
    captured = capfd.readouterr()
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Read-only file system" in errors[0], result.output
    assert "Traceback" not in result.output + captured.err and "Exception in thread" not in result.output + captured.err
    assert threading.excepthook is hook
