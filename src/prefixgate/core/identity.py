"""Who sent a request: its session, its agent and what kind of request it is.

Pure functions over the request's headers and parsed body.

Session, first found wins:

``header``    Claude Code's ``X-Claude-Code-Session-Id`` header
``metadata``  ``session_id`` in ``metadata.user_id``: a JSON string in current
              versions (``{"device_id":...,"session_id":"..."}``), and
              ``user_<hex>_account_<id>_session_<uuid>`` in older ones
``key``       the stable prefix key: requests sharing a prompt prefix are
              grouped together when the client names no session

Agent: ``sub`` when the attribution block says ``cc_is_subagent``, ``side``
for a request without tools (title and summary generation, topic checks),
else ``main``. Older clients send no subagent flag; ``AgentLabeller`` then
tells a subagent by a tool set other than the session's main agent's.

Kind: ``count_tokens`` for the token-count route, ``probe`` for a request
asking for one output token (clients use those to warm or measure a cache),
else ``message``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prefixgate.core.attribution import Attribution
from prefixgate.core.pipeline import Rewrite

SESSION_HEADER = "x-claude-code-session-id"
_LEGACY_USER_ID = re.compile(r"^user_[0-9a-fA-F]+_account_[^_]*_session_([0-9a-fA-F-]{8,})$")
_MAX_SESSION_CHARS = 128


def session_of(
    headers: Mapping[str, str], body: Mapping[str, Any], key_hex: str
) -> tuple[str, str]:
    """``(session id, where it came from)`` for one request.

    ``headers`` must have lower-case names (Starlette's and httpx's do).
    """
    header = headers.get(SESSION_HEADER, "").strip()
    if header:
        return header[:_MAX_SESSION_CHARS], "header"
    from_metadata = session_from_metadata(body.get("metadata"))
    if from_metadata:
        return from_metadata, "metadata"
    return f"key:{key_hex[:16]}", "key"


def session_from_metadata(metadata: Any) -> str | None:
    """The session id inside ``metadata.user_id``, in either of its forms."""
    if not isinstance(metadata, Mapping):
        return None
    user_id = metadata.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        return None
    if user_id.lstrip().startswith("{"):
        try:
            parsed = json.loads(user_id)
        except ValueError:
            return None
        session = parsed.get("session_id") if isinstance(parsed, dict) else None
        return session[:_MAX_SESSION_CHARS] if isinstance(session, str) and session else None
    legacy = _LEGACY_USER_ID.match(user_id)
    return legacy.group(1)[:_MAX_SESSION_CHARS] if legacy else None


def agent_of(attribution: Attribution | None, body: Mapping[str, Any]) -> str:
    """``sub``, ``side`` or ``main`` from the request alone."""
    if attribution is not None and attribution.is_subagent:
        return "sub"
    tools = body.get("tools")
    return "main" if isinstance(tools, list) and tools else "side"


def kind_of(route: str, body: Mapping[str, Any]) -> str:
    """``count_tokens``, ``probe`` or ``message``."""
    if route.rstrip("/").endswith("/count_tokens"):
        return "count_tokens"
    max_tokens = body.get("max_tokens")
    return "probe" if max_tokens == 1 and not isinstance(max_tokens, bool) else "message"


class AgentLabeller:
    """Refines ``agent_of`` with what a session has shown so far.

    The first ``main`` request of a session fixes that session's main tool set
    (by name); a later unflagged request with other tools is a subagent. Names,
    not schemas: a resumed conversation may re-render a tool's description.
    A request flagged ``cc_is_subagent`` never changes the main tool set.
    Holds at most ``limit`` sessions, forgetting the oldest.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._main_tools: dict[tuple[str, str], frozenset[str]] = {}
        self._limit = limit

    def label(self, tenant: str, session: str, agent: str, tool_names: Iterable[str]) -> str:
        if agent != "main":
            return agent
        names = frozenset(tool_names)
        known = self._main_tools.get((tenant, session))
        if known is None:
            if len(self._main_tools) >= self._limit:
                self._main_tools.pop(next(iter(self._main_tools)))
            self._main_tools[(tenant, session)] = names
            return "main"
        return "main" if known == names else "sub"


@dataclass(frozen=True)
class Identity:
    session: str
    session_source: str  # header | metadata | key
    agent: str  # main | sub | side
    kind: str  # message | probe | count_tokens


def identify(
    headers: Mapping[str, str], route: str, rw: Rewrite, tenant: str, labeller: AgentLabeller
) -> Identity:
    """Session, agent and kind of one rewritten request."""
    session, source = session_of(headers, rw.parsed, rw.key.hex)
    tool_names = [name for name, _ in (*rw.segments.tools, *rw.segments.mcp_tools)]
    agent = labeller.label(tenant, session, agent_of(rw.attribution, rw.parsed), tool_names)
    return Identity(session, source, agent, kind_of(route, rw.parsed))
