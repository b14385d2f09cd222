"""Held-out preference pairs for the training loops (`train --eval-data`, `reward-model`): read, or carved from the training data.

A carved split is decided per pair by a seeded hash of its pair_id, so it does not depend on the order
of the rows, and a resumed run (or a second command on the same data) holds out exactly the same pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from tispipe.configs import ReadOptions
from tispipe.errors import TispipeError


def is_held_out(pair_id: str, fraction: float, seed: int) -> bool:
    """Whether `pair_id` falls in the held-out `fraction` (a uniform draw from sha256 of seed and id)."""
    digest = hashlib.sha256(f"held-out:{seed}:{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def carve(pairs: list, fraction: float, seed: int) -> tuple[list, list]:
    """(training pairs, held-out pairs), both in data order; each must keep at least one pair."""
    held = [p for p in pairs if is_held_out(p.pair_id, fraction, seed)]
    kept = [p for p in pairs if not is_held_out(p.pair_id, fraction, seed)]
    if not held or not kept:
        raise TispipeError(
            f"--eval-fraction {fraction} of {len(pairs)} pairs leaves {len(kept)} to train on and {len(held)} held out",
            hint="give more pairs, another --eval-fraction, or the held-out pairs themselves with --eval-data",
        )
    return kept, held


def read_pairs(source: str, options: ReadOptions, split: str, tokenizer, console=None, labels: bool = False) -> list:
    """Tokenized pairs of `source` (split `split`), read and tokenized with `options` as --data is."""
    from tispipe.data.pairs import load_pairs, print_report, tokenize_pairs

    opts = dataclasses.replace(options.read_options(source), split=split)
    rows, report = load_pairs(opts)
    pairs = tokenize_pairs(rows, tokenizer, opts, report, labels=labels)
    if console is not None:
        print_report(report, console)
    return pairs


def read_options_of(settings: dict[str, Any]) -> ReadOptions:
    """The reading options recorded in an estimate manifest's settings (defaults for any not recorded),
    so held-out pairs are tokenized exactly as the training pairs were."""
    names = {f.name for f in dataclasses.fields(ReadOptions)} - {"split", "limit", "strict"}
    return ReadOptions(**{name: settings[name] for name in names if name in settings})


def carve_files(data: str | Path, out: str | Path, fraction: float, seed: int) -> dict[str, int]:
    """OUT/train.jsonl and OUT/validation.jsonl from DATA/train.jsonl, split by `is_held_out` of each row's
    pair_id (so the split does not depend on row order), and DATA/test.jsonl copied as OUT/test.jsonl.
    A data folder that ships its own DATA/validation.jsonl (data/real's are split by prompt) keeps it, and
    `fraction` is not used.

    The rows are copied byte for byte. Returns the number of rows in each file. A validation split is
    what a study may choose settings on; the test split is left for the final numbers.
    """
    import json

    from tispipe.artifacts.atomic import atomic_write_text

    data, out = Path(data), Path(out)
    kept, held = [], []
    source = data / "train.jsonl"
    shipped = data / "validation.jsonl"
    if shipped.is_file():
        kept = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
        held = [line for line in shipped.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not held or not kept:
            raise TispipeError(f"{source} has {len(kept)} pairs and {shipped} {len(held)}: both need some")
    else:
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                pair_id = json.loads(line)["pair_id"]
            except (ValueError, KeyError, TypeError):
                raise TispipeError(f"{source} line {number}: not a JSON object with a pair_id", hint="a validation split is carved by pair_id") from None
            (held if is_held_out(str(pair_id), fraction, seed) else kept).append(line)
        if not held or not kept:
            raise TispipeError(f"--validation-fraction {fraction} of {len(kept) + len(held)} pairs in {source} leaves {len(kept)} to train on and {len(held)} for validation")
    out.mkdir(parents=True, exist_ok=True)
    for name, lines in (("train.jsonl", kept), ("validation.jsonl", held)):
        text = "\n".join(lines) + "\n"
        if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text:
            atomic_write_text(out / name, text)
    test = (data / "test.jsonl").read_text(encoding="utf-8")
    if not (out / "test.jsonl").is_file() or (out / "test.jsonl").read_text(encoding="utf-8") != test:
        atomic_write_text(out / "test.jsonl", test)
    return {"train": len(kept), "validation": len(held), "test": sum(1 for line in test.splitlines() if line.strip())}
