"""Many interleaved sessions from a few recorded ones, small enough for small runtimes.

Pure functions over corpus lines (``{"method", "path", "headers", "body"}``, the
body a JSON string), used by ``bench/scale.py`` and the replica tests:

- ``shrink``: the same request with every long text cut to its head and tail and
  tool schemas cut to their property names and types. The cut is a function of
  the text alone, so two requests that shared a prefix still share one (the
  stable system prompt and tools stay equal across sessions, the environment
  section at the end of the system prompt keeps its model line, conversations
  still grow by appending); a cut names a hash of the text it shortened, so
  texts that differed still differ.
- ``sessions``: the recorded requests grouped by session, in recorded order.
- ``copy_session``: one session again under a new session id, with its own
  attribution fingerprint and its own first user message (so copies share the
  system prompt and tools, not the conversation).
- ``interleave``: sessions mixed into one stream by a seeded random choice of
  which session speaks next, each session's own order kept.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prefixgate.core.identity import SESSION_HEADER, session_from_metadata

Line = dict[str, Any]

TEXT_HEAD = 600
TEXT_TAIL = 500
TOOL_DESCRIPTION = 160
SCHEMA_PROPERTIES = 6
_VERSION = re.compile(r"(cc_version=[0-9.]+?)\.([0-9a-f]{3})(;)")


def cut(text: str, head: int = TEXT_HEAD, tail: int = TEXT_TAIL) -> str:
    """``text`` itself when short, else its first ``head`` and last ``tail`` characters.

    The cut names a hash of the whole text, so two texts that differ only in
    the part cut out still differ afterwards.
    """
    if len(text) <= head + tail + 24:
        return text
    mark = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return text[:head] + f"\n[... {mark}]\n" + (text[-tail:] if tail else "")


def _schema(schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return schema
    properties = schema.get("properties")
    out: dict[str, Any] = {"type": schema.get("type", "object")}
    if isinstance(properties, Mapping):
        out["properties"] = {
            name: {"type": prop.get("type", "string")} if isinstance(prop, Mapping) else prop
            for name, prop in list(properties.items())[:SCHEMA_PROPERTIES]
        }
    return out


def _content(content: Any) -> Any:
    if isinstance(content, str):
        return cut(content)
    if not isinstance(content, list):
        return content
    out = []
    for block in content:
        if isinstance(block, dict):
            block = dict(block)
            if isinstance(block.get("text"), str):
                block["text"] = cut(block["text"])
            if "content" in block:
                block["content"] = _content(block["content"])
            if isinstance(block.get("input"), dict):
                block["input"] = {
                    k: cut(v) if isinstance(v, str) else v for k, v in block["input"].items()
                }
        out.append(block)
    return out


def shrink_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` with long texts cut and tool schemas reduced (see the module doc)."""
    out = dict(body)
    system = body.get("system")
    if isinstance(system, str):
        out["system"] = cut(system)
    elif isinstance(system, list):
        out["system"] = _content(system)
    if isinstance(body.get("tools"), list):
        tools = []
        for tool in body["tools"]:
            if isinstance(tool, dict):
                tool = dict(tool)
                if isinstance(tool.get("description"), str):
                    tool["description"] = cut(tool["description"], TOOL_DESCRIPTION, 0)
                if "input_schema" in tool:
                    tool["input_schema"] = _schema(tool["input_schema"])
            tools.append(tool)
        out["tools"] = tools
    if isinstance(body.get("messages"), list):
        out["messages"] = [
            {**m, "content": _content(m.get("content"))} if isinstance(m, dict) else m
            for m in body["messages"]
        ]
    return out


def _body(line: Mapping[str, Any]) -> dict[str, Any]:
    body = json.loads(line["body"]) if isinstance(line["body"], str) else line["body"]
    if not isinstance(body, dict):
        raise ValueError("a corpus line's body is not a JSON object")
    return body


def _with_body(line: Mapping[str, Any], body: Mapping[str, Any], **headers: str) -> Line:
    out = dict(line)
    out["headers"] = {**line.get("headers", {}), **headers}
    out["body"] = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return out


def shrink(line: Mapping[str, Any]) -> Line:
    """One corpus line with its body shrunk."""
    return _with_body(line, shrink_body(_body(line)))


def session_id(line: Mapping[str, Any]) -> str:
    """The line's session: its session header, else ``metadata.user_id``'s, else ``""``."""
    for name, value in line.get("headers", {}).items():
        if name.lower() == SESSION_HEADER and value:
            return str(value)
    return session_from_metadata(_body(line).get("metadata")) or ""


def sessions(lines: Iterable[Mapping[str, Any]]) -> list[list[Line]]:
    """The lines grouped by session, sessions in order of first appearance."""
    groups: dict[str, list[Line]] = {}
    for line in lines:
        groups.setdefault(session_id(line), []).append(dict(line))
    return list(groups.values())


def copy_session(session: Sequence[Mapping[str, Any]], copy: int, seed: int = 0) -> list[Line]:
    """``session`` as a new session: its own id, fingerprint and first user message.

    ``copy`` 0 with the same ``seed`` always gives the same new session.
    """
    if not session:
        return []
    old = session_id(session[0])
    rng = random.Random(f"{seed}:{copy}:{old}")
    new = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    suffix = f"{rng.getrandbits(12):03x}"
    out = []
    for line in session:
        body = _body(line)
        text = json.dumps(body, ensure_ascii=False)
        if old:
            text = text.replace(old, new)
        body = json.loads(_VERSION.sub(rf"\1.{suffix}\3", text))
        _mark_first_user_message(body, copy)
        headers = {
            name: (new if name.lower() == SESSION_HEADER else value)
            for name, value in line.get("headers", {}).items()
        }
        out.append({**_with_body(line, body), "headers": headers})
    return out


def _mark_first_user_message(body: dict[str, Any], copy: int) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return
    first = messages[0]
    mark = f" (conversation {copy})"
    content = first.get("content")
    if isinstance(content, str):
        first["content"] = content + mark
    elif isinstance(content, list):
        texts = [b for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)]
        if texts:
            texts[-1]["text"] += mark


def interleave(groups: Sequence[Sequence[Line]], seed: int = 0) -> list[Line]:
    """All lines of ``groups`` in one stream; each group keeps its own order."""
    rng = random.Random(seed)
    queues = [list(g) for g in groups if g]
    positions = [0] * len(queues)
    out: list[Line] = []
    live = list(range(len(queues)))
    while live:
        pick = rng.choice(live)
        out.append(queues[pick][positions[pick]])
        positions[pick] += 1
        if positions[pick] == len(queues[pick]):
            live.remove(pick)
    return out


def mixed_corpus(
    lines: Sequence[Mapping[str, Any]],
    count: int,
    *,
    seed: int = 0,
    small: bool = True,
    turns: int | None = None,
) -> list[Line]:
    """``count`` sessions copied round-robin from the recorded ones, interleaved;
    with ``turns``, each recorded session cut to its first ``turns`` requests."""
    source = [
        group[:turns] if turns is not None else group
        for group in sessions(shrink(line) if small else dict(line) for line in lines)
    ]
    if not source:
        return []
    copies = [copy_session(source[i % len(source)], i, seed) for i in range(count)]
    return interleave(copies, seed)
