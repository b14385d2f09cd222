"""The toy task's ideal contrastive pair: the log-ratio r_t an exact pi+ / pi- would give, and its AUCs.

On the toy set (tispipe.data.toy) a pair's two responses are built from the same sentences; they differ only
in the phrases of their slots. So the ideal pi+ (the distribution of chosen responses) and pi- (of
rejected ones) agree on every token outside a slot, r_t = 0 there, and inside a slot

    r_t = log P_c(y_t | slot tokens y_<t, topic) - log P_r(y_t | slot tokens y_<t, topic)
    P_side(y_t | prefix, topic) = P_side(prefix + y_t | topic) / P_side(prefix | topic)

where P_side(prefix | topic) sums, over the bank phrases (helpful, harmful and neutral) whose tokens
start with the prefix, each phrase's frequency in the slots of that side's responses on that topic, as
counted in a large generated set. It is the log-ratio of Eq. 5 with pi+ and pi- replaced by the
generator itself, conditioned on the topic (not on the phrases the response used before).

What it shows: the first token of a decisive span, where the decision-token AUC looks, is often
shared by phrases of both labels ("take your time" is helpful, "take double the dose" harmful), so
even the ideal pair gives it the wrong sign on some topics. Its decision-token AUC is what a contrastive
log-ratio that knows the data exactly would reach, a reference for the estimated ones.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from tispipe.artifacts.weight_quality import AUC_KINDS, DECISIVE_LABEL, LOGRATIO_SIGN
from tispipe.core.metrics import auc
from tispipe.core.token_histograms import token_classes
from tispipe.data import toy
from tispipe.data.tokenization import token_labels

BANK = sorted({*toy.PHRASE_LABELS, *toy.NEUTRAL_ACTIONS})
_NEUTRAL_RE = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, toy.NEUTRAL_ACTIONS)) + r")(?!\w)", re.IGNORECASE)
SMOOTHING = 0.5  # added to every bank phrase's count, so no prefix has probability 0 on either side


def topic_of(prompt: str) -> str:
    """The toy topic a prompt is about (each prompt names exactly one)."""
    found = [topic for topic in toy.TOPICS if topic in prompt]
    if len(found) != 1:
        raise ValueError(f"prompt {prompt!r} names {len(found)} toy topics, expected 1")
    return found[0]


def slots(text: str, spans: Sequence[Sequence[int]]) -> list[tuple[int, int, str]]:
    """(char_start, char_end, phrase in lower case) of each slot: the labelled spans and the neutral actions."""
    found = [(int(s), int(e), text[s:e].lower()) for s, e, _ in spans]
    found += [(m.start(), m.end(), m.group().lower()) for m in _NEUTRAL_RE.finditer(text)]
    return sorted(found)


def phrase_counts(rows: Iterable[dict]) -> dict[tuple[str, str], Counter]:
    """{(side, topic): Counter of slot phrases} over the rows' chosen and rejected responses."""
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for row in rows:
        topic = topic_of(row["prompt"])
        for side in LOGRATIO_SIGN:
            counts[side, topic].update(p for _, _, p in slots(row[side], row[f"{side}_spans"]))
    return counts


