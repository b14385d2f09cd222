"""ParaDetox with both sides in one surface form: lower-cased and detokenized, so the rewrite is all that differs.

    python -m tispipe.data.paradetox_normalized --data data/real/paradetox --out runs/real-normalized/paradetox

ParaDetox's authors lower-cased and tokenized the toxic comments ("i 'm", "idiots .") but not the human
rewrites ("I'm", "people."), so besides the toxic words a pair's sides differ in case and spacing. The
word-diff labels ignore both (tispipe.data.real_data), a contrast learns both: among the rejected tokens an
sft contrast weights most, a response's first token and ' .' are the commonest unlabelled ones
(`tispipe inspect DIR --top-tokens 0.1`, docs/real-model.md). Here both sides go through `normalize`:
contractions and punctuation rejoined ("don 't" -> "don't", "idiots ." -> "idiots.", "( x )" -> "(x)"),
then lower case (the comments' own case is lost already).

Each row keeps its pair_id and its split, so the validation and test pairs are the same pairs as in DATA;
the prompt is rebuilt around the normalized comment and the spans diffed again. A pair whose sides now
differ in nothing the diff counts, or whose rewrite now repeats another of the same comment, is dropped
and counted. The output is byte for byte the same on every run.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from tispipe.data.real_data import SPLITS, paradetox_pair, paradetox_reason, write_jsonl

CONTRACTION = re.compile(r"(\w) '(?=\w)")  # "don 't", "i 'm", "y 'all"
BEFORE_PUNCTUATION = re.compile(r"\s+(?=[.,!?;:%)\]}])")
AFTER_OPENING = re.compile(r"(?<=[(\[{$])\s+")


def normalize(text: str) -> str:
    """`text` detokenized the way the comments were split ("don 't" "idiots ." "( x )"), then lower-cased."""
    text = CONTRACTION.sub(r"\1'", text)
    text = BEFORE_PUNCTUATION.sub("", text)
    return AFTER_OPENING.sub("", text).lower()


def normalized_rows(rows: list[dict], dropped: Counter) -> list[dict]:
    """The rows of one split with both sides normalized, in order; drops counted in `dropped`."""
    out, seen = [], {}
    for row in rows:
        toxic, rewrite = normalize(row["rejected"]), normalize(row["chosen"])
        rewrites = seen.setdefault(toxic, set())
        reason = paradetox_reason(toxic, rewrite, rewrites)
        rewrites.add(rewrite)
        if reason:
            dropped[reason] += 1
            continue
        references = list(dict.fromkeys(normalize(r) for r in row["references"]))
        pair = paradetox_pair(0, 0, toxic, rewrite, references)  # its pair_id and source (from 0, 0) give way to the row's
        out.append({**pair, "pair_id": row["pair_id"], "source": f"{row['source']}, normalized"})
    return out


def build(data: Path, out: Path) -> list[str]:
    """Write OUT/{train,validation,test}.jsonl from DATA's; returns the summary lines."""
    lines = []
    for split in SPLITS:
        dropped: Counter = Counter()
        rows = [json.loads(line) for line in (data / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        kept = normalized_rows(rows, dropped)
        write_jsonl(out / f"{split}.jsonl", kept)
        lines.append(f"{split:<10} {len(kept):>6} of {len(rows)} pairs" + "".join(f"; dropped, {r}: {n}" for r, n in sorted(dropped.items())))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tispipe.data.paradetox_normalized", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/real/paradetox"), help="the converted ParaDetox folder (tispipe.data.real_data)")
    parser.add_argument("--out", type=Path, required=True, help="folder for {train,validation,test}.jsonl")
    args = parser.parse_args(argv)
    print("\n".join(build(args.data, args.out)))


if __name__ == "__main__":
    main()
