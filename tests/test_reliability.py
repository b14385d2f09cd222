"""Reliability through the real command line.

- Bad input: exit code 1, one `Error:` line naming the file / row / option, no traceback, and nothing
  that looks like a finished output (no manifest, no final model).
- Interruptions: `estimate` and `train` killed with SIGKILL at random points (during and between
  shard / checkpoint writes) and started again end exactly where an uninterrupted run ends; a torn
  shard or a half-written checkpoint is never taken for a complete one; Ctrl-C stops with a message
  saying what was saved and how to resume.
- Reproducibility and safety: same inputs give byte-identical shards and identical training metrics;
  remote code runs only with --trust-remote-code; no pickle from shards, torch.load only weights_only.

The kill points are random (a new seed per run, printed on failure: rerun with TISPIPE_KILL_SEED=N).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import write_jsonl
from typer.testing import CliRunner

from tispipe.cli import app

N_PAIRS = 40
SHARD_SIZE = 5  # 8 shards
N_SHARDS = N_PAIRS // SHARD_SIZE
TRAIN_STEPS = 24  # batch 4: 10 steps per epoch, so the run crosses two epoch boundaries
SEED = int(os.environ.get("TISPIPE_KILL_SEED", random.randrange(1 << 30)))
REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def base_dir(work, make_tiny_llama):
    """A tiny random Llama (2 layers, width 32) with the conftest tokenizer; random weights are enough to score."""
    path = work / "base"
    make_tiny_llama(path)
    return path


@pytest.fixture(scope="module")
def data_file(work):
    from tispipe.data.toy import generate

    return write_jsonl(work / "pairs.jsonl", generate(N_PAIRS, 0, "train"))


def estimate_args(data_file, base_dir, out) -> list[str]:
    # Short system prompts keep scoring fast; --method prompt needs no training. Responses keep 112 tokens: the toy
    # chosen and rejected share up to 105 tokens of the tiny tokenizer, and pairs cut to identical ones are dropped.
    return ["estimate", "--data", str(data_file), "--model", str(base_dir), "--out", str(out), "--method", "prompt",
            "--pos-prompt", "Be kind.", "--neg-prompt", "Be rude.", "--max-length", "160", "--max-prompt-length", "48",
            "--shard-size", str(SHARD_SIZE), "--batch-size", "4", "--device", "cpu"]


def train_args(shards, base_dir, out, *extra) -> list[str]:
    # tisdpo with eta runs the reference model too; cosine warmup and two epoch boundaries: state that must survive a restart.
    return ["train", "--shards", str(shards), "--model", str(base_dir), "--out", str(out), "--batch-size", "4",
            "--epochs", "3", "--max-steps", str(TRAIN_STEPS), "--lr", "1e-3", "--warmup-steps", "3", "--scheduler", "cosine",
            "--weighting", "random", "--shuffle-buffer", "8", "--device", "cpu", "--threads", "1", *extra]


def cli(args: list[str]):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def reference_estimate(work, data_file, base_dir):
    out = work / "estimate-reference"
    result = cli(estimate_args(data_file, base_dir, out))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def reference_train(work, reference_estimate, base_dir):
    out = work / "train-reference"
    result = cli(train_args(reference_estimate, base_dir, out, "--save-every", "4"))
    assert result.exit_code == 0, result.output
    return out


# ---------------------------------------------------------------------------------------------- helpers


def assert_user_error(result, *fragments: str) -> str:
    """Exit 1, exactly one `Error:` line holding every fragment, no traceback; return the line."""
    output = result.output
    assert result.exit_code == 1, output
    assert "Traceback" not in output, output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def assert_no_finished_estimate(out: Path) -> None:
    assert not (out / "manifest.json").exists()


def assert_no_finished_train(out: Path) -> None:
    for name in ("model.safetensors", "train_info.json"):
        assert not (out / name).exists(), name


def spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TISPIPE_DEBUG": "0"}
    # A shell's background job (`make test &`) starts with SIGINT ignored, and Python then leaves it ignored:
    # restore the default so that the Ctrl-C tests send a real KeyboardInterrupt however the suite was started.
    return subprocess.Popen([sys.executable, "-m", "tispipe", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_until(proc: subprocess.Popen, condition, timeout: float = 60.0) -> bool:
    """Poll `condition` every millisecond until it holds (True) or the process exits (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(0.001)
    proc.kill()
    raise AssertionError(f"timed out; stderr: {proc.communicate()[1][-2000:]}")


def kill_9(proc: subprocess.Popen) -> str:
    """SIGKILL the process if it still runs; return how it ended, for failure messages."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"the run failed by itself (rc {proc.returncode}):\n{err[-3000:]}")
    return "killed" if proc.returncode == -signal.SIGKILL else "finished first"


def names(folder: Path, pattern: str) -> set[str]:
    return {p.name for p in folder.glob(pattern)} if folder.is_dir() else set()


def assert_complete_shards_only(out: Path) -> None:
    """Every shard file present under its final name is a whole Parquet file with its full row count."""
    for path in sorted((out / "shards").glob("part-*.parquet")):
        assert pq.ParquetFile(path).metadata.num_rows == SHARD_SIZE, path
    if (out / "manifest.json").exists():  # killed after the manifest: then the run was complete
        manifest = json.loads((out / "manifest.json").read_text())
        from tispipe.artifacts.shards import file_sha256

        for entry in manifest["shards"]:
            assert file_sha256(out / "shards" / entry["file"]) == entry["sha256"]


CHECKPOINT_FILES = {"model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}


def assert_checkpoints_whole(out: Path) -> None:
    """Whatever `--resume` would pick holds every file of a checkpoint."""
    from tispipe.artifacts.checkpoint import list_checkpoints

    for path in list_checkpoints(out):
        assert CHECKPOINT_FILES <= names(path, "*"), (path, names(path, "*"))


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_timing(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in ("pairs_per_s", "tokens_per_s")} for m in metrics]


def assert_same_training(out: Path, reference: Path) -> None:
    from safetensors.torch import load_file

    ours, theirs = read_metrics(out), read_metrics(reference)
    assert [m["step"] for m in ours] == list(range(1, TRAIN_STEPS + 1))
    assert [m["loss"] for m in ours] == pytest.approx([m["loss"] for m in theirs], abs=1e-6)
    a, b = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert json.loads((out / "train_info.json").read_text())["steps"] == TRAIN_STEPS


def assert_same_estimate(out: Path, reference: Path) -> None:
    assert names(out / "shards", "*") == names(reference / "shards", "*")  # no stray temporary files either
    for name in ["manifest.json", *(f"shards/{n}" for n in sorted(names(reference / "shards", "*")))]:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------- interruptions


@pytest.mark.slow
def test_estimate_killed_at_random_points_resumes_byte_identical(reference_estimate, data_file, base_dir, tmp_path):
    rng = random.Random(SEED)
    out = tmp_path / "killed"
    shards = out / "shards"
    args = estimate_args(data_file, base_dir, out)
    history = []

    def writing() -> bool:  # a shard's temporary file exists: the process is inside write_shard
        return bool(names(shards, ".part-*"))

    def new_shards(than: int, more: int):
        return lambda: len(names(shards, "part-*.parquet")) >= min(N_SHARDS, than + more)

    plans = [("during the first shard write", writing, 0.0)]
    k, delay = rng.randint(1, 2), rng.uniform(0, 0.15)
    plans.append((f"{delay * 1000:.0f} ms after {k} more shard(s)", k, delay))
    plans.append(("during a later shard write", writing, 0.0))
    for label, when, delay in plans:
        done = len(names(shards, "part-*.parquet"))
        proc = spawn(args)
        condition = when if callable(when) else new_shards(done, when)
        wait_until(proc, condition)
        time.sleep(delay)
        history.append(f"{label}: {kill_9(proc)} with {sorted(names(shards, '*'))}")
        assert_complete_shards_only(out)
        if proc.returncode == -signal.SIGKILL and done + 1 < N_SHARDS:
            assert_no_finished_estimate(out)

    # What a crash on a file system without atomic rename could leave: a torn shard under its final name.
    # It must be rescored, not trusted.
    complete = sorted(names(shards, "part-*.parquet"))
    assert len(complete) < N_SHARDS, f"seed {SEED}: every kill came too late: {history}"
    if complete:
        torn = shards / complete[-1]
        torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    (shards / f"part-{N_SHARDS - 1:05d}.parquet").write_bytes(b"")

    result = cli(args)
    assert result.exit_code == 0, f"seed {SEED}, {history}\n{result.output[-3000:]}"
    if len(complete) > 1:
        assert f"Resuming: {len(complete) - 1} of {N_SHARDS} shards are already complete" in result.output
    assert_same_estimate(out, reference_estimate)
    assert not names(out, ".*.tmp")


@pytest.mark.slow
def test_estimate_ctrl_c_says_what_is_saved_and_resumes(reference_estimate, data_file, base_dir, tmp_path):
    out = tmp_path / "interrupted"
    args = estimate_args(data_file, base_dir, out)
    proc = spawn(args)
    assert wait_until(proc, lambda: bool(names(out / "shards", "part-*.parquet"))), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, err
    saved = int(re.search(r"(\d+) of 8 shards", errors[0]).group(1))
    assert 1 <= saved < N_SHARDS and str(out / "shards") in errors[0]
    assert "Hint:" in err and "same command" in err
    assert_no_finished_estimate(out)
    result = cli(args)
    assert result.exit_code == 0, result.output
    assert f"Resuming: {saved} of {N_SHARDS} shards are already complete" in result.output
    assert_same_estimate(out, reference_estimate)


@pytest.mark.slow
def test_train_killed_during_and_between_checkpoints_resumes_exactly(reference_estimate, reference_train, base_dir, tmp_path):
    rng = random.Random(SEED + 1)
    out = tmp_path / "killed"
    checkpoints = out / "checkpoints"
    args = train_args(reference_estimate, base_dir, out, "--save-every", "1", "--resume")
    history = []

    def writing_checkpoint() -> bool:
        return bool(names(checkpoints, ".tmp-step-*"))

    def steps_saved() -> int:
        return max((int(n.split("-")[1]) for n in names(checkpoints, "step-*")), default=0)

    def saved_after(step: int, more: int):
        return lambda: steps_saved() >= step + more

    plans = [
        ("during a checkpoint write", writing_checkpoint, 0.0),
        ("between checkpoint writes", 2, rng.uniform(0, 0.03)),
        ("during a checkpoint write, later", lambda: steps_saved() >= rng.randint(8, 16) and writing_checkpoint(), 0.0),
    ]
    for label, when, delay in plans:
        before = steps_saved()
        proc = spawn(args)
        wait_until(proc, when if callable(when) else saved_after(before, when))
        time.sleep(delay)
        history.append(f"{label}: {kill_9(proc)} at step {steps_saved()} with {sorted(names(checkpoints, '*'))}")
        assert_checkpoints_whole(out)
        if proc.returncode == -signal.SIGKILL:
            assert_no_finished_train(out)
    assert steps_saved() < TRAIN_STEPS, f"seed {SEED}: every kill came too late: {history}"

    # Half-written checkpoints (a crash on a file system without atomic rename, or a copy cut short) are never loaded:
    # a newer step folder without state.json, and a temporary folder that has one.
    torn = checkpoints / f"step-{TRAIN_STEPS + 5}"
    torn.mkdir(parents=True, exist_ok=True)
    (torn / "model.safetensors").write_bytes(b"\0" * 100)
    tmp = checkpoints / f".tmp-step-{TRAIN_STEPS + 6}-x"
    tmp.mkdir(exist_ok=True)
    (tmp / "state.json").write_text(json.dumps({"step": TRAIN_STEPS + 6, "epoch": 0, "rows_in_epoch": 0, "config": {}}))

    result = cli(args)
    assert result.exit_code == 0, f"seed {SEED}, {history}\n{result.output[-3000:]}"
    assert "Resuming from" in result.output and f"step-{TRAIN_STEPS + 5}" not in result.output
    assert_same_training(out, reference_train)
    assert not tmp.exists()  # leftovers of a crash are cleaned up


@pytest.mark.slow
def test_train_ctrl_c_saves_and_the_printed_command_resumes(reference_estimate, reference_train, base_dir, tmp_path):
    out = tmp_path / "interrupted"
    proc = spawn(train_args(reference_estimate, base_dir, out))
    assert wait_until(proc, lambda: (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "checkpoint saved to" in errors[0], err
    step = int(re.search(r"stopped at step (\d+)", errors[0]).group(1))
    assert 2 <= step < TRAIN_STEPS and (out / "checkpoints" / f"step-{step}" / "state.json").is_file()
    assert_no_finished_train(out)
    hint = next(line for line in err.splitlines() if line.startswith("Hint:"))
    command = hint.split("continue with: tispipe ")[1].split()
    assert "--resume" in command
    result = cli(command)
    assert result.exit_code == 0, result.output
    assert "Resuming from" in result.output
    assert_same_training(out, reference_train)


def test_checkpoint_resave_killed_midway_leaves_a_loadable_checkpoint(tmp_path, monkeypatch):
    """Re-saving step N (resume after a kill during the final save) must not leave step-N half deleted."""
    from tispipe.artifacts import checkpoint

    model = torch.nn.Linear(2, 2)

    class Saving:
        def __init__(self, module):
            self.module = module

        def save_pretrained(self, folder, safe_serialization=True):
            from safetensors.torch import save_file

            save_file(self.module.state_dict(), str(Path(folder) / "model.safetensors"))
            (Path(folder) / "config.json").write_text("{}")

    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    state = checkpoint.TrainState(step=7, epoch=0, rows_in_epoch=28)
    checkpoint.save_checkpoint(tmp_path, state, Saving(model), optimizer, scheduler, checkpoint.rng_state(), {})
    real_rmtree = shutil.rmtree

    def killed_midway(path, *a, **k):
        # delete the weights, then "die" (what SIGKILL during rmtree can leave, in directory order)
        weights = Path(path) / "model.safetensors"
        if weights.exists():
            weights.unlink()
        raise SystemExit("killed")

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_midway)
    with pytest.raises(SystemExit):
        checkpoint.save_checkpoint(tmp_path, state, Saving(model), optimizer, scheduler, checkpoint.rng_state(), {})
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest is not None and (latest / "model.safetensors").is_file() and (latest / "optimizer.pt").is_file()


# ---------------------------------------------------------------------------------------------- reproducibility


def test_same_inputs_give_identical_shards_and_training(reference_estimate, reference_train, data_file, base_dir, tmp_path):
    out = tmp_path / "estimate-again"
    assert cli(estimate_args(data_file, base_dir, out)).exit_code == 0
    assert_same_estimate(out, reference_estimate)
    again = tmp_path / "train-again"
    result = cli(train_args(out, base_dir, again, "--save-every", "4"))
    assert result.exit_code == 0, result.output
    assert without_timing(read_metrics(again)) == without_timing(read_metrics(reference_train))  # every metric, exactly
    assert (again / "model.safetensors").read_bytes() == (reference_train / "model.safetensors").read_bytes()
    # another seed really changes the data order (the comparison above is not vacuous)
    other = tmp_path / "train-seed-1"
    assert cli(train_args(out, base_dir, other, "--seed", "1", "--max-steps", "2")).exit_code == 0
    assert [m["loss"] for m in read_metrics(other)] != [m["loss"] for m in read_metrics(reference_train)[:2]]


# ---------------------------------------------------------------------------------------------- safety


def test_checkpoints_are_safetensors_and_torch_load_is_weights_only(reference_train):
    from tispipe.artifacts.checkpoint import latest_checkpoint

    latest = latest_checkpoint(reference_train)
    assert latest is not None and (latest / "model.safetensors").is_file()
    assert not list(reference_train.rglob("*.bin")) and not list(reference_train.rglob("pytorch_model*"))
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.load(latest / name, weights_only=True)  # plain tensors and containers: loads without unpickling code


def test_source_never_unpickles_or_trusts_remote_code_by_default():
    """No pickle (shards are Parquet read by pyarrow), torch.load only with weights_only=True,
    trust_remote_code only ever passed through from the user's flag."""
    sources = {p: p.read_text(encoding="utf-8") for p in sorted((REPO / "tispipe").glob("*.py"))}
    for path, text in sources.items():
        assert not re.search(r"\bimport pickle\b|\bfrom pickle\b|\bpickle\.load|\bdill\b|\bjoblib\b|read_pickle|allow_pickle\s*=\s*True", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path
        for match in re.finditer(r"trust_remote_code:\s*bool\s*=\s*(?:option\()?(\w+)", text):
            assert match.group(1) == "False", path
    # the one declaration of the option, which the CLI is built from
    assert re.search(r"^    trust_remote_code: bool = option\(False,", sources[REPO / "tispipe" / "configs.py"], re.M)


REMOTE_CODE = """\
import os
open(os.environ["TISPIPE_REMOTE_MARKER"], "w").write("remote code ran")
from transformers import LlamaConfig


class XConfig(LlamaConfig):
    model_type = "x-remote"
"""


def test_remote_code_runs_only_with_the_flag(base_dir, data_file, tmp_path):
    model = tmp_path / "remote-model"
    shutil.copytree(base_dir, model)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="x-remote", auto_map={"AutoConfig": "configuration_x.XConfig"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "configuration_x.py").write_text(REMOTE_CODE)
    marker = tmp_path / "ran"
    os.environ["TISPIPE_REMOTE_MARKER"] = str(marker)
    try:
        result = cli(["estimate", "--data", data_file, "--model", model, "--out", tmp_path / "out", "--method", "prompt", "--device", "cpu"])
    finally:
        del os.environ["TISPIPE_REMOTE_MARKER"]
    assert result.exit_code == 1 and not marker.exists(), result.output
    assert_user_error(result, str(model))
    # With the flag, the user's choice reaches transformers (not run here: it would import the code into the module cache).
    import transformers

    seen = []

    def refuse(name, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stopped by the test")

    for flag in ([], ["--trust-remote-code"]):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
            result = cli(["estimate", "--data", data_file, "--model", model, "--out", tmp_path / "out2", "--method", "prompt", *flag])
        assert_user_error(result, "stopped by the test")
    assert seen == [False, True]


# ---------------------------------------------------------------------------------------------- bad input
# Each case goes through the CLI. Cases tested only at the function level elsewhere (test_data, test_shards,
# test_models, test_tokenize) get their CLI check here; the ones already checked through the CLI are not repeated
# (see the table in docs/reliability.md's Troubleshooting section).


ROWS = [{"prompt": f"Question {i}?", "chosen": f"Helpful answer {i}.", "rejected": f"Rude answer {i}."} for i in range(4)]


def _estimate_case(case: str, tmp: Path, data_file: Path, base_dir: Path, make_tiny_tokenizer):
    """(extra args, data, model, expected fragments of the error line)."""
    data, model = data_file, base_dir
    if case == "missing data file":
        return [], tmp / "nowhere" / "pairs.jsonl", model, ["nowhere/pairs.jsonl", "does not exist"]
    if case == "unknown format":
        return ["--format", "kto"], data, model, ["unknown data format 'kto'"]
    if case == "undetectable format":
        return [], write_jsonl(tmp / "text.jsonl", [{"text": "hello"}]), model, ["text.jsonl", "cannot tell the data format"]
    if case == "broken JSON line":
        path = tmp / "broken.jsonl"
        path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + '\n{"prompt": "Q", "chosen":\n', encoding="utf-8")
        return [], path, model, ["broken.jsonl, line 3", "not valid JSON"]
    if case == "bad row with --strict":
        return ["--strict"], write_jsonl(tmp / "bad.jsonl", [*ROWS, {"prompt": "Q", "chosen": "same", "rejected": "same"}]), model, ["bad.jsonl, line 5"]
    if case == "no usable row":
        rows = [{"prompt": "Q", "chosen": "same", "rejected": "same"}] * 2
        return [], write_jsonl(tmp / "same.jsonl", rows), model, ["same.jsonl: no usable row among 2", "chosen identical to rejected"]
    if case == "model folder without weights":
        empty = tmp / "no-weights"
        shutil.copytree(base_dir, empty)
        (empty / "model.safetensors").unlink()
        return [], data, empty, [f"model folder {empty} has no weights"]
    if case == "missing model folder":
        return [], data, tmp / "no-model", [f"{tmp / 'no-model'} does not exist"]
    if case == "conversational data, no chat template":
        plain = tmp / "plain-model"
        shutil.copytree(base_dir, plain)
        for name in ("chat_template.jinja", "tokenizer_config.json", "tokenizer.json"):
            (plain / name).unlink(missing_ok=True)
        make_tiny_tokenizer(chat_template=False).save_pretrained(plain)
        rows = [{"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello."}],
                 "rejected": [{"role": "assistant", "content": "Go away."}]}]
        return ["--method", "dpo"], write_jsonl(tmp / "conv.jsonl", rows), plain, ["conversational data needs a tokenizer with a chat template"]
    if case == "--device cuda without a GPU":
        return ["--device", "cuda"], data, model, ["'cuda' was asked for but no CUDA GPU is available"]
    if case == "non-positive contrast beta":
        return ["--method", "dpo", "--contrast-beta", "0"], data, model, ["--contrast-beta must be positive"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "missing data file", "unknown format", "undetectable format", "broken JSON line", "bad row with --strict", "no usable row",
    "model folder without weights", "missing model folder", "conversational data, no chat template",
    pytest.param("--device cuda without a GPU", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
    "non-positive contrast beta",
])
def test_estimate_bad_input(case, tmp_path, data_file, base_dir, make_tiny_tokenizer):
    extra, data, model, fragments = _estimate_case(case, tmp_path, data_file, base_dir, make_tiny_tokenizer)
    out = tmp_path / "out"
    args = ["estimate", "--data", data, "--model", model, "--out", out, "--method", "prompt", "--device", "cpu", *extra]
    assert_user_error(cli(args), *fragments)
    assert_no_finished_estimate(out)
    assert not names(out / "shards", "*")


