"""Named parts cut out of a text (``core/promptcut.py``)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from promptbodies import ENVIRONMENT_332

from prefixgate.core.promptcut import _STARTS, cut_named


def test_cut_named_gives_the_text_back() -> None:
    text = "intro\n" + ENVIRONMENT_332 + "# Other\nrest\ngitStatus: clean\n"
    parts = cut_named(text)
    assert "".join(part for _, part in parts) == text
    assert [kind for kind, _ in parts] == [None, "environment", None, "git_status"]
    assert cut_named("") == [(None, "")]


# The cut as first written: one multi-line pattern run over the whole text. The
# module finds the same places by looking for the lines that can match first.
_STOPS = re.compile(
    r"^(?:# |gitStatus: |The following deferred tools |Available agent types|"
    r"The following skills |Today's date is )",
    re.M,
)


def _reference(text: str) -> list[tuple[str | None, str]]:
    parts: list[tuple[str | None, str]] = []
    pos = 0
    for match in _STARTS.finditer(text):
        if match.start() < pos:
            continue
        kind = str(match.lastgroup)
        line_end = text.find("\n", match.end())
        if line_end < 0:
            end = len(text)
        elif kind == "date":
            end = line_end + 1
        else:
            if kind == "deferred_tools":
                blank = text.find("\n\n", line_end)
                end = len(text) if blank < 0 else blank + 1
            else:
                stop = _STOPS.search(text, line_end + 1)
                end = len(text) if stop is None else stop.start()
            while end < len(text) and text[end] == "\n":
                end += 1
        if match.start() > pos:
            parts.append((None, text[pos : match.start()]))
        parts.append((kind, text[match.start() : end]))
        pos = end
    if pos < len(text) or not parts:
        parts.append((None, text[pos:]))
    return parts


_FRAGMENTS = st.sampled_from(
    [
        "\n",
        "\n\n",
        "# Environment",
        "# Environments",
        "gitStatus: ",
        "# gitStatus",
        "# gitStatusX",
        "The following deferred tools are now available via ToolSearch",
        "The following deferred tools ",
        "# currentDate\n",
        "Today's date is ",
        "2026-01-01",
        "# ",
        "Available agent types",
        "The following skills ",
        "x",
        " ",
        "é",
    ]
)


@given(st.lists(_FRAGMENTS, max_size=40).map("".join))
@settings(max_examples=400, deadline=None)
def test_cut_named_matches_the_one_pattern_cut(text: str) -> None:
    assert cut_named(text) == _reference(text)
    assert "".join(part for _, part in cut_named(text)) == text


def test_cut_named_on_the_recorded_prompts() -> None:
    for text in (ENVIRONMENT_332, "intro\n" + ENVIRONMENT_332 + "# Other\nrest\ngitStatus: x\n"):
        assert cut_named(text) == _reference(text)
