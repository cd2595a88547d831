"""The app run in memory for tests: lifespan started, a client that talks to it
through ``httpx.ASGITransport`` (no sockets). Importable from every test module:
pytest puts this folder on ``sys.path`` for ``tests/conftest.py``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette


@contextlib.asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (lifespan) with a client that talks to it in memory."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", timeout=10.0
        ) as client:
            yield client