def _shards_copy(reference: Path, tmp: Path) -> Path:
    copy = tmp / "shards-copy"
    shutil.copytree(reference, copy)
    return copy


def _rewrite_shard(shards: Path, index: int, change, record: bool = True) -> None:
    """Rewrite shard `index` with `change(rows)` applied; `record`: update the manifest's entry, as an
    estimate that wrote those rows would (else its checksum is left stale: a shard changed after the run)."""
    from tispipe.artifacts.shards import shard_name, write_shard

    path = shards / "shards" / shard_name(index)
    rows = pq.read_table(path).to_pylist()
    change(rows)
    entry = write_shard(path, rows)
    if record:
        manifest = json.loads((shards / "manifest.json").read_text())
        manifest["shards"][index] = entry
        (shards / "manifest.json").write_text(json.dumps(manifest))


def _train_case(case: str, tmp: Path, reference: Path, base_dir: Path, make_tiny_tokenizer, make_tiny_llama):
    """(shards folder, model, out, extra args, expected fragments of the error line)."""
    shards, model, out = reference, base_dir, tmp / "out"
    if case == "missing manifest":
        shards = _shards_copy(reference, tmp)
        (shards / "manifest.json").unlink()
        return shards, model, out, [], [f"{shards / 'manifest.json'} is missing", "not a finished estimate run"]
    if case == "missing shards folder":
        return tmp / "no-shards", model, out, [], [f"shards folder {tmp / 'no-shards'} does not exist"]
    if case == "manifest of a newer schema version":
        shards = _shards_copy(reference, tmp)
        manifest = json.loads((shards / "manifest.json").read_text())
        manifest["schema_version"] = 99
        (shards / "manifest.json").write_text(json.dumps(manifest))
        return shards, model, out, [], ["manifest.json has schema version 99, newer than this tispipe reads"]
    if case == "truncated shard":
        shards = _shards_copy(reference, tmp)
        path = shards / "shards" / "part-00003.parquet"
        path.write_bytes(path.read_bytes()[:-200])
        return shards, model, out, [], ["part-00003.parquet is not a readable Parquet file"]
    if case == "non-Parquet shard":
        shards = _shards_copy(reference, tmp)
        (shards / "shards" / "part-00006.parquet").write_text("this is not a parquet file")
        return shards, model, out, [], ["part-00006.parquet is not a readable Parquet file"]
    if case == "missing shard":
        shards = _shards_copy(reference, tmp)
        (shards / "shards" / "part-00002.parquet").unlink()
        return shards, model, out, [], ["part-00002.parquet is missing"]
    if case == "NaN weight":
        shards = _shards_copy(reference, tmp)
        _rewrite_shard(shards, 5, lambda rows: rows[2]["chosen_weights"].__setitem__(1, float("nan")))
        return shards, model, out, [], ["part-00005.parquet, pair 'train-00027': column chosen_weights holds NaN or infinite values"]
    if case == "shard changed after the run":
        shards = _shards_copy(reference, tmp)
        _rewrite_shard(shards, 4, lambda rows: rows.reverse(), record=False)  # same rows, same count, other bytes
        return shards, model, out, [], ["part-00004.parquet is not the one the manifest lists (sha256 differs)"]
    if case == "infinite log-ratio":
        shards = _shards_copy(reference, tmp)
        _rewrite_shard(shards, 1, lambda rows: rows[0]["rejected_logratio"].__setitem__(0, float("-inf")))
        return shards, model, out, ["--k", "2"], ["part-00001.parquet, pair 'train-00005': column rejected_logratio holds NaN or infinite"]
    if case == "shards made with another tokenizer":
        other = tmp / "other-model"
        make_tiny_llama(other, tokenizer=make_tiny_tokenizer(chat_template=False))
        return shards, other, out, [], [f"the tokenizer of --model {other}", "differs from the one the shards"]
    if case == "model folder without weights":
        empty = tmp / "no-weights"
        shutil.copytree(base_dir, empty)
        (empty / "model.safetensors").unlink()
        return shards, empty, out, [], [f"model folder {empty} has no weights"]
    if case == "--lower above --upper":
        return shards, model, out, ["--lower", "1", "--upper", "0.5"], ["--lower (1.0) must be smaller than --upper (0.5)"]
    if case == "non-positive beta":
        return shards, model, out, ["--beta", "0"], ["--beta must be positive, not 0.0"]
    if case == "non-positive k":
        return shards, model, out, ["--k", "-1"], ["--k must be positive, not -1.0"]
    if case == "--resume and --overwrite":
        return shards, model, out, ["--resume", "--overwrite"], ["--resume or --overwrite, not both"]
    if case == "output folder not writable":
        blocker = tmp / "a-file"
        blocker.write_text("not a folder")
        return shards, model, blocker / "out", [], [f"--out {blocker / 'out'} is not writable"]
    if case == "--out is a file":
        blocker = tmp / "a-file"
        blocker.write_text("not a folder")
        return shards, model, blocker, [], [f"--out {blocker} is a file"]
    if case == "--device cuda without a GPU":
        return shards, model, out, ["--device", "cuda"], ["'cuda' was asked for but no CUDA GPU is available"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "missing manifest", "missing shards folder", "manifest of a newer schema version", "truncated shard", "non-Parquet shard",
    "missing shard", "NaN weight", "shard changed after the run", "infinite log-ratio", "shards made with another tokenizer", "model folder without weights",
    "--lower above --upper", "non-positive beta", "non-positive k", "--resume and --overwrite", "output folder not writable",
    "--out is a file",
    pytest.param("--device cuda without a GPU", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
])
def test_train_bad_input(case, tmp_path, reference_estimate, base_dir, make_tiny_tokenizer, make_tiny_llama):
    shards, model, out, extra, fragments = _train_case(case, tmp_path, reference_estimate, base_dir, make_tiny_tokenizer, make_tiny_llama)
    args = ["train", "--shards", shards, "--model", model, "--out", out, "--batch-size", "4", "--max-steps", "12",
            "--device", "cpu", "--loss", "dpo", *extra]
    assert_user_error(cli(args), *fragments)
    if case in ("truncated shard", "non-Parquet shard", "missing shard"):
        # every shard is checked before training starts, so OUT is never begun
        assert not out.exists()
    if out.is_dir():
        assert_no_finished_train(out)
