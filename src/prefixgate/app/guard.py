"""The door: header size, keys, requests under way per tenant, and slow bodies.

``Guard`` is plain ASGI middleware in front of every route, so a refused
request costs no routing, no body read and no JSON parse:

1. headers larger than ``max_header_bytes`` in all: 431 ``request_too_large``;
   a browser request from another site's page (its ``Origin``), or, on a keyless
   gateway, one naming a host that is not this gateway (DNS rebinding): 403
   ``permission_error`` (``core/door.py``; ``allowed_origins`` / ``allowed_hosts``
   admit more). A keyed gateway is not reached by name through rebinding
   without a key, so it checks ``Host`` only when ``allowed_hosts`` is set;
2. with tenants configured, a request without a valid key: 401
   ``authentication_error`` (``/healthz`` answers without one, saying less);
3. more than the tenant's ``max_concurrent`` requests under way on ``/v1/``:
   429 ``rate_limit_error`` with ``retry-after``. A stream counts until it ends;
   a request counts from its arrival, its body's arrival included;
4. beyond ``max_active`` requests being handled, across tenants, the next one
   waits its turn before its body is read. The server then holds only what
   the socket buffered of a waiting body (about 64 KiB) instead of a parsed,
   rewritten request (about 0.5 MB for a Claude Code turn), which keeps the
   memory of a gateway under a burst bounded;
5. the body is read here, once its turn has come, against two deadlines:
   ``body_idle_timeout`` (the longest pause between two of its pieces) and
   ``body_timeout`` (the whole body, from its first read). A body that misses
   either is answered 408 ``timeout_error`` with ``connection: close`` (the
   rest of it is never read) and an audit row. A client that leaves before
   its body is whole gets an audit row with status 499.

Slow bodies and ``max_active``: a body still arriving ``SLOW_BODY_S`` after its
turn came gives the turn back and goes on arriving outside it; once it is
whole it waits for a turn again. So a turn is held only by a body arriving
faster than that floor (its whole body within ``SLOW_BODY_S``, under a
millisecond for a Claude Code turn on a LAN), and by the handling of a
request whose body is whole; 64 clients sending a few bytes a second hold no
turn after their first second and starve no one. The simplest alternatives
were worse: reading every body before taking a turn gives up the memory bound
of 4. (a burst of waiting requests would each hold its whole body), and a
rate computed per piece needs a floor in bytes per second that no single
value fits. The body read here is handed to the app as one ``http.request``
message, then ``receive`` is the server's again (a disconnect still reaches
a stream). A body beyond ``max_body_bytes`` is not read past the limit: what
was read is handed on and the request path refuses it (413), as before.

What slow bodies hold: a body arriving outside a turn still counts against its
tenant's ``max_concurrent`` (3.), so the bytes they buffer are bounded by each
tenant's ``max_concurrent`` x ``max_body_bytes``, and in time by the body
deadlines; the keys are checked before any body is read. Without keys every
client is the one default tenant, whose ``max_concurrent`` then bounds them all
together: a gateway shared by several people should give each a key.

The tenant it found is put in the request's state; ``tenant_of`` reads it.
Without tenants every request is the configured default tenant's. A refusal
is audited like any request (tenant ``-`` when no key matched), with its
``x-prefixgate-request-id``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefixgate.app.exchange import REQUEST_ID_HEADER, Exchange, Observer
from prefixgate.app.metrics import Metrics
from prefixgate.config import Settings
from prefixgate.core.auth import Tenant, authenticate, presented_key
from prefixgate.core.door import host_allowed, host_name, origin_allowed
from prefixgate.core.errors import error_body

log = logging.getLogger("prefixgate")
OPEN_PATHS = frozenset({"/healthz"})
BROWSER_PATHS = frozenset({"/dashboard"})
RETRY_AFTER_S = 1
SLOW_BODY_S = 1.0  # a body still arriving this long after its turn came gives it back
Endpoint = Callable[[Request], Awaitable[Response]]


class DecodedHeaders(Headers):
    """Starlette's request headers, decoded once: the request path reads them whole
    four times (attribution headers, forwarded names, the upstream's headers and
    their ``Connection`` options)."""

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope=scope)
        self._items = super().items()

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        return list(self._items)

    def keys(self) -> list[str]:  # type: ignore[override]
        return [name for name, _ in self._items]


class GatewayRequest(Request):
    """A request on the Guard's hot lane, its headers decoded once."""

    @property
    def headers(self) -> Headers:
        if not hasattr(self, "_decoded"):
            self._decoded = DecodedHeaders(self.scope)
        return self._decoded


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        metrics: Metrics,
        observer: Observer,
        hot: Mapping[str, Endpoint] | None = None,
    ) -> None:
        self.app = app
        # POST routes served here, past Starlette's router and exception middleware
        # (their handlers answer every error themselves); other requests go on to ``app``
        self.hot = dict(hot or {})
        self.settings = settings
        self.metrics = metrics
        self.observer = observer  # refusals are recorded like any request
        self.busy: dict[str, int] = {}
        self.active = asyncio.Semaphore(settings.max_active)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        limit = self.settings.max_header_bytes
        if size > limit:
            message = (
                f"request headers ({size} bytes) exceed the gateway's limit "
                f"max_header_bytes={limit}"
            )
            await self._refuse(scope, receive, send, 431, "request_too_large", message, "-")
            return
        path: str = scope["path"]
        asked = Headers(scope=scope)
        stranger = self._stranger(asked)
        if stranger is not None:
            await self._refuse(scope, receive, send, 403, "permission_error", stranger, "-")
            return
        tenant = self._tenant(asked)
        if self.settings.keyed and tenant is None and path not in OPEN_PATHS:
            message = "a valid gateway API key is required (x-api-key or Authorization: Bearer)"
            extra = (
                {"www-authenticate": 'Basic realm="prefixgate"'} if path in BROWSER_PATHS else {}
            )
            await self._refuse(
                scope, receive, send, 401, "authentication_error", message, "-", extra
            )
            return
        name = tenant.name if tenant is not None else self.settings.tenant
        scope.setdefault("state", {})["tenant"] = tenant
        if not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        allowed = self.settings.concurrency(tenant)
        if self.busy.get(name, 0) >= allowed:
            message = (
                f"tenant {name!r} has {allowed} requests under way, the gateway's limit "
                f"max_concurrent={allowed}; retry after the current ones finish"
            )
            extra = {"retry-after": str(RETRY_AFTER_S)}
            await self._refuse(scope, receive, send, 429, "rate_limit_error", message, name, extra)
            return
        self.busy[name] = self.busy.get(name, 0) + 1
        turn = Turn(self.active)
        try:
            await turn.take()  # waits, its body unread, while the gateway is full
            body = await self._read_body(scope, receive, turn)
            if body.late is not None:
                turn.give_back()
                headers = {"connection": "close"}
                await self._refuse(
                    scope, receive, send, 408, "timeout_error", body.late, name, headers
                )
                return
            if body.gone:  # the client left before its body was whole: nothing to answer
                turn.give_back()
                gone = (
                    "client closed the connection before its body was whole "
                    f"({body.size} bytes arrived)"
                )
                self._record(scope, 499, gone, name)
                return
            if not turn.held:  # a slow body, whole now: its turn again
                await turn.take()
            endpoint = self.hot.get(path) if scope["method"] == "POST" else None
            if endpoint is None:
                await self.app(scope, body.replay(receive), send)
            else:
                replayed = body.replay(receive)
                response = await endpoint(GatewayRequest(scope, replayed))
                await response(scope, replayed, send)
        finally:
            turn.give_back()
            self.busy[name] -= 1
            if not self.busy[name]:
                del self.busy[name]

    async def _read_body(self, scope: Scope, receive: Receive, turn: Turn) -> Body:
        """The request's body, read against its deadlines; ``turn`` is given
        back when the body is slow (see the module's docstring)."""
        body = Body()
        declared = Headers(scope=scope).get("content-length", "")
        limit = self.settings.max_body_bytes
        if declared.isdigit() and int(declared) > limit:
            return body  # the request path refuses it (413) without reading it
        idle, total = self.settings.body_idle_timeout, self.settings.body_timeout
        loop = asyncio.get_running_loop()
        start = loop.time()
        slow_at, deadline = start + SLOW_BODY_S, start + total
        while True:
            piece = asyncio.ensure_future(receive())
            idle_at = loop.time() + idle
            try:
                while not piece.done():
                    now = loop.time()
                    ends = min(idle_at, deadline)
                    if now >= ends:
                        body.late = self._late(now >= deadline, body.size)
                        return body
                    wake = min(ends, slow_at) if turn.held else ends
                    await asyncio.wait({piece}, timeout=max(wake - now, 0.0))
                    if turn.held and loop.time() >= slow_at and not piece.done():
                        turn.give_back()
            finally:
                if not piece.done():
                    piece.cancel()
            message = piece.result()
            body.messages.append(message)
            if message["type"] != "http.request":
                return body  # the client left
            body.size += len(message.get("body", b""))
            if not message.get("more_body", False) or body.size > limit:
                return body

    def _late(self, whole: bool, size: int) -> str:
        if whole:
            return (
                f"request body not received within the gateway's limit "
                f"body_timeout={self.settings.body_timeout:g}s ({size} bytes arrived)"
            )
        return (
            f"request body stalled: nothing arrived for the gateway's limit "
            f"body_idle_timeout={self.settings.body_idle_timeout:g}s ({size} bytes arrived)"
        )

    def _stranger(self, headers: Headers) -> str | None:
        """Why a web page may not use the gateway, or None (``core/door.py``)."""
        settings = self.settings
        origin = headers.get("origin")
        if not origin_allowed(origin, headers.get("host"), settings.allowed_origins):
            return (
                f"requests from web pages of another origin ({(origin or '')[:100]!r}) are "
                "refused; "
                "add it to server.allowed_origins to allow it"
            )
        check_host = not settings.keyed or bool(settings.allowed_hosts)
        host = headers.get("host")
        if check_host and not host_allowed(host, settings.host, settings.allowed_hosts):
            return (
                f"the request names host {host_name(host or '')[:100]!r}, not this gateway "
                "(a DNS-rebinding page?); add it to server.allowed_hosts to allow it"
            )
        return None

    def _tenant(self, headers: Headers) -> Tenant | None:
        if not self.settings.keyed:
            return None
        return authenticate(presented_key(headers), self.settings.tenants)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        error_type: str,
        message: str,
        tenant: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.metrics.refused(tenant, str(status))
        request_id = self._record(scope, status, message, tenant)
        response = JSONResponse(
            error_body(error_type, message),
            status_code=status,
            headers={**(headers or {}), REQUEST_ID_HEADER: request_id},
        )
        await response(scope, receive, send)

    def _record(self, scope: Scope, status: int, message: str, tenant: str) -> str:
        """The audit row of a request ended at the door; its request id."""
        session = Headers(scope=scope).get("x-claude-code-session-id")
        ex = Exchange(
            route=scope["path"][:200],
            tenant=tenant,
            session=session[:200] if session else None,
            observer=self.observer,
        )
        ex.refused(status, message)
        ex.end()
        ex.settle()
        return ex.request_id


