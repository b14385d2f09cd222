"""Scale-out under torchrun: 2 CPU processes (gloo) against one process, for estimate and train.

Each torchrun call starts real worker processes (`python -m torch.distributed.run`, the module behind
the `torchrun` script, so the test uses this venv's torch), on a free loopback port, one thread each.
The single-process references run in-process on one torch thread, the same kernels the workers use.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import write_jsonl

from tispipe.errors import TispipeError
from tispipe.estimate import estimate
from tispipe.modeling import distributed
from tispipe.train import epoch as steps
from tispipe.train import train

N_PAIRS = 17  # shards of 5: 5, 5, 5, 2; train steps of 8 pairs: 8, 8, 1 (rank 1 has nothing in the last)
SHARD_SIZE = 5


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # torchrun runs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, make_tiny_llama):
    """A tiny random Llama with the conftest tokenizer, and toy pairs: (root, base_dir, data_file)."""
    from tispipe.data.toy import generate

    root = tmp_path_factory.mktemp("distributed")
    make_tiny_llama(root / "base")
    data = write_jsonl(root / "pairs.jsonl", generate(N_PAIRS, 0, "train"))
    return root, root / "base", data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "-m", "tispipe", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TISPIPE_DEBUG": "0"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def estimate_args(data, base, out) -> list[str]:
    return ["--data", str(data), "--model", str(base), "--out", str(out), "--method", "prompt", "--shard-size", str(SHARD_SIZE), "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def shards(workdir):
    """One process's estimate output (the reference, and the shards the train tests use)."""
    root, base, data = workdir
    out = root / "single"
    estimate.run(estimate.EstimateConfig(data=str(data), model=str(base), out=str(out), method="prompt", shard_size=SHARD_SIZE, batch_size=4, device="cpu"))
    return out


def test_estimate_on_two_processes_writes_the_same_bytes_and_resumes_per_rank(workdir, shards):
    root, base, data = workdir
    out = root / "two"
    torchrun("estimate", *estimate_args(data, base, out))
    names = ["manifest.json", "estimate-state.json", *(f"shards/part-{i:05d}.parquet" for i in range(4))]
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"part-{i:05d}.parquet" for i in range(4)]
    for name in names:  # shard i is a pure function of the settings, whichever rank wrote it
        assert (out / name).read_bytes() == (shards / name).read_bytes(), name

    # Lose one shard of each rank (0 and 2 are rank 0's, 1 and 3 rank 1's) and the manifest: a re-run rescores only those.
    kept = os.stat(out / "shards" / "part-00000.parquet").st_mtime_ns
    for name in ("shards/part-00001.parquet", "shards/part-00002.parquet", "manifest.json"):
        (out / name).unlink()
    result = torchrun("estimate", *estimate_args(data, base, out))
    assert "Resuming: 1 of 2 shards are already complete" in result.stderr  # rank 0's line
    assert os.stat(out / "shards" / "part-00000.parquet").st_mtime_ns == kept
    assert json.loads((out / "estimate-run.json").read_text())["scored_pairs"] == 2 * SHARD_SIZE
    for name in names:
        assert (out / name).read_bytes() == (shards / name).read_bytes(), name


def read_metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def load_weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file() else "model.safetensors"  # a LoRA run saves its adapter
    return load_file(str(folder / name))


