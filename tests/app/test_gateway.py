"""The gateway app end to end in memory: client -> ASGI app -> mocked upstream.

The client side goes through ``httpx.ASGITransport`` (or raw ASGI calls where a
test must watch the response arrive piece by piece), the upstream side is an
``httpx.MockTransport`` that records every request it receives. The app runs
with its own lifespan, so the upstream client is the one the app opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from support.app import audit_of, running
from support.upstream import MESSAGE, ChunkStream, FakeUpstream, sse_response

from prefixgate.app.gateway import create_app
from prefixgate.config import Settings, build_settings
from prefixgate.core.pipeline import RewriteOptions, rewrite
from prefixgate.core.sse import SSEDecoder, encode_event
from prefixgate.store.audit import AuditRecord, JsonlAudit

CORPUS_DIR = Path(__file__).resolve().parents[2] / "corpus"
CORPUS_FILES = {
    "sdk": "claude-code-2.1.197.jsonl",
    "cch": "claude-code-2.1.197-cch-per-request.jsonl",
    "interactive": "claude-code-2.1.197-interactive.jsonl",
}
UPSTREAM_URL = "http://upstream.test:8080"
UPSTREAM_KEY = "sk-upstream-key"
CLIENT_KEY = "sk-client-key"
TIMEOUT = 10.0


# -- corpus -------------------------------------------------------------------


def load_corpus(name: str) -> list[dict[str, Any]]:
    path = CORPUS_DIR / CORPUS_FILES[name]
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def corpus_cases() -> Iterator[Any]:
    for name in CORPUS_FILES:
        for i, record in enumerate(load_corpus(name)):
            yield pytest.param(record, id=f"{name}-{i}")


def client_headers(record: Mapping[str, Any]) -> dict[str, str]:
    """The recorded headers, less the ones httpx computes for itself."""
    return {
        k: v for k, v in record["headers"].items() if k.lower() not in ("host", "content-length")
    }


def encoded_first_system(raw: bytes) -> tuple[bytes, bytes]:
    """The first system element as encoded in ``raw``, and the separator after it."""
    first = json.loads(raw)["system"][0]
    for item, colon in ((",", ":"), (", ", ": ")):
        for ascii_only in (False, True):
            enc = json.dumps(first, separators=(item, colon), ensure_ascii=ascii_only).encode()
            if raw.count(enc) == 1:
                return enc, item.encode()
    raise AssertionError("the first system element is not encoded exactly once")


# -- the fake upstream: support.upstream.FakeUpstream --------------------------

MESSAGE_BYTES = httpx.Response(200, json=MESSAGE).content

# A llama.cpp-like stream: usage on message_start (output 0), a keep-alive
# comment, a ping, text deltas (one non-ASCII), message_delta with the output count.
SSE_EVENTS: list[tuple[str | None, Any]] = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                **MESSAGE,
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 12, "cache_read_input_tokens": 1000, "output_tokens": 0},
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": ", wörld ✓"},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 5},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]
SSE_FRAMES: list[bytes] = [encode_event(name, data) for name, data in SSE_EVENTS]
SSE_FRAMES.insert(2, b": keep-alive\r\n\r\n")
SSE_BYTES = b"".join(SSE_FRAMES)


# -- running the app ----------------------------------------------------------


def make_settings(policy: str = "strip", **table: Any) -> Settings:
    # Token counts are estimated here: these tests watch what is forwarded, and
    # the tokenizer's own requests are tested in test_observer.py.
    upstream = {
        "url": UPSTREAM_URL,
        "api_key": UPSTREAM_KEY,
        "policy": policy,
        "tokenizer": "estimate",
        **table,
    }
    return build_settings({"upstreams": {"local": upstream}}, {}, {})


async def post_record(
    client: httpx.AsyncClient, record: Mapping[str, Any], **headers: str
) -> httpx.Response:
    return await client.post(
        record["path"],
        content=record["body"].encode("utf-8"),
        headers={**client_headers(record), **headers},
    )


# -- forwarding ---------------------------------------------------------------


@pytest.mark.parametrize("record", list(corpus_cases()))
async def test_strip_forwards_the_original_bytes_minus_the_first_system_element(
    record: dict[str, Any],
) -> None:
    upstream = FakeUpstream()
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await post_record(client, record)
    assert response.status_code == 200
    raw = record["body"].encode("utf-8")
    first, sep = encoded_first_system(raw)
    assert upstream.last.content == raw.replace(first + sep, b"", 1)
    assert b"x-anthropic-billing-header" not in upstream.last.content


async def test_query_string_and_path_are_kept() -> None:
    upstream = FakeUpstream()
    record = load_corpus("sdk")[0]
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        await post_record(client, record)
    assert record["path"] == "/v1/messages?beta=true"
    assert str(upstream.last.url) == f"{UPSTREAM_URL}/v1/messages?beta=true"
    assert upstream.last.method == "POST"


async def test_headers_credentials_replaced_hop_by_hop_dropped_anthropic_kept() -> None:
    upstream = FakeUpstream()
    record = load_corpus("sdk")[0]
    app = create_app(make_settings(), transport=upstream.transport)
    extra = {
        "Authorization": f"Bearer {CLIENT_KEY}",
        "X-Api-Key": CLIENT_KEY,
        "Cookie": "session=secret",
        "Connection": "keep-alive, x-hop-secret",
        "X-Hop-Secret": "hop",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Upgrade": "h2c",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "Trailer": "x-checksum",
    }
    async with running(app) as client:
        response = await post_record(client, record, **extra)
    assert response.status_code == 200
    sent = upstream.last.headers
    # The client's credentials never travel; the upstream's own key does.
    assert CLIENT_KEY not in " ".join(sent.values())
    assert sent["x-api-key"] == UPSTREAM_KEY
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"
    for name in ("cookie", "x-hop-secret", "keep-alive", "te", "upgrade", "proxy-authorization"):
        assert name not in sent, name
    assert "trailer" not in sent
    assert sent.get("connection", "keep-alive") == "keep-alive"  # httpx's own, not the client's
    assert sent["host"] == "upstream.test:8080"
    assert sent["content-length"] == str(len(upstream.last.content))
    recorded = {k.lower(): v for k, v in record["headers"].items()}
    for name in ("anthropic-beta", "anthropic-version", "x-claude-code-session-id", "user-agent"):
        assert sent[name] == recorded[name], name


async def test_no_upstream_key_means_no_credentials_at_all() -> None:
    upstream = FakeUpstream()
    settings = build_settings({}, {}, {"upstream": UPSTREAM_URL})
    app = create_app(settings, transport=upstream.transport)
    record = load_corpus("sdk")[0]
    async with running(app) as client:
        await post_record(client, record, Authorization=f"Bearer {CLIENT_KEY}")
    assert "x-api-key" not in upstream.last.headers
    assert "authorization" not in upstream.last.headers


async def test_normalize_puts_one_fixed_line_in_place_of_the_block() -> None:
    upstream = FakeUpstream()
    app = create_app(make_settings("normalize"), transport=upstream.transport)
    sent = []
    async with running(app) as client:
        for record in load_corpus("cch")[:2]:
            await post_record(client, record)
            sent.append(upstream.last.content)
    # Two requests of one conversation with different cch values: same first block.
    firsts = [json.loads(body)["system"][0] for body in sent]
    assert (
        firsts[0]
        == firsts[1]
        == {
            "type": "text",
            "text": "x-anthropic-billing-header: cc_entrypoint=sdk-cli;",
        }
    )
    raw = load_corpus("cch")[0]["body"].encode("utf-8")
    first, _ = encoded_first_system(raw)
    replaced = json.dumps(firsts[0], separators=(", ", ": ")).encode()
    assert sent[0] == raw.replace(first, replaced, 1)


async def test_preserve_as_metadata_sends_the_fields_as_a_header() -> None:
    upstream = FakeUpstream()
    settings = make_settings("preserve_as_metadata", metadata_header="x-prefixgate-attribution")
    app = create_app(settings, transport=upstream.transport)
    record = load_corpus("cch")[0]
    async with running(app) as client:
        await post_record(client, record)
    raw = record["body"].encode("utf-8")
    first, sep = encoded_first_system(raw)
    assert upstream.last.content == raw.replace(first + sep, b"", 1)
    assert upstream.last.headers["x-prefixgate-attribution"] == (
        "cc_version=2.1.197.56c; cc_entrypoint=sdk-cli; cch=45a33;"
    )


async def test_preserve_as_metadata_without_a_header_name_sends_no_header() -> None:
    upstream = FakeUpstream()
    app = create_app(make_settings("preserve_as_metadata"), transport=upstream.transport)
    async with running(app) as client:
        await post_record(client, load_corpus("cch")[0])
    assert not [k for k in upstream.last.headers if k.startswith("x-prefixgate")]
    assert b"x-anthropic-billing-header" not in upstream.last.content


@pytest.mark.parametrize("name", list(CORPUS_FILES))
async def test_passthrough_forwards_the_exact_original_bytes(name: str) -> None:
    upstream = FakeUpstream()
    app = create_app(make_settings("passthrough"), transport=upstream.transport)
    record = load_corpus(name)[0]
    async with running(app) as client:
        await post_record(client, record)
    assert upstream.last.content == record["body"].encode("utf-8")


async def test_a_route_policy_overrides_the_upstream_policy() -> None:
    upstream = FakeUpstream()
    settings = build_settings(
        {
            "upstreams": {"local": {"url": UPSTREAM_URL}},
            "routes": [{"model": "claude-opus-*", "upstream": "local", "policy": "passthrough"}],
        },
        {},
        {},
    )
    app = create_app(settings, transport=upstream.transport)
    record = load_corpus("sdk")[0]
    async with running(app) as client:
        await post_record(client, record)
        body = json.loads(record["body"])
        body["model"] = "claude-haiku-4-5"
        await client.post("/v1/messages", json=body)
    sent = [r for r in upstream.requests if r.url.path == "/v1/messages"]
    assert sent[0].content == record["body"].encode("utf-8")
    assert b"x-anthropic-billing-header" not in sent[1].content
    assert [r.policy for r in audit_of(app)] == ["passthrough", "strip"]


async def test_a_body_without_attribution_is_forwarded_unchanged() -> None:
    upstream = FakeUpstream()
    app = create_app(make_settings(), transport=upstream.transport)
    raw = b'{"model": "m", "max_tokens": 8,\n "messages": [{"role": "user", "content": "hi"}]}'
    async with running(app) as client:
        response = await client.post("/v1/messages", content=raw)
    assert response.status_code == 200
    assert upstream.last.content == raw
    (rec,) = audit_of(app)
    assert rec.attribution_found is False
    assert rec.attribution is None


def first_load(name: str) -> dict[str, Any]:
    """The first 2.1.332 request whose ToolSearch result references ``name``."""
    path = CORPUS_DIR / "claude-code-2.1.332.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines():
        record: dict[str, Any] = json.loads(line)
        if f'"tool_reference","tool_name":"{name}"' in record["body"]:
            return record
    raise AssertionError(f"{path.name} records no load of {name}")


@pytest.mark.parametrize(
    ("tool_loads", "moved"), [(None, ["WebFetch"]), ("inline_only", ["WebFetch"])]
)
async def test_a_tool_load_is_forwarded_where_it_was_loaded_and_audited(
    tool_loads: str | None, moved: list[str]
) -> None:
    upstream = FakeUpstream()
    table = {"tool_loads": tool_loads} if tool_loads else {}
    app = create_app(make_settings(**table), transport=upstream.transport)
    record = first_load("WebFetch")
    async with running(app) as client:
        response = await post_record(client, record)
    assert response.status_code == 200
    sent = json.loads(upstream.last.content)
    names = [t["name"] for t in sent["tools"]]
    assert ("WebFetch" in names) == (tool_loads is None)
    if tool_loads is None:
        assert names[-1] == "WebFetch"
    assert '"tool_reference"' not in json.dumps(sent["messages"])
    assert '\\"name\\": \\"WebFetch\\"' in json.dumps(sent["messages"])
    (rec,) = audit_of(app)
    assert rec.tool_loads == {
        "mode": tool_loads or "inline",
        "loaded": ["WebFetch"],
        "moved": moved,
    }


async def test_a_tool_load_is_forwarded_as_sent_when_set() -> None:
    upstream = FakeUpstream()
    app = create_app(make_settings(tool_loads="as_sent"), transport=upstream.transport)
    record = first_load("WebFetch")
    async with running(app) as client:
        await post_record(client, record)
    sent = json.loads(upstream.last.content)
    assert sent["tools"] == json.loads(record["body"])["tools"]
    (rec,) = audit_of(app)
    assert rec.tool_loads is None


async def test_a_non_stream_answer_is_relayed_and_audited() -> None:
    upstream = FakeUpstream(
        lambda request: httpx.Response(
            200,
            json=MESSAGE,
            headers={"request-id": "req_01", "x-upstream": "yes", "server": "llama"},
        )
    )
    app = create_app(make_settings(), transport=upstream.transport)
    record = load_corpus("sdk")[0]
    body = json.loads(record["body"])
    body["stream"] = False
    async with running(app) as client:
        response = await client.post("/v1/messages", json=body, headers=client_headers(record))
    assert response.status_code == 200
    assert response.json() == MESSAGE
    assert response.headers["request-id"] == "req_01"
    assert response.headers["x-upstream"] == "yes"
    assert "server" not in response.headers
    (rec,) = audit_of(app)
    assert (rec.input_tokens, rec.cache_read_input_tokens, rec.output_tokens) == (12, 1000, 3)
    assert rec.stream is False
    assert rec.status == 200
    assert rec.error is None


# -- streaming ----------------------------------------------------------------


async def test_stream_bytes_are_relayed_unchanged_and_audited() -> None:
    upstream = FakeUpstream(lambda request: sse_response(SSE_BYTES))
    app = create_app(make_settings(), transport=upstream.transport)
    record = load_corpus("sdk")[0]
    async with running(app) as client:
        response = await post_record(client, record)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == SSE_BYTES
    (rec,) = audit_of(app)
    expected = rewrite(record["body"].encode("utf-8"), RewriteOptions(provider="anthropic:local"))
    assert rec.stream is True
    assert rec.status == 200
    assert rec.route == "/v1/messages"
    assert rec.model == "claude-opus-4-8"
    assert rec.upstream == "local"
    assert rec.policy == "strip"
    assert rec.session == record["headers"]["X-Claude-Code-Session-Id"]
    assert rec.input_tokens == 12
    assert rec.cache_read_input_tokens == 1000
    assert rec.output_tokens == 5
    assert rec.cache_creation_input_tokens is None
    assert rec.key == expected.key.hex
    assert rec.attribution_found is True
    assert rec.attribution == {"cc_version": "2.1.197.56c", "cc_entrypoint": "sdk-cli"}
    assert set(rec.segments) >= {"system", "tools", "mcp_tools", "project_context"}
    assert rec.error is None
    assert rec.ttfb_ms is not None and rec.total_ms is not None
    assert 0 <= rec.ttfb_ms <= rec.total_ms


async def test_stream_cut_at_awkward_offsets_is_relayed_byte_for_byte() -> None:
    async def dribble() -> AsyncIterator[bytes]:
        for i in range(0, len(SSE_BYTES), 7):
            yield SSE_BYTES[i : i + 7]

    upstream = FakeUpstream(lambda request: sse_response(ChunkStream(dribble())))
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await post_record(client, load_corpus("sdk")[0])
    assert response.content == SSE_BYTES
    (rec,) = audit_of(app)
    assert (rec.input_tokens, rec.cache_read_input_tokens, rec.output_tokens) == (12, 1000, 5)


async def test_a_streams_time_to_first_byte_is_its_first_event_not_its_headers() -> None:
    """llama-server answers a stream's headers at once and its first event only once
    the prompt is read: that is the time to first byte, and the report's estimate of
    the time the cache saved is built on it."""

    async def after_the_prompt() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.3)  # the runtime reads the prompt
        yield SSE_BYTES

    upstream = FakeUpstream(lambda request: sse_response(ChunkStream(after_the_prompt())))
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await post_record(client, load_corpus("sdk")[0])
    assert response.content == SSE_BYTES
    (rec,) = audit_of(app)
    assert rec.ttfb_ms is not None and rec.total_ms is not None
    assert 300 <= rec.ttfb_ms <= rec.total_ms


async def test_a_stream_without_a_final_blank_line_is_flushed() -> None:
    body = SSE_BYTES + b"event: ping\ndata: {}"
    upstream = FakeUpstream(lambda request: sse_response(body))
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await post_record(client, load_corpus("sdk")[0])
    assert response.content == body


class RawASGI:
    """Calls the app with raw ASGI messages, so a test sees each body chunk as it is sent."""

    def __init__(self, app: Starlette, spec_version: str = "2.3") -> None:
        self.app = app
        self.spec_version = spec_version
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.disconnect = asyncio.Event()
        self.send_fails = False  # an ASGI 2.4 server raises OSError once the client is gone

    def start(self, path: str, body: bytes, headers: Mapping[str, str]) -> asyncio.Task[None]:
        path_only, _, query = path.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": self.spec_version},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path_only,
            "raw_path": path_only.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            + [(b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 40000),
            "server": ("gateway.test", 80),
        }
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if self.send_fails:
                raise OSError("client disconnected")
            await self.sent.put(message)

        return asyncio.create_task(self.app(scope, receive, send))

    async def next_body(self) -> dict[str, Any]:
        while True:
            message = await asyncio.wait_for(self.sent.get(), TIMEOUT)
            if message["type"] == "http.response.body":
                return message


async def test_events_are_relayed_as_they_arrive() -> None:
    release, finished = asyncio.Event(), asyncio.Event()

    async def slow_events() -> AsyncIterator[bytes]:
        yield SSE_FRAMES[0]
        await release.wait()  # the rest waits until the client has seen the first event
        for frame in SSE_FRAMES[1:]:
            await asyncio.sleep(0.001)
            yield frame
        finished.set()

    upstream = FakeUpstream(lambda request: sse_response(ChunkStream(slow_events())))
    app = create_app(make_settings(), transport=upstream.transport)
    record = load_corpus("sdk")[0]
    async with app.router.lifespan_context(app):
        asgi = RawASGI(app)
        task = asgi.start(record["path"], record["body"].encode(), client_headers(record))
        start = await asyncio.wait_for(asgi.sent.get(), TIMEOUT)
        assert start["type"] == "http.response.start"
        assert start["status"] == 200
        first = await asgi.next_body()
        assert first["body"] == SSE_FRAMES[0]
        assert not finished.is_set()
        release.set()
        received = [first["body"]]
        while True:
            message = await asgi.next_body()
            received.append(message["body"])
            if not message.get("more_body", False):
                break
        await asyncio.wait_for(task, TIMEOUT)
    assert finished.is_set()
    assert b"".join(received) == SSE_BYTES
    (rec,) = audit_of(app)
    assert rec.output_tokens == 5


async def test_client_disconnect_closes_the_upstream_and_is_audited() -> None:
    never = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield SSE_FRAMES[0]
        await never.wait()
        yield b""  # pragma: no cover

    stream = ChunkStream(endless())
    upstream = FakeUpstream(lambda request: sse_response(stream))
    app = create_app(make_settings(), transport=upstream.transport)
    record = load_corpus("sdk")[0]
    async with app.router.lifespan_context(app):
        asgi = RawASGI(app)
        task = asgi.start(record["path"], record["body"].encode(), client_headers(record))
        first = await asgi.next_body()
        assert first["body"] == SSE_FRAMES[0]
        asgi.disconnect.set()
        await asyncio.wait_for(task, TIMEOUT)
        await asyncio.wait_for(stream.closed.wait(), TIMEOUT)
    (rec,) = audit_of(app)
    assert rec.error is not None and "disconnect" in rec.error
    assert rec.input_tokens == 12
    assert rec.cache_read_input_tokens == 1000


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_client_gone_before_the_stream_starts_still_closes_the_upstream(
    spec_version: str,
) -> None:
    async def events() -> AsyncIterator[bytes]:
        for frame in SSE_FRAMES:
            yield frame

    stream = ChunkStream(events())
    upstream = FakeUpstream(lambda request: sse_response(stream))
    app = create_app(make_settings(), transport=upstream.transport)
    record = load_corpus("sdk")[0]
    async with app.router.lifespan_context(app):
        asgi = RawASGI(app, spec_version)
        # The client is gone by the time the answer starts.
        asgi.disconnect.set()
        asgi.send_fails = spec_version == "2.4"
        task = asgi.start(record["path"], record["body"].encode(), client_headers(record))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, TIMEOUT)
        await asyncio.wait_for(stream.closed.wait(), TIMEOUT)
    (rec,) = audit_of(app)
    assert rec.status == 200
    if asgi.send_fails:  # nothing reached the client
        assert rec.error is not None and "disconnect" in rec.error


def error_events(content: bytes) -> list[dict[str, Any]]:
    decoder = SSEDecoder()
    events = decoder.decode(content) + decoder.flush()
    return [e.json() for e in events if e.event == "error"]


async def test_an_upstream_stream_that_breaks_ends_with_an_error_event() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield SSE_FRAMES[0]
        yield SSE_FRAMES[1][:20]  # half an event, then the connection drops
        raise httpx.ReadError("connection reset by peer")

    upstream = FakeUpstream(lambda request: sse_response(ChunkStream(broken())))
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await post_record(client, load_corpus("sdk")[0])
        assert response.status_code == 200
        assert response.content.startswith(SSE_FRAMES[0])
        assert response.content.endswith(b"\n\n")
        (error,) = error_events(response.content)
        assert error["type"] == "error"
        assert error["error"]["type"] == "api_error"
        assert "upstream.test" in error["error"]["message"]
        assert "ReadError" in error["error"]["message"]
        (rec,) = audit_of(app)
        assert rec.error == error["error"]["message"]
        assert rec.input_tokens == 12
        # the app keeps serving
        assert (await client.get("/healthz")).status_code == 200


async def test_an_upstream_stream_that_times_out_ends_with_a_timeout_error_event() -> None:
    async def stalled() -> AsyncIterator[bytes]:
        yield SSE_FRAMES[0]
        raise httpx.ReadTimeout("timed out")

    upstream = FakeUpstream(lambda request: sse_response(ChunkStream(stalled())))
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await post_record(client, load_corpus("sdk")[0])
    (error,) = error_events(response.content)
    assert error["error"]["type"] == "timeout_error"
    (rec,) = audit_of(app)
    assert rec.error is not None and "did not answer in time" in rec.error


async def test_an_unexpected_failure_mid_stream_still_ends_with_an_error_event() -> None:
    async def weird() -> AsyncIterator[bytes]:
        yield SSE_FRAMES[0]
        raise RuntimeError("something nobody planned for")

    upstream = FakeUpstream(lambda request: sse_response(ChunkStream(weird())))
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await post_record(client, load_corpus("sdk")[0])
        (error,) = error_events(response.content)
        assert error["error"]["type"] == "api_error"
        (rec,) = audit_of(app)
        assert rec.error is not None
        assert (await client.get("/healthz")).status_code == 200


async def test_an_error_event_from_the_upstream_is_relayed_and_audited() -> None:
    overloaded = encode_event(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    body = SSE_FRAMES[0] + overloaded
    upstream = FakeUpstream(lambda request: sse_response(body))
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await post_record(client, load_corpus("sdk")[0])
    assert response.content == body
    (rec,) = audit_of(app)
    assert rec.error == "Overloaded"


# -- other routes ---------------------------------------------------------------


async def test_count_tokens_is_forwarded_without_max_tokens() -> None:
    upstream = FakeUpstream(lambda request: httpx.Response(200, json={"input_tokens": 1234}))
    app = create_app(make_settings(), transport=upstream.transport)
    record = load_corpus("sdk")[0]
    body = json.loads(record["body"])
    for key in ("max_tokens", "stream", "temperature", "metadata"):
        body.pop(key, None)
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    async with running(app) as client:
        response = await client.post(
            "/v1/messages/count_tokens?beta=true", content=raw, headers=client_headers(record)
        )
    assert response.status_code == 200
    assert response.json() == {"input_tokens": 1234}
    assert str(upstream.last.url) == f"{UPSTREAM_URL}/v1/messages/count_tokens?beta=true"
    first, sep = encoded_first_system(raw)
    assert upstream.last.content == raw.replace(first + sep, b"", 1)
    (rec,) = audit_of(app)
    assert rec.route == "/v1/messages/count_tokens"
    assert rec.status == 200
    assert rec.key is not None


async def test_models_are_relayed_from_the_default_upstream() -> None:
    models = {"data": [{"id": "gemma-3-270m", "type": "model"}], "has_more": False}
    upstream = FakeUpstream(lambda request: httpx.Response(200, json=models))
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await client.get(
            "/v1/models?limit=5", headers={"x-api-key": CLIENT_KEY, "anthropic-version": "x"}
        )
    assert response.status_code == 200
    assert response.json() == models
    assert upstream.last.method == "GET"
    assert str(upstream.last.url) == f"{UPSTREAM_URL}/v1/models?limit=5"
    assert upstream.last.headers["x-api-key"] == UPSTREAM_KEY
    assert upstream.last.headers["anthropic-version"] == "x"
    assert upstream.last.content == b""


async def test_models_keep_the_upstream_error_status() -> None:
    upstream = FakeUpstream(
        lambda request: httpx.Response(
            404, json={"type": "error", "error": {"type": "not_found_error", "message": "nope"}}
        )
    )
    app = create_app(make_settings(), transport=upstream.transport)
    async with running(app) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert "nope" in response.json()["error"]["message"]


async def test_healthz() -> None:
    app = create_app(make_settings(), transport=FakeUpstream().transport)
    async with running(app) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    payload = response.json()
    assert payload["status"] == "ok"
    assert payload["upstreams"] == {"local": UPSTREAM_URL}
    assert "version" in payload


# -- audit failures and lifecycle ---------------------------------------------


class BrokenAudit:
    def __init__(self) -> None:
        self.calls = 0

    def record(self, rec: AuditRecord, on_commit: Callable[[], None] | None = None) -> None:
        self.calls += 1
        raise OSError("disk full")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("stream", [False, True])
async def test_an_audit_sink_that_raises_never_fails_the_request(stream: bool) -> None:
    upstream = FakeUpstream(
        lambda request: sse_response(SSE_BYTES) if stream else httpx.Response(200, json=MESSAGE)
    )
    sink = BrokenAudit()
    app = create_app(make_settings(), transport=upstream.transport, audit=sink)
    async with running(app) as client:
        response = await post_record(client, load_corpus("sdk")[0])
        assert response.status_code == 200
        assert response.content == (SSE_BYTES if stream else MESSAGE_BYTES)
        bad = await client.post("/v1/messages", content=b"{")
        assert bad.status_code == 400
    assert sink.calls == 2


async def test_the_jsonl_audit_log_has_one_line_per_request_and_no_prompt_text(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream(lambda request: sse_response(SSE_BYTES))
    path = tmp_path / "audit.jsonl"
    app = create_app(make_settings(), transport=upstream.transport, audit=JsonlAudit(path))
    record = load_corpus("sdk")[0]
    async with running(app) as client:
        await post_record(client, record)
        await client.post("/v1/messages", content=b"not json")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["cache_read_input_tokens"] == 1000
    assert first["attribution"] == {"cc_version": "2.1.197.56c", "cc_entrypoint": "sdk-cli"}
    assert second["status"] == 400
    text = path.read_text(encoding="utf-8")
    user_text = json.loads(record["body"])["messages"][0]["content"][-1]["text"]
    assert user_text[:40] not in text
    assert "You are a Claude agent" not in text
    assert "wörld" not in text  # nor the answer


async def test_the_app_opens_its_upstream_client_only_when_started() -> None:
    upstream = FakeUpstream()
    app = create_app(make_settings(), transport=upstream.transport)
    # Without the lifespan nothing is open and no request can reach any network.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        response = await post_record(client, load_corpus("sdk")[0])
    assert response.status_code == 500
    assert response.json()["type"] == "error"
    assert not upstream.requests
    async with running(app) as client:
        assert (await post_record(client, load_corpus("sdk")[0])).status_code == 200


def test_the_app_works_under_starlettes_test_client() -> None:
    from starlette.testclient import TestClient

    upstream = FakeUpstream(lambda request: sse_response(SSE_BYTES))
    app = create_app(make_settings(), transport=upstream.transport)
    record = load_corpus("sdk")[0]
    # TestClient's default host ("testserver") is no loopback name: the door refuses it
    with TestClient(app, base_url="http://localhost") as client:
        response = client.post(
            record["path"], content=record["body"].encode(), headers=client_headers(record)
        )
    assert response.status_code == 200
    assert response.content == SSE_BYTES
