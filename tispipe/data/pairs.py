"""Preference data in (`--data` of estimate and eval): read, detect the format, normalise, validate, tokenize.

Sources: a .jsonl/.json/.parquet/.csv file, a folder of them (files named after `split` are picked
when there are any), a `datasets.save_to_disk` folder, or a hub data set `owner/name`.

Formats, detected from the columns of the first row or forced with `format`:
- standard:       prompt, chosen, rejected strings;
- implicit:       only chosen/rejected full transcripts (Anthropic HH); the prompt is their shared prefix;
- conversational: prompt (string or messages), chosen/rejected assistant messages, or whole
                  conversations that begin with the prompt messages (UltraFeedback-binarized);
- pairwise:       prompt, response_0, response_1 and a column naming the better one (PKU-SafeRLHF).

Every source becomes rows {pair_id, prompt, chosen, rejected, **other columns}, in source order.
Rows that cannot be used are dropped and counted by reason (`strict` makes the first one an error).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from tispipe.configs import DataOptions
from tispipe.data.readers import read_records
from tispipe.data.tokenization import encode_pair, encode_prompt, has_chat_template, token_labels
from tispipe.data.transcripts import as_messages, is_transcript
from tispipe.errors import TispipeError

FORMATS = ("standard", "implicit", "conversational", "pairwise")
# The prompt of an implicit pair ends with the last of these that both transcripts share.
ASSISTANT_MARKERS = ("Assistant:", "<|assistant|>", "<|im_start|>assistant\n", "[/INST]")
PAIRWISE_RESPONSES = ("response_0", "response_1")

# Drop reasons (keys of DataReport.dropped).
MISSING = "missing field"
WRONG_TYPE = "wrong type"
EMPTY = "empty response"
IDENTICAL = "chosen identical to rejected"
NO_PROMPT = "no shared prompt"
BAD_PREFERENCE = "bad preference value"
DUPLICATE = "duplicate pair_id"
NO_ROOM = "prompt leaves no room for a response"
EMPTY_PROMPT = "prompt has no tokens"
CUT_IDENTICAL = "chosen identical to rejected after truncation"


@dataclass
class DataReport:
    source: str
    format: str
    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    detected: bool = True  # False when `format` was forced
    preference_column: str | None = None
    transcripts: str | None = None  # implicit HH text: "chat turns" (rendered by the template) or "raw text"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


@dataclass
class TokenizedPair:
    """One usable pair: its texts as normalised, the other columns, and the exact token ids.

    `prompt_ids + chosen_ids` is the sequence scored and trained on (see tispipe.data.tokenization).
    """

    pair_id: str
    prompt: str | list[dict]
    chosen: str | list[dict]
    rejected: str | list[dict]
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool
    extra: dict[str, Any] = field(default_factory=dict)
    chosen_labels: list[int] | None = None  # per response token: +1 helpful, -1 harmful, 0 (from `*_spans`)
    rejected_labels: list[int] | None = None


class BadRow(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def as_text(value: str | list[dict]) -> str:
    """A prompt or response as one string: itself, or its message list as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------- formats


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def _get(record: dict, column: str) -> Any:
    value = record.get(column)
    if value is None:
        raise BadRow(MISSING, f"{column!r} is missing")
    return value


def _string(record: dict, column: str) -> str:
    value = _get(record, column)
    if not isinstance(value, str):
        raise BadRow(WRONG_TYPE, f"{column!r} is {type(value).__name__}, not a string")
    return value


