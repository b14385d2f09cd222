"""Reading preference records from a source: a file, a folder of files, a save_to_disk folder or a hub data set.

Each reader yields (where, record) with `where` naming the file and line or row, so every later error
can point at the exact input. Records come in a fixed order: files sorted by path, rows in file order.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from tispipe.configs import DataOptions
from tispipe.errors import TispipeError, wrong_path
from tispipe.modeling.hub import hub_offline, is_hub_name

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
SPLIT_NAMES = ("train", "test", "validation", "valid", "dev", "eval")


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").strip()
                if not line:
                    continue
                record = json.loads(line)
            except UnicodeDecodeError:
                raise TispipeError(f"{path}, line {number}: not UTF-8 text")
            except json.JSONDecodeError as e:
                raise TispipeError(f"{path}, line {number}: not valid JSON ({e.msg}, column {e.colno})")
            if not isinstance(record, dict):
                raise TispipeError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
            yield f"{path}, line {number}", record


def _read_json(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TispipeError(f"{path}: not UTF-8 text")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines in a .json file, as `datasets` also accepts
            yield from _read_jsonl(path)
            return
        raise TispipeError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}, column {e.colno})")
    if isinstance(value, dict):  # {"data": [...]}: one list of records under a key
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise TispipeError(f"{path}: expected a list of objects (or one key holding such a list)")
        value = lists[0]
    if not isinstance(value, list):
        raise TispipeError(f"{path}: expected a list of objects, got {type(value).__name__}")
    for index, record in enumerate(value):
        if not isinstance(record, dict):
            raise TispipeError(f"{path}, item {index}: expected a JSON object, got {type(record).__name__}")
        yield f"{path}, item {index}", record


def _read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise TispipeError(f"{path}: not a readable Parquet file ({e})".splitlines()[0])
    index = 0
    try:
        for batch in reader.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                yield f"{path}, row {index}", record
                index += 1
    except (pa.ArrowException, OSError) as e:
        raise TispipeError(f"{path}, row {index}: Parquet data is damaged ({e})".splitlines()[0])


def _read_csv(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, strict=True)
            try:
                header = reader.fieldnames
            except csv.Error as e:
                raise TispipeError(f"{path}, line 1: bad CSV header ({e})")
            if not header:
                return
            row_start = reader.line_num + 1
            try:
                for record in reader:
                    if None in record or any(v is None for v in record.values()):
                        raise TispipeError(f"{path}, line {row_start}: row has a different number of fields than the header ({len(header)})")
                    yield f"{path}, line {row_start}", record
                    row_start = reader.line_num + 1
            except csv.Error as e:
                raise TispipeError(f"{path}, line {row_start}: bad CSV ({e})")
    except UnicodeDecodeError:
        raise TispipeError(f"{path}: not UTF-8 text")


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}


def _split_files(folder: Path, split: str) -> list[Path]:
    """The data files of `split` in a folder: those named after it (train.jsonl, train-0000.parquet, train/...), else all."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise TispipeError(f"folder {folder} holds no {'/'.join(DATA_SUFFIXES)} files")

    def names(p: Path) -> list[str]:
        rel = p.relative_to(folder)
        return [*rel.parts[:-1], rel.name.split(".")[0]]

    def is_split(p: Path, s: str) -> bool:
        return any(n == s or n.startswith((f"{s}-", f"{s}_")) for n in names(p))

    chosen = [p for p in files if is_split(p, split)]
    if chosen:
        return chosen
    others = sorted({s for s in SPLIT_NAMES for p in files if is_split(p, s)})
    if others:
        raise TispipeError(f"folder {folder} has no split {split!r}", hint=f"splits found: {', '.join(others)} (use --split)")
    return files


def _read_saved(folder: Path, split: str) -> Iterator[tuple[str, dict]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise TispipeError(f"{folder}: not a readable save_to_disk folder ({e})".splitlines()[0])
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise TispipeError(f"{folder} has no split {split!r}", hint=f"splits: {', '.join(loaded)} (use --split)")
        loaded = loaded[split]
    for index, record in enumerate(loaded):
        yield f"{folder}, row {index}", record


def _read_hub(name: str, split: str, limit: int | None) -> Iterator[tuple[str, dict]]:
    if hub_offline():
        raise TispipeError(f"{name!r} is not a local file or folder, and the hub cannot be reached offline (HF_HUB_OFFLINE=1)", hint="give a local path, or unset HF_HUB_OFFLINE")
    import datasets

    try:
        # Streaming when a limit is set, so only the first rows are downloaded.
        loaded = datasets.load_dataset(name, split=split, streaming=limit is not None)
        for index, record in enumerate(loaded):
            yield f"{name} ({split}), row {index}", record
    except TispipeError:
        raise
    except Exception as e:  # noqa: BLE001 - the hub stack raises many types (HTTP, not found, bad split); all are user errors here
        raise TispipeError(f"could not load {name!r} split {split!r} from the hub: {e}".splitlines()[0])


def read_records(opts: DataOptions) -> tuple[str, Iterator[tuple[str, dict]]]:
    """(source description, iterator of (where, record)) for `opts.data`, in a fixed order."""
    path = Path(opts.data).expanduser()
    if path.is_file():
        if path.suffix not in READERS:
            raise TispipeError(f"{path}: unsupported file type {path.suffix!r}", hint=f"use one of {', '.join(DATA_SUFFIXES)}")
        return str(path), READERS[path.suffix](path)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return str(path), _read_saved(path, opts.split)
        files = _split_files(path, opts.split)
        return str(path), (item for p in files for item in READERS[p.suffix](p))
    if is_hub_name(opts.data, DATA_SUFFIXES):
        return f"hub:{opts.data}", _read_hub(opts.data, opts.split, opts.limit)
    if path.exists() or path.is_symlink():  # a FIFO, a device, a socket, a broken link: not "does not exist"
        raise wrong_path(path, "--data", hint="give a .jsonl/.json/.parquet/.csv file, a folder, or a hub data set as owner/name")
    raise TispipeError(f"data {opts.data!r} does not exist", hint="give a .jsonl/.json/.parquet/.csv file, a folder, or a hub data set as owner/name")
