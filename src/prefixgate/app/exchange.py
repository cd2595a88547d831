"""What the request path shares: reading the body, error responses, the
per-request ``Exchange`` that becomes the audit record.

Shared by ``proxy.py`` (Anthropic upstreams, relayed as they are) and
``translated.py`` (OpenAI upstreams, translated both ways).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from prefixgate.app.observer import Observation
from prefixgate.config import Settings, UpstreamConfig
from prefixgate.core.auth import Tenant
from prefixgate.core.errors import PayloadTooLarge, PrefixgateError
from prefixgate.core.fold import MessageSummary
from prefixgate.core.headers import HeaderRewrite
from prefixgate.core.pipeline import Rewrite
from prefixgate.core.usage import CacheUsage
from prefixgate.store.audit import AuditRecord

# Called once per request with what became of it: (exchange, status, summary, error, usage).
Finish = Callable[["Exchange", int, MessageSummary | None, str | None, CacheUsage | None], None]
# Called when a streamed answer has arrived in full, before its last bytes go out.
Answered = Callable[["Exchange"], None]


REQUEST_ID_HEADER = "x-prefixgate-request-id"


def error_response(exc: PrefixgateError, request_id: str | None = None) -> JSONResponse:
    """The error as sent to the client; an upstream's error status is kept."""
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return JSONResponse(exc.to_body(), status_code=error_status(exc), headers=headers)


def error_status(exc: PrefixgateError) -> int:
    status = getattr(exc, "upstream_status", exc.status)
    return status if isinstance(status, int) else exc.status


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(f"request body exceeds the gateway's limit max_body_bytes={limit}")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Exchange:
    """What one request has learnt so far; becomes its audit record."""

    route: str
    started: float
    session: str | None
    tenant: str = "default"
    principal: Tenant | None = None  # the tenant whose key came with it (with keys)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    upstream: UpstreamConfig | None = None
    rewrite: Rewrite | None = None
    headers: HeaderRewrite = field(default_factory=HeaderRewrite)  # attribution headers
    seen: Observation | None = None
    ttfb: float | None = None
    raw: bytes | None = None
    finished: bool = False  # its record has been made (once per request)
    answered: bool = False  # the observer already knows the upstream answered in full
    release: Callable[[], None] | None = None  # tells the router the request is over
    committed: asyncio.Future[None] | None = None  # set once its audit record is on disk

    async def durable(self, timeout: float = 2.0) -> None:
        """Wait (up to ``timeout``) until this request's audit record is committed.

        Called before the last bytes of an answer go out, so a client that got
        its whole answer can count on the record, even if the gateway is then
        killed. A stuck disk delays the answer by ``timeout`` at most.
        """
        if self.committed is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.committed), timeout)

    def record(
        self, settings: Settings, status: int, summary: MessageSummary | None, error: str | None
    ) -> AuditRecord:
        rw, usage = self.rewrite, summary.usage if summary else None
        who = self.seen.identity if self.seen else None
        now = time.perf_counter()
        capture = settings.capture_bodies
        return AuditRecord(
            time=time.time(),
            route=self.route,
            tenant=self.tenant,
            session=who.session if who else self.session,
            session_source=who.session_source if who else None,
            agent=who.agent if who else None,
            kind=who.kind if who else "message",
            model=rw.model if rw else None,
            upstream=self.upstream.name if self.upstream else None,
            policy=rw.policy.value if rw else None,
            status=status,
            attribution=dict(rw.attribution.fields) if rw and rw.attribution else None,
            attribution_found=bool(rw and rw.attribution),
            attribution_headers=self.headers.record(),
            tool_loads=_tool_loads(rw),
            key=rw.key.hex if rw else None,
            segments=rw.segments.summary() if rw else {},
            stream=bool(rw and rw.stream),
            input_tokens=usage.input_tokens if usage else None,
            cache_read_input_tokens=usage.cache_read_input_tokens if usage else None,
            cache_creation_input_tokens=usage.cache_creation_input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            ttfb_ms=None if self.ttfb is None else (self.ttfb - self.started) * 1000,
            total_ms=(now - self.started) * 1000,
            replica=self.upstream.replica if self.upstream else None,
            request_id=self.request_id,
            error=error,
            request_body=self.raw.decode("utf-8", "replace") if capture and self.raw else None,
            response_text=summary.text if capture and summary else None,
        )


def json_object(content: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(content)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _tool_loads(rw: Rewrite | None) -> dict[str, Any] | None:
    """What the tool-load step did, for the audit record; None when it changed nothing."""
    loads = rw.tool_loads if rw is not None else None
    if loads is None or not loads.changed:
        return None
    return {"mode": loads.mode.value, "loaded": list(loads.loaded), "moved": list(loads.moved)}
