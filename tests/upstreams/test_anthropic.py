"""The Anthropic upstream: header rules and error mapping as pure functions, and
``http.send`` against a mocked transport."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from prefixgate.config import UpstreamConfig
from prefixgate.core.errors import UpstreamStatus, UpstreamTimeout, UpstreamUnavailable
from prefixgate.core.pipeline import rewrite
from prefixgate.upstreams.anthropic import (
    DROPPED_REQUEST_HEADERS,
    KIND,
    Passthrough,
    forward_headers,
    response_headers,
)
from prefixgate.upstreams.http import (
    Outgoing,
    UpstreamClient,
    send,
    status_error,
    transport_error,
)
from prefixgate.upstreams.kind import Incoming

BODY = b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}'
LOCAL = UpstreamConfig(name="local", url="http://127.0.0.1:8080")
KEYED = UpstreamConfig(name="vllm", url="https://llm.example.com", api_key="sk-upstream")
ANTHROPIC = UpstreamConfig(
    name="anthropic", url="https://api.anthropic.com", api_key="sk-ant-upstream", first_party=True
)

CLIENT: dict[str, str] = {
    "accept": "application/json",
    "content-type": "application/json",
    "user-agent": "claude-cli/2.1.197 (external, sdk-cli)",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    "anthropic-version": "2023-06-01",
    "x-claude-code-session-id": "15389b44-ba54-41b7-8793-6b90cec761f6",
    "x-stainless-retry-count": "0",
    "x-app": "cli",
    "x-api-key": "sk-client",
    "authorization": "Bearer sk-client",
    "cookie": "a=b",
    "host": "127.0.0.1:8787",
    "content-length": "1234",
    "accept-encoding": "gzip, deflate, br, zstd",
    "connection": "keep-alive",
    "keep-alive": "timeout=5",
    "te": "trailers",
    "transfer-encoding": "chunked",
    "upgrade": "h2c",
    "proxy-authorization": "Basic eA==",
    "proxy-connection": "keep-alive",
    "trailer": "x-sum",
}
KEPT = {
    "accept",
    "content-type",
    "user-agent",
    "anthropic-beta",
    "anthropic-version",
    "x-claude-code-session-id",
    "x-stainless-retry-count",
    "x-app",
}


# -- forward_headers ------------------------------------------------------------


def test_forward_headers_keeps_the_client_headers_the_upstream_needs() -> None:
    out = forward_headers(CLIENT, LOCAL)
    assert set(out) == KEPT
    assert all(out[name] == CLIENT[name] for name in KEPT)


def test_forward_headers_drops_credentials_and_hop_by_hop_in_any_case() -> None:
    shouted = {k.upper(): v for k, v in CLIENT.items()}
    out = forward_headers(shouted, LOCAL)
    assert {k.lower() for k in out} == KEPT
    assert not {k.lower() for k in out} & DROPPED_REQUEST_HEADERS


def test_forward_headers_drops_headers_named_in_connection() -> None:
    headers = {**CLIENT, "connection": "keep-alive, X-Hop, x-other ", "x-hop": "1", "x-other": "2"}
    out = forward_headers(headers, LOCAL)
    assert "x-hop" not in out
    assert "x-other" not in out
    assert set(out) == KEPT


def test_forward_headers_sends_the_upstream_key_in_both_forms_to_third_parties() -> None:
    out = forward_headers(CLIENT, KEYED)
    assert out["x-api-key"] == "sk-upstream"
    assert out["authorization"] == "Bearer sk-upstream"
    assert "sk-client" not in json.dumps(out)


def test_forward_headers_sends_only_x_api_key_to_anthropic() -> None:
    out = forward_headers(CLIENT, ANTHROPIC)
    assert out["x-api-key"] == "sk-ant-upstream"
    assert "authorization" not in out


def test_forward_headers_without_an_upstream_key_sends_no_credentials() -> None:
    out = forward_headers(CLIENT, LOCAL)
    assert "x-api-key" not in out
    assert "authorization" not in out


def test_forward_headers_adds_the_policys_headers_and_leaves_its_input_alone() -> None:
    before = dict(CLIENT)
    out = forward_headers(CLIENT, LOCAL, {"x-prefixgate-attribution": "cc_version=2.1.197;"})
    assert out["x-prefixgate-attribution"] == "cc_version=2.1.197;"
    assert before == CLIENT
    assert out is not CLIENT


def test_forward_headers_accepts_httpx_and_starlette_header_types() -> None:
    from starlette.datastructures import Headers

    starlette = Headers(raw=[(k.encode(), v.encode()) for k, v in CLIENT.items()])
    assert forward_headers(starlette, LOCAL) == forward_headers(CLIENT, LOCAL)
    assert forward_headers(httpx.Headers(CLIENT), LOCAL) == forward_headers(CLIENT, LOCAL)


# -- response_headers -----------------------------------------------------------


def test_response_headers_relays_what_the_client_uses_and_drops_the_rest() -> None:
    upstream = httpx.Headers(
        {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "request-id": "req_01",
            "anthropic-ratelimit-requests-remaining": "99",
            "retry-after": "3",
            "content-length": "10",
            "content-encoding": "gzip",
            "transfer-encoding": "chunked",
            "connection": "keep-alive, x-hop",
            "x-hop": "1",
            "keep-alive": "timeout=5",
            "server": "llama.cpp",
            "date": "Sat, 22 Nov 2026 00:00:00 GMT",
        }
    )
    assert response_headers(upstream) == {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "request-id": "req_01",
        "anthropic-ratelimit-requests-remaining": "99",
        "retry-after": "3",
    }


# -- status_error ---------------------------------------------------------------


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("status", "content", "error_type", "message"),
    [
        (
            429,
            body({"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}),
            "rate_limit_error",
            "Slow down",
        ),
        (
            400,
            body({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}),
            "invalid_request_error",
            "bad",
        ),
        (
            529,
            body({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            "overloaded_error",
            "Overloaded",
        ),
        # OpenAI-style (llama.cpp, vLLM): message kept, type from the status
        (
            503,
            body({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}),
            "overloaded_error",
            "Loading model",
        ),
        (
            400,
            body({"error": {"message": "context too long", "type": "invalid_request_error"}}),
            "invalid_request_error",
            "context too long",
        ),
        # a type that is not a string is not trusted
        (500, body({"type": "error", "error": {"type": 5, "message": "m"}}), "api_error", "m"),
        (429, b"Too Many Requests", "rate_limit_error", "Too Many Requests"),
        (500, b"  Internal Server Error\n", "api_error", "Internal Server Error"),
        (404, b"<html>Not Found</html>", "not_found_error", "<html>Not Found</html>"),
        (401, b"", "authentication_error", "HTTP 401"),
        (403, b"{}", "permission_error", "{}"),
        (418, b"teapot", "invalid_request_error", "teapot"),
        (599, b"odd", "api_error", "odd"),
        (500, b"[1, 2]", "api_error", "[1, 2]"),
    ],
)
def test_status_error_keeps_status_type_and_message(
    status: int, content: bytes, error_type: str, message: str
) -> None:
    err = status_error(LOCAL, status, content)
    assert isinstance(err, UpstreamStatus)
    assert err.upstream_status == status
    assert err.upstream_error_type == error_type
    assert err.message == f"upstream 'local': {message}"
    assert err.to_body() == {
        "type": "error",
        "error": {"type": error_type, "message": f"upstream 'local': {message}"},
    }


def test_status_error_survives_bytes_that_are_not_utf8() -> None:
    err = status_error(LOCAL, 500, b"\xff\xfe broken \x80")
    assert "broken" in err.message
    json.dumps(err.to_body())  # still serialisable


def test_status_error_cuts_a_huge_body_short() -> None:
    err = status_error(LOCAL, 500, b"x" * 100_000)
    assert len(err.message) <= 2000 + len("upstream 'local': ")


# -- transport_error ------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind", "status", "error_type", "fragment"),
    [
        (httpx.ConnectError("refused"), UpstreamUnavailable, 502, "api_error", "refused"),
        (httpx.ConnectTimeout("t"), UpstreamTimeout, 504, "timeout_error", "ConnectTimeout"),
        (httpx.ReadTimeout("t"), UpstreamTimeout, 504, "timeout_error", "ReadTimeout"),
        (httpx.WriteTimeout("t"), UpstreamTimeout, 504, "timeout_error", "WriteTimeout"),
        (httpx.PoolTimeout("t"), UpstreamTimeout, 504, "timeout_error", "PoolTimeout"),
        (
            httpx.RemoteProtocolError("peer closed connection"),
            UpstreamUnavailable,
            502,
            "api_error",
            "RemoteProtocolError: peer closed connection",
        ),
        (httpx.ReadError("reset"), UpstreamUnavailable, 502, "api_error", "ReadError: reset"),
        (
            httpx.UnsupportedProtocol("ftp"),
            UpstreamUnavailable,
            502,
            "api_error",
            "UnsupportedProtocol",
        ),
    ],
)
def test_transport_error_maps_httpx_failures(
    exc: httpx.HTTPError, kind: type, status: int, error_type: str, fragment: str
) -> None:
    err = transport_error(KEYED, exc)
    assert isinstance(err, kind)
    assert err.status == status
    assert err.error_type == error_type
    assert "upstream 'vllm' (https://llm.example.com)" in err.message
    assert fragment in err.message
    assert err.to_body()["error"]["type"] == error_type


# -- http.send (every kind's requests) -------------------------------------------


async def test_open_sends_the_request_with_the_configured_timeouts() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    config = UpstreamConfig(
        name="local", url="http://127.0.0.1:8080", connect_timeout=2.0, read_timeout=30.0
    )
    client = UpstreamClient(httpx.MockTransport(handler))
    async with client.opened():
        post = Outgoing("/v1/messages?beta=true", b'{"a":1}', {"x-app": "cli"})
        response = await send(client, config, post)
        assert response.status_code == 200
        assert await response.aread() == b'{"ok":true}'
        await response.aclose()
        models = await send(client, config, Outgoing("/v1/models", b"ignored", method="GET"))
        await models.aclose()
    post, get = seen
    assert str(post.url) == "http://127.0.0.1:8080/v1/messages?beta=true"
    assert post.content == b'{"a":1}'
    assert post.headers["x-app"] == "cli"
    assert post.extensions["timeout"] == {"connect": 2.0, "read": 30.0, "write": 30.0, "pool": 30.0}
    assert get.method == "GET"
    assert get.content == b""


async def test_open_turns_an_error_status_into_upstream_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json={"type": "error", "error": {"type": "rate_limit_error", "message": "wait"}}
        )

    client = UpstreamClient(httpx.MockTransport(handler))
    async with client.opened():
        with pytest.raises(UpstreamStatus) as caught:
            await send(client, LOCAL, Outgoing("/v1/messages", b"{}"))
    assert caught.value.upstream_status == 429
    assert caught.value.upstream_error_type == "rate_limit_error"
    assert caught.value.message == "upstream 'local': wait"


async def test_open_turns_transport_failures_into_gateway_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    client = UpstreamClient(httpx.MockTransport(handler))
    async with client.opened():
        with pytest.raises(UpstreamUnavailable) as caught:
            await send(client, LOCAL, Outgoing("/v1/messages", b"{}"))
    assert "http://127.0.0.1:8080" in caught.value.message
    assert caught.value.__cause__ is None  # raised "from None": one clean error


# -- the kind: the request as it is, the answer as it came ------------------------


def test_the_kind_sends_the_rewritten_body_on_the_clients_path() -> None:
    rw = rewrite(b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}')
    incoming = Incoming(CLIENT, "/v1/messages?beta=true", {"x-added": "1"}, ("x-app",))
    out = KIND.call(KEYED, incoming, rw, "s-1").outgoing
    assert (out.method, out.path, out.body) == ("POST", "/v1/messages?beta=true", rw.body)
    assert out.headers["x-added"] == "1" and "x-app" not in out.headers
    assert out.headers["authorization"] == "Bearer sk-upstream"


def test_the_kind_relays_an_answer_as_it_came_and_refuses_one_that_is_not_json() -> None:
    call = KIND.call(LOCAL, Incoming({}, "/v1/messages"), rewrite(BODY), None)
    content = b'{"content":[],"usage":{"input_tokens":5,"cache_read_input_tokens":2}}'
    answer = call.answer(200, httpx.Headers({"server": "llama", "x-id": "7"}), content)
    assert (answer.status, answer.content, dict(answer.headers)) == (200, content, {"x-id": "7"})
    assert answer.usage is not None and answer.usage.cached_tokens == 2
    with pytest.raises(UpstreamUnavailable, match="not a JSON object"):
        call.answer(200, httpx.Headers(), b"<html>")
    streamed = call.stream(200, httpx.Headers({"content-type": "text/event-stream"}))
    assert isinstance(streamed.events if streamed else None, Passthrough)
    assert call.stream(200, httpx.Headers({"content-type": "application/json"})) is None
