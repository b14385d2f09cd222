"""Three public preference data sets in tispipe's row format, split by prompt, byte for byte reproducible.

    python -m tispipe.data.real_data --out data/real

reads the compressed raw files in `data/real/sources/` and writes `OUT/NAME/{train,validation,test}.jsonl`
and `OUT/SHA256SUMS` (sha256sum format, paths relative to OUT). What each data set becomes:

- paradetox (s-nlp/paradetox, `paradetox.tsv`): one "standard" pair per (toxic comment, distinct human
  rewrite). The prompt asks for a polite rewrite of the comment, chosen = the rewrite, rejected = the
  comment unchanged: the detoxification task, where the rewrite is a human reference (for chrF and the
  like) and the comment is the response that copies the toxic words. Spans come from a word diff
  (`diff_spans`): comment words deleted or replaced are -1, rewrite words inserted or replaced are +1.
- hh-harmless (Anthropic hh-rlhf, `harmless-base/test.jsonl.gz`): the "implicit" transcripts as given,
  with a pair_id. No spans: HH has no token labels; it measures sequence-level preference on real chats.
- fgrlhf (allenai FineGrainedRLHF, `qa_feedback/data/dev_feedback.json`): the human corrected answer
  preferred to `prediction 1` of the policy, prompt = the question and its passages. Rejected spans are
  the annotators' error spans on `prediction 1` (irrelevant, wrong grounding, unverifiable, redundant,
  incoherent), -1: human token labels, which is what the weight estimates are checked against. Chosen
  spans are the words the correction inserted or replaced (same word diff), +1.
- fgrlhf-prefs (same file): the annotators' strict preferences among the four predictions (ties left
  out), same prompts, no spans: more sequence-level pairs for the fgrlhf questions.

Splits are by prompt: the first 8 bytes of sha256(prompt) decide it (80% train, 10% validation, 10%
test), so a prompt and all of its pairs sit in one split, and fgrlhf and fgrlhf-prefs put a question in
the same split. Rows keep source order within a split; keys are written in a fixed order.

Diff units are runs of word characters and single punctuation marks (`WORD`), compared case-insensitively:
the toxic comments are lower-cased and tokenized ("idiots ." "don 't") while the rewrites are not, and a
whitespace-word diff would label "So"/"so" or "idiots ."/"people." changes. A span covers the characters of
a run of changed units, never the whitespace around it: a byte-level BPE token carries its leading space,
so the span still overlaps exactly the tokens of those words (`tispipe.data.tokenization.token_labels`).
"""

from __future__ import annotations

import argparse
import csv
import difflib
import gzip
import hashlib
import io
import json
import re
import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tispipe.data.pairs import split_implicit
from tispipe.data.tokenization import check_spans

SPLITS = ("train", "validation", "test")
SPLIT_PERCENT = (80, 90)  # hash % 100 below 80: train, below 90: validation, else test
DATASETS = ("paradetox", "hh-harmless", "fgrlhf", "fgrlhf-prefs")
SOURCES = {"paradetox": "paradetox.tsv.gz", "hh-harmless": "harmless-base-test.jsonl.gz", "fgrlhf": "dev_feedback.json.gz"}
WORD = re.compile(r"\w+|[^\w\s]")

PARADETOX_PROMPT = "Rewrite this comment so that it is polite and keeps its meaning:\n{toxic}"
# The question comes last: tispipe cuts a long prompt from the left, and the passages can take thousands of characters.
FGRLHF_PROMPT = "Answer the question using the passages.\n\nPassages:\n{passages}\n\nQuestion: {question}"
PREDICTIONS = ("prediction 1", "prediction 2", "prediction 3", "prediction 4")

# Drop reasons.
IDENTICAL = "chosen identical to rejected"
EMPTY = "empty response"
EMPTY_CELL = "empty rewrite column"
DUPLICATE = "duplicate rewrite of the same comment"
NO_CHANGE = "no word changed (case or spacing only)"
NO_ERRORS = "no error spans on prediction 1"
TIE = "tie (no preference)"


