"""Tools loaded through ToolSearch, placed where they were loaded.

Claude Code keeps deferred tools out of ``tools[]``. When the model calls
ToolSearch, the next request carries the loaded tool's definition in ``tools[]``
(``defer_loading: true``; a built-in tool inserted in alphabetical order in the
middle of the list, an MCP tool appended) and the ToolSearch result is a
``tool_result`` whose content holds ``{"type": "tool_reference", "tool_name":
...}`` items. Anthropic's API expands a reference where it stands, so its cached
prefix survives the load. A runtime whose chat template renders the tools
before the conversation (llama.cpp, vLLM, SGLang with most templates) sees the
head of the prompt change instead, and processes the whole conversation again
from that tool on; llama.cpp's Anthropic endpoint also drops ``tool_reference``
items, so the model never sees the schema where the load happened.

A per-upstream setting decides what is forwarded:

``inline``       (default for local and third-party upstreams) every
                 ``tool_reference`` to a loaded deferred tool becomes a text block
                 with its definition, in the encoding ToolSearch's own description
                 promises (``<functions><function>{"description": ..., "name": ...,
                 "parameters": ...}</function></functions>``); ``tools[]`` gets back
                 the order the conversation first sent, and the loaded definitions
                 move to its end, so a runtime that only parses calls to tools in
                 ``tools[]`` (llama.cpp builds its tool-call grammar from that list)
                 still accepts a call. A template that renders a tool defined in the
                 conversation there and not in the tool list (the bundled one does)
                 keeps every earlier token; another template still sees the list
                 grow at its end.
``inline_only``  the same expansion, and the loaded definitions leave ``tools[]``
                 altogether: the list is exactly the one first sent, so the prompt
                 ahead of the load point never changes on any template; for runtimes
                 that accept a call to a tool only defined in the conversation.
``as_sent``      forward ``tools[]`` and the references as the client sent them
                 (default for Anthropic's own API, which expands them itself).

Only the values that change are re-encoded (the ``tools`` array and the
``content`` arrays of the ToolSearch results); every other byte of the request
stays as the client sent it, and each kept array element keeps its own bytes.
Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ToolLoads(StrEnum):
    INLINE = "inline"
    INLINE_ONLY = "inline_only"
    AS_SENT = "as_sent"

    @classmethod
    def parse(cls, value: str) -> ToolLoads:
        """Parse a setting, accepting ``-`` for ``_``; raise ValueError otherwise."""
        try:
            return cls(value.strip().lower().replace("-", "_"))
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown tool_loads {value!r}; expected one of: {names}") from None


REFERENCE_TYPE = "tool_reference"


@dataclass(frozen=True)
class ToolLoadResult:
    """What the step did to one request."""

    body: bytes
    parsed: dict[str, Any]
    mode: ToolLoads
    changed: bool = False
    loaded: tuple[str, ...] = ()  # expanded where referenced, in order of first reference
    moved: tuple[str, ...] = ()  # taken out of tools[] where the client had inserted them
    left: tuple[str, ...] = ()  # references left as sent: no deferred definition, or malformed

    def describe(self) -> str:
        """One line for ``rewrite --explain``."""
        if self.mode is ToolLoads.AS_SENT:
            return "tool loads as_sent: tools[] and tool_reference items forwarded as sent"
        if not self.changed:
            note = f" ({len(self.left)} reference(s) left as sent)" if self.left else ""
            return f"tool loads {self.mode.value}: no tool loaded through ToolSearch{note}"
        where = (
            "moved to the end of tools[]"
            if self.mode is ToolLoads.INLINE
            else ("removed from tools[]")
        )
        lines = [
            f"tool loads {self.mode.value}: definitions placed where referenced: "
            + ", ".join(self.loaded),
            f"  {where}: {', '.join(self.moved) or '-'}",
        ]
        if self.left:
            lines.append(f"  references left as sent: {', '.join(self.left)}")
        return "\n".join(lines)


def function_line(tool: Mapping[str, Any]) -> str:
    """One loaded tool as ToolSearch's description says it appears in its result."""
    schema = tool.get("input_schema")
    return (
        "<function>"
        + json.dumps(
            {
                "description": tool.get("description", "") or "",
                "name": tool.get("name"),
                "parameters": schema if isinstance(schema, Mapping) else {},
            },
            ensure_ascii=False,
        )
        + "</function>"
    )


