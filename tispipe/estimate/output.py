"""An estimate run's folder OUT: recognise a finished run, claim OUT for these settings, or refuse it.

OUT/estimate-state.json records the settings and input fingerprints a run started with. A re-run with
the same ones resumes (complete shards are kept, damaged or missing ones rebuilt) or, when finished and
intact, does nothing; other ones are refused unless --overwrite, which sets the old files aside until
the new run has started (`atomic.SetAside`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tispipe.artifacts.atomic import SetAside, holder_for, remove_stale_holders
from tispipe.artifacts.shards import read_manifest, verify_shards
from tispipe.errors import TispipeError

STATE_FILE = "estimate-state.json"
TOKENIZER_DIR = "tokenizer"  # a copy of the tokenizer the shards' token ids come from
RUN_LOG = "estimate-run.json"  # timings: kept out of the manifest so a resumed run's manifest is byte-identical
SCORERS_FILE = "estimate-scorers.json"  # the pi+/pi- fingerprints the shards in OUT are scored with


def already_done(out: Path, state: dict[str, Any], overwrite: bool, console) -> bool:
    """A finished run with these settings whose shards are all there and intact (else they are rebuilt)."""
    if overwrite or not (out / "manifest.json").is_file() or not (out / STATE_FILE).is_file():
        return False
    try:
        if not same_run(json.loads((out / STATE_FILE).read_text(encoding="utf-8")), state):
            return False
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    try:
        verify_shards(out, read_manifest(out))
    except TispipeError as e:
        console.print(f"{out} holds this run, but {e.message}: rebuilding the missing or damaged shards", highlight=False, soft_wrap=True)
        return False
    return True


def recorded_shards(out: Path) -> dict[str, str]:
    """file -> sha256 of the shards a finished run's manifest lists ({} without one): a shard kept on resume must match."""
    try:
        return {entry["file"]: entry["sha256"] for entry in read_manifest(out)["shards"]}
    except TispipeError:
        return {}


def claim_out(out: Path, state: dict[str, Any], overwrite: bool) -> SetAside | None:
    """Claim DIR for these settings: refuse a folder started with others (unless overwrite), check it is writable.

    --overwrite sets the old shards, manifest and state aside (returned: `run` deletes them once the new
    models have loaded, or puts them back) and keeps DIR/contrast: a saved contrastive model is reused
    only when its own fingerprint file matches, so a new transform does not retrain.
    """
    from tispipe.artifacts.atomic import atomic_write_json

    remove_stale_holders(out / "shards")
    replaced = None
    state_path = out / STATE_FILE
    if out.exists() and not out.is_dir():
        raise TispipeError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        previous = None
        if state_path.is_file():
            try:
                previous = json.loads(state_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                previous = None
        if previous is None or not same_run(previous, state):
            if not overwrite:
                what = "other settings or inputs" if previous is not None else "something that is not a tispipe estimate run"
                changed = _differences(previous, state) if previous is not None else ""
                raise TispipeError(f"--out {out} already holds {what}{changed}", hint="pick another --out, or pass --overwrite to replace it")
            replaced = SetAside([out / name for name in ("shards", "manifest.json", STATE_FILE, RUN_LOG, SCORERS_FILE, "config.yaml", TOKENIZER_DIR)], holder_for(out / "shards"))
    shards = out / "shards"
    try:
        shards.mkdir(parents=True, exist_ok=True)
        for stale in [*shards.glob(".*.tmp"), *out.glob(".*.tmp")]:  # temporary files of a killed run
            stale.unlink(missing_ok=True)
        probe = shards / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
        atomic_write_json(state_path, state)
    except OSError as e:
        if replaced is not None:
            replaced.restore()
        raise TispipeError(f"shards folder {shards} is not writable ({e.strerror or e})") from None
    return replaced


# Inputs named by path: their fingerprints say whether they are the same, whatever the spelling or place.
INPUT_PATHS = ("data", "model", "pos_model", "neg_model")
# Settings that change how much memory a run takes, not what it writes.
MEMORY_SETTINGS = ("gradient_checkpointing",)


def _defaults() -> dict[str, Any]:
    import dataclasses

    from tispipe.configs import EstimateConfig

    return {f.name: f.default for f in dataclasses.fields(EstimateConfig) if f.default is not dataclasses.MISSING}


def _compared(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide the output; one at its default counts as absent, so a folder written before
    that option existed resumes."""
    defaults = _defaults()
    return {k: v for k, v in settings.items() if k not in INPUT_PATHS + MEMORY_SETTINGS and not (k in defaults and defaults[k] == v)}


def same_run(previous: Any, state: dict[str, Any]) -> bool:
    """Whether a recorded state is this run's: same settings, fingerprints, device and dtype, with the
    inputs compared by fingerprint, not by the strings that named them."""
    def identity(s: dict[str, Any]) -> dict[str, Any]:
        return {**s, "settings": _compared(s.get("settings") or {})}

    return isinstance(previous, dict) and identity(previous) == identity(state)


def _differences(previous: dict[str, Any], state: dict[str, Any]) -> str:
    before, now = _compared(previous.get("settings", {})), _compared(state["settings"])
    changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    changed += [f"{k} fingerprint" for k in sorted(state["fingerprints"]) if previous.get("fingerprints", {}).get(k) != state["fingerprints"][k]]
    changed += [k for k in ("device", "dtype") if previous.get(k) != state[k]]
    return f" (differs in: {', '.join(changed)})" if changed else ""


def check_scorers(out: Path, fingerprints: dict[str, str], console) -> None:
    """Shards kept from an earlier try must come from the same pi+/pi- as the ones about to score the rest.

    OUT/estimate-scorers.json records the pi+/pi- fingerprints (of their weights) the shards are scored
    with (an older folder: its manifest's). When they differ, or cannot be told, the shards already there
    are deleted and all are scored again: a folder never mixes shards of two pairs of models.
    """
    from tispipe.artifacts.atomic import atomic_write_json

    current = {side: fingerprints[side] for side in ("pos", "neg")}
    path = out / SCORERS_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        recorded = None
    if recorded is None and (out / "manifest.json").is_file():
        try:
            recorded = {side: read_manifest(out)["fingerprints"].get(side) for side in ("pos", "neg")}
        except (TispipeError, KeyError, AttributeError):
            recorded = None
    shards = sorted((out / "shards").glob("part-*.parquet"))
    if shards and recorded != current:
        why = "unknown" if not isinstance(recorded, dict) else ", ".join(
            f"{side} {recorded.get(side)} -> {current[side]}" for side in current if recorded.get(side) != current[side])
        console.print(f"The {len(shards)} shard(s) in {out} were scored with other pi+/pi- (fingerprints: {why}): scoring every shard again",
                      highlight=False, soft_wrap=True)
        (out / "manifest.json").unlink(missing_ok=True)
        for shard in shards:
            shard.unlink()
    atomic_write_json(path, current)
