"""A prompt as the ordered pieces a prefix cache sees, and where two prompts part.

A ``PromptView`` lists one request's pieces in the order a runtime renders
them: the attribution block (only when the policy leaves some of it in the
prompt), each system block, each built-in tool, each MCP tool, the project
context, then each message. Every piece carries its text (kept in memory only,
for token counts and for naming the line that changed) and a digest.

``first_change(before, after)`` names the first piece where ``after`` stops
extending ``before``, in words a person reads:

    system[1] line 57: " - You are powered by the model named Opus 4.8. ..."

Texts are normalised the way a runtime sees them: ``cache_control`` markers
are left out (they move every turn and are not prompt text) and a message
whose content is a single text block equals the same message with string
content (Claude Code flattens older turns that way).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefixgate.core.attribution import parse_header
from prefixgate.core.canonical import canonical_json, digest
from prefixgate.core.segments import MCP_PREFIX, project_context, without_cache_control

# Sections in prompt order; a piece's name starts with its section.
SECTIONS = ("attribution", "system", "tools", "mcp_tools", "project_context", "messages")
CAUSE_OF_SECTION = {
    "attribution": "attribution_changed",
    "system": "system_prompt_changed",
    "tools": "tools_changed",
    "mcp_tools": "mcp_tools_changed",
    "project_context": "project_context_changed",
    "messages": "messages_rewritten",
}
_SHOWN = 100


@dataclass(frozen=True)
class Piece:
    section: str
    name: str  # e.g. "system[1]", "tools:Bash", "messages[4]"
    digest: str
    text: str


@dataclass(frozen=True)
class PromptView:
    model: str
    pieces: tuple[Piece, ...]

    def names(self, section: str) -> list[str]:
        return [p.name for p in self.pieces if p.section == section]


@dataclass(frozen=True)
class Change:
    """Where a prompt stops extending an earlier one."""

    segment: str  # the piece's name, e.g. "tools:Bash", or "model"
    section: str  # one of SECTIONS, or "model"
    cause: str
    detail: str


def prompt_view(body: Mapping[str, Any], attribution_text: str | None) -> PromptView:
    """The pieces of ``body``, a request whose attribution block is removed.

    ``attribution_text`` is what of the block the upstream still sees
    (``None`` when it was stripped).
    """
    pieces: list[Piece] = []
    if attribution_text is not None:
        pieces.append(_piece("attribution", "attribution", attribution_text))
    for i, block in enumerate(_system_blocks(body.get("system"))):
        pieces.append(_piece("system", f"system[{i}]", _block_text(block)))
    for tool in body.get("tools") or []:
        name = tool.get("name") if isinstance(tool, Mapping) else None
        name = name if isinstance(name, str) else "?"
        section = "mcp_tools" if name.startswith(MCP_PREFIX) else "tools"
        pieces.append(_piece(section, f"{section}:{name}", _json(without_cache_control(tool))))
    messages = body.get("messages")
    messages = list(messages) if isinstance(messages, list) else []
    context, messages = _split_context(messages)
    if context:
        pieces.append(_piece("project_context", "project_context", "\n".join(context)))
    for i, message in enumerate(messages):
        pieces.append(_piece("messages", f"messages[{i}]", _json(_normal_message(message))))
    return PromptView(model=str(body.get("model", "")), pieces=tuple(pieces))


def common_pieces(before: PromptView | None, after: PromptView) -> int:
    """How many leading pieces of ``after`` equal those of ``before``."""
    if before is None or before.model != after.model:
        return 0
    count = 0
    for left, right in zip(before.pieces, after.pieces, strict=False):
        if left.name != right.name or left.digest != right.digest:
            break
        count += 1
    return count


def first_change(before: PromptView, after: PromptView) -> Change | None:
    """The first place ``after`` stops extending ``before``; ``None`` if it does not.

    A request that repeats ``before`` or appends to it is no change. One that
    is shorter (a rewound or compacted conversation) is ``messages_rewritten``.
    """
    if before.model != after.model:
        return Change("model", "model", "model_changed", f"{before.model} -> {after.model}")
    i = common_pieces(before, after)
    if i >= len(before.pieces):
        return None
    old = before.pieces[i]
    new = after.pieces[i] if i < len(after.pieces) else None
    if new is None:
        n_old, n_new = len(before.names("messages")), len(after.names("messages"))
        detail = f"conversation is shorter than before ({n_old} -> {n_new} messages)"
        return Change(old.name, old.section, "messages_rewritten", detail)
    section = min(old.section, new.section, key=SECTIONS.index)
    return Change(
        old.name if old.section == section else new.name,
        section,
        CAUSE_OF_SECTION[section],
        _detail(section, before, after, old, new),
    )


# -- details ------------------------------------------------------------------


def _detail(section: str, before: PromptView, after: PromptView, old: Piece, new: Piece) -> str:
    if section in ("tools", "mcp_tools"):
        return _tools_detail(section, before, after, old, new)
    if section == "attribution":
        return _attribution_detail(old, new)
    if old.name != new.name:
        return f"{old.name} is now {new.name}"
    if section == "messages":
        return f"{old.name} ({_role(old.text)}) differs from the earlier request's"
    return f"{new.name} {_line_detail(old.text, new.text)}"


def _tools_detail(
    section: str, before: PromptView, after: PromptView, old: Piece, new: Piece
) -> str:
    old_names, new_names = before.names(section), after.names(section)
    added = [n.split(":", 1)[1] for n in new_names if n not in old_names]
    removed = [n.split(":", 1)[1] for n in old_names if n not in new_names]
    parts = [f"added {', '.join(added)}"] if added else []
    parts += [f"removed {', '.join(removed)}"] if removed else []
    if parts:
        return "; ".join(parts)
    if old.name != new.name:
        return f"tools reordered: {old.name.split(':', 1)[1]} is now {new.name.split(':', 1)[1]}"
    tool = old.name.split(":", 1)[1]
    fields = _changed_fields(old.text, new.text)
    return f"{tool}: {', '.join(fields) or 'definition'} changed"


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


# -- pieces -------------------------------------------------------------------


def _piece(section: str, name: str, text: str) -> Piece:
    return Piece(section, name, digest(text), text)


def _json(value: Any) -> str:
    return canonical_json(value).decode("utf-8", "surrogatepass")


def _system_blocks(system: Any) -> list[Any]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [system]
    return list(system) if isinstance(system, list) else [system]


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, Mapping) and isinstance(block.get("text"), str):
        rest = without_cache_control(block)
        if set(rest) <= {"type", "text"}:
            return str(block["text"])
        return _json(rest)
    return _json(without_cache_control(block))


def _split_context(messages: Sequence[Any]) -> tuple[list[str], list[Any]]:
    """The project context, and the messages with it taken out of the first."""
    context, first_rest = project_context(messages)
    if first_rest is None:
        return [], list(messages)
    return context, [first_rest, *messages[1:]]


def _normal_message(message: Any) -> Any:
    message = without_cache_control(message)
    if not isinstance(message, Mapping):
        return message
    content = message.get("content")
    if isinstance(content, list) and len(content) == 1:
        block = content[0]
        plain = isinstance(block, Mapping) and set(block) == {"type", "text"}
        if plain and block["type"] == "text" and isinstance(block["text"], str):
            return {**message, "content": block["text"]}
    return message