def _messages(record: dict, column: str) -> list[dict]:
    value = _get(record, column)
    if not _is_messages(value):
        raise BadRow(WRONG_TYPE, f"{column!r} is not a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def detect_format(columns: list[str], first: dict, opts: DataOptions) -> str:
    cols = set(columns)
    p, c, r = opts.prompt_column, opts.chosen_column, opts.rejected_column
    if {p, c, r} <= cols:
        return "conversational" if any(isinstance(first.get(k), list) for k in (p, c, r)) else "standard"
    if {c, r} <= cols:
        return "implicit"
    if {p, *PAIRWISE_RESPONSES} <= cols:
        return "pairwise"
    raise TispipeError(
        f"cannot tell the data format from its columns: {', '.join(columns)}",
        hint="expected prompt/chosen/rejected, chosen/rejected, or prompt/response_0/response_1; "
        "rename with --prompt-column/--chosen-column/--rejected-column or set --format",
    )


def _required_columns(fmt: str, opts: DataOptions) -> list[str]:
    return {
        "standard": [opts.prompt_column, opts.chosen_column, opts.rejected_column],
        "conversational": [opts.prompt_column, opts.chosen_column, opts.rejected_column],
        "implicit": [opts.chosen_column, opts.rejected_column],
        "pairwise": [opts.prompt_column, *PAIRWISE_RESPONSES],
    }[fmt]


def find_preference_column(columns: list[str], opts: DataOptions) -> str:
    if opts.preference_column:
        if opts.preference_column not in columns:
            raise TispipeError(f"preference column {opts.preference_column!r} not found; columns: {', '.join(columns)}")
        return opts.preference_column
    candidates = [c for c in columns if c.endswith("response_id") or c in ("preference", "preferred", "label", "choice")]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise TispipeError("pairwise data needs a column naming the better response (0 or 1)", hint="give it with --preference-column")
    raise TispipeError(f"pairwise data has several preference columns: {', '.join(candidates)}", hint="choose one with --preference-column")


def split_implicit(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two transcripts that share their beginning.

    The prompt runs up to and including the last assistant-turn marker inside the shared prefix
    (`\\n\\nHuman: ...\\n\\nAssistant:`); without one, the shared prefix cut back to end just before a
    whitespace, so both responses start at a word (" Paris." / " Rome.").
    """
    k = len(os.path.commonprefix([chosen, rejected]))
    shared = chosen[:k]
    end = max((shared.rfind(m) + len(m) for m in ASSISTANT_MARKERS if m in shared), default=-1)
    if end < 0:
        # Largest j <= k where both transcripts continue with whitespace (at j < k they agree).
        both_space_at_k = k < min(len(chosen), len(rejected)) and chosen[k].isspace() and rejected[k].isspace()
        end = k if both_space_at_k else max((j for j in range(k) if shared[j].isspace()), default=0)
    return chosen[:end], chosen[end:], rejected[end:]


def _implicit_messages(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and not (n < len(chosen) and n < len(rejected) and chosen[n]["role"] == rejected[n]["role"] == "assistant"):
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def _strip_prompt_turns(prompt: list[dict], response: list[dict]) -> list[dict]:
    if len(response) > len(prompt) and response[: len(prompt)] == prompt:
        return response[len(prompt) :]
    return response


def _response(record: dict, column: str, prompt: list[dict]) -> str | list[dict]:
    """A conversational response: assistant messages (a leading copy of the prompt turns removed) or plain text."""
    if isinstance(record.get(column), str):
        return record[column]
    return _strip_prompt_turns(prompt, _messages(record, column))


def _preference(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    raise BadRow(BAD_PREFERENCE, f"preference value {value!r} is not 0 or 1")


def normalise(record: dict, fmt: str, opts: DataOptions, preference_column: str | None) -> dict:
    """{prompt, chosen, rejected} of one record in `fmt`; raises BadRow with the reason it is unusable."""
    p, c, r = opts.prompt_column, opts.chosen_column, opts.rejected_column
    if fmt == "standard":
        prompt, chosen, rejected = _string(record, p), _string(record, c), _string(record, r)
    elif fmt == "pairwise":
        prompt = _string(record, p)
        responses = [_string(record, k) for k in PAIRWISE_RESPONSES]
        better = _preference(_get(record, preference_column))
        chosen, rejected = responses[better], responses[1 - better]
    elif fmt == "implicit":
        chosen_full, rejected_full = _get(record, c), _get(record, r)
        if isinstance(chosen_full, str) and isinstance(rejected_full, str):
            prompt, chosen, rejected = split_implicit(chosen_full, rejected_full)
        elif _is_messages(chosen_full) and _is_messages(rejected_full):
            prompt, chosen, rejected = _implicit_messages(_messages(record, c), _messages(record, r))
        else:
            raise BadRow(WRONG_TYPE, f"{c!r} and {r!r} must both be strings or both message lists")
        if chosen_full == rejected_full:
            raise BadRow(IDENTICAL, "chosen and rejected are the same")
        if not prompt:
            raise BadRow(NO_PROMPT, "chosen and rejected share no prompt")
    elif fmt == "conversational":
        raw_prompt = _get(record, p)
        if isinstance(raw_prompt, str):
            prompt = [{"role": "user", "content": raw_prompt}]
        else:
            prompt = _messages(record, p)
        chosen, rejected = _response(record, c, prompt), _response(record, r, prompt)
    else:
        raise TispipeError(f"unknown data format {fmt!r}", hint=f"use auto or one of {', '.join(FORMATS)}")
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        text = response if isinstance(response, str) else "".join(m["content"] for m in response)
        if not text.strip():
            raise BadRow(EMPTY, f"{name} response is empty")
    if chosen == rejected:
        raise BadRow(IDENTICAL, "chosen and rejected are the same")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# ---------------------------------------------------------------- public API


def _bad(report: DataReport, opts: DataOptions, where: str, reason: str, detail: str) -> None:
    if opts.strict:
        raise TispipeError(f"{where}: {detail or reason}", hint="fix the row, or drop --strict to skip bad rows")
    report.drop(reason)


def load_pairs(opts: DataOptions) -> tuple[list[dict], DataReport]:
    """Read `opts.data` and return its usable rows {pair_id, prompt, chosen, rejected, **extra} and a report.

    `limit` counts rows read from the source (before dropping). Rows without a `pair_id` column get
    `row-<index>` from their position in the source.
    """
    rows, report = read_rows(opts)
    return list(rows), report


def read_rows(opts: DataOptions) -> tuple[Iterator[dict], DataReport]:
    """`load_pairs` one row at a time: the rows as they are read, and the report they fill in as they go
    (complete once the rows are exhausted)."""
    if opts.format not in ("auto", *FORMATS):
        raise TispipeError(f"unknown data format {opts.format!r}", hint=f"use auto or one of {', '.join(FORMATS)}")
    if opts.limit is not None and opts.limit < 1:
        raise TispipeError(f"limit must be at least 1, got {opts.limit}")
    source, records = read_records(opts)
    report = DataReport(source=source, format=opts.format, detected=opts.format == "auto")
    return _rows(opts, source, records, report), report


def _rows(opts: DataOptions, source: str, records, report: DataReport) -> Iterator[dict]:
    kept = 0
    seen: set[str] = set()
    fmt = consumed = preference_column = None
    for index, (where, record) in enumerate(records):
        if opts.limit is not None and index >= opts.limit:
            break
        if fmt is None:
            columns = list(record)
            try:
                fmt = detect_format(columns, record, opts) if opts.format == "auto" else opts.format
            except TispipeError as e:  # name the file, as every other data error does
                raise TispipeError(f"{source}: {e.message}", hint=e.hint) from None
            missing = [col for col in _required_columns(fmt, opts) if col not in record]
            if missing:
                raise TispipeError(f"{source}: {fmt} data needs column(s) {', '.join(missing)}; columns are {', '.join(columns)}", hint="rename with --prompt-column/--chosen-column/--rejected-column")
            if fmt == "pairwise":
                preference_column = find_preference_column(columns, opts)
            report.format, report.preference_column = fmt, preference_column
            consumed = {*_required_columns(fmt, opts), preference_column, "pair_id"}
        report.read += 1
        try:
            row = normalise(record, fmt, opts, preference_column)
        except BadRow as bad:
            _bad(report, opts, where, bad.reason, bad.detail)
            continue
        pair_id = str(record["pair_id"]) if record.get("pair_id") is not None else f"row-{index}"
        if pair_id in seen:
            _bad(report, opts, where, DUPLICATE, f"pair_id {pair_id!r} appears twice")
            continue
        seen.add(pair_id)
        extra = {k: v for k, v in record.items() if k not in consumed and k not in ("prompt", "chosen", "rejected")}
        kept += 1
        yield {"pair_id": pair_id, **row, **extra}
    if fmt is None:
        raise TispipeError(f"{source} holds no rows")
    report.kept = kept
    if not kept:
        raise TispipeError(f"{source}: no usable row among {report.read} ({_reasons(report)})", hint="check the format and column options")


def _reasons(report: DataReport) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(report.dropped.items())) or "none dropped"


def tokenize_pairs(rows: Iterable[dict], tokenizer, opts: DataOptions, report: DataReport, labels: bool = False) -> list[TokenizedPair]:
    """Encode every row with tispipe.data.tokenization; rows whose prompt leaves no room, and pairs the same once truncated, are dropped and counted.

    `labels`: also map the rows' character spans (`chosen_spans`/`rejected_spans`: [start, end, label])
    onto their response tokens (`tokenization.token_labels`); rows without spans get None.
    """
    return list(iter_tokenized(rows, tokenizer, opts, report, labels))


def iter_tokenized(rows: Iterable[dict], tokenizer, opts: DataOptions, report: DataReport, labels: bool = False) -> Iterator[TokenizedPair]:
    """`tokenize_pairs` one pair at a time (report.kept is set once the rows are exhausted)."""
    kept = 0
    as_turns = opts.chat_template and has_chat_template(tokenizer)
    for row in rows:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        if report.format == "implicit" and is_transcript(prompt):
            report.transcripts = "chat turns" if as_turns else "raw text"
            if as_turns:
                prompt, chosen, rejected = as_messages(prompt, chosen, rejected)
        encoded = encode_pair(
            tokenizer, prompt, chosen, rejected, max_length=opts.max_length, max_prompt_length=opts.max_prompt_length, chat_template=opts.chat_template
        )
        if encoded is None:
            reason = EMPTY_PROMPT if not encode_prompt(tokenizer, prompt, None, opts.chat_template) else NO_ROOM
            _bad(report, opts, f"{report.source}, pair {row['pair_id']!r}", reason, f"{reason} (max_length {opts.max_length}, max_prompt_length {opts.max_prompt_length})")
            continue
        if encoded.chosen_ids == encoded.rejected_ids:  # they differ only past max_length: no signal left to learn or score
            _bad(report, opts, f"{report.source}, pair {row['pair_id']!r}", CUT_IDENTICAL,
                 f"chosen and rejected are the same once cut to max_length {opts.max_length} (max_prompt_length {opts.max_prompt_length})")
            continue
        report.truncated += encoded.truncated
        extra = {k: v for k, v in row.items() if k not in ("pair_id", "prompt", "chosen", "rejected")}
        pair = TokenizedPair(row["pair_id"], prompt, chosen, rejected, encoded.prompt_ids, encoded.chosen_ids, encoded.rejected_ids, encoded.truncated, extra)
        if labels:
            where = f"{report.source}, pair {pair.pair_id!r}"
            pair.chosen_labels = _labels_for(tokenizer, chosen, extra.get("chosen_spans"), pair.chosen_ids, f"{where}, chosen_spans")
            pair.rejected_labels = _labels_for(tokenizer, rejected, extra.get("rejected_spans"), pair.rejected_ids, f"{where}, rejected_spans")
        kept += 1
        yield pair
    report.kept = kept
    if not kept:
        raise TispipeError(f"{report.source}: no pair fits max_length {opts.max_length} ({_reasons(report)})", hint="raise --max-length or lower --max-prompt-length")


def _labels_for(tokenizer, response, spans, ids: list[int], where: str) -> list[int] | None:
    if spans is None or not isinstance(response, str):
        return None
    try:
        return token_labels(tokenizer, response, spans, ids)
    except TispipeError as e:
        raise TispipeError(f"{where}: {e.message}", hint=e.hint) from None


def print_report(report: DataReport, console) -> None:
    """The detected format and a table of rows read, kept, dropped by reason and truncated."""
    from rich.table import Table

    how = "Detected format" if report.detected else "Format"
    extra = f" (preference column {report.preference_column})" if report.preference_column else ""
    if report.transcripts:
        extra += "; HH transcripts as " + ("chat turns, rendered by the tokenizer's template" if report.transcripts == "chat turns" else "raw text, as given")
    console.print(f"{how}: {report.format}{extra}  [dim]{report.source}[/dim]")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("read", str(report.read))
    table.add_row("kept", str(report.kept))
    for reason, n in sorted(report.dropped.items()):
        table.add_row(f"dropped: {reason}", str(n))
    table.add_row("truncated", str(report.truncated))
    console.print(table)
