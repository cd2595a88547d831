"""Split a request into the segments a prefix cache sees, and hash each one.

The order is the order a runtime renders the prompt in: system blocks, built-in
tools, MCP tools (``mcp__<server>__<tool>``), the project context Claude Code puts
at the head of the first user message (its ``<system-reminder>`` blocks), the
earlier conversation, and the current turn (the last message).

Hashes are taken over canonical JSON with ``cache_control`` markers removed:
the markers move to the newest block every turn but are not part of the prompt
text, so they must not make two identical prefixes look different. The
attribution block is hashed on its own and never mixed into the system hash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefixgate.core.canonical import chain, digest

MCP_PREFIX = "mcp__"
_REMINDER = "<system-reminder>"


@dataclass(frozen=True)
class Segments:
    """Digests of every segment of one request, in prompt order."""

    attribution: str | None
    system_blocks: tuple[str, ...]
    tools: tuple[tuple[str, str], ...]
    mcp_tools: tuple[tuple[str, str], ...]
    project_context: str
    messages: tuple[str, ...]

    @property
    def system(self) -> str:
        return chain(list(self.system_blocks))

    @property
    def tools_hash(self) -> str:
        return chain([f"{name}:{d}" for name, d in self.tools])

    @property
    def mcp_tools_hash(self) -> str:
        return chain([f"{name}:{d}" for name, d in self.mcp_tools])

    @property
    def conversation(self) -> str:
        return chain(list(self.messages[:-1]))

    @property
    def current_turn(self) -> str:
        return self.messages[-1] if self.messages else chain([])

    def summary(self) -> dict[str, str]:
        """The stable segment hashes, as printed by ``prefixgate key``."""
        return {
            "system": self.system,
            "tools": self.tools_hash,
            "mcp_tools": self.mcp_tools_hash,
            "project_context": self.project_context,
        }


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


def split(body: Mapping[str, Any], attribution_text: str | None) -> Segments:
    """Segment ``body``, a request whose attribution block is already removed.

    ``attribution_text`` is what of the block stays in the forwarded prompt
    (``None`` when it is stripped); it gets a segment of its own.
    """
    tools = _tool_digests(body.get("tools"))
    messages = body.get("messages")
    message_list: list[Any] = messages if isinstance(messages, list) else []
    context, first_rest = project_context(message_list)
    message_digests = [digest(without_cache_control(m)) for m in message_list]
    if first_rest is not None:
        message_digests[0] = digest(without_cache_control(first_rest))
    return Segments(
        attribution=None if attribution_text is None else digest(attribution_text),
        system_blocks=tuple(digest(without_cache_control(b)) for b in _system_blocks(body)),
        tools=tuple(t for t in tools if not t[0].startswith(MCP_PREFIX)),
        mcp_tools=tuple(t for t in tools if t[0].startswith(MCP_PREFIX)),
        project_context=digest(context),
        messages=tuple(message_digests),
    )


def _system_blocks(body: Mapping[str, Any]) -> list[Any]:
    system = body.get("system")
    if system is None:
        return []
    if isinstance(system, str):
        return [{"type": "text", "text": system}] if system else []
    if isinstance(system, list):
        return list(system)
    return [system]


def _tool_digests(tools: Any) -> list[tuple[str, str]]:
    if not isinstance(tools, list):
        return []
    out = []
    for tool in tools:
        name = tool.get("name") if isinstance(tool, dict) else None
        out.append((name if isinstance(name, str) else "", digest(without_cache_control(tool))))
    return out


def project_context(messages: Sequence[Any]) -> tuple[list[str], Any | None]:
    """The first user message's ``<system-reminder>`` texts, and that message without them.

    Returns ``([], None)`` when the first message carries no project context.
    """
    if not messages or not isinstance(messages[0], dict) or messages[0].get("role") != "user":
        return [], None
    first = messages[0]
    content = first.get("content")
    if not isinstance(content, list):
        return [], None
    context = [b["text"] for b in content if _is_reminder(b)]
    if not context:
        return [], None
    rest = [b for b in content if not _is_reminder(b)]
    return context, {**first, "content": rest}


def _is_reminder(block: Any) -> bool:
    return (
        isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
        and block["text"].lstrip().startswith(_REMINDER)
    )
