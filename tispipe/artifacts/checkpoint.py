"""Training checkpoints: OUT/checkpoints/step-N/, written whole or not at all.

A checkpoint folder holds
    model.safetensors + config.json   the policy (save_pretrained)
    optimizer.pt, scheduler.pt        their state_dicts (torch.save; loaded with weights_only=True)
    rng.pt                            torch CPU/CUDA and Python `random` states at the step boundary
    state.json                        step, epoch, rows consumed in that epoch, the resolved config

It is written into a hidden temporary folder and renamed into place (`atomic.staged_folder`), so a
folder named `step-N` is always complete; `state.json` is written last inside it as a second guard.
Only the newest `KEEP` checkpoints are kept. Under torchrun every rank calls `checkpoint_all_ranks`
(FSDP gathers the full state) and rank 0 writes. The finished model goes into OUT itself
(`save_final_model`).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tispipe.artifacts.atomic import atomic_write_json, staged_files, staged_folder
from tispipe.errors import TispipeError
from tispipe.modeling import distributed

KEEP = 2
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """Where training stands after `step` optimizer steps.

    `epoch` is the epoch the next row comes from and `rows_in_epoch` how many rows of that epoch's
    (seeded, deterministic) stream were already used, so a resumed run skips exactly those.
    """

    step: int
    epoch: int
    rows_in_epoch: int


def checkpoints_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def rng_state() -> dict[str, Any]:
    """Every random state training touches (dropout, sampling), as plain tensors and tuples."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    # random.setstate wants the exact nesting of tuples getstate gave
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def save_checkpoint(
    out: str | Path,
    state: TrainState,
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    rng: dict[str, Any],
    config: dict[str, Any],
    *,
    model_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    parallel: dict[str, Any] | None = None,
    manifest_sha256: str | None = None,
) -> Path:
    """Write OUT/checkpoints/step-N atomically, prune to the newest KEEP, and return its path.

    Under torchrun rank 0 calls this; with FSDP it passes the full weights and optimizer state it
    gathered (`model_state`, `optimizer_state`), and `parallel` ({"world_size", "fsdp"}) is recorded
    in state.json (absent: one process).
    """
    final = checkpoints_dir(out) / f"step-{state.step}"
    # A re-save of the same step (resuming after a kill during the final save) replaces step-N whole.
    with staged_folder(final, prefix=f".tmp-step-{state.step}-") as tmp:
        if model_state is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=model_state)
        torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng, tmp / "rng.pt")
        extra = {"parallel": parallel} if parallel else {}
        if manifest_sha256:
            extra["manifest_sha256"] = manifest_sha256  # the shards it was trained on: a resume on others is refused
        atomic_write_json(tmp / "state.json", {**state.__dict__, "config": config, **extra})
    prune(out)
    return final


def checkpoint_all_ranks(
    out: Path, state: TrainState, policy, model, optimizer, scheduler, config: dict[str, Any], fsdp: bool, manifest_sha256: str | None = None
) -> Path:
    """Every rank calls this at the same step; rank 0 writes the checkpoint, the others wait for it.

    `policy` is the bare model (it saves itself), `model` the policy as trained (DDP/FSDP-wrapped
    under torchrun); `config` the run's resolved settings, recorded in state.json.
    """
    world = distributed.world_size()
    if world == 1:
        return save_checkpoint(out, state, policy, optimizer, scheduler, rng_state(), config, manifest_sha256=manifest_sha256)
    model_state = distributed.gathered_model_state(model, fsdp)
    optimizer_state = distributed.gathered_optimizer_state(model, optimizer, fsdp)
    path = checkpoints_dir(out) / f"step-{state.step}"
    if distributed.is_main():
        path = save_checkpoint(
            out, state, policy, optimizer, scheduler, rng_state(), config,
            model_state=model_state, optimizer_state=optimizer_state, parallel={"world_size": world, "fsdp": fsdp}, manifest_sha256=manifest_sha256,
        )
    distributed.barrier()
    return path


def save_final_model(policy, tokenizer, out: Path, state_dict: dict | None = None) -> None:
    """The trained policy (safetensors + config) and its tokenizer in OUT, each file moved into place whole.

    `state_dict`: the full weights gathered from an FSDP-sharded policy (None: the policy's own)."""
    with staged_files(out, prefix=".final-") as tmp:
        if state_dict is None:
            policy.save_pretrained(tmp, safe_serialization=True)
        else:
            policy.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)