# ---------------------------------------------------------------- splits and spans


def split_of(prompt: str) -> str:
    """train, validation or test, from the first 8 bytes of sha256(prompt)."""
    bucket = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") % 100
    return SPLITS[sum(bucket >= cut for cut in SPLIT_PERCENT)]


def words(text: str) -> list[tuple[int, int, str]]:
    """The diff units of a text: (start, end, unit) for each run of word characters or punctuation mark."""
    return [(m.start(), m.end(), m.group()) for m in WORD.finditer(text)]


def _span(units: list[tuple[int, int, str]], label: int) -> list[int]:
    return [units[0][0], units[-1][1], label]


def diff_spans(rejected: str, chosen: str) -> tuple[list[list[int]], list[list[int]]]:
    """(rejected spans, chosen spans): each run of rejected units deleted or replaced is one -1 span, each
    run of chosen units inserted or replaced one +1 span (difflib, case-insensitive, autojunk off)."""
    old, new = words(rejected), words(chosen)
    matcher = difflib.SequenceMatcher(None, [u[2].casefold() for u in old], [u[2].casefold() for u in new], autojunk=False)
    rejected_spans, chosen_spans = [], []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            rejected_spans.append(_span(old[i1:i2], -1))
        if tag in ("replace", "insert"):
            chosen_spans.append(_span(new[j1:j2], 1))
    return rejected_spans, chosen_spans


def labelled_units(text: str, spans: list[list[int]]) -> tuple[int, int]:
    """(units overlapping a span, all units) of a text."""
    units = words(text)
    return sum(any(a < end and start < b for a, b, _ in spans) for start, end, _ in units), len(units)


# ---------------------------------------------------------------- paradetox


def read_paradetox(path: Path) -> list[list[str]]:
    """The rows of paradetox.tsv after its header: [toxic, neutral1, neutral2, neutral3] (quoted fields
    may hold tabs, newlines and doubled quotes, so the csv module reads it)."""
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
    return rows[1:]


def paradetox_pair(index: int, column: int, toxic: str, rewrite: str, references: list[str]) -> dict:
    rejected_spans, chosen_spans = diff_spans(toxic, rewrite)
    return {
        "pair_id": f"paradetox-{index}-neutral{column}",
        "prompt": PARADETOX_PROMPT.format(toxic=toxic),
        "chosen": rewrite,
        "rejected": toxic,
        "chosen_spans": chosen_spans,
        "rejected_spans": rejected_spans,
        "reference": rewrite,
        "references": references,
        "reference_toxic": toxic,
        "source": f"paradetox/paradetox.tsv row {index} neutral{column}",
    }


def paradetox_reason(toxic: str, rewrite: str, seen: set[str]) -> str | None:
    """Why this rewrite of `toxic` makes no pair, or None."""
    if not rewrite.strip():
        return EMPTY_CELL
    if rewrite == toxic:
        return IDENTICAL
    if rewrite in seen:
        return DUPLICATE
    if not any(diff_spans(toxic, rewrite)):
        return NO_CHANGE
    return None


def paradetox_pairs(rows: list[list[str]], dropped: Counter) -> list[dict]:
    """One pair per distinct usable rewrite; `references` lists all of a comment's usable rewrites."""
    pairs = []
    for index, (toxic, *rewrites) in enumerate(rows, start=1):
        usable, seen = [], set()
        for column, rewrite in enumerate(rewrites, start=1):
            reason = paradetox_reason(toxic, rewrite, seen)
            seen.add(rewrite)
            if reason:
                dropped[reason] += 1
            else:
                usable.append((column, rewrite))
        references = [rewrite for _, rewrite in usable]
        pairs += [paradetox_pair(index, column, toxic, rewrite, references) for column, rewrite in usable]
    return pairs


# ---------------------------------------------------------------- hh-harmless


def read_hh(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines() if line]


