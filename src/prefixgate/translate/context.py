"""The options of a request translation and the state of one translation call.

``OpenAIRequestOptions`` says how to render what chat completions has no single
answer for; ``Context`` carries those options, the request's tool names and the
set of things left out through one call. Both the request-level translation
(``request``) and the content-block translation (``blocks``) read them, so they
live here, below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefixgate.translate.names import ToolNames

SYSTEM_MESSAGES = ("system", "user")

Json = dict[str, Any]


@dataclass(frozen=True)
class OpenAIRequestOptions:
    """How to render what chat completions has no single answer for."""

    system_messages: str = "system"
    user: str | None = None
    prompt_cache_key: str | None = None
    include_usage: bool = True
    reasoning: bool = True
    loaded_tools: tuple[str, ...] = ()  # deferred tools loaded beyond the references seen

    def __post_init__(self) -> None:
        if self.system_messages not in SYSTEM_MESSAGES:
            raise ValueError(f"system_messages must be one of {SYSTEM_MESSAGES}")


@dataclass
class Context:
    """The state of one translation call (never shared between calls)."""

    names: ToolNames
    options: OpenAIRequestOptions
    dropped: set[str] = field(default_factory=set)

    def drop(self, what: str) -> None:
        self.dropped.add(what)
