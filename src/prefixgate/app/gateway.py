"""The ASGI app: routes, error handlers and the upstream client's lifetime.

``create_app`` has no side effects: the httpx client is opened when the app
starts (lifespan) and closed when it stops, and tests inject a transport
(``httpx.MockTransport`` or a real server) instead of sockets of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from prefixgate import __version__
from prefixgate.app.dashboard import dashboard_endpoint
from prefixgate.app.guard import Guard, tenant_of
from prefixgate.app.metrics import Metrics
from prefixgate.app.observer import CacheObserver
from prefixgate.app.proxy import Proxy
from prefixgate.app.router import Router
from prefixgate.config import Settings
from prefixgate.core.errors import error_body, error_type_for_status
from prefixgate.report import build_report, report_json
from prefixgate.store.audit import AuditSink, MemoryAudit
from prefixgate.store.capture import CaptureLog
from prefixgate.store.state import StateStore

log = logging.getLogger("prefixgate")
DASHBOARD_RECORDS = 5000


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    audit: AuditSink | None = None,
    capture: CaptureLog | None = None,
    state: StateStore | None = None,
) -> Starlette:
    """Build the gateway for ``settings``; nothing is opened until it starts.

    The app owns ``audit``, ``capture`` and ``state`` (routing state, e.g.
    ``RedisState``; default: this process only) from here on: all are closed
    when it stops, after the last records are written.
    """
    sink = audit or MemoryAudit()
    metrics = Metrics()
    observer = CacheObserver(settings, sink, metrics)
    router = Router(settings, state)
    proxy = Proxy(settings, None, observer, capture, router)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = httpx.AsyncClient(transport=transport, timeout=None, trust_env=False)
        proxy.client = observer.client = router.client = client
        for warning in settings.warnings():
            log.warning("%s", warning)
        watcher = asyncio.get_running_loop().create_task(router.watch())
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await observer.drain()
            proxy.client = observer.client = router.client = None
            await client.aclose()
            with contextlib.suppress(Exception):
                await router.state.close()
            for closable in (sink, capture):
                try:
                    if closable is not None:
                        closable.close()
                except Exception:  # like a failed record, a failed close must not fail shutdown
                    log.exception("%s could not be closed", type(closable).__name__)

    async def healthz(request: Request) -> Response:
        if settings.keyed and tenant_of(request, settings.tenant)[1] is None:
            return JSONResponse({"status": "ok"})  # nothing more without a key
        upstreams = {name: up.url for name, up in settings.upstreams.items()}
        replicas = {
            name: {url: "up" if router.is_up(url) else "down" for url in up.urls}
            for name, up in settings.upstreams.items()
            if len(up.urls) > 1
        }
        body = {"status": "ok", "version": __version__, "upstreams": upstreams}
        return JSONResponse({**body, "replicas": replicas} if replicas else body)

    def viewed(request: Request) -> str | Response | None:
        """Whose records the request may read: its tenant's; an admin's, any
        tenant it names in ``?tenant=`` (None: all)."""
        name, tenant = tenant_of(request, settings.tenant)
        asked = request.query_params.get("tenant")
        if tenant is not None and tenant.admin:
            return asked
        if asked is not None and asked != name:
            body = error_body("permission_error", f"tenant {name!r} may read only its own records")
            return JSONResponse(body, status_code=403)
        return name

    async def dashboard(request: Request) -> Response:
        whose = viewed(request)
        if isinstance(whose, Response):
            return whose
        return await dashboard_endpoint(lambda: sink.query(tenant=whose, limit=DASHBOARD_RECORDS))(
            request
        )

    async def report(request: Request) -> Response:
        whose = viewed(request)
        if isinstance(whose, Response):
            return whose

        def build() -> dict[str, object]:
            return report_json(build_report(sink.query(tenant=whose, limit=DASHBOARD_RECORDS)))

        return JSONResponse(await run_in_threadpool(build), headers={"Cache-Control": "no-store"})

    app = Starlette(
        routes=[
            Route("/v1/messages", proxy.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", proxy.count_tokens, methods=["POST"]),
            Route("/v1/models", proxy.models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics.endpoint, methods=["GET"]),
            Route("/dashboard", dashboard, methods=["GET"]),
            Route("/report", report, methods=["GET"]),
        ],
        middleware=[Middleware(Guard, settings=settings, metrics=metrics, record=observer.refused)],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.proxy = proxy
    app.state.audit = sink
    app.state.metrics = metrics
    app.state.router = router
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