def hh_pairs(records: list[dict], dropped: Counter) -> list[dict]:
    """The transcripts as given, with a pair_id; identical or empty responses dropped (the reader would)."""
    pairs = []
    for line, record in enumerate(records, start=1):
        chosen, rejected = record["chosen"], record["rejected"]
        _, chosen_response, rejected_response = split_implicit(chosen, rejected)
        if chosen == rejected:
            dropped[IDENTICAL] += 1
        elif not chosen_response.strip() or not rejected_response.strip():
            dropped[EMPTY] += 1
        else:
            pairs.append({"pair_id": f"hh-harmless-test-{line}", "chosen": chosen, "rejected": rejected, "source": f"harmless-base/test.jsonl.gz line {line}"})
    return pairs


def hh_prompt(row: dict) -> str:
    return split_implicit(row["chosen"], row["rejected"])[0]


# ---------------------------------------------------------------- fgrlhf


def read_fgrlhf(path: Path) -> list[dict]:
    return json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))


def passage_line(passage: list[str]) -> str:
    """`title: text` on one line: the sentences joined, a leading repeat of the title and line breaks removed."""
    title, *sentences = passage
    text = " ".join(sentences)
    text = text.removeprefix(f"{title}\n\n")
    return f"{title}: {' '.join(text.split())}"


def fgrlhf_prompt(item: dict) -> str:
    passages = "\n".join(passage_line(p) for p in item["passages"]) or "(none)"
    return FGRLHF_PROMPT.format(question=item["question"], passages=passages)


def error_spans(item: dict) -> tuple[list[list[int]], list[str]]:
    """The annotated error spans on prediction 1 as -1 spans, sorted, and their error types."""
    errors = sorted(item["feedback"]["errors"], key=lambda e: (e["start"], e["end"]))
    return [[e["start"], e["end"], -1] for e in errors], [e["error type"] for e in errors]


def fgrlhf_reason(rejected: str, chosen: str, spans: list) -> str | None:
    if not chosen:
        return EMPTY
    if chosen == rejected:
        return IDENTICAL
    if not spans:
        return NO_ERRORS
    return None


def fgrlhf_pairs(items: list[dict], dropped: Counter) -> list[dict]:
    """corrected-prediction (stripped of surrounding whitespace) preferred to prediction 1."""
    pairs = []
    for index, item in enumerate(items):
        rejected, chosen = item["prediction 1"], item["feedback"]["corrected-prediction"].strip()
        rejected_spans, error_types = error_spans(item)
        reason = fgrlhf_reason(rejected, chosen, rejected_spans)
        if reason:
            dropped[reason] += 1
            continue
        check_spans(rejected_spans, len(rejected))
        pairs.append({
            "pair_id": f"fgrlhf-dev-{index}",
            "prompt": fgrlhf_prompt(item),
            "chosen": chosen,
            "rejected": rejected,
            "chosen_spans": diff_spans(rejected, chosen)[1],
            "rejected_spans": rejected_spans,
            "rejected_error_types": error_types,
            "question": item["question"],
            "source": f"qa_feedback/data/dev_feedback.json item {index}",
        })
    return pairs


def fgrlhf_pref_pairs(items: list[dict], dropped: Counter) -> list[dict]:
    """One pair per strict preference among the four predictions (1vs2, 1vs3, 1vs4, 2vs3, 2vs4, 3vs4;
    1 = the first is preferred, 2 = the second, 0 = no preference)."""
    pairs = []
    for index, item in enumerate(items):
        comparisons = [(i, j) for i in range(4) for j in range(i + 1, 4)]
        for (i, j), preference in zip(comparisons, item["preference"]):
            if preference == 0:
                dropped[TIE] += 1
                continue
            better, worse = (i, j) if preference == 1 else (j, i)
            chosen, rejected = item[PREDICTIONS[better]], item[PREDICTIONS[worse]]
            if chosen == rejected:
                dropped[IDENTICAL] += 1
                continue
            pairs.append({
                "pair_id": f"fgrlhf-dev-{index}-{i + 1}vs{j + 1}",
                "prompt": fgrlhf_prompt(item),
                "chosen": chosen,
                "rejected": rejected,
                "chosen_prediction": better + 1,
                "rejected_prediction": worse + 1,
                "question": item["question"],
                "source": f"qa_feedback/data/dev_feedback.json item {index} preference {i + 1}vs{j + 1}",
            })
    return pairs


