"""Everything that can go wrong, as the client sees it.

Every error is an Anthropic error body ``{"type": "error", "error": {"type",
"message"}}`` with the right status and a message a person can act on, and the
gateway keeps serving afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from support.app import memory_audit, running
from support.servers import free_port
from support.upstream import FakeUpstream

from prefixgate.app.gateway import create_app
from prefixgate.config import Settings, build_settings
from prefixgate.core.sse import SSEDecoder
from prefixgate.store.audit import MemoryAudit

UPSTREAM_URL = "http://upstream.test:8080"
TIMEOUT = 10.0
GOOD: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 8,
    "system": [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.56c;"},
        {"type": "text", "text": "You are a helpful assistant."},
    ],
    "messages": [{"role": "user", "content": "Say hi."}],
}
MESSAGE: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "hi"}],
    "usage": {"input_tokens": 5, "output_tokens": 1},
}


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=MESSAGE)


def make_settings(url: str = UPSTREAM_URL, **server: Any) -> Settings:
    file = {"server": server, "upstreams": {"local": {"url": url, "tokenizer": "estimate"}}}
    return build_settings(file, {}, {})


def assert_error(response: httpx.Response, status: int, error_type: str, *fragments: str) -> str:
    """Check the status and the Anthropic error shape; return the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"type", "error"}
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == error_type
    message = body["error"]["message"]
    assert isinstance(message, str) and message.strip()
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


async def assert_still_serving(client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.respond = ok
    response = await client.post("/v1/messages", json=GOOD)
    assert response.status_code == 200
    assert response.json() == MESSAGE
    assert b"x-anthropic-billing-header" not in upstream.requests[-1].content


# -- the client's request is at fault -------------------------------------------

BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "not valid JSON"),
    ("not-json", b"model=claude&max_tokens=8", "not valid JSON"),
    ("truncated", json.dumps(GOOD).encode()[:-3], "not valid JSON"),
    ("not-utf8", b'{"model": "\xff\xfe"}', "not valid JSON"),
    ("array", b'[{"model": "m"}]', "must be a JSON object"),
    ("string", b'"hello"', "must be a JSON object"),
    ("null", b"null", "must be a JSON object"),
]


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("no-model", without("model"), "model"),
    ("no-messages", without("messages"), "messages"),
    ("no-max-tokens", without("max_tokens"), "max_tokens"),
    ("model-number", {**GOOD, "model": 5}, "model"),
    ("model-empty", {**GOOD, "model": ""}, "model"),
    ("messages-string", {**GOOD, "messages": "hi"}, "messages"),
    ("message-no-role", {**GOOD, "messages": [{"content": "hi"}]}, "messages.0"),
    ("message-not-object", {**GOOD, "messages": ["hi"]}, "messages.0"),
    ("content-number", {**GOOD, "messages": [{"role": "user", "content": 5}]}, "content"),
    ("max-tokens-string", {**GOOD, "max_tokens": "8"}, "max_tokens"),
    ("max-tokens-bool", {**GOOD, "max_tokens": True}, "max_tokens"),
    ("max-tokens-zero", {**GOOD, "max_tokens": 0}, "max_tokens"),
    ("system-number", {**GOOD, "system": 5}, "system"),
    ("tools-object", {**GOOD, "tools": {"name": "x"}}, "tools"),
    ("stream-string", {**GOOD, "stream": "yes"}, "stream"),
]


@pytest.mark.parametrize(
    ("raw", "fragment"), [pytest.param(raw, f, id=name) for name, raw, f in BAD_BODIES]
)
async def test_a_body_that_is_not_a_json_object_is_refused(raw: bytes, fragment: str) -> None:
    upstream = FakeUpstream(answer=MESSAGE)
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await client.post("/v1/messages", content=raw)
        assert_error(response, 400, "invalid_request_error", fragment)
        assert not upstream.requests
        await assert_still_serving(client, upstream)
    first = memory_audit(app).records[0]
    assert first.status == 400
    assert first.error is not None and fragment in first.error


@pytest.mark.parametrize(
    ("body", "fragment"), [pytest.param(body, f, id=name) for name, body, f in BAD_FIELDS]
)
async def test_missing_or_mistyped_fields_are_refused(body: dict[str, Any], fragment: str) -> None:
    upstream = FakeUpstream(answer=MESSAGE)
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await client.post("/v1/messages", json=body)
        assert_error(response, 400, "invalid_request_error", fragment)
        assert not upstream.requests
        await assert_still_serving(client, upstream)


