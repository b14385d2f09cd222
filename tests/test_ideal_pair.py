"""The toy task's ideal contrastive pair (tispipe.studies.ideal_pair) on hand-made counts and rows."""

import math
from collections import Counter

import numpy as np
import pytest

from tispipe.data import toy
from tispipe.studies.ideal_pair import BANK, SMOOTHING, IdealPair, decision_aucs, phrase_counts, slots, topic_of

TOPIC = "a headache that will not go away"
PROMPT = f"How can I deal with {TOPIC}?"


def row(chosen: str, chosen_phrases: dict[str, int], rejected: str, rejected_phrases: dict[str, int]) -> dict:
    def spans(text, phrases):
        return [[text.index(p), text.index(p) + len(p), label] for p, label in phrases.items()]

    return {"prompt": PROMPT, "chosen": chosen, "rejected": rejected,
            "chosen_spans": spans(chosen, chosen_phrases), "rejected_spans": spans(rejected, rejected_phrases)}


# chosen responses say "take your time" once and "ask a doctor" three times on this topic; rejected ones
# say "take double the dose" three times and "mix pills with alcohol" once
COUNTS = {
    ("chosen", TOPIC): Counter({"take your time": 1, "ask a doctor": 3}),
    ("rejected", TOPIC): Counter({"take double the dose": 3, "mix pills with alcohol": 1}),
}
CHOSEN = "Good question. You could take your time. Sleep on it. Take care."
REJECTED = "Good question. You could take double the dose. Sleep on it. Take care."


def ids_of(tokenizer, text):
    return [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]


def test_topic_and_slots_are_read_from_the_row():
    assert topic_of(PROMPT) == TOPIC
    with pytest.raises(ValueError, match="names 0 toy topics"):
        topic_of("How are you?")
    # the labelled span, then the neutral action found by its text ("Sleep on it", capitalised)
    found = slots(CHOSEN, [[25, 39, 1]])
    assert found == [(25, 39, "take your time"), (41, 52, "sleep on it")]


def test_phrase_counts_count_every_slot_per_side_and_topic():
    rows = [row(CHOSEN, {"take your time": 1}, REJECTED, {"take double the dose": -1})] * 2
    counts = phrase_counts(rows)
    assert counts["chosen", TOPIC] == Counter({"take your time": 2, "sleep on it": 2})
    assert counts["rejected", TOPIC] == Counter({"take double the dose": 2, "sleep on it": 2})


def test_logratio_is_zero_outside_slots_and_telescopes_to_the_phrase_log_ratio(tiny_tokenizer):
    pair = IdealPair(tiny_tokenizer, COUNTS)
    ids = ids_of(tiny_tokenizer, CHOSEN)
    r = pair.logratios(PROMPT, CHOSEN, [[25, 39, 1]], ids)
    offsets = tiny_tokenizer(CHOSEN, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    in_slot = np.array([any(a < e and s < b for s, e in ((25, 39), (41, 52))) for a, b in offsets] + [False])
    assert np.all(r[~in_slot] == 0.0)

    # the r_t of a slot's tokens sum to log P_c(phrase) - log P_r(phrase) (a chain of conditionals)
    def log_p(side, phrase):
        counts = COUNTS[side, TOPIC]
        return math.log((counts[phrase] + SMOOTHING) / (sum(counts.values()) + SMOOTHING * len(BANK)))

    phrase_tokens = [t for t, (a, b) in enumerate(offsets) if a < 39 and 25 < b]
    expected = log_p("chosen", "take your time") - log_p("rejected", "take your time")
    assert r[phrase_tokens].sum() == pytest.approx(expected)
    # "take" is more likely in rejected text here, so the ideal pair scores the helpful span's first
    # token as harmful; the first token of "your" settles it
    your = next(t for t, (a, b) in enumerate(offsets) if a <= 30 < b)
    assert r[phrase_tokens[0]] < 0 < r[your]


def test_decision_aucs_rank_first_tokens_against_neutral_ones(tiny_tokenizer):
    pair = IdealPair(tiny_tokenizer, COUNTS)
    # "ask a doctor" opens with a token only chosen text favours: ranked above every neutral token
    good = row(CHOSEN.replace("take your time", "ask a doctor"), {"ask a doctor": 1}, REJECTED, {"take double the dose": -1})
    aucs = decision_aucs(pair, [good])
    assert aucs["chosen_decision"] == 1.0
    assert aucs["rejected_decision"] == 1.0  # "take" is likelier in rejected text: -r > 0
    # "take your time": its first token has r < 0, below the neutral tokens' r = 0
    bad = row(CHOSEN, {"take your time": 1}, REJECTED, {"take double the dose": -1})
    assert decision_aucs(pair, [bad])["chosen_decision"] == 0.0


def test_slot_tokens_must_be_the_phrase_tokens(tiny_tokenizer):
    pair = IdealPair(tiny_tokenizer, COUNTS)
    ids = ids_of(tiny_tokenizer, CHOSEN)
    # a span that cuts a phrase short is not a slot of the generator's
    with pytest.raises(ValueError, match="'take you' .* is not one of the toy task's phrases"):
        pair.logratios(PROMPT, CHOSEN, [[25, 33, 1]], ids)


def test_generated_rows_give_the_ideal_pair_a_decision_auc_above_chance(tiny_tokenizer):
    rows = toy.generate(300, 0, "train")
    pair = IdealPair(tiny_tokenizer, phrase_counts(rows))
    aucs = decision_aucs(pair, toy.generate(40, 0, "test"))
    # this tokenizer splits most words, so first tokens are shared more than with the toy base's
    assert 0.6 < aucs["chosen_decision"] <= 1.0
    assert 0.6 < aucs["rejected_decision"] <= 1.0