def save_merged_model(out: Path, tokenizer) -> Path:
    """OUT/merged: the LoRA adapter in OUT merged into its base (`train --merge`), a plain model folder with the tokenizer."""
    from tispipe.modeling.models import load_model

    merged = load_model(str(out), device="cpu", dtype="float32")
    final = out / "merged"
    with staged_folder(final) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return final


def list_checkpoints(out: str | Path) -> list[Path]:
    """Complete checkpoints (named step-N and holding state.json), oldest first."""
    root = checkpoints_dir(out)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(out: str | Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def prune(out: str | Path, keep: int = KEEP) -> None:
    """Delete all but the newest `keep` checkpoints, and temporary folders left by a crash."""
    root = checkpoints_dir(out)
    if not root.is_dir():
        return
    for path in list_checkpoints(out)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".tmp-step-*"):
        shutil.rmtree(path, ignore_errors=True)


def damaged(path: str | Path, name: str, error: Exception | None = None) -> TispipeError:
    """The error for a checkpoint file that cannot be read; the hint names the checkpoint to fall back on."""
    path = Path(path)
    older = [p for p in list_checkpoints(path.parent.parent) if p != path]
    first = (str(error).strip().splitlines() or [type(error).__name__])[0] if error is not None else ""
    why = f" ({first if len(first) <= 100 else type(error).__name__ + ': ' + first[:80] + '...'})" if first else ""
    hint = f"delete {path} to resume from {older[-1]}" if older else "no other checkpoint is left: start again in another --out, or with --overwrite"
    return TispipeError(f"checkpoint {path}: {name} is damaged{why}", hint=hint)


def _state_json(path: str | Path) -> dict[str, Any]:
    """A checkpoint's state.json, checked: integer step, epoch and rows_in_epoch, and a config object."""
    try:
        data = json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(path, "state.json", e) from None
    counts = all(isinstance(data.get(k), int) and data[k] >= 0 for k in ("step", "epoch", "rows_in_epoch")) if isinstance(data, dict) else False
    if not counts or not isinstance(data.get("config"), dict) or not isinstance(data.get("parallel") or {}, dict):
        raise damaged(path, "state.json")
    return data


def read_state(path: str | Path) -> tuple[TrainState, dict[str, Any]]:
    """(TrainState, config dict) from a checkpoint folder's state.json."""
    data = _state_json(path)
    return TrainState(data["step"], data["epoch"], data["rows_in_epoch"]), data["config"]


def checkpoint_manifest(path: str | Path) -> str | None:
    """sha256 of the manifest of the shards a checkpoint was trained on (None for checkpoints that predate it)."""
    return _state_json(path).get("manifest_sha256")


def checkpoint_parallel(path: str | Path) -> dict[str, Any]:
    """{"world_size", "fsdp"} of the run that wrote a checkpoint (one process, no FSDP for older ones)."""
    return {"world_size": 1, "fsdp": False, **(_state_json(path).get("parallel") or {})}


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer, scheduler, device: str, load_optimizer=None) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG state from a checkpoint (a damaged file is a `damaged` error); return the RNG state.

    The model weights are loaded by the caller (from_pretrained on the same folder). `load_optimizer`
    takes the saved optimizer state instead of `optimizer.load_state_dict` (FSDP scatters it to shards).
    """
    path = Path(path)

    def restore(name: str, apply, to: str = "cpu") -> Any:
        # Damage shows as many error types (unpickling, zip, key, shape): each is named by its file, and
        # the unpickler's warnings about junk bytes are not shown on top.
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                saved = torch.load(path / name, map_location=to, weights_only=True)
            apply(saved)
            return saved
        except Exception as e:  # noqa: BLE001
            raise damaged(path, name, e) from e

    restore("optimizer.pt", load_optimizer or optimizer.load_state_dict, to=device)  # the RNG state must stay on the CPU
    restore("scheduler.pt", scheduler.load_state_dict)
    return restore("rng.pt", set_rng_state)


def check_checkpoint_world(checkpoint: Path, world: int, fsdp: bool) -> None:
    """A run resumes on as many processes as it started with (the global batch and the data split depend on it)."""
    saved = checkpoint_parallel(checkpoint)
    if saved["world_size"] != world or (world > 1 and saved["fsdp"] != fsdp):
        was = f"{saved['world_size']} process(es)" + (" with --fsdp" if saved["fsdp"] else "")
        now = f"{world} process(es)" + (" with --fsdp" if fsdp and world > 1 else "")
        raise TispipeError(
            f"{checkpoint} was written by a run on {was}; this one has {now}",
            hint=f"resume with the same torchrun --nnodes x --nproc-per-node ({saved['world_size']} in all)" + (" and --fsdp" if saved["fsdp"] else ""),
        )