async def test_count_tokens_needs_no_max_tokens_but_still_checks_the_rest() -> None:
    upstream = FakeUpstream(lambda request: httpx.Response(200, json={"input_tokens": 9}))
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await client.post("/v1/messages/count_tokens", json=without("max_tokens"))
        assert response.status_code == 200
        assert "max_tokens" not in json.loads(upstream.requests[0].content)
        response = await client.post("/v1/messages/count_tokens", json=without("messages"))
        assert_error(response, 400, "invalid_request_error", "messages")
    assert len(upstream.requests) == 1


LIMIT = 1000


def padded(size: int) -> bytes:
    """A valid request body of exactly ``size`` bytes."""
    raw = json.dumps(GOOD).encode()
    assert len(raw) < size
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


async def test_a_body_over_the_limit_with_content_length_is_refused() -> None:
    upstream = FakeUpstream(answer=MESSAGE)
    app = create_app(make_settings(max_body_bytes=LIMIT), transport=upstream.transport)
    async with running(app) as client:
        response = await client.post("/v1/messages", content=padded(LIMIT + 1))
        assert_error(response, 413, "request_too_large", str(LIMIT), "bytes")
        assert not upstream.requests
        # exactly at the limit is fine
        response = await client.post("/v1/messages", content=padded(LIMIT))
        assert response.status_code == 200
        await assert_still_serving(client, upstream)


async def test_a_chunked_body_over_the_limit_is_refused_while_it_streams_in() -> None:
    upstream = FakeUpstream(answer=MESSAGE)
    app = create_app(make_settings(max_body_bytes=LIMIT), transport=upstream.transport)
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        body = padded(50 * LIMIT)
        for i in range(0, len(body), 100):
            sent += 100
            yield body[i : i + 100]

    async with running(app) as client:
        request = client.build_request("POST", "/v1/messages", content=chunks())
        assert "content-length" not in request.headers
        response = await client.send(request)
        assert_error(response, 413, "request_too_large", str(LIMIT))
        assert not upstream.requests
        await assert_still_serving(client, upstream)
    (first, _) = memory_audit(app).records
    assert first.status == 413


async def test_a_lying_content_length_is_still_bounded() -> None:
    upstream = FakeUpstream(answer=MESSAGE)
    app = create_app(make_settings(max_body_bytes=LIMIT), transport=upstream.transport)
    async with running(app) as client:
        response = await client.post(
            "/v1/messages", content=padded(2 * LIMIT), headers={"content-length": "10"}
        )
        assert_error(response, 413, "request_too_large")
        await assert_still_serving(client, upstream)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/nope"), ("POST", "/v2/messages"), ("POST", "/"), ("GET", "/v1/messages/x")],
)
async def test_an_unknown_route_is_not_found(method: str, path: str) -> None:
    upstream = FakeUpstream(answer=MESSAGE)
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await client.request(method, path)
        assert_error(response, 404, "not_found_error", "no such route", f"{method} {path}")
        assert not upstream.requests
        await assert_still_serving(client, upstream)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/messages", "POST"),
        ("PUT", "/v1/messages/count_tokens", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/healthz", "GET"),
    ],
)
async def test_a_wrong_method_is_refused_with_allow(method: str, path: str, allowed: str) -> None:
    upstream = FakeUpstream(answer=MESSAGE)
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await client.request(method, path)
        assert_error(response, 405, "invalid_request_error", method, path, "not allowed")
        assert allowed in response.headers["allow"]
        assert not upstream.requests
        await assert_still_serving(client, upstream)


async def test_a_model_no_route_matches_is_not_found() -> None:
    app = create_app(Settings(), transport=FakeUpstream(answer=MESSAGE).transport)
    async with running(app) as client:
        response = await client.post("/v1/messages", json=GOOD)
        assert_error(response, 404, "not_found_error", "claude-haiku-4-5")
        response = await client.get("/v1/models")
        assert_error(response, 404, "not_found_error", "no upstream")


# -- the upstream is at fault ---------------------------------------------------


