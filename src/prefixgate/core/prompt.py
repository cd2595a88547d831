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

The prompt model is three modules, read in this order:

``core/prompt.py``      the pieces (``Piece``, ``PromptView``, ``SECTIONS``) and the
                        walk that makes them (``prompt_view``)
``core/promptcut.py``   the named parts cut out of the text they sit in
                        (environment, git status, deferred tools, date)
``core/promptdiff.py``  the comparison: ``common_pieces``, ``first_change`` and the
                        words that name a change
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Final

import orjson

from prefixgate.core.canonical import BoundedMemo, canonical_json, chain, digest, text_digest
from prefixgate.core.knowntools import KNOWN_TOOLS
from prefixgate.core.promptcut import cut_named, deferred_names

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
# What a runtime can keep across sessions of one project: these enter the key.
KEY_SECTIONS = ("system", "tools", "mcp_tools", "deferred_tools", "project_context", "environment")
TOOL_SECTIONS = ("tools", "mcp_tools", "tool_loaded")


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
        if section in TOOL_SECTIONS:
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
        return dict(self._summary)

    @cached_property
    def _summary(self) -> dict[str, str]:  # the key and the audit record both read it
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
    return _tool_of(piece.name)


@lru_cache(maxsize=4096)  # the key and the segments ask for every tool of every request
def _tool_of(name: str) -> str:
    return _REPEAT.sub("", name.split(":", 1)[1])


_REPEAT = re.compile(r"#\d+$")


# -- the walk -----------------------------------------------------------------


def prompt_view(body: Mapping[str, Any], attribution_text: str | None) -> PromptView:
    """The pieces of ``body``, a request whose attribution block is removed.

    ``attribution_text`` is what of the block the upstream still sees
    (``None`` when it was stripped).

    Most of a request is the previous request of its conversation: the system
    prompt, the tools and the earlier turns come back unchanged. So the walk
    is done in parts, each remembered by the exact JSON of what it reads
    (``_Walks``): the head (block, system, tools) and each message. A part
    seen before costs one ``orjson.dumps`` and a dict lookup; repeats are
    then numbered over the whole prompt (``environment#2``).
    """
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    walked: list[tuple[bool, _Walked]] = []
    inline: set[str] = set()
    head = True
    for i, message in enumerate(messages):
        if isinstance(message, Mapping) and message.get("role") == "assistant":
            head = False
        found = _WALKS.message(i, head, message)
        walked.append((head, found))
        inline.update(found.inline)
    out = _Pieces()
    lead = _WALKS.lead(attribution_text, body.get("system"), body.get("tools"), frozenset(inline))
    out.extend(lead, head=True)
    for head, found in walked:
        out.extend(found, head=head)
    return PromptView(model=str(body.get("model", "")), pieces=tuple(out.pieces))


# A piece before repeats are numbered: (section, name, digest, text).
_Part = tuple[str, str, str, str]


class _Walked:
    """The parts one step of the walk found, and the tools a message defines inline.

    ``pieces`` keeps the step's ``Piece`` objects by ``head`` once made, for a
    prompt where none of its names came earlier (the usual case): requests then
    share them, and comparing two prompts finds most pieces identical at once.
    """

    __slots__ = ("inline", "parts", "pieces")

    def __init__(self, parts: tuple[_Part, ...], inline: frozenset[str] = frozenset()) -> None:
        self.parts = parts
        self.inline = inline
        self.pieces: dict[bool, tuple[Piece, ...]] = {}


class _Pieces:
    """Numbers repeated names over the whole prompt: ``environment#2``, ``system[2]#2``."""

    def __init__(self) -> None:
        self.pieces: list[Piece] = []
        self._seen: dict[str, int] = {}

    def extend(self, found: _Walked, *, head: bool) -> None:
        seen = self._seen
        if any(name in seen for _, name, _, _ in found.parts):
            self.pieces.extend(_numbered(found.parts, head, seen))
            return
        made = found.pieces.get(head)
        if made is None:  # numbered as if first: the same whichever request asks
            made = found.pieces[head] = tuple(_numbered(found.parts, head, {}))
        self.pieces.extend(made)
        for _, name, _, _ in found.parts:
            seen[name] = seen.get(name, 0) + 1


def _numbered(parts: Sequence[_Part], head: bool, seen: dict[str, int]) -> list[Piece]:
    """``parts`` as pieces, a name seen before numbered (``seen`` counts them)."""
    out = []
    for section, name, value, text in parts:
        count = seen[name] = seen.get(name, 0) + 1
        unique = name if count == 1 else f"{name}#{count}"
        out.append(Piece(section, unique, value, text, head))
    return out


