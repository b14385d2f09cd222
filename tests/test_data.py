"""Preference data in: sources, formats, column options, bad rows, broken files, tokenization."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl
from rich.console import Console

from tispipe.data.pairs import (
    DataOptions,
    load_pairs,
    print_report,
    split_implicit,
    tokenize_pairs,
)
from tispipe.data.tokenization import encode_prompt, encode_response
from tispipe.errors import TispipeError

ROWS = [
    {"pair_id": "a", "prompt": "How do I bake bread?", "chosen": "Heat the oven first.", "rejected": "No.", "chosen_spans": [[0, 4, 1]]},
    {"pair_id": "b", "prompt": "Tell me a fact.", "chosen": "Water is wet.", "rejected": "Cake is safe.", "chosen_spans": []},
    {"pair_id": "c", "prompt": "Why?", "chosen": "Because.", "rejected": "Sorry.", "chosen_spans": [[1, 2, -1]]},
]


def load(path, **kw):
    return load_pairs(DataOptions(data=str(path), **kw))


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------- sources


def test_standard_jsonl_keeps_order_ids_and_extra_columns(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    rows, report = load(tmp_path / "d.jsonl")
    assert [r["pair_id"] for r in rows] == ["a", "b", "c"]
    assert rows[0] == ROWS[0]  # normalised row = source row here, extra column carried through
    assert (report.format, report.detected, report.read, report.kept, report.dropped) == ("standard", True, 3, 3, {})


def test_same_rows_from_json_parquet_csv(tmp_path):
    plain = [{k: v for k, v in r.items() if k != "chosen_spans"} for r in ROWS]
    (tmp_path / "list.json").write_text(json.dumps(plain))
    (tmp_path / "keyed.json").write_text(json.dumps({"data": plain}))
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in plain))
    pq.write_table(pa.Table.from_pylist(plain), tmp_path / "d.parquet")
    write_csv(tmp_path / "d.csv", plain)
    for name in ("list.json", "keyed.json", "lines.json", "d.parquet", "d.csv"):
        rows, report = load(tmp_path / name)
        assert rows == plain, name
        assert report.format == "standard"


def test_missing_ids_are_row_positions_and_limit_counts_rows_read(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{k: v for k, v in r.items() if k != "pair_id"} for r in ROWS])
    rows, report = load(tmp_path / "d.jsonl", limit=2)
    assert [r["pair_id"] for r in rows] == ["row-0", "row-1"] and report.read == 2


def test_folder_picks_the_split_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS[:2])
    write_jsonl(tmp_path / "test.jsonl", ROWS[2:])
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    assert [r["pair_id"] for r in load(tmp_path)[0]] == ["a", "b"]
    assert [r["pair_id"] for r in load(tmp_path, split="test")[0]] == ["c"]
    with pytest.raises(TispipeError, match="no split 'validation'") as e:
        load(tmp_path, split="validation")
    assert "test, train" in e.value.hint


def test_folder_of_unnamed_files_is_read_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "b.jsonl", ROWS[2:])
    write_jsonl(tmp_path / "a.jsonl", ROWS[:1])
    pq.write_table(pa.Table.from_pylist(ROWS[1:2]), tmp_path / "a2.parquet")
    assert [r["pair_id"] for r in load(tmp_path)[0]] == ["a", "b", "c"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(TispipeError, match="holds no"):
        load(tmp_path / "empty")


def test_save_to_disk_dataset_dict_and_dataset(tmp_path):
    import datasets

    conv = [
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}], "rejected": [{"role": "assistant", "content": "go away"}]},
        {"prompt": [{"role": "user", "content": "bye"}], "chosen": [{"role": "assistant", "content": "take care"}], "rejected": [{"role": "assistant", "content": "finally"}]},
    ]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(conv), "test": datasets.Dataset.from_list(conv[:1])}).save_to_disk(str(tmp_path / "dd"))
    rows, report = load(tmp_path / "dd", split="test")
    assert report.format == "conversational" and len(rows) == 1 and rows[0]["chosen"] == conv[0]["chosen"]
    with pytest.raises(TispipeError, match="no split 'dev'"):
        load(tmp_path / "dd", split="dev")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    rows, _ = load(tmp_path / "ds")
    assert [r["pair_id"] for r in rows] == ["a", "b", "c"]


def test_missing_path_and_hub_names_fail_fast(tmp_path, monkeypatch):
    with pytest.raises(TispipeError, match="does not exist") as e:
        load(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in e.value.message
    with pytest.raises(TispipeError, match="'imdb' does not exist"):
        load("imdb")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TispipeError, match="'data/toy' does not exist"):  # local folder, not a hub name
        load("data/toy")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TispipeError, match="cannot be reached offline"):
        load("someone/some-prefs")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(TispipeError, match="unsupported file type"):
        load(tmp_path / "x.txt")


# ---------------------------------------------------------------- formats and columns


def test_column_remap(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"question": "Q?", "good": "yes indeed", "bad": "no", "prompt": "ignored"}])
    rows, report = load(tmp_path / "d.jsonl", prompt_column="question", chosen_column="good", rejected_column="bad")
    assert report.format == "standard"
    assert rows == [{"pair_id": "row-0", "prompt": "Q?", "chosen": "yes indeed", "rejected": "no"}]
    with pytest.raises(TispipeError, match="needs column"):
        load(tmp_path / "d.jsonl", format="standard", chosen_column="best")


def test_implicit_hh_style_prompt_ends_at_last_shared_assistant_marker(tmp_path):
    shared = "\n\nHuman: How do I bake?\n\nAssistant: Use an oven.\n\nHuman: And then?\n\nAssistant:"
    write_jsonl(tmp_path / "hh.jsonl", [{"chosen": shared + " Wait an hour.", "rejected": shared + " Burn it."}])
    rows, report = load(tmp_path / "hh.jsonl")
    assert report.format == "implicit"
    assert rows[0]["prompt"] == shared
    assert (rows[0]["chosen"], rows[0]["rejected"]) == (" Wait an hour.", " Burn it.")


def test_implicit_without_marker_cuts_back_to_whitespace():
    assert split_implicit("The capital is Paris.", "The capital is Rome.") == ("The capital is", " Paris.", " Rome.")
    assert split_implicit("I like cats a lot", "I like cars") == ("I like", " cats a lot", " cars")
    assert split_implicit("Paris", "Rome") == ("", "Paris", "Rome")


def test_implicit_message_lists(tmp_path):
    user = {"role": "user", "content": "hi"}
    write_jsonl(tmp_path / "m.jsonl", [{"chosen": [user, {"role": "assistant", "content": "hello"}], "rejected": [user, {"role": "assistant", "content": "what"}]}])
    rows, report = load(tmp_path / "m.jsonl")
    assert report.format == "implicit" and rows[0]["prompt"] == [user] and rows[0]["chosen"] == [{"role": "assistant", "content": "hello"}]


def test_conversational_full_conversations_lose_the_prompt_turns(tmp_path, tiny_tokenizer, tiny_tokenizer_no_template):
    user = {"role": "user", "content": "What is bread?"}
    good, bad = {"role": "assistant", "content": "Flour and water."}, {"role": "assistant", "content": "A cake."}
    write_jsonl(tmp_path / "uf.jsonl", [{"prompt": "What is bread?", "chosen": [user, good], "rejected": [user, bad], "score_chosen": 9.0}])
    opts = DataOptions(data=str(tmp_path / "uf.jsonl"))
    rows, report = load_pairs(opts)
    assert report.format == "conversational"
    assert rows[0]["prompt"] == [user] and rows[0]["chosen"] == [good] and rows[0]["rejected"] == [bad]
    assert rows[0]["score_chosen"] == 9.0
    pairs = tokenize_pairs(rows, tiny_tokenizer, opts, report)
    assert tiny_tokenizer.decode(pairs[0].prompt_ids + pairs[0].chosen_ids) == tiny_tokenizer.apply_chat_template([user, good], tokenize=False) + "<|endoftext|>"
    with pytest.raises(TispipeError, match="needs a tokenizer with a chat template"):
        tokenize_pairs(rows, tiny_tokenizer_no_template, opts, report)


def test_pairwise_preference_column(tmp_path):
    rows = [
        {"prompt": "Q1", "response_0": "r0", "response_1": "r1", "safer_response_id": 1, "better_response_id": 0},
        {"prompt": "Q2", "response_0": "s0", "response_1": "s1", "safer_response_id": 0, "better_response_id": 0},
    ]
    write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(TispipeError, match="several preference columns") as e:
        load(tmp_path / "p.jsonl")
    assert "--preference-column" in e.value.hint
    got, report = load(tmp_path / "p.jsonl", preference_column="safer_response_id")
    assert report.format == "pairwise" and report.preference_column == "safer_response_id"
    assert [(r["chosen"], r["rejected"]) for r in got] == [("r1", "r0"), ("s0", "s1")]
    assert got[0]["better_response_id"] == 0  # the other preference column is carried through
    # a single candidate is found by itself; CSV strings "0"/"1" work
    write_csv(tmp_path / "p.csv", [{k: v for k, v in r.items() if k != "better_response_id"} for r in rows])
    got, report = load(tmp_path / "p.csv")
    assert report.preference_column == "safer_response_id" and got[0]["chosen"] == "r1"


def test_unknown_columns_and_format(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": "hello"}])
    with pytest.raises(TispipeError, match="cannot tell the data format from its columns: text"):
        load(tmp_path / "d.jsonl")
    with pytest.raises(TispipeError, match="unknown data format 'kto'"):
        load(tmp_path / "d.jsonl", format="kto")


# ---------------------------------------------------------------- bad rows


BAD_ROWS = [
    ({"pair_id": "m", "prompt": "Q", "chosen": "yes"}, "missing field"),
    ({"pair_id": "n", "prompt": "Q", "chosen": None, "rejected": "no"}, "missing field"),
    ({"pair_id": "t", "prompt": "Q", "chosen": 3, "rejected": "no"}, "wrong type"),
    ({"pair_id": "e", "prompt": "Q", "chosen": "  ", "rejected": "no"}, "empty response"),
    ({"pair_id": "i", "prompt": "Q", "chosen": "same", "rejected": "same"}, "chosen identical to rejected"),
    ({"pair_id": "a", "prompt": "Q", "chosen": "dup", "rejected": "id"}, "duplicate pair_id"),
]


def test_bad_rows_are_dropped_and_counted(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", ROWS + [row for row, _ in BAD_ROWS])
    rows, report = load(tmp_path / "d.jsonl")
    assert [r["pair_id"] for r in rows] == ["a", "b", "c"]
    assert report.read == 9 and report.kept == 3
    assert report.dropped == {"missing field": 2, "wrong type": 1, "empty response": 1, "chosen identical to rejected": 1, "duplicate pair_id": 1}


@pytest.mark.parametrize(("row", "reason"), BAD_ROWS)
def test_strict_names_the_file_and_line(tmp_path, row, reason):
    write_jsonl(tmp_path / "d.jsonl", [*ROWS, row])
    with pytest.raises(TispipeError) as e:
        load(tmp_path / "d.jsonl", strict=True)
    assert f"{tmp_path / 'd.jsonl'}, line 4" in e.value.message


def test_pairwise_and_implicit_bad_rows(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q", "response_0": "a", "response_1": "b", "better_response_id": 2}, {"prompt": "Q", "response_0": "a", "response_1": "b", "better_response_id": 1}])
    assert load(tmp_path / "p.jsonl")[1].dropped == {"bad preference value": 1}
    write_jsonl(tmp_path / "i.jsonl", [{"chosen": "Paris", "rejected": "Rome"}, {"chosen": "It is Paris", "rejected": "It is Rome"}])
    rows, report = load(tmp_path / "i.jsonl")
    assert report.dropped == {"no shared prompt": 1} and rows[0]["prompt"] == "It is"


def test_no_usable_row_is_an_error(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "chosen": "x", "rejected": "x"}])
    with pytest.raises(TispipeError, match="no usable row among 1 .*1 chosen identical to rejected"):
        load(tmp_path / "d.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TispipeError, match="holds no rows"):
        load(tmp_path / "empty.jsonl")


# ---------------------------------------------------------------- broken files


def test_broken_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n" + '{"prompt": "Q", "chosen":\n')
    with pytest.raises(TispipeError, match=r"d\.jsonl, line 3: not valid JSON"):
        load(path)
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(TispipeError, match=r"d\.jsonl, line 2: expected a JSON object"):
        load(path)
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n\xff\xfe\n")
    with pytest.raises(TispipeError, match=r"d\.jsonl, line 2: not UTF-8"):
        load(path)


def test_broken_json_names_file_and_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"prompt": "Q",\n   "chosen": }\n]')
    with pytest.raises(TispipeError, match=r"d\.json, line 3: not valid JSON"):
        load(path)
    path.write_text('"just a string"')
    with pytest.raises(TispipeError, match=r"d\.json: expected a list of objects"):
        load(path)


def test_broken_parquet_names_file(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), good)
    data = good.read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.parquet").write_bytes(b"this is not parquet at all" * 10)
    for name in ("cut.parquet", "junk.parquet"):
        with pytest.raises(TispipeError, match=rf"{name}: not a readable Parquet file"):
            load(tmp_path / name)


def test_broken_csv_names_file_and_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,chosen,rejected\nQ,yes,no\nQ,"unclosed"x,no\n')
    with pytest.raises(TispipeError, match=r"d\.csv, line 3: bad CSV"):
        load(path)
    path.write_text("prompt,chosen,rejected\nQ,yes,no\nQ,yes\n")
    with pytest.raises(TispipeError, match=r"d\.csv, line 3: row has a different number of fields"):
        load(path)
    path.write_text("prompt,chosen,rejected\nQ,yes,no,extra\n")
    with pytest.raises(TispipeError, match=r"d\.csv, line 2: row has a different number of fields"):
        load(path)


# ---------------------------------------------------------------- tokenization and report


def test_tokenize_pairs_drops_no_room_and_counts_truncation(tmp_path, tiny_tokenizer_no_template):
    tok = tiny_tokenizer_no_template
    long = "please tell me about bread " * 30
    write_jsonl(tmp_path / "d.jsonl", [*ROWS, {"pair_id": "long", "prompt": "Q", "chosen": long, "rejected": "No."}, {"pair_id": "empty", "prompt": "", "chosen": "x", "rejected": "y"}])
    opts = DataOptions(data=str(tmp_path / "d.jsonl"), max_length=40, max_prompt_length=20)
    rows, report = load_pairs(opts)
    pairs = tokenize_pairs(rows, tok, opts, report)
    assert [p.pair_id for p in pairs] == ["a", "b", "c", "long"]
    assert report.kept == 4 and report.truncated == 1 and report.dropped == {"prompt has no tokens": 1}
    first = pairs[0]
    assert first.prompt_ids == encode_prompt(tok, ROWS[0]["prompt"]) and first.chosen_ids == encode_response(tok, ROWS[0]["chosen"])
    assert first.extra == {"chosen_spans": [[0, 4, 1]]} and not first.truncated
    assert pairs[3].truncated and len(pairs[3].prompt_ids) + len(pairs[3].chosen_ids) == 40

    write_jsonl(tmp_path / "two.jsonl", ROWS[:2])
    assert all(len(encode_prompt(tok, r["prompt"])) >= 4 for r in ROWS[:2])
    tight = DataOptions(data=str(tmp_path / "two.jsonl"), max_length=4, max_prompt_length=8)
    rows, report = load_pairs(tight)
    with pytest.raises(TispipeError, match="no pair fits max_length 4"):
        tokenize_pairs(rows, tok, tight, report)
    assert report.dropped == {"prompt leaves no room for a response": 2}
    strict = DataOptions(data=tight.data, max_length=4, max_prompt_length=8, strict=True)
    rows, report = load_pairs(strict)
    with pytest.raises(TispipeError, match="pair 'a': prompt leaves no room"):
        tokenize_pairs(rows, tok, strict, report)


def test_print_report(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", ROWS + [BAD_ROWS[4][0]])
    _, report = load(tmp_path / "d.jsonl")
    out = io.StringIO()
    print_report(report, Console(file=out, width=120))
    text = out.getvalue()
    assert "Detected format: standard" in text
    assert "dropped: chosen identical to rejected" in text and "kept" in text
    assert report.to_dict()["dropped"] == {"chosen identical to rejected": 1}


def test_hub_names_go_to_load_dataset_streaming_when_limited(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split=None, streaming=False):
        calls.append((name, split, streaming))
        if name == "someone/missing":
            raise datasets.exceptions.DatasetNotFoundError("Dataset 'someone/missing' doesn't exist on the Hub")
        return iter(ROWS)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows, report = load("someone/prefs", split="test", limit=2)
    assert [r["pair_id"] for r in rows] == ["a", "b"] and report.source == "hub:someone/prefs"
    load("someone/prefs")
    assert calls == [("someone/prefs", "test", True), ("someone/prefs", "train", False)]
    with pytest.raises(TispipeError, match="could not load 'someone/missing' split 'train' from the hub"):
        load("someone/missing")
