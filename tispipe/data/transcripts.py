"""Anthropic-HH-style transcripts ("\n\nHuman: ...\n\nAssistant: ...") as chat messages.

An implicit pair's prompt is the shared transcript up to its last "\n\nAssistant:" marker; its
responses are the rest, possibly more turns. With a chat-template tokenizer these become messages
(Human -> user, Assistant -> assistant, in order), so the template alone marks the roles and no
"Human:"/"Assistant:" marker is left inside a turn. Text that merely starts with "Human:" without the
blank line before it (it happens in the real data) is a turn's content, kept as written.
"""

from __future__ import annotations

import re

ROLES = {"Human": "user", "Assistant": "assistant"}
MARKER = re.compile(r"\n\n(Human|Assistant):")


def is_transcript(text: str) -> bool:
    """Whether `text` is an HH transcript: it begins with a Human turn and has an Assistant marker."""
    return isinstance(text, str) and MARKER.match(text) is not None and text.startswith("\n\nHuman:") and "\n\nAssistant:" in text


def turns(text: str, first_role: str | None = None) -> list[dict[str, str]]:
    """The messages of a transcript piece: one per marker, the one space after a marker dropped. Text before
    the first marker (a response's own first turn) belongs to `first_role`."""
    messages: list[dict[str, str]] = []
    parts = MARKER.split(text)  # [before, role, content, role, content, ...]
    if parts[0] and first_role is not None:
        messages.append({"role": first_role, "content": _content(parts[0])})
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": ROLES[role], "content": _content(content)})
    return messages


def _content(text: str) -> str:
    return text[1:] if text.startswith(" ") else text


def as_messages(prompt: str, chosen: str, rejected: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt messages, chosen messages, rejected messages) of an implicit HH pair split by `pairs.split_implicit`.

    The prompt's trailing empty Assistant turn is the generation prompt the template adds, so it is dropped;
    each response starts with the assistant turn it answers and keeps any turns after it.
    """
    messages = turns(prompt)
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"].strip():
        messages = messages[:-1]
    return messages, turns(chosen, "assistant"), turns(rejected, "assistant")
