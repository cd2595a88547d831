"""The request path: read, rewrite, forward, relay, record.

One ``Proxy`` per app. Its handlers are thin: each request is an ``Exchange``
(``exchange.py``) that ends in one audit record; the rewrite is the pure
pipeline; the upstream's kind (``upstreams.registry.KINDS``, looked up once
per request) builds the upstream request and reads its answer; a stream is
relayed event by event as it arrives (``relay.py``); the ``CacheObserver``
compares each request with what its upstream last held.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from prefixgate.app import side
from prefixgate.app.exchange import (
    REQUEST_ID_HEADER,
    Exchange,
    error_response,
    error_status,
    read_body,
)
from prefixgate.app.guard import tenant_of
from prefixgate.app.observer import CacheObserver
from prefixgate.app.relay import Relay, RelayResponse, Streams
from prefixgate.app.router import Router, Target
from prefixgate.app.saved import SavedPrefixes
from prefixgate.config import Settings, UpstreamConfig
from prefixgate.core.door import forwarded_names
from prefixgate.core.errors import NotFound, PermissionDenied, PrefixgateError
from prefixgate.core.headers import HeaderRewrite, rewrite_headers
from prefixgate.core.identity import Identity
from prefixgate.core.pipeline import Rewrite, RewriteOptions, parse_request, rewrite_parsed
from prefixgate.core.policy import Policy
from prefixgate.core.secrets import redact_bytes
from prefixgate.core.side import LOCAL_PROBE
from prefixgate.store.capture import CaptureLog
from prefixgate.upstreams.http import UpstreamClient, read_all, send
from prefixgate.upstreams.kind import Answer, Incoming, Kind
from prefixgate.upstreams.registry import KINDS

log = logging.getLogger("prefixgate")
CANCELLED = "request cancelled before its answer (gateway stopping)"


class Proxy:
    """The handlers; ``upstreams`` is the client the app's lifespan opens."""

    def __init__(
        self,
        settings: Settings,
        upstreams: UpstreamClient,
        observer: CacheObserver,
        capture: CaptureLog | None = None,
        router: Router | None = None,
        prefixes: SavedPrefixes | None = None,
    ) -> None:
        self.settings = settings
        self.prefixes = prefixes  # the bundled runtime's saved prefixes (app/saved.py)
        self.upstreams = upstreams
        self.observer = observer
        self.capture = capture
        self.router = router or Router(settings, upstreams)
        self.streams = Streams()  # answers under way, ended with an error at shutdown

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
        kind = KINDS[config.kind]
        found = attribution_headers(request, config, config.policy)
        outgoing = kind.models(config, incoming(request, found, self.settings.trust_forwarded))
        response = await send(self.upstreams, config, outgoing)
        content = await read_all(config, response)
        return answer_response(kind.model_list(response.status_code, response.headers, content))

    async def _forward(self, request: Request, *, require_max_tokens: bool) -> Response:
        """One exchange: made here, ended here (or by the relay of its stream)."""
        tenant, principal = tenant_of(request, self.settings.tenant)
        ex = Exchange(
            route=request.url.path,
            tenant=tenant,
            session=request.headers.get("x-claude-code-session-id"),
            observer=self.observer,
            capture_bodies=self.settings.capture_bodies,
            principal=principal,
        )
        response: Response | None = None
        try:
            response = await self._handle(request, ex, require_max_tokens)
        except PrefixgateError as exc:
            ex.failed(error_status(exc), exc.message)
            response = error_response(exc)
        except asyncio.CancelledError:  # the gateway is stopping: still keep the record
            ex.failed(499, CANCELLED)
            raise
        finally:
            if not isinstance(response, RelayResponse):  # a stream's relay ends it
                ex.end()
                ex.settle()
        response.headers[REQUEST_ID_HEADER] = ex.request_id
        if not isinstance(response, RelayResponse):  # a stream waits before its last bytes
            await ex.durable()
        return response

    async def _handle(self, request: Request, ex: Exchange, require_max_tokens: bool) -> Response:
        raw = ex.raw = await read_body(request, self.settings.max_body_bytes)
        if self.capture is not None:
            self.capture.append(request.method, request.url, request.headers, raw)
        upstream, kind, rw = self._rewrite(ex, raw, require_max_tokens)
        ex.headers = attribution_headers(request, upstream, rw.policy)
        who = ex.identity = self.observer.identify(request.headers, request.url.path, rw, ex.tenant)
        local = upstream.side_requests == "local"
        if who.kind == "count_tokens" and (local or kind.counts_tokens):
            return await self._locally(ex, upstream, rw, who, side.count_tokens)
        if who.kind == "probe" and local:
            who = ex.identity = replace(who, kind=LOCAL_PROBE)
            return await self._locally(ex, upstream, rw, who, side.probe)
        targets = await self.router.plan(upstream, rw, who, ex.tenant)  # pins, loads
        return await self._attempts(request, ex, kind, rw, who, targets)

    async def _locally(
        self,
        ex: Exchange,
        upstream: UpstreamConfig,
        rw: Rewrite,
        who: Identity,
        answer: side.Answer,
    ) -> Response:
        """Answer without the upstream, counting with its tokenizer (or an estimate).

        Not routed: it pins nothing and adds to no replica's load; the first
        replica that is up lends its tokenizer.
        """
        urls = [u for u in upstream.urls if self.router.is_up(u)] or upstream.urls
        replica = upstream.for_replica(urls[0])
        ex.sent_to(replica, self.observer.begin(who, rw, replica, ex.tenant), None)
        return await answer(ex, rw, self.observer.counter(replica))

    async def _attempts(
        self,
        request: Request,
        ex: Exchange,
        kind: Kind,
        rw: Rewrite,
        who: Identity,
        targets: list[Target],
    ) -> Response:
        """Try each replica in turn until one takes the request.

        A replica that refuses the connection, drops it before answering, or
        answers 502/503 is marked down and the next one is tried; the client
        sees an error only when the last one fails too. Once an answer has
        begun to stream, it is relayed (or ends with an ``error`` event) there.
        """
        for attempt, target in enumerate(targets):
            sent, release = rw, _releasing(self.router, target)
            if self.prefixes is not None:  # may restore a saved prefix, send to its slot
                sent, release = await self.prefixes.hold(target.config, rw, who.kind, release)
            self.router.started(target)
            ex.sent_to(target.config, None, release)
            compare = functools.partial(self._observe, ex, who, rw, target.config)
            try:
                response = await self._send(request, ex, kind, target.config, sent, compare)
            except PrefixgateError as exc:
                ex.let_go()
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

    def _observe(self, ex: Exchange, who: Identity, rw: Rewrite, upstream: UpstreamConfig) -> None:
        """Compare the prompt with ``upstream``'s cache model (while the upstream works)."""
        ex.observed(self.observer.begin(who, rw, upstream, ex.tenant))

    async def _send(
        self,
        request: Request,
        ex: Exchange,
        kind: Kind,
        upstream: UpstreamConfig,
        rw: Rewrite,
        on_sent: Callable[[], None],
    ) -> Response:
        """Forward to ``upstream``; raises ``PrefixgateError`` only before an answer.

        ``on_sent`` runs once, when the request is on the wire (``upstreams.http.send``)."""
        trusted = self.settings.trust_forwarded
        call = kind.call(upstream, incoming(request, ex.headers, trusted), rw, ex.scoped_session)
        response = await send(self.upstreams, upstream, call.outgoing, on_sent)
        ex.ttfb = time.perf_counter()
        streamed = call.stream(response.status_code, response.headers)
        if streamed is not None:
            relay = Relay(ex, upstream, response, streamed.events, self.streams, streamed.decoder)
            return RelayResponse(
                relay.events(),
                relay.close,
                status_code=streamed.status,
                headers=streamed.headers,
                ended=relay.ended,
            )
        # an upstream that echoes its own key must not hand it to the client or the store
        content = redact_bytes(await read_all(upstream, response), upstream.secrets)
        answer = call.answer(response.status_code, response.headers, content)
        ex.answered(answer.status, answer.summary, answer.usage, answer.error)
        return answer_response(answer)

    def _rewrite(
        self, ex: Exchange, raw: bytes, require_max_tokens: bool
    ) -> tuple[UpstreamConfig, Kind, Rewrite]:
        """The request parsed, routed by its model, and rewritten for its upstream's kind."""
        body = parse_request(
            raw, require_max_tokens=require_max_tokens, limits=self.settings.limits
        )
        upstream, policy = self._route(ex, body["model"])
        kind = KINDS[upstream.kind]
        options = RewriteOptions(
            policy=policy,
            normalize_keep=upstream.normalize_keep,
            metadata_header=upstream.metadata_header,
            provider=f"{kind.name}:{upstream.name}",
            tenant=ex.tenant,
            require_max_tokens=require_max_tokens,
            adapter_version=kind.adapter_version,
            tool_loads=upstream.tool_loads,
        )
        ex.rewrite = rewrite_parsed(raw, body, options)
        return upstream, kind, ex.rewrite

    def _route(self, ex: Exchange, model: Any) -> tuple[UpstreamConfig, Policy]:
        """The upstream (and policy) for ``model``, if the request's tenant may use it."""
        route = self.settings.route(str(model))
        if route is None:
            raise NotFound(f"no upstream route matches model {model!r}")
        ex.upstream = upstream = route[0]
        tenant = ex.principal
        if tenant is not None and not tenant.may_use(upstream.name):
            raise PermissionDenied(
                f"tenant {ex.tenant!r} may not use upstream {upstream.name!r} "
                f"(model {model!r}); its keys allow: {', '.join(tenant.upstreams or ())}"
            )
        return route


def _releasing(router: Router, target: Target) -> Callable[[], None]:
    return functools.partial(router.ended, target)


def incoming(request: Request, found: HeaderRewrite, trust_forwarded: bool = False) -> Incoming:
    """What of ``request`` an upstream request is built from; a client's claims about
    the proxies it came through are dropped unless ``trust_forwarded``."""
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    drop = found.drop if trust_forwarded else found.drop | forwarded_names(request.headers.keys())
    return Incoming(request.headers, path, found.add, drop)


def answer_response(answer: Answer) -> Response:
    return Response(answer.content, answer.status, dict(answer.headers), answer.media_type)


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
