"""A fast stub of an Anthropic-compatible upstream, for measuring the gateway's overhead.

    python bench/stub_upstream.py --port N [--host 127.0.0.1] [--server asyncio|uvicorn]

``POST /v1/messages`` reads the whole request body and answers with a canned
message: an SSE stream (``message_start`` with usage, a ping, a text block in a
few deltas, ``message_delta`` with the output usage, ``message_stop``) when the
body asks for ``"stream": true``, a JSON message otherwise.
``POST /v1/messages/count_tokens`` answers ``{"input_tokens": ...}``,
``GET /healthz`` answers 200 and ``GET /stats`` the number of requests and body
bytes received so far.

Two servers share the same canned answers:

``asyncio`` (default)  a minimal HTTP/1.1 server on ``asyncio.Protocol``: keep-alive,
                       ``Content-Length`` request bodies only (a chunked request gets
                       411). Much cheaper per request than an ASGI stack, so on a
                       small machine the stub takes as little CPU as possible from
                       the gateway and the load generator it shares the cores with.
``uvicorn``            a bare ASGI app under uvicorn (no framework), for comparison.

Whether a request streams is read from the raw bytes (``"stream": true`` at
any depth), not from a full JSON parse: the stub must cost the same for the
direct and the proxied run and as little as possible in both. It only ever
listens on the address it is given (loopback by default) and stops on SIGINT or
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
from collections.abc import Awaitable, Callable
from typing import Any

MODEL = "stub-model"
INPUT_TOKENS = 18_000
CACHE_READ_TOKENS = 16_384
OUTPUT_TOKENS = 12
TEXT_DELTAS = ("Hello", " from", " the", " stub", " upstream.")
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024

_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')


def _usage(output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": INPUT_TOKENS - CACHE_READ_TOKENS,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": CACHE_READ_TOKENS,
        "output_tokens": output_tokens,
    }


def _message(content: list[dict[str, Any]], stop: str | None, output_tokens: int) -> dict[str, Any]:
    return {
        "id": "msg_stub_0000000000000000",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _usage(output_tokens),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def sse_events() -> list[bytes]:
    """The canned answer as SSE events, one ``bytes`` per event."""
    events = [
        _event("message_start", {"type": "message_start", "message": _message([], None, 1)}),
        _event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        _event("ping", {"type": "ping"}),
    ]
    for text in TEXT_DELTAS:
        delta = {"type": "text_delta", "text": text}
        events.append(
            _event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        )
    events += [
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": OUTPUT_TOKENS},
            },
        ),
        _event("message_stop", {"type": "message_stop"}),
    ]
    return events


def json_message() -> bytes:
    """The canned non-streaming answer."""
    content = [{"type": "text", "text": "".join(TEXT_DELTAS)}]
    return json.dumps(_message(content, "end_turn", OUTPUT_TOKENS), separators=(",", ":")).encode()


SSE_EVENTS = sse_events()
SSE_BODY = b"".join(SSE_EVENTS)
JSON_BODY = json_message()
SSE_TYPE = "text/event-stream; charset=utf-8"
JSON_TYPE = "application/json"


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.streamed = 0
        self.body_bytes = 0

    def as_json(self) -> bytes:
        return json.dumps(
            {"requests": self.requests, "streamed": self.streamed, "body_bytes": self.body_bytes}
        ).encode()


def answer(method: str, path: str, body: bytes, stats: Stats) -> tuple[int, str, bytes, bool]:
    """(status, content type, body, chunked) for one request."""
    route = path.split("?", 1)[0]
    if method == "POST" and route == "/v1/messages":
        stats.requests += 1
        stats.body_bytes += len(body)
        if _STREAM_TRUE.search(body):
            stats.streamed += 1
            return 200, SSE_TYPE, SSE_BODY, True
        return 200, JSON_TYPE, JSON_BODY, False
    if method == "POST" and route == "/v1/messages/count_tokens":
        return 200, JSON_TYPE, json.dumps({"input_tokens": INPUT_TOKENS}).encode(), False
    if method == "GET" and route == "/healthz":
        return 200, JSON_TYPE, b'{"status":"ok"}', False
    if method == "GET" and route == "/stats":
        return 200, JSON_TYPE, stats.as_json(), False
    error = {"type": "error", "error": {"type": "not_found_error", "message": "no such route"}}
    return 404, JSON_TYPE, json.dumps(error).encode(), False


# -- the asyncio server ---------------------------------------------------------

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required"}
_REASONS |= {413: "Content Too Large", 431: "Request Header Fields Too Large"}


def _response_bytes(status: int, content_type: str, body: bytes, chunked: bool) -> bytes:
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"content-type: {content_type}",
        "request-id: req_stub",
    ]
    if chunked:
        head.append("transfer-encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in SSE_EVENTS) + b"0\r\n\r\n"
        assert body == SSE_BODY
    else:
        head.append(f"content-length: {len(body)}")
        payload = body
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


_SSE_RESPONSE = _response_bytes(200, SSE_TYPE, SSE_BODY, True)
_JSON_RESPONSE = _response_bytes(200, JSON_TYPE, JSON_BODY, False)


class StubProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests are answered in order."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: tuple[str, str, int, bool] | None = None  # method, path, length, close
        self.body_at = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            if self.head is None and not self._parse_head():
                return
            assert self.head is not None
            method, path, length, close = self.head
            end = self.body_at + length
            if len(self.buffer) < end:
                return
            body = bytes(self.buffer[self.body_at : end])
            del self.buffer[:end]
            self.head = None
            self._respond(method, path, body, close)

    def _parse_head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._fail(431)
            return False
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            self._fail(400)
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._fail(411)
            return False
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit() or int(length_text) > MAX_BODY_BYTES:
            self._fail(413 if length_text.isdigit() else 400)
            return False
        close = headers.get("connection", "").lower() == "close" or parts[2] == "HTTP/1.0"
        self.head = (parts[0], parts[1], int(length_text), close)
        self.body_at = end + 4
        return True

    def _respond(self, method: str, path: str, body: bytes, close: bool) -> None:
        assert self.transport is not None
        status, content_type, payload, chunked = answer(method, path, body, self.stats)
        if payload is SSE_BODY:
            self.transport.write(_SSE_RESPONSE)
        elif payload is JSON_BODY:
            self.transport.write(_JSON_RESPONSE)
        else:
            self.transport.write(_response_bytes(status, content_type, payload, chunked))
        if close:
            self.transport.close()

    def _fail(self, status: int) -> None:
        assert self.transport is not None
        body = json.dumps({"type": "error", "error": {"type": "invalid_request_error"}}).encode()
        self.transport.write(_response_bytes(status, JSON_TYPE, body, False))
        self.transport.close()


async def serve_asyncio(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    server = await loop.create_server(lambda: StubProtocol(stats), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


# -- the uvicorn server -----------------------------------------------------------

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def asgi_app(stats: Stats) -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        path = scope["path"] + (
            "?" + scope["query_string"].decode() if scope["query_string"] else ""
        )
        status, content_type, body, chunked = answer(scope["method"], path, b"".join(chunks), stats)
        headers = [(b"content-type", content_type.encode()), (b"request-id", b"req_stub")]
        if not chunked:
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if chunked:
            for event in SSE_EVENTS:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.body", "body": body})

    return app


def serve_uvicorn(host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        asgi_app(Stats()),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", choices=("asyncio", "uvicorn"), default="asyncio")
    args = parser.parse_args(argv)
    if args.server == "uvicorn":
        serve_uvicorn(args.host, args.port)
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_asyncio(args.host, args.port))


if __name__ == "__main__":
    main()
