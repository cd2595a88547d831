"""The prompt model: one walk over a request that yields the pieces a prefix cache sees.

``prompt_view(body, attribution_text)`` lists one request's pieces in the order
a runtime renders them, each with its text (kept in memory only, for token
counts and for naming the line that changed) and a digest. Every user of the
prompt reads this one model: the cache key (``core/cachekey.py``), the
expected-token count and the miss causes (``core/misses.py``), ``diagnose``,
the replay bench and the dashboard.

Sections, and where each one sits in the two layouts Claude Code has used:

``attribution``      the attribution block, only when the policy leaves some of it
                     in the prompt
``system``           each system block (minus the named pieces cut out of it
                     below), and what a mid-conversation ``role: "system"``
                     message holds besides them (agent types, skills)
``tools``            each built-in tool definition in ``tools[]``
``mcp_tools``        each ``mcp__<server>__<tool>`` definition in ``tools[]`` (2.1.197)
``tool_loaded``      a definition that arrived in ``tools[]`` through a ToolSearch
                     load (``defer_loading: true``, other than ``DeferredToolPlaceholder``);
                     none when the conversation carries the definition where it was
                     loaded (tool-load policy ``inline``): a runtime renders it there
``deferred_tools``   the names of deferred tools (2.1.332: the paragraph after "The
                     following deferred tools are now available via ToolSearch" in
                     the ``role: "system"`` message); MCP tools are listed here
``project_context``  the ``<system-reminder>`` blocks at the head of ``messages[0]``
``git_status``       the git status snapshot (2.1.197: end of the main system block;
                     2.1.332: a reminder in ``messages[0]``)
``environment``      the ``# Environment`` section: working directory, OS, the model
                     line (2.1.197: inside the main system block; 2.1.332: the
                     ``role: "system"`` message)
``date``             today's date line, wherever it is
``messages``         each message (less the pieces above); the last is the current turn

Pieces stay in render order, so "common leading pieces" is "shared prefix".
Texts are normalised the way a runtime sees them: ``cache_control`` markers
are left out (they move every turn and are not prompt text), and a string and
a list holding one plain text block with the same text are the same prompt
(Claude Code flattens older turns that way, and sends 2.1.332's system message
as a one-block list first and as a string afterwards).

``first_change(before, after)`` names the first piece where ``after`` stops
extending ``before``, in words a person reads:

    environment: the working directory differs: /home/dev/proj -> /home/dev/other
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefixgate.core.attribution import parse_header
from prefixgate.core.canonical import canonical_json, chain, digest

MCP_PREFIX = "mcp__"
PLACEHOLDER_TOOL = "DeferredToolPlaceholder"
_REMINDER = "<system-reminder>"

# Sections, earliest first where two of them meet at the same place.
SECTIONS = (
    "attribution",
    "system",
    "tools",
    "mcp_tools",
    "tool_loaded",
    "deferred_tools",
    "project_context",
    "git_status",
    "environment",
    "date",
    "messages",
)
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
# What a runtime can keep across sessions of one project: these enter the key.
KEY_SECTIONS = ("system", "tools", "mcp_tools", "deferred_tools", "project_context", "environment")
_TOOL_SECTIONS = ("tools", "mcp_tools", "tool_loaded")
_SHOWN = 100


@dataclass(frozen=True)
class Piece:
    section: str
    name: str  # e.g. "system[1]", "tools:Bash", "environment", "messages[4]"
    digest: str
    text: str
    head: bool = True  # before the first answer: what every conversation of a project shares


@dataclass(frozen=True)
class PromptView:
    model: str
    pieces: tuple[Piece, ...]

    def names(self, section: str) -> list[str]:
        return [p.name for p in self.pieces if p.section == section]

    def section(self, section: str, *, head_only: bool = False) -> list[Piece]:
        return [p for p in self.pieces if p.section == section and (p.head or not head_only)]

    def tool_names(self, section: str) -> list[str]:
        """The tool names in one of ``tools``, ``mcp_tools``, ``tool_loaded``."""
        return [tool_name(p) for p in self.pieces if p.section == section]

    @property
    def deferred_names(self) -> list[str]:
        """The deferred tool names the prompt lists (the first list, before any answer)."""
        found = self.section("deferred_tools", head_only=True)
        return deferred_names(found[0].text) if found else []

    def digest_of(self, section: str) -> str:
        """One digest over the head pieces of ``section`` (an empty section has one too)."""
        parts = self.section(section, head_only=True)
        if section in _TOOL_SECTIONS:
            return chain([f"{tool_name(p)}:{p.digest}" for p in parts])
        return chain([p.digest for p in parts])

    @property
    def mcp_digest(self) -> str:
        """MCP tools defined in ``tools[]`` and MCP tools listed as deferred."""
        defined = [f"{tool_name(p)}:{p.digest}" for p in self.section("mcp_tools")]
        listed = [f"{n}:deferred" for n in self.deferred_names if n.startswith(MCP_PREFIX)]
        return chain(defined + listed)

    def summary(self) -> dict[str, str]:
        """The digests the key is built from, by name (``prefixgate key``, the audit)."""
        out = {s: self.digest_of(s) for s in KEY_SECTIONS}
        out["mcp_tools"] = self.mcp_digest
        return out

    @property
    def message_count(self) -> int:
        """How many messages the request holds (whatever sections their pieces are in)."""
        return len({p.name.split("#")[0] for p in self.pieces if p.name.startswith("messages[")})

    def current_turn(self) -> Piece | None:
        messages = self.section("messages")
        return messages[-1] if messages else None


def tool_name(piece: Piece) -> str:
    """The tool a ``tools:NAME`` piece defines (a repeated name is ``tools:NAME#2``)."""
    return _REPEAT.sub("", piece.name.split(":", 1)[1])


_REPEAT = re.compile(r"#\d+$")


@dataclass(frozen=True)
class Change:
    """Where a prompt stops extending an earlier one."""

    segment: str  # the piece's name, e.g. "tools:Bash", or "model"
    section: str  # one of SECTIONS, or "model"
    cause: str
    detail: str


# -- the walk -----------------------------------------------------------------


def prompt_view(body: Mapping[str, Any], attribution_text: str | None) -> PromptView:
    """The pieces of ``body``, a request whose attribution block is removed.

    ``attribution_text`` is what of the block the upstream still sees
    (``None`` when it was stripped).
    """
    out = _Pieces()
    if attribution_text is not None:
        out.add("attribution", "attribution", attribution_text)
    for i, block in enumerate(_system_blocks(body.get("system"))):
        text = _plain_text(block)
        if text is None:
            out.add("system", f"system[{i}]", _json(without_cache_control(block)))
        else:
            out.cut(text, "system", f"system[{i}]")
    tools = body.get("tools")
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    inline = _inline_tools(messages)
    for tool in tools if isinstance(tools, list) else []:
        name = tool.get("name") if isinstance(tool, Mapping) else None
        name = name if isinstance(name, str) else "?"
        section = _tool_section(tool, name)
        if section == "tool_loaded" and name in inline:
            continue  # rendered where the conversation defines it (tool-load policy inline)
        out.add(section, f"{section}:{name}", _json(without_cache_control(tool)))
    for i, message in enumerate(messages):
        if isinstance(message, Mapping) and message.get("role") == "assistant":
            out.head = False
        out.message(i, message)
    return PromptView(model=str(body.get("model", "")), pieces=tuple(out.pieces))


class _Pieces:
    """Collects pieces in order, naming repeats ``environment#2``, ``system[2]#2``."""

    def __init__(self) -> None:
        self.pieces: list[Piece] = []
        self.head = True
        self._seen: dict[str, int] = {}

    def add(self, section: str, name: str, text: str, keyed: Any = None) -> None:
        count = self._seen[name] = self._seen.get(name, 0) + 1
        unique = name if count == 1 else f"{name}#{count}"
        value = text if keyed is None else keyed
        self.pieces.append(Piece(section, unique, digest(value), text, self.head))

    def cut(self, text: str, section: str, name: str, envelope: Any = None) -> None:
        """``text`` as pieces: the named parts cut out, the rest as ``section``/``name``.

        ``envelope`` (a message without its text) goes into the digest of the
        rest, so the role of a message counts.
        """
        parts = cut_named(text)
        rest = [p for p, (kind, _) in enumerate(parts) if kind is None]
        for kind, part in parts:
            if kind is not None:
                self.add(kind, kind, part)
            elif envelope is None:
                self.add(section, name, part)
            else:
                self.add(section, name, part, {**envelope, "content": part})
        if not rest and envelope is not None:  # nothing but named parts: keep the role
            self.add(section, name, "", {**envelope, "content": ""})

    def message(self, index: int, message: Any) -> None:
        name = f"messages[{index}]"
        message = without_cache_control(message)
        if not isinstance(message, Mapping):
            self.add("messages", name, _json(message))
            return
        envelope = {k: v for k, v in message.items() if k != "content"}
        if message.get("role") == "system":
            # before the first answer it is part of the system prompt (agent types, skills)
            texts = _texts(message.get("content"))
            if texts is not None:
                for text in texts:
                    self.cut(text, "system" if self.head else "messages", name, envelope)
                return
        content = message.get("content")
        if index == 0 and message.get("role") == "user" and isinstance(content, list):
            reminders = [b for b in content if _is_reminder(b)]
            for block in reminders:  # git status, date: cut out of the context they sit in
                self.cut(str(block["text"]), "project_context", "project_context")
            if reminders:
                message = {**message, "content": [b for b in content if not _is_reminder(b)]}
        self.add("messages", name, _json(_normal_message(message)))


# -- named parts of a text ----------------------------------------------------

_STARTS = re.compile(
    r"^(?:(?P<environment># Environment\b)"
    r"|(?P<git_status>gitStatus: |# gitStatus\b)"
    r"|(?P<deferred_tools>The following deferred tools are now available)"
    r"|(?P<date>(?:# currentDate\n)?Today's date is ))",
    re.M,
)
# Where an environment or git status section ends: the next heading or named paragraph.
_STOPS = re.compile(
    r"^(?:# |gitStatus: |The following deferred tools |Available agent types|"
    r"The following skills |Today's date is )",
    re.M,
)
_DATE = re.compile(r"Today's date is ([^\n]*?)\.?$", re.M)


def cut_named(text: str) -> list[tuple[str | None, str]]:
    """``text`` as ``(section, part)`` in order: the named parts (environment,
    git status, deferred tools, date) and the rest (section ``None``).

    Joining the parts gives ``text`` back.
    """
    parts: list[tuple[str | None, str]] = []
    pos = 0
    for match in _STARTS.finditer(text):
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
        stop = _STOPS.search(text, line_end + 1)
        end = len(text) if stop is None else stop.start()
    while end < len(text) and text[end] == "\n":
        end += 1
    return end


def deferred_names(paragraph: str) -> list[str]:
    """The tool names in a deferred-tools paragraph (one a line after its first)."""
    return [line.strip() for line in paragraph.splitlines()[1:] if line.strip()]


# -- comparing ----------------------------------------------------------------


def common_pieces(before: PromptView | None, after: PromptView) -> int:
    """How many leading pieces of ``after`` equal those of ``before``."""
    if before is None or before.model != after.model:
        return 0
    return _common(before.pieces, after.pieces)


def _common(left: Sequence[Piece], right: Sequence[Piece]) -> int:
    count = 0
    for a, b in zip(left, right, strict=False):
        if a.name != b.name or a.digest != b.digest:
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
    if across_sessions and {old.section, new.section} & own & set(_TOOL_SECTIONS):
        loaded = ", ".join(before.tool_names("tool_loaded")) or "-"
        detail = f"another conversation: it had loaded {loaded} through ToolSearch"
        return Change(old.name, "messages", "messages_rewritten", detail)
    return _change(before, after, old, new, across_sessions)


def _loads_only(before: PromptView, after: PromptView, old: Piece, new: Piece) -> bool:
    """Whether ``before`` and ``after`` part in the tools only because one of them
    loaded tools through ToolSearch (which can reorder ``tools[]``): the same
    definitions otherwise."""
    if not {old.section, new.section} & set(_TOOL_SECTIONS):
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
    if section in _TOOL_SECTIONS:
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
    for section in _TOOL_SECTIONS:
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


# -- normalising --------------------------------------------------------------


def without_cache_control(value: Any) -> Any:
    """``value`` (a block, tool or message) without ``cache_control`` markers.

    Markers sit on system blocks, tools and content blocks (nested one level in
    ``tool_result`` content); only those places are cleaned, so a tool schema
    property that happens to be named ``cache_control`` still counts.
    """
    if not isinstance(value, dict):
        return value
    out = {k: v for k, v in value.items() if k != "cache_control"}
    content = out.get("content")
    if isinstance(content, list):
        out["content"] = [without_cache_control(block) for block in content]
    return out


def _json(value: Any) -> str:
    return canonical_json(value).decode("utf-8", "surrogatepass")


def _system_blocks(system: Any) -> list[Any]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [system]
    return list(system) if isinstance(system, list) else [system]


def _plain_text(block: Any) -> str | None:
    """The text of a string or of a block holding only ``type: text`` and ``text``."""
    if isinstance(block, str):
        return block
    if isinstance(block, Mapping) and block.get("type") == "text":
        text = block.get("text")
        if isinstance(text, str) and set(without_cache_control(block)) <= {"type", "text"}:
            return text
    return None


def _texts(content: Any) -> list[str] | None:
    """Message content as texts, when it is nothing but text."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list) or not content:
        return None
    texts = [_plain_text(block) if isinstance(block, Mapping) else None for block in content]
    return None if any(t is None for t in texts) else [str(t) for t in texts]


def _inline_tools(messages: Sequence[Any]) -> set[str]:
    """Tools whose definitions a ToolSearch result carries in the conversation
    (``<functions>`` lines, as the tool-load policy ``inline`` writes them)."""
    names: set[str] = set()
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, Mapping) or block.get("type") != "tool_result":
                continue
            inner = block.get("content")
            for item in inner if isinstance(inner, list) else []:
                text = item.get("text") if isinstance(item, Mapping) else None
                if isinstance(text, str) and text.startswith("<functions>"):
                    names.update(_function_names(text))
    return names


def _function_names(text: str) -> list[str]:
    names = []
    for line in text.splitlines():
        if line.startswith("<function>") and line.endswith("</function>"):
            try:
                value = json.loads(line[len("<function>") : -len("</function>")])
            except ValueError:
                continue
            if isinstance(value, dict) and isinstance(value.get("name"), str):
                names.append(value["name"])
    return names


def _tool_section(tool: Any, name: str) -> str:
    if isinstance(tool, Mapping) and tool.get("defer_loading") is True and name != PLACEHOLDER_TOOL:
        return "tool_loaded"
    return "mcp_tools" if name.startswith(MCP_PREFIX) else "tools"


def _is_reminder(block: Any) -> bool:
    return (
        isinstance(block, Mapping)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
        and block["text"].lstrip().startswith(_REMINDER)
    )


def _normal_message(message: Any) -> Any:
    if not isinstance(message, Mapping):
        return message
    content = message.get("content")
    if isinstance(content, list) and len(content) == 1:
        text = _plain_text(content[0]) if isinstance(content[0], Mapping) else None
        if text is not None:
            return {**message, "content": text}
    return message
