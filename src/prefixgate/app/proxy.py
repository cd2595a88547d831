"""The request path: read, rewrite, forward, relay, record.

One ``Proxy`` per app. Its handlers are thin: the rewrite is the pure pipeline,
the upstream call is ``AnthropicUpstream`` (kind ``anthropic``, relayed as it
is) or ``translated.OpenAIForward`` (kind ``openai``, translated both ways),
streams are relayed event by event as they arrive (``relay.py``), and the
``CacheObserver`` turns every request, whatever happened to it, into one audit
record.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import replace

import httpx
from starlette.requests import Request
from starlette.responses import Response

from prefixgate.app import side, translated
from prefixgate.app.exchange import (
    REQUEST_ID_HEADER,
    Exchange,
    error_response,
    error_status,
    json_object,
    read_body,
)
from prefixgate.app.guard import tenant_of
from prefixgate.app.observer import CacheObserver
from prefixgate.app.relay import Passthrough, Relay, RelayResponse, Streams
from prefixgate.app.router import Router, Target
from prefixgate.config import Settings, UpstreamConfig
from prefixgate.core.cachekey import ADAPTER_VERSION
from prefixgate.core.errors import (
    NotFound,
    PermissionDenied,
    PrefixgateError,
    UpstreamUnavailable,
)
from prefixgate.core.fold import MessageSummary, summarize_message
from prefixgate.core.headers import HeaderRewrite, rewrite_headers
from prefixgate.core.identity import Identity
from prefixgate.core.pipeline import Rewrite, RewriteOptions, parse_request, rewrite_parsed
from prefixgate.core.policy import Policy
from prefixgate.core.side import LOCAL_PROBE
from prefixgate.core.usage import CacheUsage, cache_usage, from_anthropic
from prefixgate.store.capture import CaptureLog
from prefixgate.upstreams.anthropic import (
    AnthropicUpstream,
    forward_headers,
    response_headers,
    transport_error,
)

log = logging.getLogger("prefixgate")


class Proxy:
    """The handlers. ``client`` is set while the app runs (its lifespan opens it)."""

    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient | None,
        observer: CacheObserver,
        capture: CaptureLog | None = None,
        router: Router | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.observer = observer
        self.capture = capture
        self.router = router or Router(settings)
        self.streams = Streams()  # answers under way, ended with an error at shutdown

    def _started(self) -> httpx.AsyncClient:
        if self.client is None:
            raise RuntimeError(
                "the gateway has not been started: its upstream client is opened by the "
                "app's lifespan, which the ASGI server must run"
            )
        return self.client

    def _upstream(self, config: UpstreamConfig) -> AnthropicUpstream:
        return AnthropicUpstream(config, self._started())

    def _openai(self, config: UpstreamConfig) -> translated.OpenAIForward:
        counter = self.observer.counter(config)
        return translated.OpenAIForward(
            self._started(), self._finish, self._answered, counter, self.streams
        )

    async def messages(self, request: Request) -> Response:
        return await self._forward(request, require_max_tokens=True)

    async def count_tokens(self, request: Request) -> Response:
        return await self._forward(request, require_max_tokens=False)

    async def models(self, request: Request) -> Response:
        """The default upstream's model list, relayed (from the first replica that is up)."""
        route = self.settings.route("*")
        if route is None:
            return error_response(NotFound("no upstream is configured"))
        urls = route[0].urls
        replicas = [u for u in urls if self.router.is_up(u)] or list(urls)
        for i, url in enumerate(replicas):
            try:
                return await self._models(route[0].for_replica(url), request)
            except PrefixgateError as exc:
                if not exc.retryable or i == len(replicas) - 1:
                    return error_response(exc)
        raise AssertionError("an upstream has at least one url")  # pragma: no cover

    async def _models(self, config: UpstreamConfig, request: Request) -> Response:
        if config.kind == "openai":
            return await self._openai(config).models(config, request)
        path = "/v1/models" + (f"?{request.url.query}" if request.url.query else "")
        found = attribution_headers(request, config, config.policy)
        headers = forward_headers(request.headers, config, found.add, drop=found.drop)
        response = await self._upstream(config).open(path, b"", headers, method="GET")
        try:
            content = await response.aread()
        except httpx.HTTPError as exc:
            raise transport_error(config, exc) from None
        finally:
            await response.aclose()
        return Response(content, response.status_code, response_headers(response.headers))

    async def _forward(self, request: Request, *, require_max_tokens: bool) -> Response:
        tenant, principal = tenant_of(request, self.settings.tenant)
        ex = Exchange(
            route=request.url.path,
            started=time.perf_counter(),
            session=request.headers.get("x-claude-code-session-id"),
            tenant=tenant,
            principal=principal,
        )
        try:
            response = await self._handle(request, ex, require_max_tokens)
        except PrefixgateError as exc:
            self._finish(ex, error_status(exc), None, exc.message)
            response = error_response(exc)
        except asyncio.CancelledError:  # the gateway is stopping: still keep the record
            self._finish(ex, 499, None, "request cancelled before its answer (gateway stopping)")
            raise
        response.headers[REQUEST_ID_HEADER] = ex.request_id
        if not isinstance(response, RelayResponse):  # a stream waits before its last bytes
            await ex.durable()
        return response

    async def _handle(self, request: Request, ex: Exchange, require_max_tokens: bool) -> Response:
        raw = ex.raw = await read_body(request, self.settings.max_body_bytes)
        if self.capture is not None:
            self.capture.append(request.method, request.url, request.headers, raw)
        rw = self._rewrite(ex, raw, require_max_tokens)
        assert ex.upstream is not None
        ex.headers = attribution_headers(request, ex.upstream, rw.policy)
        who = self.observer.identify(request.headers, request.url.path, rw, ex.tenant)
        local = ex.upstream.side_requests == "local"
        if who.kind == "count_tokens" and (local or ex.upstream.kind == "openai"):
            return await self._locally(ex, rw, who, side.count_tokens)
        if who.kind == "probe" and local:
            who = replace(who, kind=LOCAL_PROBE)
            return await self._locally(ex, rw, who, side.probe)
        targets = await self.router.plan(ex.upstream, rw, who, ex.tenant)  # pins, loads
        return await self._attempts(request, ex, rw, who, targets)

    async def _locally(
        self, ex: Exchange, rw: Rewrite, who: Identity, answer: side.Answer
    ) -> Response:
        """Answer without the upstream, counting with its tokenizer (or an estimate).

        Not routed: it pins nothing and adds to no replica's load; the first
        replica that is up lends its tokenizer.
        """
        assert ex.upstream is not None
        urls = [u for u in ex.upstream.urls if self.router.is_up(u)] or ex.upstream.urls
        ex.upstream = ex.upstream.for_replica(urls[0])
        ex.seen = self.observer.begin(who, rw, ex.upstream, ex.tenant)
        return await answer(ex, rw, self.observer.counter(ex.upstream), self._finish)

    async def _attempts(
        self, request: Request, ex: Exchange, rw: Rewrite, who: Identity, targets: list[Target]
    ) -> Response:
        """Try each replica in turn until one takes the request.

        A replica that refuses the connection, drops it before answering, or
        answers 502/503 is marked down and the next one is tried; the client
        sees an error only when the last one fails too. Once an answer has
        begun to stream, it is relayed (or ends with an ``error`` event) there.
        """
        for attempt, target in enumerate(targets):
            ex.upstream = target.config
            ex.seen = self.observer.begin(who, rw, target.config, ex.tenant)
            self.router.started(target)
            ex.release = functools.partial(self.router.ended, target)
            try:
                response = await self._send(request, ex, rw)
            except PrefixgateError as exc:
                self._release(ex)
                if not exc.retryable or attempt == len(targets) - 1:
                    raise
                self.router.failed(target)
                self.observer.metrics.failover(ex.tenant, target.config.name, target.config.url)
                log.warning("%s; trying the next replica", exc.message)
                continue
            if attempt:
                await self.router.moved(target)
            return response
        raise AssertionError("a plan has at least one target")  # pragma: no cover

    async def _send(self, request: Request, ex: Exchange, rw: Rewrite) -> Response:
        """Forward to ``ex.upstream``; raises ``PrefixgateError`` only before finishing."""
        assert ex.upstream is not None
        if ex.upstream.kind == "openai":
            return await self._openai(ex.upstream).messages(request, ex, rw)
        extra = {**ex.headers.add, **rw.upstream_headers}  # the body's block wins
        headers = forward_headers(request.headers, ex.upstream, extra, drop=ex.headers.drop)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = await self._upstream(ex.upstream).open(path, rw.body, headers)
        ex.ttfb = time.perf_counter()
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            relay = Relay(self._finish, ex, response, Passthrough(), self._answered, self.streams)
            return RelayResponse(
                relay.events(),
                relay.close,
                status_code=response.status_code,
                headers=response_headers(response.headers),
            )
        return await self._whole(ex, response)

    def _rewrite(self, ex: Exchange, raw: bytes, require_max_tokens: bool) -> Rewrite:
        body = parse_request(
            raw, require_max_tokens=require_max_tokens, limits=self.settings.limits
        )
        route = self.settings.route(str(body["model"]))
        if route is None:
            raise NotFound(f"no upstream route matches model {body['model']!r}")
        ex.upstream, policy = route
        tenant = ex.principal
        if tenant is not None and not tenant.may_use(ex.upstream.name):
            raise PermissionDenied(
                f"tenant {ex.tenant!r} may not use upstream {ex.upstream.name!r} "
                f"(model {body['model']!r}); its keys allow: {', '.join(tenant.upstreams or ())}"
            )
        options = RewriteOptions(
            policy=policy,
            normalize_keep=ex.upstream.normalize_keep,
            metadata_header=ex.upstream.metadata_header,
            provider=f"{ex.upstream.kind}:{ex.upstream.name}",
            tenant=ex.tenant,
            require_max_tokens=require_max_tokens,
            adapter_version=translated.ADAPTER_VERSION
            if ex.upstream.kind == "openai"
            else ADAPTER_VERSION,
            tool_loads=ex.upstream.tool_loads,
        )
        ex.rewrite = rewrite_parsed(raw, body, options)
        return ex.rewrite

    async def _whole(self, ex: Exchange, response: httpx.Response) -> Response:
        try:
            content = await response.aread()
        except httpx.HTTPError as exc:  # nothing sent yet: the next replica may answer
            assert ex.upstream is not None
            raise transport_error(ex.upstream, exc) from None
        finally:
            await response.aclose()
        payload = json_object(content)
        if payload is None:  # never relay a 200 the client cannot read as an answer
            assert ex.upstream is not None
            raise UpstreamUnavailable(
                f"upstream {ex.upstream.name!r} ({ex.upstream.url}) answered "
                f"{response.status_code} with a body that is not a JSON object"
            )
        summary = summarize_message(payload)
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
        if ex.finished:
            return
        ex.finished = True
        self._release(ex)
        rec = ex.record(self.settings, status, summary, error)
        if usage is None:
            usage = from_anthropic(summary.usage) if summary else CacheUsage()
        ex.committed = committed = asyncio.get_running_loop().create_future()
        self.observer.finish(
            rec, ex.seen, usage, remembered=ex.answered, on_commit=_setter(committed)
        )

    @staticmethod
    def _release(ex: Exchange) -> None:
        if ex.release is not None:
            ex.release()
            ex.release = None

    def _answered(self, ex: Exchange) -> None:
        if ex.seen is not None and not ex.answered:
            ex.answered = True
            self.observer.answered(ex.seen)


def attribution_headers(
    request: Request, upstream: UpstreamConfig, policy: Policy
) -> HeaderRewrite:
    """The attribution headers of ``request`` and what ``policy`` does with them."""
    return rewrite_headers(
        request.headers.items(),
        policy,
        normalize_keep=upstream.normalize_keep,
        metadata_header=upstream.metadata_header,
    )


def _setter(future: asyncio.Future[None]) -> Callable[[], None]:
    """A callback, safe from any thread, that completes ``future``."""
    loop = future.get_loop()

    def done() -> None:
        if not future.done():
            future.set_result(None)

    def on_commit() -> None:
        loop.call_soon_threadsafe(done)

    return on_commit
