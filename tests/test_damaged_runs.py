"""Train runs that were damaged or cut short: checkpoint files that do not load, a damaged config.yaml or
train_info.json, a kill during the final save, a run folder moved elsewhere. A resume either finishes the
run with its real final metrics or stops with one `Error:` line naming the file and what to do."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import invoke_cli as invoke
from conftest import prompt_estimate

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = ["--max-steps", 3, "--batch-size", 4, "--save-every", 1, "--device", "cpu"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, make_tiny_llama):
    """A finished 3-step train run (checkpoints step-2 and step-3 kept) and the estimate it trained on."""
    root = tmp_path_factory.mktemp("runs")
    prompt_estimate(root, make_tiny_llama)
    result = invoke("train", "--shards", root / "weights", "--model", root / "base", "--out", root / "run", *STEPS)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (root / "run" / "checkpoints").iterdir()) == ["step-2", "step-3"]
    return root


def resume(root, run):
    return invoke("train", "--shards", root / "weights", "--model", root / "base", "--out", run, *STEPS, "--resume")


def unfinished(root, tmp_path):
    """A copy of the run stopped after step 2: step-3, the final model and train_info.json are gone."""
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    shutil.rmtree(run / "checkpoints" / "step-3")
    (run / "train_info.json").unlink()
    (run / "model.safetensors").unlink()
    return run


def one_error(result) -> tuple[str, str]:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    hints = [line for line in result.output.splitlines() if line.startswith("Hint:")]
    assert len(errors) == 1, result.output
    return errors[0], hints[0] if hints else ""


@pytest.mark.parametrize("name", ["state.json", "optimizer.pt", "scheduler.pt", "rng.pt", "model.safetensors", "config.json"])
@pytest.mark.parametrize("damage", [b"", b"\x80\x03junk" * 100])
def test_a_damaged_checkpoint_file_is_named(finished, tmp_path, name, damage):
    run = unfinished(finished, tmp_path)
    checkpoint = run / "checkpoints" / "step-2"
    (checkpoint / name).write_bytes(damage)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    error, hint = one_error(resume(finished, run))
    assert str(checkpoint) in error and (name in error or "could not load the model" in error), error
    assert "Hint:" in hint and "--overwrite" not in hint.split("no other checkpoint is left")[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "metrics.jsonl"} == {
        p: b for p, b in before.items() if p.name != "metrics.jsonl"
    }  # nothing else touched


def test_the_hint_names_the_checkpoint_to_fall_back_on_and_it_works(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    (run / "train_info.json").unlink()
    (run / "model.safetensors").unlink()
    (run / "checkpoints" / "step-3" / "optimizer.pt").write_bytes(b"")
    error, hint = one_error(resume(finished, run))
    assert error == f"Error: checkpoint {run / 'checkpoints' / 'step-3'}: optimizer.pt is damaged (EOFError)"
    assert hint == f"Hint: delete {run / 'checkpoints' / 'step-3'} to resume from {run / 'checkpoints' / 'step-2'}"
    shutil.rmtree(run / "checkpoints" / "step-3")
    result = resume(finished, run)
    assert result.exit_code == 0, result.output
    assert (run / "model.safetensors").read_bytes() == (finished / "run" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"- a list\n- not a mapping\n", b"key: [unclosed\n"])
def test_a_damaged_config_yaml_is_named_with_a_safe_way_out(finished, tmp_path, content):
    run = unfinished(finished, tmp_path)
    (run / "config.yaml").write_bytes(content)
    error, hint = one_error(resume(finished, run))
    assert error == f"Error: {run / 'config.yaml'} is damaged (not a YAML mapping)"
    assert "delete it" in hint and "--overwrite" not in hint


def test_a_damaged_train_info_finishes_the_run_again(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    (run / "train_info.json").write_bytes(b"\x00" * 40)
    result = resume(finished, run)
    assert result.exit_code == 0 and "is damaged; finishing the run again" in result.output, result.output
    info = json.loads((run / "train_info.json").read_text())
    assert info["final_metrics"] == json.loads((finished / "run" / "train_info.json").read_text())["final_metrics"]


def test_a_kill_during_the_final_save_resumes_with_the_real_final_metrics(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    # What a kill -9 inside save_final_model leaves: the last checkpoint, a half-staged model, no train_info.
    (run / "train_info.json").unlink()
    (run / "model.safetensors").unlink()
    (run / ".final-killed.tmp").mkdir()
    (run / ".final-killed.tmp" / "model.safetensors").write_bytes(b"half")
    (run / ".final-from-an-older-version").mkdir()
    result = resume(finished, run)
    assert result.exit_code == 0, result.output
    assert "every step done by the run it resumes; final loss 0." in " ".join(result.output.split())
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    original = json.loads((finished / "run" / "train_info.json").read_text())
    info = json.loads((run / "train_info.json").read_text())
    assert info["final_metrics"] == original["final_metrics"] and info["final_metrics"]["step"] == 3
    assert (run / "model.safetensors").read_bytes() == (finished / "run" / "model.safetensors").read_bytes()


def test_a_run_folder_moved_elsewhere_resumes_there(finished, tmp_path):
    run = unfinished(finished, tmp_path / "moved")
    result = resume(finished, run)
    assert result.exit_code == 0, result.output
    assert (run / "model.safetensors").read_bytes() == (finished / "run" / "model.safetensors").read_bytes()


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(finished, tmp_path, monkeypatch):
    from tispipe.train import train

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train, "train_step", fail)
    out = tmp_path / "new"
    error, _ = one_error(invoke("train", "--shards", finished / "weights", "--model", finished / "base", "--out", out, *STEPS))
    assert error == f"Error: writing {out}: No space left on device; nothing of it was kept"
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_fails_after_a_checkpoint_keeps_it_and_says_so(finished, tmp_path, monkeypatch):
    from tispipe.train import train

    real, calls = train.train_step, []

    def fail_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", fail_on_the_third)
    out = tmp_path / "new"
    error, _ = one_error(invoke("train", "--shards", finished / "weights", "--model", finished / "base", "--out", out, *STEPS))
    assert error.endswith("what it finished is kept: add --resume to the same command to continue")  # the same command alone is refused
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    monkeypatch.setattr(train, "train_step", real)
    result = resume(finished, out)
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").read_bytes() == (finished / "run" / "model.safetensors").read_bytes()
