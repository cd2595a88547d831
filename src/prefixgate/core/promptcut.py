"""Named parts of a text: the pieces the prompt model cuts out of the text they sit in.

Claude Code puts the environment, the git status, the deferred-tool list and
today's date inside other text (a system block, the ``role: "system"``
message, a context reminder), and where depends on its version (see
``core/prompt.py`` for the two layouts). ``cut_named(text)`` splits such a text
into those named parts and the rest, in order, so the walk can give each its
own piece; ``deferred_names`` reads the tool names out of a deferred-tools
paragraph.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_STARTS = re.compile(
    r"^(?:(?P<environment># Environment\b)"
    r"|(?P<git_status>gitStatus: |# gitStatus\b)"
    r"|(?P<deferred_tools>The following deferred tools are now available)"
    r"|(?P<date>(?:# currentDate\n)?Today's date is ))",
    re.M,
)
# What each of those starts with: ``_STARTS`` can match only at a line start
# holding one of these, so they are looked for first (``str.find`` is much
# faster than running the pattern at every position of a long text).
_START_LEADS = (
    "# Environment",
    "gitStatus: ",
    "# gitStatus",
    "The following deferred tools are now available",
    "# currentDate\n",
    "Today's date is ",
)
# Where an environment or git status section ends: the next line that starts
# with a heading or a named paragraph.
_STOP_LEADS = (
    "# ",
    "gitStatus: ",
    "The following deferred tools ",
    "Available agent types",
    "The following skills ",
    "Today's date is ",
)


def cut_named(text: str) -> list[tuple[str | None, str]]:
    """``text`` as ``(section, part)`` in order: the named parts (environment,
    git status, deferred tools, date) and the rest (section ``None``).

    Joining the parts gives ``text`` back.
    """
    parts: list[tuple[str | None, str]] = []
    pos = 0
    for match in _matches(text):
        if match.start() < pos:
            continue
        kind = str(match.lastgroup)
        end = _end_of(text, kind, match)
        if match.start() > pos:
            parts.append((None, text[pos : match.start()]))
        parts.append((kind, text[match.start() : end]))
        pos = end
    if pos < len(text) or not parts:
        parts.append((None, text[pos:]))
    return parts


def _matches(text: str) -> Iterator[re.Match[str]]:
    """What ``_STARTS.finditer(text)`` yields, trying only the lines that may match."""
    starts = {0} if text.startswith(_START_LEADS) else set()
    for lead in _START_LEADS:
        at = text.find("\n" + lead)
        while at >= 0:
            starts.add(at + 1)
            at = text.find("\n" + lead, at + 1)
    scanned = 0  # finditer's matches do not overlap
    for start in sorted(starts):
        match = _STARTS.match(text, start) if start >= scanned else None
        if match is not None:
            scanned = match.end()
            yield match


def _next_stop(text: str, line_end: int) -> int:
    """Where the first line after ``line_end`` (a newline) that starts a new section begins."""
    found = [text.find("\n" + lead, line_end) for lead in _STOP_LEADS]
    return min((at + 1 for at in found if at >= 0), default=len(text))


def _end_of(text: str, kind: str, match: re.Match[str]) -> int:
    line_end = text.find("\n", match.end())
    if line_end < 0:
        return len(text)
    if kind == "date":
        return line_end + 1
    if kind == "deferred_tools":
        blank = text.find("\n\n", line_end)
        end = len(text) if blank < 0 else blank + 1
    else:
        end = _next_stop(text, line_end)
    while end < len(text) and text[end] == "\n":
        end += 1
    return end


def deferred_names(paragraph: str) -> list[str]:
    """The tool names in a deferred-tools paragraph (one a line after its first)."""
    return [line.strip() for line in paragraph.splitlines()[1:] if line.strip()]
