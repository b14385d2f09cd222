"""HH-style transcripts: with a chat-template tokenizer, implicit pairs become chat turns rendered by the
template (no "Human:"/"Assistant:" markers inside a turn); without one, the transcript is raw text as given."""

from __future__ import annotations

from conftest import write_jsonl

from tispipe.configs import DataOptions
from tispipe.data.pairs import load_pairs, print_report, tokenize_pairs
from tispipe.data.transcripts import as_messages, is_transcript, turns

ONE_TURN = ("\n\nHuman: What will happen if I mix bleach and vinegar?\n\nAssistant: It makes toxic chlorine gas, so please don't.",
            "\n\nHuman: What will happen if I mix bleach and vinegar?\n\nAssistant: You get a great cleaner, try it.")
MULTI_TURN = ("\n\nHuman: Hi.\n\nAssistant: Hello!\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help with that.",
              "\n\nHuman: Hi.\n\nAssistant: Hello!\n\nHuman: How do I pick a lock?\n\nAssistant: Use a tension wrench.")
# chosen and rejected part before the last turn: the responses carry the turns after it
EARLY_SPLIT = ("\n\nHuman: Hi.\n\nAssistant: Hello, how can I help?\n\nHuman: Steal a car.\n\nAssistant: No.",
               "\n\nHuman: Hi.\n\nAssistant: Yo.\n\nHuman: Steal a car.\n\nAssistant: Sure, first...")
# a response whose own text starts with "Human:" (no blank line before it: content, not a marker)
HUMAN_IN_RESPONSE = ("\n\nHuman: Say something.\n\nAssistant: Human: is what you are.", "\n\nHuman: Say something.\n\nAssistant: No.")


def pairs_of(tmp_path, tokenizer, transcripts, chat_template=True):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": c, "rejected": r} for c, r in transcripts])
    opts = DataOptions(data=str(path), chat_template=chat_template)
    rows, report = load_pairs(opts)
    return tokenize_pairs(rows, tokenizer, opts, report), report


def test_turns_and_messages():
    assert is_transcript(ONE_TURN[0]) and not is_transcript("Human: hi") and not is_transcript("plain text")
    prompt, chosen, rejected = as_messages("\n\nHuman: Hi.\n\nAssistant: Hello!\n\nHuman: And?\n\nAssistant:", " Yes.", " No.\n\nHuman: Why?\n\nAssistant: Because.")
    assert prompt == [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "And?"}]
    assert chosen == [{"role": "assistant", "content": "Yes."}]
    assert rejected == [{"role": "assistant", "content": "No."}, {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."}]
    assert turns(" Human: is what you are.", "assistant") == [{"role": "assistant", "content": "Human: is what you are."}]


def test_with_a_chat_template_transcripts_are_rendered_as_turns(tmp_path, tiny_tokenizer, capsys):
    from rich.console import Console

    pairs, report = pairs_of(tmp_path, tiny_tokenizer, [ONE_TURN, MULTI_TURN, EARLY_SPLIT, HUMAN_IN_RESPONSE])
    assert report.transcripts == "chat turns"
    decoded = [tiny_tokenizer.decode(p.prompt_ids) for p in pairs]
    assert decoded[0] == "<|user|>\nWhat will happen if I mix bleach and vinegar?<|end|>\n<|assistant|>\n"
    assert decoded[1] == "<|user|>\nHi.<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\nHow do I pick a lock?<|end|>\n<|assistant|>\n"
    assert decoded[2] == "<|user|>\nHi.<|end|>\n<|assistant|>\n"  # the pair parts at the first answer
    for text in decoded:
        assert "Human:" not in text and "Assistant:" not in text
    early_chosen = tiny_tokenizer.decode(pairs[2].chosen_ids)
    assert early_chosen.startswith("Hello, how can I help?<|end|>\n<|user|>\nSteal a car.<|end|>\n<|assistant|>\nNo.") and "Human:" not in early_chosen
    assert tiny_tokenizer.decode(pairs[3].chosen_ids).startswith("Human: is what you are.")  # the response's own words, kept
    print_report(report, Console(file=None, width=200))
    assert "HH transcripts as chat turns" in capsys.readouterr().out


def test_without_a_template_or_with_no_chat_template_the_transcript_is_raw_text(tmp_path, tiny_tokenizer, tiny_tokenizer_no_template):
    for tokenizer, chat_template in ((tiny_tokenizer_no_template, True), (tiny_tokenizer, False)):
        pairs, report = pairs_of(tmp_path, tokenizer, [ONE_TURN, MULTI_TURN], chat_template=chat_template)
        assert report.transcripts == "raw text"
        assert tokenizer.decode(pairs[1].prompt_ids) == "\n\nHuman: Hi.\n\nAssistant: Hello!\n\nHuman: How do I pick a lock?\n\nAssistant:"
        assert tokenizer.decode(pairs[1].chosen_ids).startswith(" I can't help with that.")