class Turn:
    """A hold on one of ``max_active`` turns, which may be given back and taken again."""

    def __init__(self, turns: asyncio.Semaphore) -> None:
        self.turns = turns
        self.held = False

    async def take(self) -> None:
        await self.turns.acquire()
        self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self.turns.release()


@dataclass
class Body:
    """What the guard read of a request's body; ``late``: why it was refused (408)."""

    messages: list[Message] = field(default_factory=list)
    size: int = 0
    late: str | None = None

    @property
    def gone(self) -> bool:
        """The client disconnected before its body was whole."""
        return bool(self.messages) and self.messages[-1]["type"] == "http.disconnect"

    def replay(self, receive: Receive) -> Receive:
        """``receive`` for the app: the body read, as one message, then the server's."""
        pending = list(self.messages)
        if len(pending) > 1 and all(m["type"] == "http.request" for m in pending):
            more = bool(pending[-1].get("more_body", False))
            whole = b"".join(m.get("body", b"") for m in pending)
            pending = [{"type": "http.request", "body": whole, "more_body": more}]

        async def replayed() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        return replayed


def tenant_of(request: Request, default: str) -> tuple[str, Tenant | None]:
    """The request's tenant name and, with keys configured, its ``Tenant``.

    ``default``: the name of the tenant every request belongs to without keys.
    """
    state = request.scope.get("state", {})
    tenant: Tenant | None = state.get("tenant")
    return (tenant.name if tenant is not None else default), tenant
