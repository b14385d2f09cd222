"""A training run's folder OUT (`train`, `reward-model`): claim it for a new run, continue it (--resume) or replace it (--overwrite).

A new or empty OUT is checked writable and made. An existing one is refused unless --resume or
--overwrite says what to do with it: --overwrite sets the old run aside (`atomic.SetAside`, deleted by
`train.run` once the new models have loaded, or put back); --resume compares the run's recorded settings
with these, paths as the files they name, and continues from the newest checkpoint, or reports the
finished run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tispipe.artifacts.atomic import SetAside, check_writable, holder_for, remove_stale_holders
from tispipe.artifacts.checkpoint import latest_checkpoint, read_state
from tispipe.config_files import config_dict
from tispipe.console import log_console
from tispipe.errors import TispipeError
from tispipe.modeling.hub import same_source

# Options that may change between a run and its --resume without changing what is trained.
# Held-out measurements (eval_*) are only looked at, gradient checkpointing changes memory, not results,
# --merge only adds a folder at the end, and a moved run folder resumes where it is (out).
RESUME_MAY_DIFFER = ("resume", "overwrite", "save_every", "device", "threads", "fsdp", "out", "report_to", "eval_data", "eval_split", "eval_every",
                     "gradient_checkpointing", "merge")
PATH_SETTINGS = ("shards", "model", "out", "ref", "data")


def _is_run_folder(out: Path, info_file: str) -> bool:
    return any((out / name).exists() for name in ("config.yaml", "metrics.jsonl", "checkpoints", info_file))


def claim_out(cfg: Any, out: Path, info_file: str = "train_info.json", command: str = "train") -> tuple[Path | None, dict | None, SetAside | None]:
    """Apply --overwrite/--resume to an existing OUT; return (checkpoint to resume from, the finished run's
    `info_file`, the old run set aside by --overwrite: the stage deletes it once the new models have loaded,
    or puts it back). `cfg` is the stage's config (with `resume` and `overwrite`), `command` its name."""
    remove_stale_holders(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        check_writable(out)  # now, not after loading the models
        out.mkdir(parents=True, exist_ok=True)
        return None, None, None
    if not out.is_dir():
        raise TispipeError(f"--out {out} is a file, not a folder")
    if not cfg.resume and not cfg.overwrite:
        raise TispipeError(
            f"--out {out} already exists",
            hint="add --resume to continue it, --overwrite to start over, or choose another --out",
        )
    if not _is_run_folder(out, info_file):
        raise TispipeError(f"--out {out} holds files that are not a `tispipe {command}` run; refusing to {'replace' if cfg.overwrite else 'resume'} it")
    if cfg.overwrite:
        aside = SetAside([out], holder_for(out))
        out.mkdir()
        return None, None, aside
    previous = _previous_config(out)
    if previous is not None:
        current = config_dict(cfg)
        differing = sorted(k for k in set(previous) | set(current) if k not in RESUME_MAY_DIFFER and not _same_setting(k, previous.get(k), current.get(k)))
        if differing:
            details = ", ".join(f"{k} ({previous.get(k)!r} -> {current.get(k)!r})" for k in differing)
            raise TispipeError(
                f"--resume with settings that differ from the run in {out}: {details}",
                hint=f"resume with the run's own settings (--config {out / 'config.yaml'} --out {out} --resume), or start a new run in another --out",
            )
    info_path = out / info_file
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            info = None
        if isinstance(info, dict) and isinstance(info.get("steps"), int):
            return None, info, None
        # The run's record of having finished is damaged: finish it again from its last checkpoint.
        log_console().print(f"[yellow]Note:[/yellow] {info_path} is damaged; finishing the run again from its newest checkpoint")
        info_path.unlink()
    return latest_checkpoint(out), None, None


def _same_setting(name: str, old: Any, new: Any) -> bool:
    """Paths compare as the files they name, so `--out runs/x` and `--out /abs/runs/x` are one run."""
    if name in PATH_SETTINGS and isinstance(old, str) and isinstance(new, str):
        return same_source(old, new)
    return old == new


def _previous_config(out: Path) -> dict[str, Any] | None:
    path = out / "config.yaml"
    if path.is_file():
        try:
            previous = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (UnicodeDecodeError, yaml.YAMLError):
            previous = None
        if not isinstance(previous, dict):
            raise TispipeError(f"{path} is damaged (not a YAML mapping)", hint=f"delete it: the newest checkpoint in {out / 'checkpoints'} holds the run's settings too")
        return previous
    checkpoint = latest_checkpoint(out)
    return read_state(checkpoint)[1] if checkpoint else None
