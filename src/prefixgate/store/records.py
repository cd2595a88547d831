"""One request's audit record, built in one place from what the request learnt.

``audit_record`` reads an exchange (anything with the ``Facts`` below: the
app's ``Exchange``) and its ``Outcome``; the cache fields (expected tokens,
cause) are added later by the observer. A request refused at the door has
only its route, tenant, session, id and error, and is not timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from prefixgate.config import UpstreamConfig
from prefixgate.core.fold import MessageSummary
from prefixgate.core.headers import HeaderRewrite
from prefixgate.core.identity import Identity
from prefixgate.core.pipeline import Rewrite
from prefixgate.core.usage import CacheUsage, from_anthropic
from prefixgate.store.audit import AuditRecord


@dataclass(frozen=True)
class Outcome:
    """What became of a request: answered (maybe with an error), failed or refused."""

    status: int
    summary: MessageSummary | None = None
    usage: CacheUsage | None = None  # None: read off ``summary``
    error: str | None = None
    at_door: bool = False  # refused before the request path: not timed


class Facts(Protocol):
    """What a request has learnt by its end (the app's ``Exchange``)."""

    @property
    def route(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def session(self) -> str | None: ...  # as the client sent it
    @property
    def request_id(self) -> str: ...
    @property
    def started(self) -> float: ...  # perf_counter
    @property
    def ttfb(self) -> float | None: ...  # perf_counter
    @property
    def raw(self) -> bytes | None: ...
    @property
    def rewrite(self) -> Rewrite | None: ...
    @property
    def upstream(self) -> UpstreamConfig | None: ...
    @property
    def headers(self) -> HeaderRewrite: ...  # attribution headers
    @property
    def identity(self) -> Identity | None: ...


def audit_record(ex: Facts, outcome: Outcome, *, capture_bodies: bool) -> AuditRecord:
    """The audit record of ``ex`` ending in ``outcome`` (the observer's cache fields,
    from expected tokens to the cause, left for later)."""
    who, up, now = ex.identity, ex.upstream, time.perf_counter()
    capture = capture_bodies and not outcome.at_door
    return AuditRecord(
        time=time.time(),
        route=ex.route,
        tenant=ex.tenant,
        session=who.session if who else ex.session,
        session_source=who.session_source if who else None,
        agent=who.agent if who else None,
        kind=who.kind if who else "message",
        upstream=up.name if up else None,
        replica=up.replica if up else None,
        status=outcome.status,
        request_id=ex.request_id,
        error=outcome.error,
        attribution_headers=ex.headers.record(),
        ttfb_ms=None if ex.ttfb is None else (ex.ttfb - ex.started) * 1000,
        total_ms=None if outcome.at_door else (now - ex.started) * 1000,
        request_body=ex.raw.decode("utf-8", "replace") if capture and ex.raw else None,
        response_text=outcome.summary.text if capture and outcome.summary else None,
        **_rewritten(ex.rewrite),
        **_usage(outcome),
    )


def _rewritten(rw: Rewrite | None) -> dict[str, Any]:
    """The fields the rewrite fills in (model, key, policy, attribution, ...)."""
    if rw is None:
        return {"model": None, "policy": None}
    return {
        "model": rw.model,
        "policy": rw.policy.value,
        "attribution": dict(rw.attribution.fields) if rw.attribution else None,
        "attribution_found": bool(rw.attribution),
        "tool_loads": _tool_loads(rw),
        "key": rw.key.hex,
        "segments": rw.segments.summary(),
        "stream": bool(rw.stream),
    }


def _usage(outcome: Outcome) -> dict[str, Any]:
    """The answer's own token counts, as the upstream reported them, and the prompt
    and cached tokens read from them (``outcome.usage`` when the kind read them)."""
    summary = outcome.summary
    cache = outcome.usage
    if cache is None:
        cache = from_anthropic(summary.usage) if summary else CacheUsage()
    counts = {"prompt_tokens": cache.prompt_tokens, "cached_tokens": cache.cached_tokens}
    usage = summary.usage if summary else None
    if usage is None:
        return counts
    return {
        **counts,
        "input_tokens": usage.input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "output_tokens": usage.output_tokens,
    }


def _tool_loads(rw: Rewrite) -> dict[str, Any] | None:
    """What the tool-load step did; None when it changed nothing."""
    loads = rw.tool_loads
    if loads is None or not loads.changed:
        return None
    return {"mode": loads.mode.value, "loaded": list(loads.loaded), "moved": list(loads.moved)}
