"""The door: header size, keys, and requests under way per tenant.

``Guard`` is plain ASGI middleware in front of every route, so a refused
request costs no routing, no body read and no JSON parse:

1. headers larger than ``max_header_bytes`` in all: 431 ``request_too_large``;
2. with tenants configured, a request without a valid key: 401
   ``authentication_error`` (``/healthz`` answers without one, saying less);
3. more than the tenant's ``max_concurrent`` requests under way on ``/v1/``:
   429 ``rate_limit_error`` with ``retry-after``. A stream counts until it ends;
4. beyond ``max_active`` requests being handled, across tenants, the next one
   waits its turn before its body is read. The server then holds only what
   the socket buffered of a waiting body (about 64 KiB) instead of a parsed,
   rewritten request (about 0.5 MB for a Claude Code turn), which keeps the
   memory of a gateway under a burst bounded.

The tenant it found is put in the request's state; ``tenant_of`` reads it.
Without tenants every request is the configured default tenant's. A refusal
is audited like any request (tenant ``-`` when no key matched), with its
``x-prefixgate-request-id``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from prefixgate.app.exchange import REQUEST_ID_HEADER, Exchange, Observer
from prefixgate.app.metrics import Metrics
from prefixgate.config import Settings
from prefixgate.core.auth import Tenant, authenticate, presented_key
from prefixgate.core.errors import error_body

log = logging.getLogger("prefixgate")
OPEN_PATHS = frozenset({"/healthz"})
BROWSER_PATHS = frozenset({"/dashboard"})
RETRY_AFTER_S = 1


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        metrics: Metrics,
        observer: Observer,
    ) -> None:
        self.app = app
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
        tenant = self._tenant(Headers(scope=scope))
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
        try:
            async with self.active:  # waits, its body unread, while the gateway is full
                await self.app(scope, receive, send)
        finally:
            self.busy[name] -= 1
            if not self.busy[name]:
                del self.busy[name]

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
        session = Headers(scope=scope).get("x-claude-code-session-id")
        ex = Exchange(
            route=scope["path"][:200],
            tenant=tenant,
            session=session[:200] if session else None,
            observer=self.observer,
        )
        ex.refused(status, message)
        ex.end()
        response = JSONResponse(
            error_body(error_type, message),
            status_code=status,
            headers={**(headers or {}), REQUEST_ID_HEADER: ex.request_id},
        )
        await response(scope, receive, send)


def tenant_of(request: Request, default: str) -> tuple[str, Tenant | None]:
    """The request's tenant name and, with keys configured, its ``Tenant``.

    ``default``: the name of the tenant every request belongs to without keys.
    """
    state = request.scope.get("state", {})
    tenant: Tenant | None = state.get("tenant")
    return (tenant.name if tenant is not None else default), tenant