class _Parts:
    """Collects one step's parts in order."""

    def __init__(self) -> None:
        self.parts: list[_Part] = []

    def add(self, section: str, name: str, text: str, keyed: Any = None) -> None:
        value = text_digest(text) if keyed is None else digest(keyed)
        self.parts.append((section, name, value, text))

    def cut(self, text: str, section: str, name: str, envelope: Any = None) -> None:
        """``text`` as parts: the named parts cut out, the rest as ``section``/``name``.

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


def _walk_lead(
    attribution_text: str | None, system: Any, tools: Any, inline: frozenset[str]
) -> _Walked:
    """The parts before the messages: the block, the system blocks, the tools
    (less those the conversation defines ``inline``)."""
    out = _Parts()
    if attribution_text is not None:
        out.add("attribution", "attribution", attribution_text)
    for i, block in enumerate(_system_blocks(system)):
        text = _plain_text(block)
        if text is None:
            out.add("system", f"system[{i}]", _json(without_cache_control(block)))
        else:
            out.cut(text, "system", f"system[{i}]")
    for tool in tools if isinstance(tools, list) else []:
        name = tool.get("name") if isinstance(tool, Mapping) else None
        name = name if isinstance(name, str) else "?"
        section = _tool_section(tool, name)
        if section == "tool_loaded" and name in inline:
            continue  # rendered where the conversation defines it (tool-load policy inline)
        out.add(section, f"{section}:{name}", _json(without_cache_control(tool)))
    return _Walked(tuple(out.parts))


def _walk_message(index: int, head: bool, message: Any) -> _Walked:
    """The parts of ``messages[index]`` (``head``: no answer before it)."""
    out = _Parts()
    name = f"messages[{index}]"
    inline = frozenset(_inline_tools([message]))
    message = without_cache_control(message)
    if not isinstance(message, Mapping):
        out.add("messages", name, _json(message))
        return _Walked(tuple(out.parts), inline)
    envelope = {k: v for k, v in message.items() if k != "content"}
    if message.get("role") == "system":
        # before the first answer it is part of the system prompt (agent types, skills)
        texts = _texts(message.get("content"))
        if texts is not None:
            for text in texts:
                out.cut(text, "system" if head else "messages", name, envelope)
            return _Walked(tuple(out.parts), inline)
    content = message.get("content")
    if index == 0 and message.get("role") == "user" and isinstance(content, list):
        # only the reminders ahead of the typed text are project context; one the
        # client adds after it (a retry's "no visible output" note) is conversation
        lead = next((i for i, b in enumerate(content) if not _is_reminder(b)), len(content))
        for block in content[:lead]:  # git status, date: cut out of the context they sit in
            out.cut(str(block["text"]), "project_context", "project_context")
        if lead:
            message = {**message, "content": content[lead:]}
    out.add("messages", name, _json(_normal_message(message)))
    return _Walked(tuple(out.parts), inline)


#: The remembered parts' keys add up to at most this many bytes (oldest forgotten first).
WALK_CACHE_MAX_BYTES: Final = 16_000_000


class _Walks:
    """The walk's steps, remembered by the exact JSON of what each one reads.

    A key is ``orjson.dumps`` of the value, which tells ``1``, ``1.0`` and
    ``true`` apart (Python's ``==`` does not), so a remembered step is always
    the one the value would give. A value orjson cannot write (an integer
    past 64 bits, a lone surrogate) is walked afresh. Bounded by the bytes of
    its keys (the parts' texts take about as much again); safe from any thread.
    Shared by every tenant: a step is only ever found again from the same bytes.
    """

    def __init__(self, max_bytes: int) -> None:
        self.memo: BoundedMemo[tuple[Any, ...], _Walked] = BoundedMemo(max_bytes)

    def lead(
        self, attribution_text: str | None, system: Any, tools: Any, inline: frozenset[str]
    ) -> _Walked:
        try:
            sent = KNOWN_TOOLS.encoded(tools)  # parsed from these bytes: no need to write them
            tools_json = orjson.dumps(tools) if sent is None else sent
            key = ("lead", attribution_text, orjson.dumps(system), tools_json, inline)
        except (TypeError, orjson.JSONEncodeError):
            return _walk_lead(attribution_text, system, tools, inline)
        size = len(key[2]) + len(key[3])
        return self._get(key, size, _walk_lead, attribution_text, system, tools, inline)

    def message(self, index: int, head: bool, message: Any) -> _Walked:
        try:
            key = ("message", index, head, orjson.dumps(message))
        except (TypeError, orjson.JSONEncodeError):
            return _walk_message(index, head, message)
        return self._get(key, len(key[3]), _walk_message, index, head, message)

    def _get(
        self, key: tuple[Any, ...], size: int, walk: Callable[..., _Walked], *args: Any
    ) -> _Walked:
        found = self.memo.get(key)
        if found is None:
            found = walk(*args)
            self.memo.keep(key, found, size)
        return found


_WALKS = _Walks(WALK_CACHE_MAX_BYTES)


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
