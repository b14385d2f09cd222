"""Training checkpoints: OUT/checkpoints/step-N/, written whole or not at all.

A checkpoint folder holds
    model.safetensors + config.json   the policy (save_pretrained)
    optimizer.pt, scheduler.pt        their state_dicts (torch.save; loaded with weights_only=True)
    rng.pt                            torch CPU/CUDA and Python `random` states at the step boundary
    state.json                        step, epoch, rows consumed in that epoch, the resolved config

It is written into a hidden temporary folder and renamed into place, so a folder named `step-N`
is always complete; `state.json` is written last inside it as a second guard. Only the newest
`KEEP` checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tispipe.atomic import atomic_write_json

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


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-file loading/saving progress bars (they would break the training line)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


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
) -> Path:
    """Write OUT/checkpoints/step-N atomically, prune to the newest KEEP, and return its path.

    Under torchrun rank 0 calls this; with FSDP it passes the full weights and optimizer state it
    gathered (`model_state`, `optimizer_state`), and `parallel` ({"world_size", "fsdp"}) is recorded
    in state.json (absent: one process).
    """
    root = checkpoints_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{state.step}-", dir=root))
    try:
        with quiet_transformers():
            if model_state is None:
                model.save_pretrained(tmp, safe_serialization=True)
            else:
                model.save_pretrained(tmp, safe_serialization=True, state_dict=model_state)
        torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng, tmp / "rng.pt")
        extra = {"parallel": parallel} if parallel else {}
        atomic_write_json(tmp / "state.json", {**state.__dict__, "config": config, **extra})
        _fsync_dir(tmp)
        old = root / f".tmp-step-{state.step}-replaced"
        if final.exists():  # a re-save of the same step (e.g. resuming after a kill during the final save)
            # Moved aside, not deleted in place: a kill during rmtree must not leave step-N half deleted.
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    prune(out)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def read_state(path: str | Path) -> tuple[TrainState, dict[str, Any]]:
    """(TrainState, config dict) from a checkpoint folder's state.json."""
    data = json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))
    return TrainState(data["step"], data["epoch"], data["rows_in_epoch"]), data["config"]


def checkpoint_parallel(path: str | Path) -> dict[str, Any]:
    """{"world_size", "fsdp"} of the run that wrote a checkpoint (one process, no FSDP for older ones)."""
    data = json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))
    return {"world_size": 1, "fsdp": False, **(data.get("parallel") or {})}


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer, scheduler, device: str, load_optimizer=None) -> dict[str, Any]:
    """Restore optimizer and scheduler state from a checkpoint; return its RNG state (apply it with set_rng_state).

    The model weights are loaded by the caller (from_pretrained on the same folder). `load_optimizer`
    takes the saved optimizer state instead of `optimizer.load_state_dict` (FSDP scatters it to shards).
    """
    path = Path(path)
    saved = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
    (load_optimizer or optimizer.load_state_dict)(saved)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    return torch.load(path / "rng.pt", weights_only=True)