class IdealPair:
    """r_t of the ideal contrastive pair, from slot-phrase counts (`phrase_counts`) and a tokenizer."""

    def __init__(self, tokenizer, counts: dict[tuple[str, str], Counter]):
        self.tokenizer = tokenizer
        self.counts = counts
        # the phrases' tokens as they follow a space, in lower case and capitalised ("{P}." frames)
        self.tokens = {(p, capital): self._phrase_tokens(p[0].upper() + p[1:] if capital else p) for p in BANK for capital in (False, True)}
        self._prefix_logp: dict[tuple, float] = {}

    def _phrase_tokens(self, phrase: str) -> tuple[int, ...]:
        """The tokens that overlap the phrase's characters when it follows a space, as in a response."""
        encoded = self.tokenizer(" " + phrase, add_special_tokens=False, return_offsets_mapping=True)
        return tuple(t for t, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"]) if b > 1 and a < len(phrase) + 1)

    def prefix_logp(self, side: str, topic: str, capital: bool, prefix: tuple[int, ...]) -> float:
        """log P_side(the slot's tokens start with `prefix` | topic), smoothed."""
        key = (side, topic, capital, prefix)
        if key not in self._prefix_logp:
            counts = self.counts.get((side, topic), Counter())
            mass = sum(counts[p] + SMOOTHING for p in BANK if self.tokens[p, capital][: len(prefix)] == prefix)
            total = sum(counts.values()) + SMOOTHING * len(BANK)
            self._prefix_logp[key] = math.log(mass / total) if mass else -math.inf
        return self._prefix_logp[key]

    def logratios(self, prompt: str, text: str, spans: Sequence[Sequence[int]], ids: Sequence[int]) -> np.ndarray:
        """(T,) r_t for the response's stored token ids (its text's tokens, then EOS): 0 outside the slots."""
        topic = topic_of(prompt)
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        r = np.zeros(len(ids))
        for start, end, phrase in slots(text, spans):
            inside = [t for t, (a, b) in enumerate(offsets[: len(ids)]) if a < end and start < b]
            if phrase not in BANK:
                raise ValueError(f"{phrase!r} in {text!r} is not one of the toy task's phrases")
            capital = text[start].isupper()
            slot_ids = tuple(int(ids[t]) for t in inside)
            if slot_ids != self.tokens[phrase, capital][: len(slot_ids)]:
                raise ValueError(f"the tokens of {phrase!r} in {text!r} differ from the phrase's own tokens")
            for j, t in enumerate(inside):
                step = {side: self.prefix_logp(side, topic, capital, slot_ids[: j + 1]) - self.prefix_logp(side, topic, capital, slot_ids[:j])
                        for side in ("chosen", "rejected")}
                r[t] = step["chosen"] - step["rejected"]  # log pi+(y_t) - log pi-(y_t), pi+ = chosen text
        return r


def decision_aucs(pair: IdealPair, rows: Iterable[dict]) -> dict[str, float | None]:
    """The ideal pair's AUCs of r_t on `rows`, sign-turned per side as in tispipe.artifacts.weight_quality.

    Keys "<side>" (all tokens: the decisive spans' tokens against the side's other labelled ones) and
    "<side>_decision" (each decisive span's first token against the neutral tokens).
    """
    scores: dict[str, list[np.ndarray]] = defaultdict(list)
    classes: dict[str, list[np.ndarray]] = defaultdict(list)
    for side, text, spans, ids, signed in _signed_logratios(pair, rows):
        labels = np.array(token_labels(pair.tokenizer, text, spans, ids))
        starts = np.zeros(len(ids), dtype=bool)
        starts[0] = True
        scores[side].append(signed)
        classes[side].append(token_classes(labels, starts, DECISIVE_LABEL[side]))
    out: dict[str, float | None] = {}
    for side in LOGRATIO_SIGN:
        score, cls = np.concatenate(scores[side]), np.concatenate(classes[side])
        for suffix, positive, negative in AUC_KINDS:
            keep = np.isin(cls, positive + negative)
            out[side + suffix] = auc(score[keep].tolist(), np.isin(cls[keep], positive).tolist())
    return out


def wrong_sign_phrases(pair: IdealPair, rows: Iterable[dict]) -> Counter:
    """Counter of (side, phrase) whose decisive span's first token the ideal pair scores <= 0 (sign-turned)."""
    wrong: Counter = Counter()
    for side, text, spans, _, signed in _signed_logratios(pair, rows):
        offsets = pair.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for start, end, label in spans:
            first = next(t for t, (a, b) in enumerate(offsets) if a < end and start < b)
            if label == DECISIVE_LABEL[side] and signed[first] <= 0:
                wrong[side, text[start:end].lower()] += 1
    return wrong


def _signed_logratios(pair: IdealPair, rows: Iterable[dict]):
    """(side, text, spans, stored ids, r_t sign-turned so that higher is more decisive) per response."""
    for row in rows:
        for side, sign in LOGRATIO_SIGN.items():
            text, spans = row[side], row[f"{side}_spans"]
            ids = [*pair.tokenizer.encode(text, add_special_tokens=False), pair.tokenizer.eos_token_id]
            yield side, text, spans, ids, sign * pair.logratios(row["prompt"], text, spans, ids)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the ideal pair's AUCs on a split: python -m tispipe.studies.ideal_pair --model runs/base --data data/toy/test.jsonl"""
    import argparse
    import json

    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="folder with the tokenizer (the toy base)")
    parser.add_argument("--data", required=True, help="toy pairs (JSONL) to score")
    parser.add_argument("--pairs", type=int, default=100_000, help="generated train pairs the phrase frequencies are counted on")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated pairs")
    parser.add_argument("--counts-from", help="count the frequencies on this JSONL instead of generated pairs")
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.counts_from:
        with open(args.counts_from) as f:
            source = [json.loads(line) for line in f]
    else:
        source = toy.generate(args.pairs, args.seed, "train")
    with open(args.data) as f:
        rows = [json.loads(line) for line in f]
    pair = IdealPair(tokenizer, phrase_counts(source))
    print(json.dumps({"auc_of_r": decision_aucs(pair, rows), "wrong_sign_first_tokens": {
        f"{side}: {phrase}": n for (side, phrase), n in wrong_sign_phrases(pair, rows).most_common()}}, indent=1))


if __name__ == "__main__":
    main()
