"""The ASGI app: routes, error handlers and the upstream client's lifetime.

``create_app`` has no side effects: the httpx client is opened when the app
starts (lifespan) and closed when it stops, and tests inject a transport
(``httpx.MockTransport`` or a real server) instead of sockets of their own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from prefixgate import __version__
from prefixgate.app.proxy import Proxy
from prefixgate.config import Settings
from prefixgate.core.errors import error_body, error_type_for_status
from prefixgate.store.audit import AuditSink, MemoryAudit

log = logging.getLogger("prefixgate")


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    audit: AuditSink | None = None,
) -> Starlette:
    """Build the gateway for ``settings``; nothing is opened until it starts."""
    sink = audit or MemoryAudit()
    proxy = Proxy(settings, None, sink)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = httpx.AsyncClient(transport=transport, timeout=None, trust_env=False)
        proxy.client = client
        for warning in settings.warnings():
            log.warning("%s", warning)
        try:
            yield
        finally:
            proxy.client = None
            await client.aclose()
            try:
                sink.close()
            except Exception:  # like a failed record, a failed close must not fail shutdown
                log.exception("audit sink could not be closed")

    async def healthz(request: Request) -> Response:
        upstreams = {name: up.url for name, up in settings.upstreams.items()}
        return JSONResponse({"status": "ok", "version": __version__, "upstreams": upstreams})

    app = Starlette(
        routes=[
            Route("/v1/messages", proxy.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", proxy.count_tokens, methods=["POST"]),
            Route("/v1/models", proxy.models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.proxy = proxy
    app.state.audit = sink
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        message = f"no such route: {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(getattr(exc, "detail", "")) or f"HTTP {status}"
    headers = getattr(exc, "headers", None)  # e.g. Allow on a 405
    return JSONResponse(
        error_body(error_type_for_status(status), message), status_code=status, headers=headers
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    body = error_body("api_error", "internal error in the gateway; see its log for details")
    return JSONResponse(body, status_code=500)
