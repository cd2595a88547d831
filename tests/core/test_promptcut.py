"""Named parts cut out of a text (``core/promptcut.py``)."""

from __future__ import annotations

from promptbodies import ENVIRONMENT_332

from prefixgate.core.promptcut import cut_named


def test_cut_named_gives_the_text_back() -> None:
    text = "intro\n" + ENVIRONMENT_332 + "# Other\nrest\ngitStatus: clean\n"
    parts = cut_named(text)
    assert "".join(part for _, part in parts) == text
    assert [kind for kind, _ in parts] == [None, "environment", None, "git_status"]
    assert cut_named("") == [(None, "")]
