"""The request path: read, rewrite, forward, relay, record.

One ``Proxy`` per app. Its handlers are thin: the rewrite is the pure pipeline,
the upstream call is ``AnthropicUpstream``, the stream is relayed event by event
as it arrives (``SSEDecoder`` gives each event's exact bytes) while a
``StreamFold`` watches it for usage, and the ``CacheObserver`` turns every
request, whatever happened to it, into one audit record. A streamed answer is
closed upstream however the response to the client ends: completed, failed, or
abandoned by a client that went away.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from prefixgate.app.observer import CacheObserver, Observation
from prefixgate.config import Settings, UpstreamConfig
from prefixgate.core.errors import NotFound, PayloadTooLarge, PrefixgateError, error_body
from prefixgate.core.fold import MessageSummary, StreamFold, summarize_message
from prefixgate.core.pipeline import Rewrite, RewriteOptions, parse_request, rewrite_parsed
from prefixgate.core.sse import SSEDecoder, encode_event
from prefixgate.core.usage import CacheUsage, cache_usage, from_anthropic
from prefixgate.store.audit import AuditRecord
from prefixgate.store.capture import CaptureLog
from prefixgate.upstreams.anthropic import (
    AnthropicUpstream,
    forward_headers,
    response_headers,
    transport_error,
)

log = logging.getLogger("prefixgate")


def error_response(exc: PrefixgateError) -> JSONResponse:
    """The error as sent to the client; an upstream's error status is kept."""
    return JSONResponse(exc.to_body(), status_code=error_status(exc))


def error_status(exc: PrefixgateError) -> int:
    status = getattr(exc, "upstream_status", exc.status)
    return status if isinstance(status, int) else exc.status


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
    seen: Observation | None = None
    ttfb: float | None = None
    raw: bytes | None = None

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
            tenant=settings.tenant,
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
            request_body=self.raw.decode("utf-8", "replace") if capture and self.raw else None,
            response_text=summary.text if capture and summary else None,
        )


class Proxy:
    """The handlers. ``client`` is set while the app runs (its lifespan opens it)."""

    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient | None,
        observer: CacheObserver,
        capture: CaptureLog | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.observer = observer
        self.capture = capture

    def _upstream(self, config: UpstreamConfig) -> AnthropicUpstream:
        if self.client is None:
            raise RuntimeError(
                "the gateway has not been started: its upstream client is opened by the "
                "app's lifespan, which the ASGI server must run"
            )
        return AnthropicUpstream(config, self.client)

    async def messages(self, request: Request) -> Response:
        return await self._forward(request, require_max_tokens=True)

    async def count_tokens(self, request: Request) -> Response:
        return await self._forward(request, require_max_tokens=False)

    async def models(self, request: Request) -> Response:
        """The default upstream's model list, relayed."""
        route = self.settings.route("*")
        if route is None:
            return error_response(NotFound("no upstream is configured"))
        upstream = self._upstream(route[0])
        path = "/v1/models" + (f"?{request.url.query}" if request.url.query else "")
        try:
            response = await upstream.open(
                path, b"", forward_headers(request.headers, route[0]), method="GET"
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
            raw = ex.raw = await read_body(request, self.settings.max_body_bytes)
            if self.capture is not None:
                self.capture.append(request.method, request.url, request.headers, raw)
            rw = self._rewrite(ex, raw, require_max_tokens)
            assert ex.upstream is not None
            ex.seen = self.observer.begin(request.headers, request.url.path, rw, ex.upstream)
            headers = forward_headers(request.headers, ex.upstream, rw.upstream_headers)
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            upstream = self._upstream(ex.upstream)
            response = await upstream.open(path, rw.body, headers)
        except PrefixgateError as exc:
            self._finish(ex, error_status(exc), None, exc.message)
            return error_response(exc)
        ex.ttfb = time.perf_counter()
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            relay = Relay(self, ex, response)
            return RelayResponse(
                relay.events(),
                relay.close,
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
        ex.rewrite = rewrite_parsed(raw, body, options)
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
        payload = _json_object(content)
        summary = summarize_message(payload) if payload is not None else None
        usage = cache_usage(payload) if payload is not None else CacheUsage()
        self._finish(ex, response.status_code, summary, None, usage)
        return Response(content, response.status_code, response_headers(response.headers))

    def _finish(
        self,
        ex: Exchange,
        status: int,
        summary: MessageSummary | None,
        error: str | None,
        usage: CacheUsage | None = None,
    ) -> None:
        rec = ex.record(self.settings, status, summary, error)
        if usage is None:
            usage = from_anthropic(summary.usage) if summary else CacheUsage()
        self.observer.finish(rec, ex.seen, usage)


class Relay:
    """One streamed answer: relayed event by event, folded for the audit record."""

    ABANDONED = "stream abandoned before its end (client disconnected or gateway stopping)"
    INTERNAL = "internal error in the gateway while relaying the stream; see its log"

    def __init__(self, proxy: Proxy, ex: Exchange, response: httpx.Response) -> None:
        self._proxy = proxy
        self._ex = ex
        self._response = response
        self._fold = StreamFold()
        self._error: str | None = None
        self._ended = False
        self._closed = False

    async def events(self) -> AsyncIterator[bytes]:
        """The upstream's events, each sent as soon as its last byte arrived.

        A failure mid-stream ends the stream with an Anthropic ``error`` event.
        """
        decoder = SSEDecoder()
        try:
            async for chunk in self._response.aiter_bytes():
                events = decoder.decode(chunk)
                self._fold.feed_events(events)
                if events:
                    yield b"".join(e.raw for e in events)
            tail = decoder.flush()
            self._fold.feed_events(tail)
            if tail:
                yield b"".join(e.raw for e in tail)
        except httpx.HTTPError as exc:
            assert self._ex.upstream is not None
            err = transport_error(self._ex.upstream, exc)
            self._error = err.message
            self._ended = True
            yield encode_event("error", err.to_body())
        except Exception:
            log.exception("relaying the upstream stream failed")
            self._error = self.INTERNAL
            self._ended = True
            yield encode_event("error", error_body("api_error", self.INTERNAL))
        self._ended = True

    async def close(self) -> None:
        """Write the audit record and close the upstream answer (once)."""
        if self._closed:
            return
        self._closed = True
        summary = self._fold.result()
        error = self._error
        if error is None and not self._ended:
            error = self.ABANDONED
        if error is None and summary.error is not None:
            error = str(summary.error.get("message", summary.error))
        self._proxy._finish(self._ex, self._response.status_code, summary, error)
        with anyio.CancelScope(shield=True):
            await self._response.aclose()


class RelayResponse(StreamingResponse):
    """A StreamingResponse that runs ``on_close`` however it ends.

    Starlette stops iterating the body when the client disconnects, and may
    never start it when the client is gone first; either way the upstream answer
    must still be closed (so the upstream stops generating) and audited.
    """

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        *,
        status_code: int,
        headers: dict[str, str],
    ) -> None:
        super().__init__(content, status_code=status_code, headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(content)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None
