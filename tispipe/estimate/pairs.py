"""The pairs `tispipe estimate` scores, read from the source twice instead of held in memory.

`survey` reads and tokenizes every pair once and keeps only what the run needs before scoring: the
count, the token counts, the data report and the fingerprint of the pairs as tokenized (the prompt
method also checks here that the two system prompts render differently). `shard_chunks` then reads them
again, one shard's pairs at a time, so scoring holds one shard whatever the size of the data set, and
checks that the source still gives the pairs the survey fingerprinted. Building pi+/pi- by SFT or DPO
trains on every pair, so only then does `all_pairs` hold them all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tispipe.configs import EstimateConfig
from tispipe.data import pairs as data
from tispipe.data.pairs import DataReport, TokenizedPair, as_text
from tispipe.errors import TispipeError


@dataclass
class Survey:
    pairs: int
    tokens: dict[str, int]  # response tokens per side: {"chosen": n, "rejected": n}
    report: DataReport
    fingerprint: str  # short sha256 of the pairs as tokenized (ids, texts, labels), in order


def _stream(cfg: EstimateConfig, tokenizer) -> tuple[Iterator[TokenizedPair], DataReport]:
    """The data's pairs read and tokenized as train reads them (the one tokenization), with token labels."""
    opts = cfg.data_options()
    rows, report = data.read_rows(opts)
    return data.iter_tokenized(rows, tokenizer, opts, report, labels=True), report


def _record(pair: TokenizedPair) -> bytes:
    record = [pair.pair_id, as_text(pair.prompt), as_text(pair.chosen), as_text(pair.rejected), pair.prompt_ids, pair.chosen_ids, pair.rejected_ids,
              pair.chosen_labels, pair.rejected_labels]
    return json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"


def _hashed(pairs: Iterable[TokenizedPair], digest) -> Iterator[TokenizedPair]:
    """The pairs, each added to `digest` as it passes: the fingerprint of a stream read once."""
    for pair in pairs:
        digest.update(_record(pair))
        yield pair


def fingerprint_pairs(pairs: Iterable[TokenizedPair]) -> str:
    """Short sha256 of the pairs as tokenized (ids, texts, labels), in order."""
    digest = hashlib.sha256()
    for _ in _hashed(pairs, digest):
        pass
    return digest.hexdigest()[:16]


def contrast_prompts(cfg: EstimateConfig, tokenizer, pair: TokenizedPair) -> tuple[list[int], list[int]]:
    """The prompt method's pi+ and pi- prompts of a pair: its prompt under --pos-prompt and --neg-prompt.

    Only the prompt differs between pi+ and pi-: the response ids are the stored ones. The system-prompted
    prompt is not cut to --max-prompt-length (that would cut the system prompt first).
    """
    from tispipe.data.tokenization import encode_prompt

    pos = encode_prompt(tokenizer, pair.prompt, cfg.pos_prompt, cfg.chat_template)
    neg = encode_prompt(tokenizer, pair.prompt, cfg.neg_prompt, cfg.chat_template)
    if pos == neg:
        raise TispipeError(
            f"pair {pair.pair_id!r}: the positive and negative system prompts render to the same prompt "
            "(a conversation that brings its own system message keeps it)",
            hint="use --method sft/dpo for data with system messages",
        )
    return pos, neg


def survey(cfg: EstimateConfig, tokenizer) -> Survey:
    """One pass over the data, keeping counts and the fingerprint, not the pairs."""
    pairs, report = _stream(cfg, tokenizer)
    digest, count, tokens = hashlib.sha256(), 0, {"chosen": 0, "rejected": 0}
    for pair in _hashed(pairs, digest):
        count += 1
        tokens["chosen"] += len(pair.chosen_ids)
        tokens["rejected"] += len(pair.rejected_ids)
        if cfg.scores_by_prompt():
            contrast_prompts(cfg, tokenizer, pair)
    return Survey(count, tokens, report, digest.hexdigest()[:16])


def shard_chunks(cfg: EstimateConfig, tokenizer, size: int, expected: Survey) -> Iterator[list[TokenizedPair]]:
    """The pairs again, `size` at a time in data order (the last chunk may be shorter); at the end, an error
    if they are not the ones `expected` counted and fingerprinted (the source changed during the run)."""
    pairs, _ = _stream(cfg, tokenizer)
    digest, count, chunk = hashlib.sha256(), 0, []
    for pair in _hashed(pairs, digest):
        count += 1
        chunk.append(pair)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
    if count != expected.pairs or digest.hexdigest()[:16] != expected.fingerprint:
        raise TispipeError(f"{expected.report.source} changed while estimate read it ({count} pairs now, {expected.pairs} at the start)",
                           hint="once the data no longer changes, run again with --overwrite")


def all_pairs(cfg: EstimateConfig, tokenizer) -> list[TokenizedPair]:
    """Every pair in memory: what building pi+/pi- by SFT or DPO trains on."""
    return list(_stream(cfg, tokenizer)[0])
