"""Replicas, failover and shared pins, through the app against mocked replicas
(one ``httpx.MockTransport`` that answers per host)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from support.app import running

from prefixgate.app.gateway import create_app
from prefixgate.config import Settings, build_settings
from prefixgate.core.sse import SSEDecoder, encode_event
from prefixgate.store.audit import MemoryAudit
from prefixgate.store.state import RedisState

REPLICAS = [
    "http://r0.test:8080",
    "http://r1.test:8080",
    "http://r2.test:8080",
    "http://r3.test:8080",
]
MESSAGE: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 5},
}


class Replicas:
    """Mocked replicas: each host answers unless it is ``down`` (connection refused)."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.respond: Callable[[httpx.Request], httpx.Response] = lambda r: httpx.Response(
            200, json=MESSAGE
        )
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if base in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        if request.url.path == "/tokenize":
            content = json.loads(request.content)["content"]
            return httpx.Response(200, json={"tokens": list(range(len(content.split())))})
        self.seen.append((base, json.loads(request.content) if request.content else {}))
        return self.respond(request)

    def hosts(self) -> list[str]:
        return [host for host, _ in self.seen]


def settings(routing: str = "prefix_affinity", **table: Any) -> Settings:
    upstream = {"urls": REPLICAS, "routing": routing, "tokenizer": "estimate", **table}
    return build_settings({"upstreams": {"local": upstream}}, {}, {"audit_path": "memory"})


def body(session: str, text: str = "hello", *, tools: bool = True, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 16,
        "system": [{"type": "text", "text": "You are a coding agent."}],
        "messages": [{"role": "user", "content": text}],
        "metadata": {"user_id": json.dumps({"session_id": session})},
        **extra,
    }
    if tools:
        out["tools"] = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
    return out


