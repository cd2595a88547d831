"""The HTTP/1.1 transport under the upstream client: asyncio connections, httptools' parser.

The gateway speaks to upstreams through ``httpx.AsyncClient`` (its requests,
responses, timeouts and errors are what the rest of the code and the tests
use). Under it, ``WireTransport`` does the wire work with the event loop's own
connections (uvloop's under uvicorn, TLS from ``ssl``) and the HTTP/1.1 parser
uvicorn itself runs on (httptools, llhttp's C parser): per request it writes
the head httpx built and the body in one write, and reads the answer's head
and body chunks as the parser hands them over. Posting the 77 KB corpus body
to the bench's stub upstream 1,500 times in a row, one request through the
httpx client cost 0.33 to 0.37 ms of CPU (0.45 to 0.57 ms of wall time) over
the aiohttp transport this one replaced, and 0.25 ms (0.37 ms) over this one:
aiohttp's per-request machinery (request objects, header processing, tracing
hooks, cookie and redirect handling) is work the gateway never uses
(``bench/upstream_leg.py`` compares this path with a bare client).

What it keeps of httpx's contract:

- the request goes out with exactly the headers httpx built, nothing added, and
  the answer's body comes back as sent (httpx decodes ``Content-Encoding``);
- failures are the exceptions httpx's own transport raises for the same event: a
  refused connection is ``ConnectError`` (a slow one ``ConnectTimeout``), a
  connection closed before any answer is ``RemoteProtocolError`` (``http.send``
  sends once more then: a kept-alive connection the server had just closed), a
  silent upstream is ``ReadTimeout``, a body cut short is ``RemoteProtocolError``,
  a connection reset inside the body ``ReadError``, a malformed answer
  ``RemoteProtocolError``;
- each read of the body waits at most the request's ``read`` timeout, looked up
  afresh before every read (a relay lifts it once a stream has begun).

Connections are kept per origin (scheme, host, port) while idle for at most
``KEEPALIVE_S`` (httpx's default) and reused last-in first-out; at most
``MAX_CONNECTIONS`` are open at once, later requests wait for one (up to the
request's ``pool`` timeout: ``PoolTimeout``). A body the caller reads slowly
stops the socket being read past ``HIGH_WATER`` buffered bytes. An
informational answer (``103 Early Hints``) is skipped for the one after it.
Methods whose answers have no body (``HEAD``) are not sent by the gateway and
not supported here.

A request may carry ``ON_SENT`` in its extensions, a callable the transport
calls once the request is written and before the answer is awaited: the
gateway compares the prompt with its cache model while the upstream works.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, cast

import httptools
import httpx

#: Connections open at once (httpx's and aiohttp's default), and how long an idle one is kept.
MAX_CONNECTIONS: Final = 100
KEEPALIVE_S: Final = 5.0
#: Body bytes buffered for a slow reader before the socket stops being read.
HIGH_WATER: Final = 1 << 20
#: A request extension: called (no arguments) once the request is written.
ON_SENT: Final = "prefixgate.on_sent"

Origin = tuple[bytes, bytes, int]  # scheme, host, port


class _Connection(asyncio.Protocol):
    """One connection to an origin, and the answer being read on it."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._reset(None)

    def _reset(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.until_close = False  # a body that ends when the connection does
        self._interim = False  # the answer read now is an informational (1xx) one
        self.error: httpx.TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._loop = loop

    def begin(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Ready for the next answer on this connection (``None``: idle in the pool)."""
        self._reset(loop)

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed answer from the upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete or self._loop is None:
            return
        if self.status and self.until_close and exc is None:
            self.complete = True  # the close ends such a body
        elif not self.status:
            self.error = httpx.RemoteProtocolError("server disconnected without sending a response")
        elif exc is not None:
            self.error = httpx.ReadError(f"connection broke inside the answer: {exc}")
        else:
            self.error = httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            )
        self._wake()

    # -- httptools callbacks ------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # 103 Early Hints and the like: the real answer follows
            self.headers, self._interim = [], True
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        names = {name.lower() for name, _ in self.headers}
        self.until_close = b"content-length" not in names and b"transfer-encoding" not in names
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self._wake()

    # -- waiting ------------------------------------------------------------

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until the parser has more to give (or the connection ends); raises
        ``ReadTimeout`` after ``timeout`` seconds of silence."""
        assert self._loop is not None
        self._waiter = waiter = self._loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise httpx.ReadTimeout("the upstream sent nothing in time") from None

    def take(self) -> bytes | None:
        """The body bytes buffered so far, in one piece (as aiohttp's ``readany``: a
        relay then writes them to its client at once); ``None`` when there are none."""
        if not self.chunks:
            return None
        chunk = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()  # a no-op unless paused
        return chunk

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
    return timeouts


class _Body(httpx.AsyncByteStream):
    """An answer's body as httpx reads it; closing gives the connection back."""

    def __init__(self, pool: WireTransport, conn: _Connection, request: httpx.Request) -> None:
        self._pool = pool
        self._conn = conn
        self._request = request
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            chunk = conn.take()
            if chunk is not None:
                yield chunk
            elif conn.complete:
                return
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait(_timeouts(self._request).get("read"))

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._pool.release(self._conn)


class WireTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncBaseTransport`` over the event loop's connections (see the module)."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._slots = asyncio.Semaphore(max_connections)
        self._ssl: ssl.SSLContext | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.raw_scheme, url.raw_host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = _timeouts(request)
        body = await request.aread()
        head = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        if self._slots.locked():  # every connection in use: wait, up to the pool timeout
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no connection to the upstream came free in time") from None
        else:
            await self._slots.acquire()  # at once: no timer to set and cancel
        conn: _Connection | None = None
        try:
            conn = await self._connection(origin, timeouts.get("connect"))
            conn.begin(asyncio.get_running_loop())
            assert conn.transport is not None
            conn.transport.writelines((b"".join(head), body))  # one writev, the body not copied
            sent = request.extensions.get(ON_SENT)
            if sent is not None:  # the caller's work while the upstream works
                sent()
            while not conn.status:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(timeouts.get("read"))
        except BaseException:
            if conn is not None:
                self._discard(conn)
            self._slots.release()
            raise
        return httpx.Response(
            status_code=conn.status,
            headers=conn.headers,
            stream=_Body(self, conn, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _connection(self, origin: Origin, timeout: float | None) -> _Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE_S:
                return conn
            self._discard(conn)
        scheme, host, port = origin
        context = self._context() if scheme == b"https" else None
        name = host.decode("ascii")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin),
                    name.strip("[]"),  # an IPv6 literal as the URL writes it
                    port,
                    ssl=context,
                    server_hostname=name if context is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {name}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect to {name}:{port}: {exc}") from None
        self._open.add(conn)
        return conn

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # what httpx itself trusts
        return self._ssl

    def release(self, conn: _Connection) -> None:
        """The answer on ``conn`` is over: keep the connection if it can serve again."""
        self._slots.release()
        reusable = conn.complete and conn.keep_alive and not conn.closed and not conn.chunks
        if not reusable:
            self._discard(conn)
            return
        conn.idle_since = time.monotonic()
        conn.begin(None)  # nothing waits on it while idle
        self._idle.setdefault(conn.origin, []).append(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
