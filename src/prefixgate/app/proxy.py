"""The request path: read, rewrite, forward, relay, record.

One ``Proxy`` per app. Its handlers are thin: the rewrite is the pure pipeline,
the upstream call is ``AnthropicUpstream``, the stream is relayed event by event
as it arrives (``SSEDecoder`` gives each event's exact bytes) while a
``StreamFold`` watches it for usage, and one audit record is written per request
whatever happened.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from prefixgate.config import Settings, UpstreamConfig
from prefixgate.core.errors import NotFound, PayloadTooLarge, PrefixgateError
from prefixgate.core.fold import MessageSummary, StreamFold, summarize_message
from prefixgate.core.pipeline import Rewrite, RewriteOptions, parse_request, rewrite
from prefixgate.core.sse import SSEDecoder, SSEEvent, encode_event
from prefixgate.store.audit import AuditRecord, AuditSink
from prefixgate.upstreams.anthropic import (
    AnthropicUpstream,
    forward_headers,
    response_headers,
    transport_error,
)

log = logging.getLogger("prefixgate")


def error_response(exc: PrefixgateError) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(f"request body exceeds the gateway's limit of {limit} bytes")
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
    upstream: UpstreamConfig | None = None
    rewrite: Rewrite | None = None
    ttfb: float | None = None

    def record(
        self, settings: Settings, status: int, summary: MessageSummary | None, error: str | None
    ) -> AuditRecord:
        rw, usage = self.rewrite, summary.usage if summary else None
        now = time.perf_counter()
        return AuditRecord(
            time=time.time(),
            route=self.route,
            tenant=settings.tenant,
            session=self.session,
            model=rw.model if rw else None,
            upstream=self.upstream.name if self.upstream else None,
            policy=rw.policy.value if rw else None,
            status=status,
            attribution=dict(rw.attribution.fields) if rw and rw.attribution else None,
            attribution_found=bool(rw and rw.attribution),
            key=rw.key.hex if rw else None,
            segments=rw.segments.summary() if rw else {},
            stream=bool(rw and rw.stream),
            input_tokens=usage.input_tokens if usage else None,
            cache_read_input_tokens=usage.cache_read_input_tokens if usage else None,
            cache_creation_input_tokens=usage.cache_creation_input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            ttfb_ms=None if self.ttfb is None else (self.ttfb - self.started) * 1000,
            total_ms=(now - self.started) * 1000,
            error=error,
        )


class Proxy:
    def __init__(self, settings: Settings, client: httpx.AsyncClient, audit: AuditSink) -> None:
        self.settings = settings
        self.client = client
        self.audit = audit

    async def messages(self, request: Request) -> Response:
        return await self._forward(request, require_max_tokens=True)

    async def count_tokens(self, request: Request) -> Response:
        return await self._forward(request, require_max_tokens=False)

    async def models(self, request: Request) -> Response:
        """The default upstream's model list, relayed."""
        route = self.settings.route("*")
        if route is None:
            return error_response(NotFound("no upstream is configured"))
        upstream = AnthropicUpstream(route[0], self.client)
        try:
            response = await upstream.open(
                "/v1/models", b"", forward_headers(request.headers, route[0]), method="GET"
            )
        except PrefixgateError as exc:
            return error_response(exc)
        try:
            content = await response.aread()
        except httpx.HTTPError as exc:
            return error_response(transport_error(route[0], exc))
        finally:
            await response.aclose()
        return Response(content, response.status_code, response_headers(response.headers))

    async def _forward(self, request: Request, *, require_max_tokens: bool) -> Response:
        ex = Exchange(
            route=request.url.path,
            started=time.perf_counter(),
            session=request.headers.get("x-claude-code-session-id"),
        )
        try:
            raw = await read_body(request, self.settings.max_body_bytes)
            rw = self._rewrite(ex, raw, require_max_tokens)
            assert ex.upstream is not None
            headers = forward_headers(request.headers, ex.upstream, rw.upstream_headers)
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            upstream = AnthropicUpstream(ex.upstream, self.client)
            response = await upstream.open(path, rw.body, headers)
        except PrefixgateError as exc:
            status = getattr(exc, "upstream_status", exc.status)
            self._finish(ex, status, None, exc.message)
            return JSONResponse(exc.to_body(), status_code=status)
        ex.ttfb = time.perf_counter()
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(
                self._relay(ex, response),
                status_code=response.status_code,
                headers=response_headers(response.headers),
            )
        return await self._whole(ex, response)

    def _rewrite(self, ex: Exchange, raw: bytes, require_max_tokens: bool) -> Rewrite:
        body = parse_request(raw, require_max_tokens=require_max_tokens)
        route = self.settings.route(str(body["model"]))
        if route is None:
            raise NotFound(f"no upstream route matches model {body['model']!r}")
        ex.upstream, policy = route
        options = RewriteOptions(
            policy=policy,
            normalize_keep=ex.upstream.normalize_keep,
            metadata_header=ex.upstream.metadata_header,
            provider=f"{ex.upstream.kind}:{ex.upstream.name}",
            tenant=self.settings.tenant,
            require_max_tokens=require_max_tokens,
        )
        ex.rewrite = rewrite(raw, options)
        return ex.rewrite

    async def _whole(self, ex: Exchange, response: httpx.Response) -> Response:
        try:
            content = await response.aread()
        except httpx.HTTPError as exc:
            assert ex.upstream is not None
            err = transport_error(ex.upstream, exc)
            self._finish(ex, err.status, None, err.message)
            return error_response(err)
        finally:
            await response.aclose()
        summary = _summary_of(content)
        self._finish(ex, response.status_code, summary, None)
        return Response(content, response.status_code, response_headers(response.headers))

    async def _relay(self, ex: Exchange, response: httpx.Response) -> AsyncIterator[bytes]:
        decoder, fold = SSEDecoder(), StreamFold()
        error: str | None = None
        try:
            async for chunk in response.aiter_bytes():
                events = decoder.decode(chunk)
                _feed(fold, events)
                if events:
                    yield b"".join(e.raw for e in events)
            tail = decoder.flush()
            _feed(fold, tail)
            if tail:
                yield b"".join(e.raw for e in tail)
        except httpx.HTTPError as exc:
            assert ex.upstream is not None
            err = transport_error(ex.upstream, exc)
            error = err.message
            yield encode_event("error", err.to_body())
        finally:
            await response.aclose()
            summary = fold.result()
            if error is None and summary.error is not None:
                error = str(summary.error.get("message", summary.error))
            self._finish(ex, response.status_code, summary, error)

    def _finish(
        self, ex: Exchange, status: int, summary: MessageSummary | None, error: str | None
    ) -> None:
        rec = ex.record(self.settings, status, summary, error)
        try:
            self.audit.record(rec)
        except Exception:  # an audit failure must never fail the request
            log.exception("audit record could not be written")
        log.info("%s", _log_line(rec))


def _feed(fold: StreamFold, events: list[SSEEvent]) -> None:
    for event in events:
        if event.comment or not event.data:
            continue
        try:
            payload = event.json()
        except ValueError:
            continue
        if isinstance(payload, dict):
            fold.feed(event.event, payload)


def _summary_of(content: bytes) -> MessageSummary | None:
    try:
        payload = json.loads(content)
    except ValueError:
        return None
    return summarize_message(payload) if isinstance(payload, dict) else None


def _log_line(rec: AuditRecord) -> str:
    parts: list[tuple[str, Any]] = [
        ("route", rec.route),
        ("status", rec.status),
        ("model", rec.model),
        ("upstream", rec.upstream),
        ("policy", rec.policy),
        ("attribution", "found" if rec.attribution_found else "none"),
        ("key", rec.key[:12] if rec.key else None),
        ("input", rec.input_tokens),
        ("cached", rec.cache_read_input_tokens),
        ("output", rec.output_tokens),
        ("ms", None if rec.total_ms is None else round(rec.total_ms)),
    ]
    if rec.error:
        parts.append(("error", rec.error))
    return " ".join(f"{k}={v}" for k, v in parts if v is not None)