async def send(client: httpx.AsyncClient, payload: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/messages", json=payload)


async def test_a_session_stays_on_one_replica_and_sessions_spread() -> None:
    replicas = Replicas()
    audit = MemoryAudit()
    app = create_app(settings(), transport=replicas.transport, audit=audit)
    async with running(app) as client:
        for turn in range(3):
            for s in range(8):
                assert (await send(client, body(f"s{s}", f"turn {turn}"))).status_code == 200
    by_session: dict[str, set[str]] = {}
    for rec in audit.query():
        by_session.setdefault(str(rec.session), set()).add(str(rec.replica))
    assert all(len(hosts) == 1 for hosts in by_session.values())
    per_replica = [sum(1 for h in by_session.values() if r in h) for r in REPLICAS]
    assert max(per_replica) <= 3  # ceil(1.25 * 8 / 4): one shared prefix, bounded load
    assert sum(per_replica) == 8


async def test_round_robin_ignores_the_session() -> None:
    replicas = Replicas()
    app = create_app(settings("round_robin"), transport=replicas.transport)
    async with running(app) as client:
        for turn in range(4):
            await send(client, body("s1", f"turn {turn}"))
    assert replicas.hosts() == REPLICAS


async def test_a_refused_request_fails_over_without_an_error() -> None:
    replicas = Replicas()
    audit = MemoryAudit()
    app = create_app(settings(), transport=replicas.transport, audit=audit)
    async with running(app) as client:
        await send(client, body("s1", "one"))
        home = replicas.hosts()[0]
        replicas.down.add(home)
        second = await send(client, body("s1", "two"))
        third = await send(client, body("s1", "three"))
        metrics = (await client.get("/metrics")).text
        health = (await client.get("/healthz")).json()
    assert second.status_code == 200 and second.json() == MESSAGE
    assert third.status_code == 200
    moved = replicas.hosts()[1]
    assert moved != home and replicas.hosts()[2] == moved  # re-pinned to the new replica
    assert [r.replica for r in audit.query()] == [home, moved, moved]
    assert (
        f'prefixgate_failovers_total{{replica="{home}",tenant="default",upstream="local"}} 1.0'
        in metrics
    )
    assert health["replicas"]["local"][home] == "down"


async def test_all_replicas_down_is_one_clean_502() -> None:
    replicas = Replicas()
    replicas.down.update(REPLICAS)
    audit = MemoryAudit()
    app = create_app(settings(), transport=replicas.transport, audit=audit)
    async with running(app) as client:
        response = await send(client, body("s1"))
    assert response.status_code == 502
    assert response.json()["type"] == "error"
    assert "refused" in response.json()["error"]["message"]
    assert [r.status for r in audit.query()] == [502]


async def test_a_503_fails_over_but_a_400_does_not() -> None:
    replicas = Replicas()
    first: dict[str, str] = {}

    def respond(request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        first.setdefault("host", base)
        if json.loads(request.content)["messages"][0]["content"] == "bad":
            return httpx.Response(
                400,
                json={"type": "error", "error": {"type": "invalid_request_error", "message": "no"}},
            )
        if base == first["host"]:
            return httpx.Response(503, json={"error": {"message": "Loading model"}})
        return httpx.Response(200, json=MESSAGE)

    replicas.respond = respond
    app = create_app(settings(), transport=replicas.transport)
    async with running(app) as client:
        ok = await send(client, body("s1", "fine"))
        bad = await send(client, body("s2", "bad"))
    assert ok.status_code == 200
    assert bad.status_code == 400
    assert len([h for h, b in replicas.seen if b["messages"][0]["content"] == "bad"]) == 1


async def test_a_stream_that_never_started_fails_over() -> None:
    replicas = Replicas()
    events = [
        encode_event(
            "message_start", {"type": "message_start", "message": {**MESSAGE, "content": []}}
        ),
        encode_event("message_stop", {"type": "message_stop"}),
    ]
    replicas.respond = lambda r: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=b"".join(events)
    )
    app = create_app(settings(), transport=replicas.transport)
    async with running(app) as client:
        await send(client, body("s1", "one", stream=True))
        replicas.down.add(replicas.hosts()[0])
        response = await send(client, body("s1", "two", stream=True))
    names = [e.event for e in SSEDecoder().decode(response.content)]
    assert response.status_code == 200 and names == ["message_start", "message_stop"]


async def test_two_gateways_sharing_redis_route_a_session_alike(redis_url: str) -> None:
    replicas = Replicas()
    prefix = f"test-{uuid.uuid4().hex}:"
    apps = [
        create_app(
            settings(), transport=replicas.transport, state=RedisState(redis_url, prefix=prefix)
        )
        for _ in range(2)
    ]
    async with running(apps[0]) as a, running(apps[1]) as b:
        for s in range(12):
            for turn, client in enumerate([a, b, b, a]):
                assert (await send(client, body(f"s{s}", f"t{turn}"))).status_code == 200
    hosts = replicas.hosts()
    for s in range(12):
        assert len(set(hosts[4 * s : 4 * s + 4])) == 1, f"session s{s} moved"
    sessions_per_replica = [hosts[::4].count(r) for r in REPLICAS]
    assert max(sessions_per_replica) <= 4  # ceil(1.25 * 12 / 4), counted over both gateways


@pytest.mark.parametrize("shared", [True, False])
async def test_a_session_begun_on_one_gateway_continues_on_the_other(
    shared: bool, request: pytest.FixtureRequest
) -> None:
    """Gateway a has placed one session; a second, begun on a, goes on on b.

    With Redis, b reads a's pin. Without it, b knows no pins and picks the
    prefix's home replica, where a's bounded load had not put the session.
    """
    replicas = Replicas()
    prefix = f"test-{uuid.uuid4().hex}:"

    def state() -> RedisState | None:
        return RedisState(request.getfixturevalue("redis_url"), prefix=prefix) if shared else None

    apps = [create_app(settings(), transport=replicas.transport, state=state()) for _ in range(2)]
    async with running(apps[0]) as a, running(apps[1]) as b:
        await send(a, body("s0"))  # the prefix's home replica, now at its bound
        await send(a, body("s1", "first"))  # so this session goes to the next one
        await send(b, body("s1", "second"))
    first, second = replicas.hosts()[-2:]
    assert (first == second) is shared


# -- one server ------------------------------------------------------------------


def one_server(**table: Any) -> Settings:
    upstream = {"url": REPLICAS[0], "tokenizer": "estimate", **table}
    return build_settings({"upstreams": {"local": upstream}}, {}, {"audit_path": "memory"})


async def test_local_side_requests_count_tokens_without_the_upstream() -> None:
    replicas = Replicas()
    app = create_app(one_server(side_requests="local"), transport=replicas.transport)
    async with running(app) as client:
        response = await client.post("/v1/messages/count_tokens", json=body("s1"))
    assert response.status_code == 200
    assert response.json()["input_tokens"] > 0
    assert response.headers["x-prefixgate-token-count"] == "estimate"
    assert replicas.seen == []  # never reached the upstream's slots


@pytest.mark.parametrize("value", [[], ["not a url"], ["http://a", "http://a/"]])
def test_bad_replica_lists_are_refused(value: list[str]) -> None:
    from prefixgate.config import ConfigError

    with pytest.raises(ConfigError, match="urls"):
        build_settings({"upstreams": {"local": {"urls": value}}}, {}, {})


async def test_expected_cache_counts_only_what_the_chosen_replica_holds() -> None:
    """Round robin sends a session's turns to four replicas in turn: a turn can
    only expect from cache what that replica was sent before, not the session's
    previous turn, which went elsewhere."""
    replicas = Replicas()
    audit = MemoryAudit()
    app = create_app(settings("round_robin"), transport=replicas.transport, audit=audit)
    messages: list[dict[str, Any]] = []
    async with running(app) as client:
        for turn in range(5):
            messages += [{"role": "user", "content": f"question {turn} " * 20}]
            payload = {**body("s1"), "messages": list(messages)}
            assert (await send(client, payload)).status_code == 200
            messages += [{"role": "assistant", "content": f"answer {turn}"}]
    records = audit.query()
    assert [r.replica for r in records] == [*REPLICAS, REPLICAS[0]]
    expected = [r.expected_cached_tokens for r in records]
    assert expected[:4] == [0, 0, 0, 0]  # each replica's first sight of anything
    assert expected[4] is not None and expected[4] > 0  # replica 0 holds turn 0


async def test_the_model_list_comes_from_a_replica_that_is_up() -> None:
    replicas = Replicas()
    replicas.respond = lambda r: httpx.Response(200, json={"data": [{"id": "m"}]})
    replicas.down.add(REPLICAS[0])
    app = create_app(settings(), transport=replicas.transport)
    async with running(app) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 200 and response.json() == {"data": [{"id": "m"}]}
    assert replicas.hosts() == [REPLICAS[1]]


async def test_a_stale_kept_alive_connection_is_retried_once() -> None:
    """A server that closed an idle connection just as it was reused answers
    nothing: the request goes again, on a fresh connection, with no error."""
    calls = {"n": 0}

    def handle(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json=MESSAGE)

    app = create_app(one_server(), transport=httpx.MockTransport(handle))
    async with running(app) as client:
        response = await send(client, body("s1"))
    assert response.status_code == 200 and calls["n"] == 2