def train_args(shards, base, out, batch_size: int, **extra) -> list[str]:
    args = ["--shards", str(shards), "--model", str(base), "--out", str(out), "--batch-size", str(batch_size), "--grad-accum", "2",
            "--epochs", "2", "--lr", "1e-3", "--warmup-steps", "1", "--scheduler", "cosine", "--shuffle-buffer", "8", "--device", "cpu"]
    for name, value in extra.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def assert_same_run(single, two):
    """Losses and metrics step by step to float tolerance, and the final weights."""
    a, b = read_metrics(single), read_metrics(two)
    assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, 7))
    assert [m["pairs"] for m in b] == [8, 8, 1, 8, 8, 1]  # the global batch, with the epochs' short last steps
    for name in ("loss", "rewards/margins", "logps/chosen", "grad_norm", "lr"):
        assert [m[name] for m in b] == pytest.approx([m[name] for m in a], abs=1e-5, rel=1e-5), name
    # At step 1 policy == reference: every reward is rounding noise (~1e-7), so only later accuracies mean anything.
    assert [m["rewards/accuracies"] for m in b[1:]] == [m["rewards/accuracies"] for m in a[1:]]
    assert abs(a[0]["loss"] - 0.6931) < 1e-3  # policy == reference at step 0
    x, y = load_weights(single), load_weights(two)
    assert x.keys() == y.keys()
    for name in x:
        # Adam divides each gradient by its own scale, so where a gradient is ~0 (a rare token's
        # embedding) the summation order's rounding can move an update by a fraction of lr (1e-3).
        torch.testing.assert_close(y[name], x[name], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def two_process_dpo(workdir, shards, tmp_path_factory):
    """A finished two-process dpo run with checkpoints every 2 steps, and its stderr."""
    _, base, _ = workdir
    out = tmp_path_factory.mktemp("two-dpo") / "run"
    return out, torchrun("train", *train_args(shards, base, out, 2, loss="dpo", save_every=2)).stderr


@pytest.mark.parametrize("loss", ["dpo", "tisdpo"])
def test_train_on_two_processes_matches_one_with_the_same_global_batch(workdir, shards, two_process_dpo, tmp_path, loss):
    # One process: micro-batches of 4 x 2 accumulated = 8 pairs a step. Two: 2 x 2 on each = 8.
    # dpo (cached reference log-probs) runs under DDP; tisdpo with eta (the frozen reference on every
    # rank for the KL terms) under FSDP, which shards the policy's parameters over the two ranks.
    _, base, _ = workdir
    single, two = tmp_path / "single", tmp_path / "two"
    train.run(train.TrainConfig(shards=str(shards), model=str(base), out=str(single), loss=loss, batch_size=4, grad_accum=2, epochs=2,
                                lr=1e-3, warmup_steps=1, scheduler="cosine", shuffle_buffer=8, device="cpu"))
    if loss == "dpo":
        (two, stderr), checkpoints = two_process_dpo, ["step-4", "step-6"]
    else:
        (tmp_path / "fsdp.yaml").write_text("fsdp: true\n")  # (--config: the CLI has no --fsdp flag yet)
        stderr = torchrun("train", *train_args(shards, base, two, 2, loss=loss), "--config", str(tmp_path / "fsdp.yaml")).stderr
        checkpoints = ["step-6"]
    assert f"x 2 processes ({'DDP' if loss == 'dpo' else 'FSDP'})" in stderr
    assert stderr.count("Done: 6 steps") == 1  # only rank 0 prints
    assert_same_run(single, two)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == checkpoints
    state = json.loads((two / "checkpoints" / "step-6" / "state.json").read_text())
    assert state["parallel"] == {"world_size": 2, "fsdp": loss == "tisdpo"} and state["rows_in_epoch"] == N_PAIRS
    assert json.loads((two / "train_info.json").read_text())["pairs_this_run"] == 2 * N_PAIRS

    # Resuming the two-process run on one process would change the global batch: refused.
    if loss == "tisdpo":
        (two / "train_info.json").unlink()  # (a finished run is not resumed at all)
        with pytest.raises(TispipeError, match=r"2 process\(es\) with --fsdp"):
            train.run(train.TrainConfig(shards=str(shards), model=str(base), out=str(two), loss=loss, batch_size=2, grad_accum=2, epochs=2,
                                        lr=1e-3, warmup_steps=1, scheduler="cosine", shuffle_buffer=8, device="cpu", resume=True))


@pytest.mark.parametrize("fsdp", [False, True])
def test_lora_on_two_processes_matches_one(workdir, shards, tmp_path, fsdp):
    # tisdpo with eta: the KL terms take the reference from the policy with its adapter off, on every rank.
    _, base, _ = workdir
    single, two = tmp_path / "single", tmp_path / "two"
    train.run(train.TrainConfig(shards=str(shards), model=str(base), out=str(single), loss="tisdpo", lora_r=4, batch_size=4, grad_accum=2, epochs=2,
                                lr=1e-3, warmup_steps=1, scheduler="cosine", shuffle_buffer=8, device="cpu"))
    (tmp_path / "fsdp.yaml").write_text(f"fsdp: {str(fsdp).lower()}\n")
    stderr = " ".join(torchrun("train", *train_args(shards, base, two, 2, loss="tisdpo", lora_r=4), "--config", str(tmp_path / "fsdp.yaml")).stderr.split())
    assert f"x 2 processes ({'FSDP' if fsdp else 'DDP'})" in stderr and "LoRA r=4" in stderr
    assert_same_run(single, two)
    assert (two / "adapter_config.json").is_file()


def test_train_resumes_under_torchrun(workdir, shards, two_process_dpo, tmp_path):
    # A kill after step 4 (epoch 1, 8 rows into it) is a run whose newest checkpoint is step-4 and
    # whose log goes past it; resuming replays steps 5 and 6 from each rank's exact stream position.
    import shutil

    _, base, _ = workdir
    straight, resumed = two_process_dpo[0], tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-6")
    for name in ("train_info.json", "model.safetensors"):
        (resumed / name).unlink()
    config = resumed / "config.yaml"  # the copy's own --out, or --resume refuses the changed setting
    config.write_text(config.read_text().replace(str(straight), str(resumed)))
    result = torchrun("train", *train_args(shards, base, resumed, 2, loss="dpo", save_every=2), "--resume")
    assert "Resuming from" in result.stderr and "step 4, epoch 1, 8 rows" in result.stderr
    a, b = read_metrics(straight), read_metrics(resumed)
    assert [m["step"] for m in b] == list(range(1, 7))
    assert [m["loss"] for m in b] == pytest.approx([m["loss"] for m in a], abs=1e-6)
    x, y = load_weights(straight), load_weights(resumed)
    for name in x:
        torch.testing.assert_close(y[name], x[name], rtol=1e-5, atol=1e-6)


def test_fsdp_in_one_process_is_refused(workdir, shards, tmp_path):
    _, base, _ = workdir
    with pytest.raises(TispipeError, match="torchrun"):  # nothing to shard over
        train.run(train.TrainConfig(shards=str(shards), model=str(base), out=str(tmp_path / "one"), fsdp=True, device="cpu"))


def test_helpers_in_one_process():
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.setup("cpu") == "cpu"  # no torchrun variables: nothing initialised
    assert distributed.all_reduce([1, 2.5]) == [1.0, 2.5] and distributed.broadcast_object({"a": 1}) == {"a": 1}
    distributed.barrier()
    # Rank r keeps global positions p % world == r: of the first 7 of 3 ranks, 3, 2 and 2.
    assert [distributed.rank_skip(7, r, 3) for r in range(3)] == [3, 2, 2]
    assert [distributed.rank_skip(1, r, 2) for r in range(2)] == [1, 0]
    assert distributed.rank_skip(5, 0, 1) == 5
    assert [len(s) for s in steps.even_steps(iter([[[1]], [[2]]]), 3)] == [1, 1, 0]
