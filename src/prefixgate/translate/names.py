"""Tool names that OpenAI-style upstreams accept, and the way back.

OpenAI chat completions take function names matching ``^[a-zA-Z0-9_-]{1,64}$``;
Anthropic accepts longer names and more characters (MCP tools bring their own).
``openai_name`` keeps a valid name unchanged and otherwise derives a stable,
valid one: disallowed characters become ``_``, the result is cut to 55
characters and ``_`` plus the first 8 hex digits of the SHA-256 of the original
name is appended, so the same name always maps to the same OpenAI name, in every
request and every process.

``ToolNames`` holds both directions for one request's ``tools``, so the names in
an answer can be mapped back to the ones the client defined.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

MAX_NAME = 64
_KEEP = 55
_HASH_HEX = 8
_VALID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_DISALLOWED = re.compile(r"[^a-zA-Z0-9_-]")


def openai_name(name: str) -> str:
    """``name`` itself when OpenAI accepts it, else a stable name of at most 64 characters."""
    if _VALID.fullmatch(name):
        return name
    return _shortened(name, name)


def _shortened(name: str, salt: str) -> str:
    digest = hashlib.sha256(salt.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{_DISALLOWED.sub('_', name)[:_KEEP]}_{digest[:_HASH_HEX]}"


@dataclass(frozen=True)
class ToolNames:
    """Tool names of one request: client (Anthropic) name <-> upstream (OpenAI) name."""

    to_openai_map: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    to_anthropic_map: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )

    @classmethod
    def from_tools(cls, tools: object) -> ToolNames:
        """Map the names in an Anthropic ``tools`` list; anything that is not one is ignored.

        Tools are taken in list order. Should two names ever map to the same
        OpenAI name, the first keeps it and a later one gets the hash of
        ``name + "#" + n`` for the smallest ``n`` that is free: deterministic for
        a given list.
        """
        forward: dict[str, str] = {}
        backward: dict[str, str] = {}
        for tool in tools if isinstance(tools, list) else ():
            name = tool.get("name") if isinstance(tool, dict) else None
            if not isinstance(name, str) or name in forward:
                continue
            mapped = openai_name(name)
            attempt = 0
            while mapped in backward:
                attempt += 1
                mapped = _shortened(name, f"{name}#{attempt}")
            forward[name] = mapped
            backward[mapped] = name
        return cls(MappingProxyType(forward), MappingProxyType(backward))

    def to_openai(self, name: str) -> str:
        """The upstream name for a client tool name (``openai_name`` for unknown ones)."""
        mapped = self.to_openai_map.get(name)
        return mapped if mapped is not None else openai_name(name)

    def to_anthropic(self, name: str) -> str:
        """The client's name for an upstream tool name; unknown names come back unchanged."""
        return self.to_anthropic_map.get(name, name)
