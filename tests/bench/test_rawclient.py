"""bench/rawclient.py, the benchmarks' lean load generator, against a real socket server:
the request bytes it writes, both body framings, keep-alive reuse, a server that
closes, and an answer cut short."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import ModuleType

import pytest
from support.benchscripts import load_script


@pytest.fixture(scope="module")
def rawclient() -> ModuleType:
    return load_script("rawclient")


class Server:
    """Answers each request on a connection by the next entry of ``answers``."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer:
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[object]:
    servers: list[asyncio.Server] = []

    async def start(answers: list[bytes]) -> Server:
        server = Server(answers)
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(listening)
        server.port = listening.sockets[0].getsockname()[1]
        return server

    yield start
    for listening in servers:
        listening.close()
        await listening.wait_closed()


CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    b"f\r\nevent: message_\r\n5\r\nstop\n\r\n0\r\n\r\n"
)
SIZED = b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nmessage_stop"
CLOSING = b"HTTP/1.1 503 Busy\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy"


async def test_posts_the_body_and_reads_both_framings_on_one_connection(
    rawclient: ModuleType, serve: object
) -> None:
    server = await serve([CHUNKED, SIZED])  # type: ignore[operator]
    client = rawclient.RawClient(f"http://127.0.0.1:{server.port}")
    headers = {"x-api-key": "k", "Host": "ignored", "content-length": "999"}
    first = await client.post("/v1/messages?beta=true", headers, b'{"a":1}')
    second = await client.post("/v1/messages", {}, b"{}")
    await client.aclose()
    ttfb, total, status, tail = first
    assert (status, tail) == (200, b"event: message_stop\n")
    assert 0 <= ttfb <= total
    assert second[2:] == (200, b"message_stop")
    assert server.connections == 1  # kept alive
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/messages?beta=true HTTP/1.1"
    assert f"host: 127.0.0.1:{server.port}".encode() in lines
    assert b"x-api-key: k" in lines and b"content-length: 7" in lines
    assert b"Host: ignored" not in lines and b"content-length: 999" not in lines
    assert body == b'{"a":1}'


async def test_opens_a_new_connection_after_the_server_closed_one(
    rawclient: ModuleType, serve: object
) -> None:
    server = await serve([CLOSING, SIZED])  # type: ignore[operator]
    client = rawclient.RawClient(f"http://127.0.0.1:{server.port}")
    assert (await client.post("/", {}, b"x"))[2:] == (503, b"busy")
    assert (await client.post("/", {}, b"y"))[2:] == (200, b"message_stop")
    await client.aclose()
    assert server.connections == 2


async def test_an_answer_cut_short_is_an_error(rawclient: ModuleType, serve: object) -> None:
    cut = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\npartial"
    server = await serve([cut])  # type: ignore[operator]
    client = rawclient.RawClient(f"http://127.0.0.1:{server.port}", timeout_s=5)
    with pytest.raises(rawclient.ClientError):
        await client.post("/", {}, b"x")
    await client.aclose()
