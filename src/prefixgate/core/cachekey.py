"""The stable prefix cache key.

A key names the part of a prompt that should be served from cache across
requests: provider, model, renderer, tenant, policy and the hashes of the
system prompt, built-in tools, MCP tools and project context. Nothing volatile
enters it: no request, session or trace ids, no ``metadata.user_id``, no
attribution fingerprint, no current message or latest tool result, no clock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prefixgate.core.canonical import digest
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
    project_context_hash: str

    @property
    def hex(self) -> str:
        return digest(asdict(self))


def build_key(
    segments: Segments,
    *,
    provider: str,
    model: str,
    tenant: str,
    policy: str,
    adapter_version: str = ADAPTER_VERSION,
) -> PromptCacheKey:
    return PromptCacheKey(
        provider=provider,
        model=model,
        adapter_version=adapter_version,
        tenant=tenant,
        policy=policy,
        system_hash=segments.system,
        tool_schema_hash=segments.tools_hash,
        mcp_descriptor_hash=segments.mcp_tools_hash,
        project_context_hash=segments.project_context,
    )
