"""The door: header size and requests under way per tenant, through the app."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from support.app import running
from support.observer import Told

from prefixgate.app.gateway import create_app
from prefixgate.app.guard import Guard
from prefixgate.app.metrics import Metrics
from prefixgate.config import build_settings
from prefixgate.core.auth import hash_key
from prefixgate.store.audit import MemoryAudit

MESSAGE: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 1},
}
BODY = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


class Gate:
    """An upstream that holds every answer until it is opened."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.waiting = 0
        self.transport = httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/messages":
            return httpx.Response(404)
        self.waiting += 1
        await self.open.wait()
        return httpx.Response(200, json=MESSAGE)


def make_app(gate: Gate, **server: Any) -> Any:
    settings = build_settings(
        {
            "server": server,
            "upstreams": {"local": {"url": "http://local.test:8080"}},
            "tenants": {
                "alpha": {"keys": [hash_key("ka")], "max_concurrent": 2},
                "beta": {"keys": [hash_key("kb")]},
            },
        },
        {},
        {},
    )
    return create_app(settings, transport=gate.transport, audit=MemoryAudit())


async def until(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_a_tenant_over_its_concurrency_gets_429_with_retry_after() -> None:
    gate = Gate()
    app = make_app(gate, max_concurrent=1)
    async with running(app) as client:
        held = [
            asyncio.create_task(client.post("/v1/messages", json=BODY, headers={"x-api-key": "ka"}))
            for _ in range(2)
        ]
        await until(lambda: gate.waiting == 2)
        refused = await client.post("/v1/messages", json=BODY, headers={"x-api-key": "ka"})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        error = refused.json()
        assert error["type"] == "error"
        assert error["error"]["type"] == "rate_limit_error"
        assert "max_concurrent=2" in error["error"]["message"]
        # another tenant is not held up by alpha's requests (beta: the server's limit, 1)
        other = asyncio.create_task(
            client.post("/v1/messages", json=BODY, headers={"x-api-key": "kb"})
        )
        await until(lambda: gate.waiting == 3)
        gate.open.set()
        assert [r.status_code for r in await asyncio.gather(*held, other)] == [200, 200, 200]
        again = await client.post("/v1/messages", json=BODY, headers={"x-api-key": "ka"})
        assert again.status_code == 200
        metrics = (await client.get("/metrics", headers={"x-api-key": "ka"})).text
    assert 'prefixgate_refused_total{status="429",tenant="alpha"} 1.0' in metrics
    statuses = sorted(r.status for r in app.state.audit.records if r.tenant == "alpha")
    assert statuses == [200, 200, 200, 429]  # the refusal is audited too
    assert refused.headers["x-prefixgate-request-id"]
    assert app.user_middleware  # the guard is installed once, in front of every route


async def test_headers_beyond_the_limit_get_431_naming_it() -> None:
    gate = Gate()
    gate.open.set()
    app = make_app(gate, max_header_bytes=2048)
    async with running(app) as client:
        big = {"x-api-key": "ka", "x-padding": "p" * 3000}
        refused = await client.post("/v1/messages", json=BODY, headers=big)
        assert refused.status_code == 431
        assert refused.json()["error"]["type"] == "request_too_large"
        assert "max_header_bytes=2048" in refused.json()["error"]["message"]
        fine = await client.post("/v1/messages", json=BODY, headers={"x-api-key": "ka"})
        assert fine.status_code == 200
    assert gate.waiting == 1


async def test_a_body_beyond_the_limit_gets_413_naming_it() -> None:
    gate = Gate()
    gate.open.set()
    app = make_app(gate, max_body_bytes=4096)
    async with running(app) as client:
        huge = {**BODY, "messages": [{"role": "user", "content": "x" * 5000}]}
        refused = await client.post("/v1/messages", json=huge, headers={"x-api-key": "ka"})
    assert refused.status_code == 413
    assert refused.json()["error"]["type"] == "request_too_large"
    assert "max_body_bytes=4096" in refused.json()["error"]["message"]
    assert gate.waiting == 0


async def test_the_configured_body_limits_are_applied_and_named() -> None:
    gate = Gate()
    gate.open.set()
    app = make_app(gate, max_messages=3, max_json_depth=8, max_blocks=5)
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    cases = {
        "max_messages=3": {**BODY, "messages": turns * 2},
        "max_json_depth=8": {**BODY, "metadata": {"a": [[[[[[[{"x": 1}]]]]]]]}},
        "max_blocks=5": {
            **BODY,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * 6}],
        },
    }
    async with running(app) as client:
        for limit, body in cases.items():
            refused = await client.post("/v1/messages", json=body, headers={"x-api-key": "ka"})
            assert refused.status_code == 400, limit
            assert refused.json()["error"]["type"] == "invalid_request_error"
            assert limit in refused.json()["error"]["message"]
        fine = await client.post("/v1/messages", json=BODY, headers={"x-api-key": "ka"})
    assert fine.status_code == 200
    assert gate.waiting == 1
    records = list(app.state.audit.records)
    assert [r.status for r in records] == [400, 400, 400, 200]
    assert all(r.tenant == "alpha" for r in records)


async def test_beyond_max_active_a_request_waits_its_turn_instead_of_failing() -> None:
    gate = Gate()
    app = make_app(gate, max_active=1)
    async with running(app) as client:
        first = asyncio.create_task(
            client.post("/v1/messages", json=BODY, headers={"x-api-key": "ka"})
        )
        await until(lambda: gate.waiting == 1)
        second = asyncio.create_task(
            client.post("/v1/messages", json=BODY, headers={"x-api-key": "kb"})
        )
        await asyncio.sleep(0.2)
        assert gate.waiting == 1 and not second.done()  # held at the door, body unread
        gate.open.set()
        assert [r.status_code for r in await asyncio.gather(first, second)] == [200, 200]
    assert gate.waiting == 2


async def test_hot_posts_are_served_by_the_guard_and_the_rest_goes_on_to_the_app() -> None:
    """The request path skips the router (``hot``); other methods and paths reach it."""
    routed: list[tuple[str, str]] = []
    served: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        routed.append((scope["method"], scope["path"]))
        await PlainTextResponse("routed")(scope, receive, send)

    async def endpoint(request: Request) -> Response:
        served.append(await request.body())
        plain = Headers(scope=request.scope)  # decoded once on the hot lane, read alike
        assert request.headers.items() == plain.items() and request.headers.keys() == plain.keys()
        assert request.headers.getlist("x-two") == ["a", "b"] == plain.getlist("x-two")
        return PlainTextResponse("hot")

    settings = build_settings({}, {}, {"upstream": "http://local.test:8080"})
    told = Told()
    guard = Guard(app, settings, Metrics(), told, hot={"/v1/messages": endpoint})
    client = httpx.AsyncClient(transport=httpx.ASGITransport(guard), base_url="http://127.0.0.1")
    async with client:
        two = [("x-two", "a"), ("x-two", "b")]
        hot = await client.post("/v1/messages", content=b'{"a": 1}', headers=two)
        got = await client.get("/v1/messages")
        other = await client.post("/v1/messages/count_tokens", content=b"{}")
    assert (hot.text, served) == ("hot", [b'{"a": 1}'])
    assert (got.text, other.text) == ("routed", "routed")
    assert routed == [("GET", "/v1/messages"), ("POST", "/v1/messages/count_tokens")]
    assert told.records == []  # nothing refused
