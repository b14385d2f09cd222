"""The documentation: it describes the project (never the story of its making), its links resolve, the
README stays a front page and quotes the demo as the Makefile runs it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Words about the project's own history. Word-bounded and mostly phrases, so the technical senses stay
# free: a chat turn, an HTTP session, a resumed run's "previous" settings, a run killed "now".
HISTORY = [
    r"\bsessions?\b",
    r"\b(?:this|previous|last|earlier|next|that) turn\b",
    r"\bturn \d+\b",
    r"\b(?:previous|earlier|prior) (?:runs?|sessions?|commits?|versions?|releases?)\b",
    r"\bnot yet\b",
    r"\bnot (?:been )?\w+ yet\b",
    r"\b(?:at|in|as of) this commit\b",
    r"\bthis (?:README|file|page)'s commit\b",
    r"\bwhat changed since\b",
    r"\bpreviously\b",
    r"\bwhen this was (?:built|written|made|measured)\b",
    r"\bwas not re-?run\b",
    r"\b(?:before|after) (?:the|this) (?:change|fix|rewrite|refactor|streaming)\b",
    # a date in prose; a generator's timestamp of a measurement (2026-01-31 12:00:00 UTC) is its record
    r"\b20\d\d-\d\d-\d\d\b(?! \d\d:\d\d:\d\d UTC)",
]
# In prose only: code says "now" and "no longer" about a running process.
PROSE_HISTORY = [
    r"\b(?:is|are|was|were) now\b",
    r"\bnow (?:takes|logs|costs|uses|runs|computes|holds|writes|reads|has|does)\b",
    r"\bno longer\b",
]


def checked_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Makefile"]
    files += sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / "bench").glob("*.md"))
    files += sorted((ROOT / "tispipe").rglob("*.py"))
    return [f for f in files if f.is_file()]


def history_words(text: str, prose: bool = True) -> list[tuple[int, str, str]]:
    """(line number, the words, the line) for every line that speaks of the project's history."""
    patterns = HISTORY + (PROSE_HISTORY if prose else [])
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern in patterns:
            match = re.search(pattern, line, re.IGNORECASE)
            if match:
                found.append((number, match.group(0), line.strip()))
    return found


def test_no_history_words():
    found = [f"{path.relative_to(ROOT)}:{number}: {words!r} in: {line[:120]}"
             for path in checked_files()
             for number, words, line in history_words(path.read_text(encoding="utf-8"), prose=path.suffix != ".py")]
    assert not found, "words about the project's history, not the project:\n" + "\n".join(found)


def test_the_history_check_tells_history_from_technique():
    history = ["As of session 7 this ran faster.", "The previous run gave 3x.", "It has not been profiled yet.",
               "Runs of 2026-12-02.", "The batch now takes this layout.", "It is no longer a cost."]
    assert [number for number, _, _ in history_words("\n".join(history))] == [1, 2, 3, 4, 5, 6]
    technique = ["HH turns become chat turns, each turn marker kept.", "Date: 2026-12-02 01:11:29 UTC.",
                 "the previous settings of a resumed run", "a run killed now keeps its shards"]
    assert history_words("\n".join(technique)) == []
    assert history_words("once the data no longer changes", prose=False) == []


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_resolve():
    missing = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target) or target.startswith("#"):
                    continue
                if not (page.parent / target.split("#")[0]).exists():
                    missing.append(f"{page.relative_to(ROOT)}:{number}: {target}")
    assert not missing, "links to files that do not exist:\n" + "\n".join(missing)


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines; move detail to docs/"
    assert (ROOT / "LICENSE").is_file()


def test_readme_demo_trains_at_the_makefile_lrs():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for loss, variable in [("dpo", "DPO_LR"), ("tisdpo", "TISDPO_LR")]:
        lr = re.search(rf"^{variable} \?= (\S+)$", makefile, re.MULTILINE).group(1)
        assert f"--loss {loss} --lr {lr} " in readme, f"the README's demo trains {loss} at another lr than the Makefile's {variable} = {lr}"
