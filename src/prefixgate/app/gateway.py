"""The ASGI app: routes, error handlers and the upstream client's lifetime.

``create_app`` has no side effects: the upstream client (``UpstreamClient``,
handed to the proxy and the observer when they are made) is opened when the
app starts (lifespan) and closed when it stops, and tests inject a transport
(``httpx.MockTransport`` or a real server) instead of sockets of their own.
With the bundled runtime, ``prefixes`` (``app/saved.py``) restores and saves
its prefixes while the app runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable

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
from prefixgate.app.saved import SavedPrefixes
from prefixgate.config import Settings
from prefixgate.core.errors import error_body, error_type_for_status
from prefixgate.report import build_report, prices_of, report_json
from prefixgate.store.audit import AuditSink, MemoryAudit
from prefixgate.store.capture import CaptureLog
from prefixgate.store.state import StateStore
from prefixgate.upstreams.http import UpstreamClient

log = logging.getLogger("prefixgate")
DASHBOARD_RECORDS = 5000


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    audit: AuditSink | None = None,
    capture: CaptureLog | None = None,
    state: StateStore | None = None,
    prefixes: SavedPrefixes | None = None,
) -> Starlette:
    """Build the gateway for ``settings``; nothing is opened until it starts.

    The app owns ``audit``, ``capture`` and ``state`` (routing state, e.g.
    ``RedisState``; default: this process only) from here on: all are closed
    when it stops, after the last records are written. ``prefixes``: the
    bundled runtime's saved prefixes (its upstream must be of kind anthropic).
    """
    sink = audit or MemoryAudit()
    metrics = Metrics()
    upstreams = UpstreamClient(transport)  # opened by the lifespan
    observer = CacheObserver(settings, sink, metrics, upstreams)
    router = Router(settings, upstreams, state)
    if prefixes is not None:
        prefixes.bind(observer, lambda: upstreams.http)
        metrics.watch_prefixes(prefixes)
    proxy = Proxy(settings, upstreams, observer, capture, router, prefixes)
    views = Views(settings, sink, router)
    # the request path: routed here too, and served by the Guard past the router
    hot = {"/v1/messages": proxy.messages, "/v1/messages/count_tokens": proxy.count_tokens}
    app = Starlette(
        routes=[
            *(Route(path, endpoint, methods=["POST"]) for path, endpoint in hot.items()),
            Route("/v1/models", proxy.models, methods=["GET"]),
            Route("/healthz", views.healthz, methods=["GET"]),
            Route("/metrics", metrics.endpoint, methods=["GET"]),
            Route("/dashboard", views.dashboard, methods=["GET"]),
            Route("/report", views.report, methods=["GET"]),
        ],
        middleware=[
            Middleware(Guard, settings=settings, metrics=metrics, observer=observer, hot=hot)
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=_lifespan(proxy),
    )
    app.state.proxy = proxy
    app.state.audit = sink
    app.state.metrics = metrics
    app.state.router = router
    app.state.prefixes = prefixes
    return app


def _lifespan(proxy: Proxy) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """While the app runs: the upstream client open, replicas' health watched.

    When it stops: the records still being completed are written, then the
    client, the routing state, the audit sink and the capture log are closed.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with proxy.upstreams.opened():
                try:
                    async with _watching(proxy.router), _saving(proxy.prefixes):
                        for warning in proxy.settings.warnings():
                            log.warning("%s", warning)
                        yield
                finally:
                    await proxy.observer.drain()
        finally:
            await _close(proxy)

    return lifespan


@contextlib.asynccontextmanager
async def _watching(router: Router) -> AsyncIterator[None]:
    """Health checks of the replicas in a task of their own, cancelled at the end."""
    watcher = asyncio.get_running_loop().create_task(router.watch())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


@contextlib.asynccontextmanager
async def _saving(prefixes: SavedPrefixes | None) -> AsyncIterator[None]:
    """The saved prefixes' background task (saves, the runtime watched), if any."""
    if prefixes is None:
        yield
        return
    async with prefixes.running():
        yield


async def _close(proxy: Proxy) -> None:
    """Close what the app owns; a failed close is logged and must not fail shutdown."""
    with contextlib.suppress(Exception):
        await proxy.router.state.close()
    for closable in (proxy.observer.audit, proxy.capture):
        try:
            if closable is not None:
                closable.close()
        except Exception:  # like a failed record, a failed close must not fail shutdown
            log.exception("%s could not be closed", type(closable).__name__)


class Views:
    """The read-only routes: health, the dashboard and the report."""

    def __init__(self, settings: Settings, sink: AuditSink, router: Router) -> None:
        self.settings = settings
        self.sink = sink
        self.router = router

    async def healthz(self, request: Request) -> Response:
        settings = self.settings
        if settings.keyed and tenant_of(request, settings.tenant)[1] is None:
            return JSONResponse({"status": "ok"})  # nothing more without a key
        upstreams = {name: up.url for name, up in settings.upstreams.items()}
        replicas = {
            name: {url: "up" if self.router.is_up(url) else "down" for url in up.urls}
            for name, up in settings.upstreams.items()
            if len(up.urls) > 1
        }
        body = {"status": "ok", "version": __version__, "upstreams": upstreams}
        return JSONResponse({**body, "replicas": replicas} if replicas else body)

    def _viewed(self, request: Request) -> str | Response | None:
        """Whose records the request may read: its tenant's; an admin's, any
        tenant it names in ``?tenant=`` (None: all)."""
        name, tenant = tenant_of(request, self.settings.tenant)
        asked = request.query_params.get("tenant")
        if tenant is not None and tenant.admin:
            return asked
        if asked is not None and asked != name:
            body = error_body("permission_error", f"tenant {name!r} may read only its own records")
            return JSONResponse(body, status_code=403)
        return name

    async def dashboard(self, request: Request) -> Response:
        whose = self._viewed(request)
        if isinstance(whose, Response):
            return whose
        records = functools.partial(self.sink.query, tenant=whose, limit=DASHBOARD_RECORDS)
        prices = prices_of(self.settings.upstreams)
        return await dashboard_endpoint(records, prices=prices)(request)

    async def report(self, request: Request) -> Response:
        whose = self._viewed(request)
        if isinstance(whose, Response):
            return whose

        def build() -> dict[str, object]:
            records = self.sink.query(tenant=whose, limit=DASHBOARD_RECORDS)
            return report_json(build_report(records, prices_of(self.settings.upstreams)))

        return JSONResponse(await run_in_threadpool(build), headers={"Cache-Control": "no-store"})


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