# ---------------------------------------------------------------- build


def convert(name: str, sources: Path, dropped: Counter) -> list[dict]:
    """The rows of data set `name`, in source order; drops counted in `dropped`."""
    if name == "paradetox":
        return paradetox_pairs(read_paradetox(sources / SOURCES["paradetox"]), dropped)
    if name == "hh-harmless":
        return hh_pairs(read_hh(sources / SOURCES["hh-harmless"]), dropped)
    items = read_fgrlhf(sources / SOURCES["fgrlhf"])
    return fgrlhf_pairs(items, dropped) if name == "fgrlhf" else fgrlhf_pref_pairs(items, dropped)


def prompt_of(row: dict) -> str:
    return row["prompt"] if "prompt" in row else hh_prompt(row)


def split_rows(rows: Iterable[dict]) -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for row in rows:
        splits[split_of(prompt_of(row))].append(row)
    return splits


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, keys in row order, UTF-8, "\\n" line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))


def write_sha256sums(out: Path, files: list[Path]) -> None:
    lines = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(out).as_posix()}\n" for f in sorted(files)]
    (out / "SHA256SUMS").write_bytes("".join(lines).encode("utf-8"))


def label_share(rows: list[dict], side: str) -> str:
    """Share of a side's diff units (words, punctuation) inside a labelled span, over rows with spans."""
    counts = [labelled_units(row[side], row[f"{side}_spans"]) for row in rows if f"{side}_spans" in row]
    if not counts:
        return "no spans"
    labelled, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    unlabelled_rows = sum(c[0] == 0 for c in counts)
    return f"{labelled / total:.1%} of {total} words; {unlabelled_rows} of {len(counts)} rows have none"


def length_stats(texts: list[str]) -> str:
    lengths = sorted(len(t) for t in texts)
    deciles = statistics.quantiles(lengths, n=10, method="inclusive")
    return f"min {lengths[0]}, median {statistics.median(lengths):.0f}, p90 {deciles[8]:.0f}, max {lengths[-1]}"


def summary(name: str, splits: dict[str, list[dict]], dropped: Counter) -> list[str]:
    rows = [row for split in SPLITS for row in splits[split]]
    lines = [f"{name}:"]
    for split in SPLITS:
        lines.append(f"  {split:<10} {len(splits[split]):>6} pairs {len({prompt_of(r) for r in splits[split]}):>6} prompts")
    lines += [f"  dropped: {reason}: {n}" for reason, n in sorted(dropped.items())] or ["  dropped: none"]
    lines += [f"  labelled {side}: {label_share(rows, side)}" for side in ("chosen", "rejected")]
    if "prompt" in rows[0]:
        lines.append(f"  prompt characters: {length_stats(sorted({r['prompt'] for r in rows}))}")
    return lines


def build(out: Path, sources: Path) -> list[str]:
    """Write every data set under `out` and its SHA256SUMS; returns the summary lines."""
    files, lines = [], []
    for name in DATASETS:
        dropped: Counter = Counter()
        splits = split_rows(convert(name, sources, dropped))
        for split, rows in splits.items():
            files.append(out / name / f"{split}.jsonl")
            write_jsonl(files[-1], rows)
        lines += summary(name, splits, dropped)
    write_sha256sums(out, files)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tispipe.data.real_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for NAME/{train,validation,test}.jsonl and SHA256SUMS")
    parser.add_argument("--sources", type=Path, default=Path("data/real/sources"), help="folder of the compressed raw files")
    args = parser.parse_args(argv)
    print("\n".join(build(args.out, args.sources)))


if __name__ == "__main__":
    main()
