"""Segment digests: a thin view over the prompt model in ``core/prompt.py``.

There is one walk over a request (``prompt_view``); ``Segments`` only reads
its pieces back as the digests older callers use: the tool names for agent
labels, ``summary()`` for ``prefixgate key`` and the audit record. The cache
key itself is built from the view (``core/cachekey.py``).

Digests are taken with ``cache_control`` markers removed and the attribution
block apart from the system prompt (see ``core/prompt.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefixgate.core.canonical import chain
from prefixgate.core.prompt import (
    MCP_PREFIX,
    PromptView,
    prompt_view,
    tool_name,
    without_cache_control,
)

__all__ = ["MCP_PREFIX", "Segments", "split", "without_cache_control"]


@dataclass(frozen=True)
class Segments:
    """Digests of one request's pieces, by section, in prompt order."""

    view: PromptView

    def _digests(self, section: str) -> tuple[str, ...]:
        return tuple(p.digest for p in self.view.section(section))

    def _named(self, section: str) -> tuple[tuple[str, str], ...]:
        return tuple((tool_name(p), p.digest) for p in self.view.section(section))

    @property
    def attribution(self) -> str | None:
        found = self._digests("attribution")
        return found[0] if found else None

    @property
    def system_blocks(self) -> tuple[str, ...]:
        return tuple(p.digest for p in self.view.section("system", head_only=True))

    @property
    def tools(self) -> tuple[tuple[str, str], ...]:
        """Built-in tools defined in ``tools[]`` (not those loaded through ToolSearch)."""
        return self._named("tools")

    @property
    def mcp_tools(self) -> tuple[tuple[str, str], ...]:
        return self._named("mcp_tools")

    @property
    def tool_loaded(self) -> tuple[tuple[str, str], ...]:
        return self._named("tool_loaded")

    @property
    def messages(self) -> tuple[str, ...]:
        return self._digests("messages")

    @property
    def system(self) -> str:
        return self.view.digest_of("system")

    @property
    def tools_hash(self) -> str:
        return self.view.digest_of("tools")

    @property
    def mcp_tools_hash(self) -> str:
        return self.view.mcp_digest

    @property
    def project_context(self) -> str:
        return self.view.digest_of("project_context")

    @property
    def conversation(self) -> str:
        return chain(list(self.messages[:-1]))

    @property
    def current_turn(self) -> str:
        return self.messages[-1] if self.messages else chain([])

    def summary(self) -> dict[str, str]:
        """The digests the key is built from, by name."""
        return self.view.summary()


def split(body: Mapping[str, Any], attribution_text: str | None) -> Segments:
    """Segment ``body``, a request whose attribution block is already removed."""
    return Segments(prompt_view(body, attribution_text))
