"""A lean HTTP/1.1 load generator for the benchmarks: asyncio protocols and httptools.

One Python ``httpx.AsyncClient`` spends about 3 ms of CPU per request on a
77 KB body and its streamed answer, so on a 2-core machine it cannot send more
than about 330 requests/s even to a server that costs nothing; a benchmark of
a gateway that should reach 400 would measure its own client. This one writes
each request from bytes built once per (server, body) and parses the answers
with httptools (llhttp, the parser uvicorn uses), on uvloop when it is
installed: a fraction of a millisecond per request.

It does only what the benchmarks need: ``POST`` with a body, keep-alive
connections (one per request under way, reopened when the server closes one),
the answer read to its end (``Content-Length`` or chunked), the status, the
time to the first byte and to the last, and the answer's last 64 bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools


class ClientError(Exception):
    """A request that got no complete answer."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = True
        self._done: asyncio.Future[None] | None = None
        self.first = 0.0
        self.status = 0
        self.tail = b""

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self.first:
            self.first = time.perf_counter()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ClientError(f"bad answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ClientError(f"connection closed before the answer ended: {exc}"))

    # -- httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.tail = (self.tail + body)[-64:]

    def on_message_complete(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)

    async def send(self, request: bytes) -> tuple[float, float, int, bytes]:
        """Write ``request``; (start, first byte, status, tail) once the answer ended."""
        assert self.transport is not None
        self._done = asyncio.get_running_loop().create_future()
        self.first, self.status, self.tail = 0.0, 0, b""
        start = time.perf_counter()
        self.transport.write(request)
        await self._done
        return start, self.first, self.status, self.tail

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RawClient:
    """Keep-alive connections to one server, reused across requests."""

    def __init__(self, base_url: str, timeout_s: float = 120.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http://host:port URLs: {base_url}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout_s = timeout_s
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._requests: dict[tuple[str, int], bytes] = {}

    def request_bytes(self, path: str, headers: Mapping[str, str], body: bytes) -> bytes:
        """The whole request as sent, built once per path, header set and body."""
        key = (path, id(body))
        built = self._requests.get(key)
        if built is None:
            lines = [f"POST {path} HTTP/1.1", f"host: {self.host}:{self.port}"]
            lines += [
                f"{k}: {v}"
                for k, v in headers.items()
                if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")
            ]
            lines.append(f"content-length: {len(body)}")
            built = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
            self._requests[key] = built
        return built

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._open.discard(conn)
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        self._open.add(conn)
        return conn

    async def post(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[float, float, int, bytes]:
        """(ttfb ms, total ms, status, last 64 bytes of the answer)."""
        request = self.request_bytes(path, headers, body)
        conn = await self._connection()
        try:
            async with asyncio.timeout(self.timeout_s):
                start, first, status, tail = await conn.send(request)
        except BaseException:
            conn.close()
            self._open.discard(conn)
            raise
        end = time.perf_counter()
        if conn.keep_alive and not conn.closed:
            self._idle.append(conn)
        else:
            conn.close()
            self._open.discard(conn)
        return ((first or end) - start) * 1000.0, (end - start) * 1000.0, status, tail

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)