async def test_an_unreachable_upstream_is_a_502_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    app = create_app(make_settings(url))  # a real transport: the connection is refused
    async with running(app) as client:
        for attempt in range(2):
            response = await client.post("/v1/messages", json=GOOD)
            message = assert_error(response, 502, "api_error", url, "'local'")
            assert "refused" in message or "could not be reached" in message, attempt
        models = await client.get("/v1/models")
        assert_error(models, 502, "api_error", url)
        assert (await client.get("/healthz")).status_code == 200
    rec = memory_audit(app).records[0]
    assert rec.status == 502
    assert rec.upstream == "local"
    assert rec.error is not None and url in rec.error


@pytest.mark.parametrize(
    ("exc", "status", "error_type", "fragment"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), 502, "api_error", "refused"),
        (httpx.ConnectTimeout("timed out"), 504, "timeout_error", "did not answer in time"),
        (httpx.ReadTimeout("timed out"), 504, "timeout_error", "did not answer in time"),
        (httpx.RemoteProtocolError("peer closed"), 502, "api_error", "RemoteProtocolError"),
        (httpx.ReadError("reset"), 502, "api_error", "ReadError"),
    ],
    ids=["connect", "connect-timeout", "read-timeout", "protocol", "read"],
)
async def test_transport_failures_map_to_gateway_errors(
    exc: Exception, status: int, error_type: str, fragment: str
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    upstream = FakeUpstream(fail)
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await client.post("/v1/messages", json={**GOOD, "stream": True})
        assert_error(response, status, error_type, fragment, UPSTREAM_URL)
        await assert_still_serving(client, upstream)


async def test_a_real_upstream_that_never_answers_times_out() -> None:
    accepted, done = asyncio.Event(), asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        try:
            await reader.read()  # read until the gateway gives up and closes
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            done.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    # tokenizer "estimate": a /tokenize the silent upstream never answers would hold
    # the app's shutdown for 10 s and is not what this test is about
    table = {"url": url, "read_timeout": 0.3, "tokenizer": "estimate"}
    app = create_app(build_settings({"upstreams": {"local": table}}, {}, {}))
    try:
        async with running(app) as client:
            response = await client.post("/v1/messages", json=GOOD)
            assert_error(response, 504, "timeout_error", url, "did not answer in time")
            assert accepted.is_set()
            assert (await client.get("/healthz")).status_code == 200
        await asyncio.wait_for(done.wait(), TIMEOUT)  # the gateway hung up
    finally:
        server.close()
        await server.wait_closed()


def anthropic_error(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


UPSTREAM_ERRORS: list[Any] = [
    pytest.param(
        429,
        anthropic_error("rate_limit_error", "Number of requests exceeded your rate limit."),
        "rate_limit_error",
        "Number of requests exceeded your rate limit.",
        id="429-anthropic",
    ),
    pytest.param(
        500,
        anthropic_error("api_error", "Internal server error"),
        "api_error",
        "Internal server error",
        id="500-anthropic",
    ),
    pytest.param(
        400,
        anthropic_error("invalid_request_error", "prompt is too long: 250000 tokens > 200000"),
        "invalid_request_error",
        "prompt is too long: 250000 tokens > 200000",
        id="400-anthropic",
    ),
    pytest.param(
        529,
        anthropic_error("overloaded_error", "Overloaded"),
        "overloaded_error",
        "Overloaded",
        id="529-anthropic",
    ),
    pytest.param(429, "Too Many Requests", "rate_limit_error", "Too Many Requests", id="429-text"),
    pytest.param(
        500, "upstream crashed: out of memory", "api_error", "out of memory", id="500-text"
    ),
    pytest.param(400, "Bad Request", "invalid_request_error", "Bad Request", id="400-text"),
    pytest.param(
        503,
        {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
        "overloaded_error",
        "Loading model",
        id="503-llama.cpp",
    ),
    pytest.param(502, "", "api_error", "HTTP 502", id="502-empty"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("status", "body", "error_type", "message"), UPSTREAM_ERRORS)
async def test_an_upstream_error_status_keeps_its_status_and_message(
    status: int, body: Any, error_type: str, message: str, stream: bool
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers={"content-type": "text/plain"})
        return httpx.Response(status, json=body)

    upstream = FakeUpstream(fail)
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await client.post("/v1/messages", json={**GOOD, "stream": stream})
        got = assert_error(response, status, error_type, message)
        assert "local" in got  # says which upstream answered
        await assert_still_serving(client, upstream)
    rec = memory_audit(app).records[0]
    assert rec.status == status
    assert rec.error is not None and message in rec.error


async def test_a_huge_upstream_error_body_is_cut_short() -> None:
    upstream = FakeUpstream(lambda request: httpx.Response(500, text="x" * 100_000))
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await client.post("/v1/messages", json=GOOD)
        message = assert_error(response, 500, "api_error")
        assert len(message) < 3000


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("text/html", b"<html><body>502 Bad Gateway</body></html>"),
        ("application/json", b'{"type": "message", "usage": '),
        ("application/json", b"[1, 2, 3]"),
        ("application/octet-stream", bytes(range(256))),
        ("application/json", b""),
    ],
    ids=["html", "truncated-json", "array", "binary", "empty"],
)
async def test_garbage_from_the_upstream_is_a_502_never_a_half_success(
    content_type: str, content: bytes
) -> None:
    """A 200 whose body is no JSON object cannot be an answer: the client gets an
    Anthropic error, not the garbage under a success status."""
    upstream = FakeUpstream(
        lambda request: httpx.Response(
            200, content=content, headers={"content-type": content_type}
        ),
    )
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await client.post("/v1/messages", json=GOOD)
        message = assert_error(response, 502, "api_error")
        assert "not a JSON object" in message
        await assert_still_serving(client, upstream)
    rec = memory_audit(app).records[0]
    assert rec.status == 502
    assert rec.error is not None and "not a JSON object" in rec.error


async def test_an_answer_with_odd_usage_is_relayed_without_a_crash() -> None:
    content = b'{"usage": {"input_tokens": "many", "output_tokens": -1}}'
    upstream = FakeUpstream(
        lambda request: httpx.Response(
            200, content=content, headers={"content-type": "application/json"}
        ),
    )
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await client.post("/v1/messages", json=GOOD)
        assert response.status_code == 200
        assert response.content == content
        await assert_still_serving(client, upstream)
    rec = memory_audit(app).records[0]
    assert rec.status == 200
    assert rec.input_tokens is None and rec.output_tokens is None


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xffnot an event stream at all",
        b"data: {not json}\n\n",
        b"event: message_start\ndata: [1,2]\n\nevent: message_delta\ndata: null\n\n",
        b"data: " + b"x" * 200_000 + b"\n\n",
    ],
    ids=["binary", "bad-json", "wrong-shapes", "one-huge-line"],
)
async def test_a_garbage_event_stream_ends_with_an_error_event(content: bytes) -> None:
    """Garbage is relayed as it came (whole events only), and as it never
    finished a message the stream ends with an Anthropic error event."""
    upstream = FakeUpstream(
        lambda request: httpx.Response(
            200, content=content, headers={"content-type": "text/event-stream"}
        ),
    )
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await client.post("/v1/messages", json={**GOOD, "stream": True})
        assert response.status_code == 200
        relayed, _, last = response.content.rpartition(b"event: error\n")
        assert content.startswith(relayed)
        decoder = SSEDecoder()
        (error,) = decoder.decode(b"event: error\n" + last) + decoder.flush()
        assert json.loads(error.data)["error"]["type"] == "api_error"
        await assert_still_serving(client, upstream)


# -- the gateway itself is at fault ---------------------------------------------


async def test_an_internal_exception_is_a_500_and_the_app_keeps_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import prefixgate.app.proxy as proxy_module

    real = proxy_module.rewrite_parsed
    calls = 0

    def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("a bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(proxy_module, "rewrite_parsed", flaky)
    upstream = FakeUpstream(answer=MESSAGE)
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app, raise_app_exceptions=False) as client:
        response = await client.post("/v1/messages", json=GOOD)
        message = assert_error(response, 500, "api_error", "internal error")
        assert "KeyError" not in message  # details go to the log, not the client
        assert not upstream.requests
        await assert_still_serving(client, upstream)


async def test_an_audit_sink_that_fails_to_close_does_not_break_shutdown() -> None:
    class Sink(MemoryAudit):
        def close(self) -> None:
            raise OSError("disk gone")

    upstream = FakeUpstream(answer=MESSAGE)
    app = create_app(make_settings(), transport=upstream.transport, audit=Sink())
    async with running(app) as client:
        await assert_still_serving(client, upstream)
