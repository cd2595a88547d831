"""Comparing two prompt views: where the later one stops extending the earlier one.

``common_pieces(before, after)`` counts the leading pieces two views share (the
shared prefix, since pieces are in render order; see ``core/prompt.py``).
``first_change(before, after)`` names the first piece where ``after`` stops
extending ``before``, with its cause (``CAUSE_OF_SECTION``) and in words a
person reads:

    environment: the working directory differs: /home/dev/proj -> /home/dev/other
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from prefixgate.core.attribution import parse_header
from prefixgate.core.prompt import MCP_PREFIX, SECTIONS, TOOL_SECTIONS, Piece, PromptView
from prefixgate.core.promptcut import deferred_names

CAUSE_OF_SECTION = {
    "attribution": "attribution_changed",
    "system": "system_prompt_changed",
    "tools": "tools_changed",
    "mcp_tools": "mcp_tools_changed",
    "tool_loaded": "tool_loaded",
    "deferred_tools": "deferred_tools_changed",
    "project_context": "project_context_changed",
    "git_status": "git_status_changed",
    "environment": "environment_changed",
    "date": "date_changed",
    "messages": "messages_rewritten",
}
_SHOWN = 100
_DATE = re.compile(r"Today's date is ([^\n]*?)\.?$", re.M)


@dataclass(frozen=True)
class Change:
    """Where a prompt stops extending an earlier one."""

    segment: str  # the piece's name, e.g. "tools:Bash", or "model"
    section: str  # one of SECTIONS, or "model"
    cause: str
    detail: str


# -- comparing ----------------------------------------------------------------


def common_pieces(before: PromptView | None, after: PromptView) -> int:
    """How many leading pieces of ``after`` equal those of ``before``."""
    if before is None or before.model != after.model:
        return 0
    return _common(before.pieces, after.pieces)


def _common(left: Sequence[Piece], right: Sequence[Piece]) -> int:
    count = 0
    for a, b in zip(left, right, strict=False):
        if a is not b and (a.name != b.name or a.digest != b.digest):
            break
        count += 1
    return count


def first_change(
    before: PromptView, after: PromptView, *, across_sessions: bool = False
) -> Change | None:
    """The first place ``after`` stops extending ``before``; ``None`` if it does not.

    A request that repeats ``before`` or appends to it is no change. Where the
    prompts part inside the conversation, a difference in the pieces before
    the first answer (system prompt, tools, context, environment, date) is
    named first: in the 2.1.332 layout they follow the first user message, so
    another conversation of the same project parts there before reaching
    them. One that is shorter (a rewound or compacted conversation) is
    ``messages_rewritten``. ``across_sessions``: ``before`` is another
    session's (only changes the wording).
    """
    if before.model != after.model:
        return Change("model", "model", "model_changed", f"{before.model} -> {after.model}")
    i = common_pieces(before, after)
    if i >= len(before.pieces):
        return None
    old = before.pieces[i]
    new = after.pieces[i] if i < len(after.pieces) else None
    # What belongs to one conversation: its messages, and (seen from another
    # session) the tools it loaded through ToolSearch.
    own = {"messages", "tool_loaded"} if across_sessions else {"messages"}
    if across_sessions and new is not None and _loads_only(before, after, old, new):
        own |= {"tools", "mcp_tools"}  # the other conversation's load reordered tools[]
    if new is not None and not {old.section, new.section} & own:
        return _also(before, after, _change(before, after, old, new, across_sessions))
    head_before = [p for p in before.pieces if p.head and p.section not in own]
    head_after = [p for p in after.pieces if p.head and p.section not in own]
    j = _common(head_before, head_after)
    if j < len(head_before) or j < len(head_after):
        old_head = head_before[j] if j < len(head_before) else None
        new_head = head_after[j] if j < len(head_after) else None
        return _also(before, after, _change(before, after, old_head, new_head, across_sessions))
    if new is None:
        n_old, n_new = before.message_count, after.message_count
        detail = f"conversation is shorter than before ({n_old} -> {n_new} messages)"
        return Change(old.name, old.section, "messages_rewritten", detail)
    if across_sessions and {old.section, new.section} & own & set(TOOL_SECTIONS):
        loaded = ", ".join(before.tool_names("tool_loaded")) or "-"
        detail = f"another conversation: it had loaded {loaded} through ToolSearch"
        return Change(old.name, "messages", "messages_rewritten", detail)
    return _change(before, after, old, new, across_sessions)


def _loads_only(before: PromptView, after: PromptView, old: Piece, new: Piece) -> bool:
    """Whether ``before`` and ``after`` part in the tools only because one of them
    loaded tools through ToolSearch (which can reorder ``tools[]``): the same
    definitions otherwise."""
    if not {old.section, new.section} & set(TOOL_SECTIONS):
        return False
    if not before.section("tool_loaded") and not after.section("tool_loaded"):
        return False

    def defined(view: PromptView) -> set[tuple[str, str]]:
        return {(p.name, p.digest) for p in view.pieces if p.section in ("tools", "mcp_tools")}

    return defined(before) == defined(after)


def _also(before: PromptView, after: PromptView, change: Change) -> Change:
    """``change``, naming a changed working directory too when that is not the change."""
    if change.section == "environment":
        return change
    old, new = _working_directory(before), _working_directory(after)
    if old is None or new is None or old == new:
        return change
    detail = f"{change.detail}; the working directory differs too: {old} -> {new}"
    return Change(change.segment, change.section, change.cause, detail)


def _working_directory(view: PromptView) -> str | None:
    marker = "Primary working directory:"
    for piece in view.section("environment", head_only=True):
        for line in piece.text.splitlines():
            if marker in line:
                return _value(line, marker)
    return None


def _change(
    before: PromptView,
    after: PromptView,
    old: Piece | None,
    new: Piece | None,
    across: bool,
) -> Change:
    sections = [p.section for p in (old, new) if p is not None]
    section = min(sections, key=SECTIONS.index)
    if section in TOOL_SECTIONS:
        return _tools_change(before, after, old, new)
    piece = old if old is not None and old.section == section else new
    assert piece is not None
    cause = CAUSE_OF_SECTION[section]
    if old is None or new is None or old.section != new.section:
        verb = "added" if old is None or old.section != section else "removed"
        return Change(piece.name, section, cause, f"{piece.name} {verb}")
    return Change(piece.name, section, cause, _detail(section, old, new, across))


def _tools_change(
    before: PromptView, after: PromptView, old: Piece | None, new: Piece | None
) -> Change:
    was_loaded = before.tool_names("tool_loaded")
    loaded = [n for n in after.tool_names("tool_loaded") if n not in was_loaded]
    if loaded:
        detail = f"ToolSearch loaded {', '.join(loaded)}: its definition now sits in tools[]"
        return Change(f"tool_loaded:{loaded[0]}", "tool_loaded", "tool_loaded", detail)
    for section in TOOL_SECTIONS:
        old_names, new_names = before.tool_names(section), after.tool_names(section)
        added = [n for n in new_names if n not in old_names]
        removed = [n for n in old_names if n not in new_names]
        if added or removed:
            parts = [f"added {', '.join(added)}"] if added else []
            parts += [f"removed {', '.join(removed)}"] if removed else []
            name = f"{section}:{(added or removed)[0]}"
            return Change(name, section, CAUSE_OF_SECTION[section], "; ".join(parts))
    piece = old if old is not None else new
    assert piece is not None
    cause = CAUSE_OF_SECTION[piece.section]
    if old is not None and new is not None and old.name != new.name:
        a, b = old.name.split(":", 1)[1], new.name.split(":", 1)[1]
        return Change(piece.name, piece.section, cause, f"tools reordered: {a} is now {b}")
    tool = piece.name.split(":", 1)[1]
    fields = _changed_fields(old.text, new.text) if old is not None and new is not None else []
    detail = f"{tool}: {', '.join(fields) or 'definition'} changed"
    return Change(piece.name, piece.section, cause, detail)


# -- details ------------------------------------------------------------------


def _detail(section: str, old: Piece, new: Piece, across: bool) -> str:
    if old.name != new.name:
        return f"{old.name} is now {new.name}"
    if section == "attribution":
        return _attribution_detail(old, new)
    if section == "messages":
        return f"{old.name} ({_role(old.text)}) differs from the earlier request's"
    if section == "environment":
        return _environment_detail(old.text, new.text)
    if section == "date":
        return _date_detail(old.text, new.text)
    if section == "deferred_tools":
        return _deferred_detail(old.text, new.text, across)
    if section == "git_status":
        return f"the git status differs: {_line_detail(old.text, new.text)}"
    return f"{new.name} {_line_detail(old.text, new.text)}"


_ENV_LINES = (
    ("Primary working directory:", "the working directory differs"),
    ("powered by the model", "the model line differs"),
    ("OS Version:", "the OS version differs"),
    ("Platform:", "the platform differs"),
    ("Shell:", "the shell differs"),
    ("Is a git repository:", "whether it is a git repository differs"),
)


def _environment_detail(old: str, new: str) -> str:
    old_lines, new_lines = old.splitlines(), new.splitlines()
    for marker, words in _ENV_LINES:
        a = next((line for line in old_lines if marker in line), None)
        b = next((line for line in new_lines if marker in line), None)
        if a == b:
            continue
        if marker.endswith(":") and a is not None and b is not None:
            return f"{words}: {_value(a, marker)} -> {_value(b, marker)}"
        return f"{words}: {_short(b or '-')} (was {_short(a or '-')})"
    return f"the environment differs: {_line_detail(old, new)}"


def _value(line: str, marker: str) -> str:
    return line.split(marker, 1)[1].strip()


def _date_detail(old: str, new: str) -> str:
    a, b = _DATE.search(old), _DATE.search(new)
    if a is None or b is None:
        return f"the date line differs: {_line_detail(old, new)}"
    return f"a new day: {a.group(1)} -> {b.group(1)} (expected once a day)"


def _deferred_detail(old: str, new: str, across: bool) -> str:
    before, after = deferred_names(old), deferred_names(new)
    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    when = " between these sessions" if across else ""
    parts = []
    for verb, names in (("added", added), ("removed", removed)):
        if not names:
            continue
        servers = {_mcp_server(n) for n in names}
        if len(servers) == 1 and None not in servers:
            parts.append(f"an MCP server was {verb}{when}: {', '.join(names)}")
        else:
            parts.append(f"deferred tools {verb}{when}: {', '.join(names)}")
    if parts:
        return "; ".join(parts)
    if sorted(before) == sorted(after) and before != after:
        return "the deferred tools are listed in another order"
    return f"the deferred tools paragraph differs: {_line_detail(old, new)}"


def _mcp_server(name: str) -> str | None:
    if not name.startswith(MCP_PREFIX):
        return None
    server, sep, _ = name[len(MCP_PREFIX) :].partition("__")
    return server if sep else None


def _attribution_detail(old: Piece, new: Piece) -> str:
    before, after = parse_header(old.text.strip()), parse_header(new.text.strip())
    if before is None or after is None:
        return f"attribution {_line_detail(old.text, new.text)}"
    keys = list(dict.fromkeys([*before.fields, *after.fields]))
    diffs = [
        f"{k} {before.fields.get(k, '-')} -> {after.fields.get(k, '-')}"
        for k in keys
        if before.fields.get(k) != after.fields.get(k)
    ]
    return "; ".join(diffs) or "attribution text changed"


def _line_detail(old: str, new: str) -> str:
    old_lines, new_lines = old.splitlines(), new.splitlines()
    for n, (a, b) in enumerate(zip(old_lines, new_lines, strict=False), start=1):
        if a != b:
            return f"line {n}: {_short(b)} (was {_short(a)})"
    n = min(len(old_lines), len(new_lines)) + 1
    if len(new_lines) > len(old_lines):
        return f"line {n} added: {_short(new_lines[n - 1])}"
    if len(old_lines) > len(new_lines):
        return f"line {n} removed: {_short(old_lines[n - 1])}"
    return "whitespace changed"


def _changed_fields(old: str, new: str) -> list[str]:
    try:
        a, b = json.loads(old), json.loads(new)
    except ValueError:
        return []
    if not isinstance(a, dict) or not isinstance(b, dict):
        return []
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _role(text: str) -> str:
    try:
        role = json.loads(text).get("role")
    except (ValueError, AttributeError):
        return "?"
    return role if isinstance(role, str) else "?"


def _short(line: str) -> str:
    line = line.strip()
    return json.dumps(line if len(line) <= _SHOWN else line[: _SHOWN - 3] + "...")
