"""The stable prefix cache key.

A key names what a runtime can keep across requests and across sessions of
the same project: provider, model, renderer, tenant, policy and the digests of
the system prompt, built-in tools, MCP tools (defined, or listed as deferred),
the deferred-tool list, the project context and the environment (working
directory, OS, model line). All of them come from the one prompt model
(``core/prompt.py``).

Nothing volatile enters it: no request, session or trace ids, no
``metadata.user_id``, no attribution fingerprint, no date, no git status (a
snapshot that moves with every commit), no tool loaded through ToolSearch
(one conversation's choice), no message and no current turn, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property

from prefixgate.core.canonical import digest
from prefixgate.core.prompt import PromptView
from prefixgate.core.segments import Segments

ADAPTER_VERSION = "anthropic-messages/1"


@dataclass(frozen=True)
class PromptCacheKey:
    provider: str
    model: str
    adapter_version: str
    tenant: str
    policy: str
    system_hash: str
    tool_schema_hash: str
    mcp_descriptor_hash: str
    deferred_tools_hash: str
    project_context_hash: str
    environment_hash: str

    @cached_property
    def hex(self) -> str:
        """The key as 64 hex digits (worked out once: several callers read it)."""
        return digest({name: getattr(self, name) for name in _FIELDS})


_FIELDS = tuple(f.name for f in fields(PromptCacheKey))


def build_key(
    prompt: PromptView | Segments,
    *,
    provider: str,
    model: str,
    tenant: str,
    policy: str,
    adapter_version: str = ADAPTER_VERSION,
) -> PromptCacheKey:
    view = prompt.view if isinstance(prompt, Segments) else prompt
    parts = view.summary()
    return PromptCacheKey(
        provider=provider,
        model=model,
        adapter_version=adapter_version,
        tenant=tenant,
        policy=policy,
        system_hash=parts["system"],
        tool_schema_hash=parts["tools"],
        mcp_descriptor_hash=parts["mcp_tools"],
        deferred_tools_hash=parts["deferred_tools"],
        project_context_hash=parts["project_context"],
        environment_hash=parts["environment"],
    )
