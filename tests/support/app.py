"""The gateway app run in memory: lifespan started, a client that talks to it
through ``httpx.ASGITransport`` (no sockets), and its audit records."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette

from prefixgate.store.audit import AuditRecord, MemoryAudit


@contextlib.asynccontextmanager
async def running(
    app: Starlette, *, raise_app_exceptions: bool = True, timeout: float = 10.0
) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (lifespan) with a client that talks to it in memory."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", timeout=timeout
        ) as client:
            yield client


def memory_audit(app: Starlette) -> MemoryAudit:
    """The app's audit sink, which must be a ``MemoryAudit``."""
    sink = app.state.audit
    assert isinstance(sink, MemoryAudit)
    return sink


def audit_of(app: Starlette) -> list[AuditRecord]:
    """The audit records the app has written so far."""
    return list(memory_audit(app).records)


async def records_of(app: Starlette, count: int = 1, timeout: float = 5.0) -> list[AuditRecord]:
    """The audit records once ``count`` are written and none is left pending."""
    deadline = time.monotonic() + timeout
    while len(app.state.audit.records) < count or app.state.proxy.observer.pending:
        assert time.monotonic() < deadline, f"fewer than {count} audit records after {timeout} s"
        await asyncio.sleep(0.01)
    return list(app.state.audit.records)


def settle(app: Starlette, timeout: float = 60.0) -> None:
    """Wait (in another thread than the app's) until no audit record is left to complete."""
    observer = app.state.proxy.observer
    deadline = time.monotonic() + timeout
    while observer.pending:
        assert time.monotonic() < deadline, f"audit records still pending after {timeout} s"
        time.sleep(0.01)