def functions_block(tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The text block that stands where references to ``tools`` stood."""
    lines = "\n".join(function_line(t) for t in tools)
    return {"type": "text", "text": f"<functions>\n{lines}\n</functions>"}


def apply_tool_loads(raw: bytes, body: Mapping[str, Any], mode: ToolLoads) -> ToolLoadResult:
    """Rewrite ``raw`` (whose parsed form is ``body``) according to ``mode``.

    ``body`` is never mutated; the result's ``parsed`` shares every unchanged
    value with it.
    """
    same = ToolLoadResult(body=raw, parsed=dict(body), mode=mode)
    if mode is ToolLoads.AS_SENT:
        return same
    tools, messages = body.get("tools"), body.get("messages")
    if not isinstance(tools, list) or not isinstance(messages, list):
        return same
    places, names, left = _references(messages)
    deferred = _deferred_definitions(tools)
    loaded = [n for n in names if n in deferred]
    left += [n for n in names if n not in deferred]
    if not loaded:
        return ToolLoadResult(body=raw, parsed=dict(body), mode=mode, left=tuple(left))
    order = _tool_order(tools, loaded, deferred, mode)
    new_tools = [tools[i] for i in order]
    contents: dict[tuple[int, int], tuple[list[Any], list[tuple[int, int]]]] = {}
    for i, j in places:
        expanded = _expand(messages[i]["content"][j]["content"], deferred)
        if expanded is not None:
            contents[i, j] = expanded
    parsed = dict(body)
    parsed["tools"] = new_tools
    new_messages = list(messages)
    for (i, j), (content, _) in contents.items():
        message = dict(new_messages[i])
        blocks = list(message["content"])
        blocks[j] = {**blocks[j], "content": content}
        message["content"] = blocks
        new_messages[i] = message
    parsed["messages"] = new_messages
    out = _splice(raw, body, parsed, order, contents)
    where = {i: n for n, i in enumerate(order)}
    moved = tuple(
        name
        for i, tool in enumerate(tools)
        if _is_definition(tool, name := _name(tool), deferred)
        and name in loaded
        and where.get(i) != i
    )
    return ToolLoadResult(
        body=out,
        parsed=parsed,
        mode=mode,
        changed=out != raw,
        loaded=tuple(loaded),
        moved=moved,
        left=tuple(left),
    )


def _references(
    messages: Sequence[Any],
) -> tuple[list[tuple[int, int]], list[str], list[str]]:
    """Where tool_result blocks hold references, the names in order, and malformed ones."""
    places: list[tuple[int, int]] = []
    names: list[str] = []
    malformed: list[str] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            if not isinstance(block, Mapping) or block.get("type") != "tool_result":
                continue
            inner = block.get("content")
            if not isinstance(inner, list):
                continue
            found = False
            for item in inner:
                if not isinstance(item, Mapping) or item.get("type") != REFERENCE_TYPE:
                    continue
                name = item.get("tool_name")
                if isinstance(name, str) and name:
                    found = True
                    if name not in names:
                        names.append(name)
                else:
                    malformed.append(repr(name)[:40])
            if found:
                places.append((i, j))
    return places, names, malformed


def _deferred_definitions(tools: Sequence[Any]) -> dict[str, Mapping[str, Any]]:
    """Loaded deferred definitions by name (the first one where a name repeats)."""
    out: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        if (
            isinstance(tool, Mapping)
            and tool.get("defer_loading") is True
            and isinstance(tool.get("name"), str)
        ):
            out.setdefault(tool["name"], tool)
    return out


def _tool_order(
    tools: Sequence[Any],
    loaded: Sequence[str],
    deferred: Mapping[str, Mapping[str, Any]],
    mode: ToolLoads,
) -> list[int]:
    """Indices into ``tools`` for the list to forward.

    The list the conversation first sent is the current one without the loaded
    definitions, with the tools that are still deferred (Claude Code's
    ``DeferredToolPlaceholder``) back where Claude Code puts them while nothing
    is loaded: just before the last tool. (Loading an MCP tool moves the
    placeholder behind every built-in tool; this puts it back.) With ``inline``
    the loaded definitions follow, in the order they were first loaded, so a
    later load only ever appends.
    """
    at = {n: i for i, t in enumerate(tools) if _is_definition(t, n := _name(t), deferred)}
    ours = {at[n] for n in loaded if n in at}
    rest = [i for i in range(len(tools)) if i not in ours]
    pending = [i for i in rest if isinstance(tools[i], Mapping) and tools[i].get("defer_loading")]
    plain = [i for i in rest if i not in pending]
    first_sent = plain[:-1] + pending + plain[-1:] if plain else pending
    if mode is ToolLoads.INLINE_ONLY:
        return first_sent
    return first_sent + [at[n] for n in loaded if n in at]


def _name(tool: Any) -> str | None:
    name = tool.get("name") if isinstance(tool, Mapping) else None
    return name if isinstance(name, str) else None


def _is_definition(tool: Any, name: str | None, deferred: Mapping[str, Mapping[str, Any]]) -> bool:
    return name is not None and deferred.get(name) is tool


def _expand(
    content: Sequence[Any], deferred: Mapping[str, Mapping[str, Any]]
) -> tuple[list[Any], list[tuple[int, int]]] | None:
    """The content with each run of references replaced by one ``<functions>`` block.

    Returns the new list and, for each new item, the range of old items it
    stands for; None when nothing in it refers to a loaded deferred tool.
    """
    out: list[Any] = []
    spans: list[tuple[int, int]] = []
    run: list[Mapping[str, Any]] = []
    start = 0
    for k, item in enumerate(content):
        name = item.get("tool_name") if isinstance(item, Mapping) else None
        if (
            isinstance(item, Mapping)
            and item.get("type") == REFERENCE_TYPE
            and isinstance(name, str)
            and name in deferred
        ):
            if not run:
                start = k
            run.append(deferred[name])
            continue
        if run:
            out.append(functions_block(run))
            spans.append((start, k))
            run = []
        out.append(item)
        spans.append((k, k + 1))
    if run:
        out.append(functions_block(run))
        spans.append((start, len(content)))
    if all(b - a == 1 and out[n] is content[a] for n, (a, b) in enumerate(spans)):
        return None
    return out, spans


# --- splicing: re-encode only the changed arrays, every kept element byte for byte


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# (item separator, key separator, ensure_ascii): JSON.stringify first, then json.dumps.
_STYLES: tuple[tuple[str, str, bool], ...] = (
    (",", ":", False),
    (", ", ": ", False),
    (",", ":", True),
    (", ", ": ", True),
)


class _Unspliceable(Exception):
    """The raw text does not have the shape the parsed body says it has."""


def _splice(
    raw: bytes,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    order: Sequence[int],
    contents: Mapping[tuple[int, int], tuple[list[Any], list[tuple[int, int]]]],
) -> bytes:
    try:
        text = raw.decode("utf-8")
        edits: list[tuple[int, int, str]] = []
        root = _members(text, _skip(text, 0))
        tools_at = _last(root, "tools")
        tools = _members(text, tools_at[0])
        if len(tools) != len(old["tools"]):
            raise _Unspliceable
        edits.append((*tools_at, _array(text, tools_at, tools, [[i] for i in order], {})))
        messages_at = _last(root, "messages")
        messages = _members(text, messages_at[0])
        for (i, j), (items, ranges) in contents.items():
            block_at = _last(_members(text, messages[i][1]), "content")
            block = _members(text, block_at[0])[j]
            inner_at = _last(_members(text, block[1]), "content")
            inner = _members(text, inner_at[0])
            fresh: dict[int, str] = {}
            groups: list[list[int]] = []
            for n, (a, b) in enumerate(ranges):
                groups.append(list(range(a, b)))
                if b - a != 1 or items[n] is not old["messages"][i]["content"][j]["content"][a]:
                    sample = text[inner[a][1] : inner[a][2]]
                    fresh[n] = _encode_like(items[n], sample)
            edits.append((*inner_at, _array(text, inner_at, inner, groups, fresh)))
    except (_Unspliceable, ValueError, IndexError, KeyError, TypeError):
        return _encode(dict(new), _STYLES[0])
    edits.sort()
    out, at = [], 0
    for start, end, value in edits:
        out.append(text[at:start])
        out.append(value)
        at = end
    out.append(text[at:])
    return "".join(out).encode("utf-8", "backslashreplace")


def _skip(text: str, at: int) -> int:
    match = _WS.match(text, at)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _members(text: str, start: int) -> list[tuple[str | int, int, int]]:
    """The direct children of the object or array at ``start``: (key or index, start, end)."""
    out: list[tuple[str | int, int, int]] = []
    opening = text[start : start + 1]
    if opening not in ("{", "["):
        raise _Unspliceable
    closing = "}" if opening == "{" else "]"
    at = _skip(text, start + 1)
    if text[at] == closing:
        return out
    while True:
        key: str | int = len(out)
        if opening == "{":
            if text[at] != '"':
                raise _Unspliceable
            key, at = _DECODER.raw_decode(text, at)
            if not isinstance(key, str):
                raise _Unspliceable
            at = _skip(text, at)
            if text[at] != ":":
                raise _Unspliceable
            at = _skip(text, at + 1)
        _, end = _DECODER.raw_decode(text, at)
        out.append((key, at, end))
        at = _skip(text, end)
        if text[at] == ",":
            at = _skip(text, at + 1)
        elif text[at] == closing:
            return out
        else:
            raise _Unspliceable


def _last(members: Sequence[tuple[str | int, int, int]], key: str) -> tuple[int, int]:
    """The span of ``key``'s value (the last one, as a JSON parser keeps it)."""
    for name, start, end in reversed(members):
        if name == key:
            return start, end
    raise _Unspliceable


def _array(
    text: str,
    span: tuple[int, int],
    items: Sequence[tuple[str | int, int, int]],
    groups: Sequence[Sequence[int]],
    fresh: Mapping[int, str],
) -> str:
    """The array at ``span`` rebuilt: new item n is ``fresh[n]`` or old item ``groups[n][0]``.

    The whitespace inside the brackets and the separators between items are
    the client's own (the first separator stands in where there are more new
    items than old gaps, which never happens here).
    """
    start, end = span
    if not items:
        return text[start:end]
    head = text[start : items[0][1]]
    tail = text[items[-1][2] : end]
    gaps = [text[items[k][2] : items[k + 1][1]] for k in range(len(items) - 1)] or [","]
    parts = []
    for n, group in enumerate(groups):
        if n:
            parts.append(gaps[min(n - 1, len(gaps) - 1)])
        if n in fresh:
            parts.append(fresh[n])
        else:
            _, a, b = items[group[0]]
            parts.append(text[a:b])
    return head + "".join(parts) + tail


def _encode(value: Any, style: tuple[str, str, bool]) -> bytes:
    item, colon, ascii_only = style
    text = json.dumps(value, ensure_ascii=ascii_only, separators=(item, colon))
    return text.encode("utf-8", "backslashreplace")


def _encode_like(value: Any, sample: str) -> str:
    """``value`` encoded in the JSON style ``sample`` (the item it replaces) was written in."""
    try:
        old = json.loads(sample)
    except ValueError:
        old = None
    for style in _STYLES:
        if old is not None and _encode(old, style).decode("utf-8", "replace") == sample:
            return _encode(value, style).decode("utf-8")
    return _encode(value, _STYLES[0]).decode("utf-8")
