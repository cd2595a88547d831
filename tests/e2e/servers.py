"""Servers for end-to-end tests: the gateway in a thread behind a recording proxy
(``ServerThread`` and ``settle`` come from ``tests/support``).

client -> prefixgate (ServerThread) -> Recorder (ServerThread) -> llama-server
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from support.app import settle
from support.servers import ServerThread

from prefixgate.app.gateway import create_app
from prefixgate.config import Settings
from prefixgate.demo import ManagedProcess
from prefixgate.store.audit import AuditRecord, MemoryAudit

__all__ = ["Gateway", "Recorder", "Seen", "ServerThread", "gateway_in_front_of", "settle"]


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Recorder:
    """A reverse proxy that forwards unchanged and keeps what it forwarded."""

    HOP = frozenset({"host", "content-length", "transfer-encoding", "connection"})

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: list[Seen] = []
        self.app = Starlette(
            routes=[Route("/{path:path}", self.forward, methods=["GET", "POST"])],
            lifespan=self.lifespan,
        )
        self._client: httpx.AsyncClient | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            base_url=self.target, timeout=300.0, trust_env=False
        ) as client:
            self._client = client
            yield

    async def forward(self, request: Request) -> Response:
        assert self._client is not None
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k not in self.HOP}
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        self.seen.append(Seen(request.method, path, headers, body))
        upstream = await self._client.send(
            self._client.build_request(request.method, path, content=body, headers=headers),
            stream=True,
        )

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        kept = {
            k: v
            for k, v in upstream.headers.items()
            if k.lower() not in self.HOP | {"content-encoding"}
        }
        return StreamingResponse(relay(), status_code=upstream.status_code, headers=kept)


@dataclass
class Gateway:
    url: str
    audit: MemoryAudit
    recorder: Recorder
    recorder_url: str
    runtime_url: str
    app: Starlette
    kind: str = "anthropic"

    def records(self, timeout: float = 60.0, at_least: int = 0) -> list[AuditRecord]:
        """The audit records, once every answered request's record is written
        (records wait for the upstream's token counts off the request path).

        ``at_least``: wait for that many too: a streamed answer is recorded when
        its response closes, which may be just after the client read its end."""
        deadline = time.monotonic() + timeout
        while len(self.audit.records) < at_least:
            assert time.monotonic() < deadline, f"fewer than {at_least} records after {timeout} s"
            time.sleep(0.05)
        settle(self.app, timeout)
        return list(self.audit.records)


@contextlib.contextmanager
def gateway_in_front_of(
    runtime_url: str, kind: str = "anthropic", **upstream_settings: Any
) -> Iterator[Gateway]:
    """prefixgate (strip) -> Recorder -> the runtime at ``runtime_url``, all on loopback.

    ``kind`` is the upstream kind prefixgate speaks: ``anthropic`` (llama-server's
    ``/v1/messages``) or ``openai`` (its ``/v1/chat/completions``);
    ``upstream_settings`` replace fields of the upstream's settings."""
    rec = Recorder(runtime_url)
    with ServerThread(rec.app) as upstream:
        audit = MemoryAudit()
        settings = Settings().with_upstream(upstream.url, kind)
        if upstream_settings:
            changed = replace(settings.upstreams["default"], **upstream_settings)
            settings = replace(settings, upstreams={"default": changed})
        app = create_app(settings, audit=audit)
        with ServerThread(app) as server:
            yield Gateway(server.url, audit, rec, upstream.url, runtime_url, app, kind)


def stub_upstream(port: int) -> ManagedProcess:
    """``bench/stub_upstream.py`` (canned Anthropic answers) on ``port``, not yet started."""
    script = Path(__file__).resolve().parents[2] / "bench" / "stub_upstream.py"
    return ManagedProcess(
        "stub",
        [sys.executable, str(script), "--port", str(port)],
        f"http://127.0.0.1:{port}/healthz",
    )
