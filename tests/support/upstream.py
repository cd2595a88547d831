"""Fake upstreams that misbehave on request.

``FakeUpstream`` lives in memory (an ``httpx.MockTransport`` handed to
``create_app(..., transport=...)``): it records what it is sent and answers a
canned message, an error status, a refused connection or whatever ``respond``
says. ``scripted_upstream`` is a raw HTTP/1.1 server on a loopback port for the
faults only a socket shows: a stream cut, stalled or reset mid-answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

import httpx

Responder = Callable[[httpx.Request], httpx.Response]

# An Anthropic message as llama.cpp answers it, usage with a cache read.
MESSAGE: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "gemma-3-270m",
    "content": [{"type": "text", "text": "Hello"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "cache_read_input_tokens": 1000, "output_tokens": 3},
}
UPSTREAM_ERROR: dict[str, Any] = {"error": {"message": "upstream says no"}}


class FakeUpstream:
    """An upstream in memory that records every request in ``requests``.

    It answers ``respond(request)``, by default ``answer`` as JSON. On request it
    misbehaves: ``status`` other than 200 answers that status with an error body,
    ``refusing`` refuses the connection. Paths in ``unrecorded`` (health checks,
    ``/tokenize``) are answered 404 and left out of ``requests``."""

    def __init__(
        self,
        respond: Responder | None = None,
        *,
        answer: Mapping[str, Any] = MESSAGE,
        unrecorded: Iterable[str] = (),
    ) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = answer
        self.respond: Responder = respond or self.answer_json
        self.unrecorded = frozenset(unrecorded)
        self.status = 200
        self.refusing = False
        self.transport = httpx.MockTransport(self._handle)

    def answer_json(self, request: httpx.Request) -> httpx.Response:
        """The default answer: ``answer`` as a 200 JSON body."""
        return httpx.Response(200, json=self.answer)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path in self.unrecorded:
            return httpx.Response(404)
        self.requests.append(request)
        if self.refusing:
            raise httpx.ConnectError("connection refused", request=request)
        if self.status != 200:
            return httpx.Response(self.status, json=UPSTREAM_ERROR)
        return self.respond(request)

    @property
    def last(self) -> httpx.Request:
        """The request received last; fails when there is none."""
        assert self.requests, "the upstream received no request"
        return self.requests[-1]


class ChunkStream(httpx.AsyncByteStream):
    """An upstream response body: chunks from an async iterator; notes its closing."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        self.closed.set()


def sse_response(stream: httpx.AsyncByteStream | bytes, status: int = 200) -> httpx.Response:
    """A ``text/event-stream`` answer with ``stream`` (whole bytes or a stream) as body."""
    headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
    if isinstance(stream, bytes):
        return httpx.Response(status, headers=headers, content=stream)
    return httpx.Response(status, headers=headers, stream=stream)


# -- a scripted upstream on a real socket ------------------------------------------------


class Conn:
    """One request's connection, as the script answers it."""

    def __init__(
        self,
        upstream: ScriptedUpstream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.upstream = upstream
        self.reader = reader
        self.writer = writer

    async def head(
        self, status: int = 200, content_type: str = "text/event-stream", length: int | None = None
    ) -> None:
        framing = "transfer-encoding: chunked" if length is None else f"content-length: {length}"
        head = f"HTTP/1.1 {status} Whatever\r\ncontent-type: {content_type}\r\n{framing}\r\n\r\n"
        self.writer.write(head.encode())
        await self.writer.drain()

    async def chunk(self, data: bytes) -> None:
        self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self.writer.drain()

    async def end(self) -> None:
        """The chunked body's clean end."""
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def whole(self, status: int, content_type: str, body: bytes) -> None:
        await self.head(status, content_type, len(body))
        self.writer.write(body)
        await self.writer.drain()

    async def hang(self, limit: float = 10.0) -> None:
        """Say nothing more until the gateway hangs up (noted in ``upstream.hung_up``)."""
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(limit):
                while await self.reader.read(65536):
                    pass
        self.upstream.hung_up_at = time.monotonic()
        self.upstream.hung_up.set()

    def reset(self) -> None:
        """Drop the connection with a TCP reset."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Script = Callable[[Conn], Awaitable[None]]


class ScriptedUpstream:
    """A raw HTTP/1.1 server: every POST is answered by ``script``; anything else 404."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests = 0
        self.hung_up = asyncio.Event()
        self.hung_up_at: float | None = None
        self.url = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head, _ = await read_request(reader)
            if not head.startswith(b"POST "):
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                return
            self.requests += 1
            await self.script(Conn(self, reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and its ``Content-Length`` body, read off ``reader``."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def listening(handle: Handler) -> AsyncIterator[str]:
    """``handle`` serving each connection on a free loopback port; its base URL."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await server.wait_closed()


class Serves(Protocol):
    """A server object: ``serve`` handles one connection; ``url`` is set once it listens."""

    url: str

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None: ...


S = TypeVar("S", bound=Serves)


@contextlib.asynccontextmanager
async def serving(server: S) -> AsyncIterator[S]:
    """``server`` listening on a free loopback port, its ``url`` set."""
    async with listening(server.serve) as url:
        server.url = url
        yield server


def scripted_upstream(script: Script) -> contextlib.AbstractAsyncContextManager[ScriptedUpstream]:
    """A ``ScriptedUpstream`` listening on a free loopback port (its ``url``)."""
    return serving(ScriptedUpstream(script))
