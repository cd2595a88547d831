"""The wire transport keeps httpx's contract, against a raw socket server."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from support.servers import free_port
from support.upstream import read_request, serving

from prefixgate.upstreams import wire
from prefixgate.upstreams.wire import WireTransport

Answer = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Reads each request's head and body, keeps them, lets ``answer`` reply."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.url = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head, body = await read_request(reader)
                self.requests.append((head, body))
                await self.answer(head, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def raw_server(answer: Answer) -> contextlib.AbstractAsyncContextManager[RawServer]:
    return serving(RawServer(answer))


@contextlib.asynccontextmanager
async def client(
    transport: WireTransport | None = None, **timeouts: float | None
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=transport or WireTransport(),
        timeout=httpx.Timeout(5.0, **timeouts),
        trust_env=False,
    ) as http:
        yield http


async def ok(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
    await writer.drain()


async def test_the_request_goes_out_with_httpx_headers_only_and_the_connection_is_kept() -> None:
    async with raw_server(ok) as server, client() as http:
        body = b'{"model":"m"}'
        for _ in range(2):
            response = await http.post(
                server.url + "/v1/messages?beta=true",
                content=body,
                headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
            )
            assert (response.status_code, response.text) == (200, "ok")
    head, sent = server.requests[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/messages?beta=true HTTP/1.1"
    names = [line.split(":", 1)[0].lower() for line in lines[1:] if line]
    assert sorted(names) == sorted(
        [
            "host",
            "accept",
            "accept-encoding",
            "connection",
            "user-agent",
            "content-length",
            "x-api-key",
            "anthropic-version",
        ]
    )
    assert f"user-agent: python-httpx/{httpx.__version__}" in head.decode().lower()
    assert sent == body
    assert server.connections == 1  # the second request reused the first connection


async def test_a_compressed_body_reaches_httpx_as_sent_and_httpx_decodes_it() -> None:
    packed = gzip.compress(b'{"ok":true}')

    async def gzipped(head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n"
            + f"content-length: {len(packed)}\r\n\r\n".encode()
            + packed
        )
        await w.drain()

    async with raw_server(gzipped) as server, client() as http:
        response = await http.post(server.url + "/", content=b"x")
        assert response.json() == {"ok": True}
        async with http.stream("POST", server.url + "/", content=b"x") as streamed:
            assert b"".join([c async for c in streamed.aiter_raw()]) == packed


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(f"http://127.0.0.1:{free_port()}/", content=b"x")


async def test_a_connection_closed_before_the_answer_is_a_remote_protocol_error() -> None:
    async def close(head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    async with raw_server(close) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(server.url + "/", content=b"x")


async def test_a_body_cut_short_is_a_remote_protocol_error() -> None:
    async def cut(head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await w.drain()
        w.close()

    async with (
        raw_server(cut) as server,
        client() as http,
        http.stream("POST", server.url + "/", content=b"x") as response,
    ):
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()


async def _slow_body(head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await w.drain()
    await asyncio.sleep(0.5)
    w.write(b"5\r\nworld\r\n0\r\n\r\n")
    await w.drain()


async def test_silence_past_the_read_timeout_is_a_read_timeout_before_and_inside_the_body() -> None:
    async def silent(head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with raw_server(silent) as server, client(read=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(server.url + "/", content=b"x")
    async with (
        raw_server(_slow_body) as server,
        client(read=0.2) as http,
        http.stream("POST", server.url + "/", content=b"x") as response,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await response.aread()


async def test_the_read_timeout_is_looked_up_before_every_read() -> None:
    """A relay lifts the read timeout once the stream has begun (app/relay.py)."""
    async with raw_server(_slow_body) as server, client(read=0.2) as http:
        request = http.build_request("POST", server.url + "/", content=b"x")
        response = await http.send(request, stream=True)
        request.extensions["timeout"]["read"] = None
        try:
            assert await response.aread() == b"helloworld"
        finally:
            await response.aclose()


async def test_a_kept_connection_the_server_closed_is_not_used_again() -> None:
    async def once(head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await ok(head, reader, w)
        w.close()  # the server keeps nothing alive

    async with raw_server(once) as server, client() as http:
        for _ in range(3):
            response = await http.post(server.url + "/", content=b"x")
            assert response.text == "ok"
            await asyncio.sleep(0.05)  # the close reaches the client
    assert server.connections == 3


async def test_a_malformed_answer_is_a_remote_protocol_error() -> None:
    async def junk(head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"NOT HTTP AT ALL\r\n\r\n")
        await w.drain()

    async with raw_server(junk) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
            await http.post(server.url + "/", content=b"x")


async def test_an_informational_answer_is_skipped_for_the_one_after_it() -> None:
    async def hints(head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n")
        await ok(head, reader, w)

    async with raw_server(hints) as server, client() as http:
        response = await http.post(server.url + "/", content=b"x")
        assert (response.status_code, response.text) == (200, "ok")
        assert "link" not in response.headers


async def test_a_body_without_length_ends_with_the_connection() -> None:
    async def until_close(
        head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
        await w.drain()
        w.close()

    async with raw_server(until_close) as server, client() as http:
        response = await http.post(server.url + "/", content=b"x")
        assert response.text == "all of it"


async def test_a_large_body_read_slowly_comes_whole() -> None:
    """Past ``HIGH_WATER`` buffered bytes the socket is not read until the reader catches up."""
    big = bytes(range(256)) * (3 * wire.HIGH_WATER // 256)

    async def large(head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\n" + f"content-length: {len(big)}\r\n\r\n".encode() + big)
        await w.drain()

    async with (
        raw_server(large) as server,
        client() as http,
        http.stream("POST", server.url + "/", content=b"x") as response,
    ):
        await asyncio.sleep(0.2)  # all of it arrives while nobody reads
        got = [chunk async for chunk in response.aiter_raw()]
    assert b"".join(got) == big


async def test_beyond_max_connections_a_request_waits_for_a_free_one() -> None:
    async with raw_server(ok) as server, client(WireTransport(max_connections=1)) as http:
        async with http.stream("POST", server.url + "/", content=b"x") as first:
            second = asyncio.create_task(http.post(server.url + "/", content=b"y"))
            await asyncio.sleep(0.1)
            assert not second.done()  # waits: the only connection is busy
            await first.aread()
        assert (await second).text == "ok"
    assert server.connections == 1  # and then reuses it


async def test_a_request_that_waits_past_the_pool_timeout_is_a_pool_timeout() -> None:
    async with (
        raw_server(ok) as server,
        client(WireTransport(max_connections=1), pool=0.1) as http,
        http.stream("POST", server.url + "/", content=b"x"),
    ):
        with pytest.raises(httpx.PoolTimeout):
            await http.post(server.url + "/", content=b"y")


async def test_a_connection_idle_past_the_keepalive_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "KEEPALIVE_S", 0.05)
    async with raw_server(ok) as server, client() as http:
        await http.post(server.url + "/", content=b"x")
        await asyncio.sleep(0.1)
        await http.post(server.url + "/", content=b"x")
    assert server.connections == 2


async def test_on_sent_is_called_once_the_request_is_written_before_the_answer() -> None:
    answering = asyncio.Event()
    order: list[str] = []

    async def late(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        order.append("server read the request")
        await answering.wait()
        await ok(head, reader, writer)

    def on_sent() -> None:
        order.append("sent")
        answering.set()  # the server answers only after the caller was told

    async with raw_server(late) as server, client() as http:
        request = http.build_request("POST", server.url + "/v1/messages", content=b"{}")
        request.extensions[wire.ON_SENT] = on_sent
        response = await asyncio.wait_for(http.send(request), 5)
        assert (response.status_code, response.text) == (200, "ok")
    assert order == ["sent", "server read the request"]
