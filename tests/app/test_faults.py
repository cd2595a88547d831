"""Faults of a real upstream, as the client and the audit log see them.

The upstream is a raw HTTP/1.1 server on a loopback port, scripted per test:
it refuses, stalls, answers garbage or error statuses, or starts a stream and
then cuts it, goes silent, sends junk or resets the connection. Whatever it
does, the client gets an Anthropic error (a JSON body before the answer began,
an ``error`` event once it streams, never a silent cut) and the request gets
exactly one audit record, with its error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from support.app import records_of, running
from support.servers import ServerThread, free_port, server_config
from support.upstream import Conn, scripted_upstream

from prefixgate.app.exchange import Exchange
from prefixgate.app.gateway import create_app
from prefixgate.app.metrics import Metrics
from prefixgate.app.observer import CacheObserver
from prefixgate.app.relay import Passthrough, Relay, Streams
from prefixgate.config import Settings, UpstreamConfig, build_settings
from prefixgate.core.pipeline import rewrite
from prefixgate.core.sse import SSEDecoder, encode_event
from prefixgate.server import STOPPING, DrainingServer, abort_streams
from prefixgate.store.audit import AuditRecord, MemoryAudit

KINDS = ["anthropic", "openai"]
REQUEST: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Say hello."}],
}
STREAM_REQUEST = {**REQUEST, "stream": True}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return encode_event(name, {"type": name, **data})


MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": []}
ANTHROPIC_FIRST = (
    _event("message_start", {"message": {**MESSAGE, "usage": {"input_tokens": 5}}})
    + _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    + _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hel"}})
)
ANTHROPIC_REST = (
    _event("content_block_stop", {"index": 0})
    + _event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}})
    + _event("message_stop", {})
)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


OPENAI_FIRST = _chunk({"role": "assistant", "content": "Hel"})
OPENAI_REST = _chunk({"content": "lo"}, "stop") + b"data: [DONE]\n\n"
FIRST = {"anthropic": ANTHROPIC_FIRST, "openai": OPENAI_FIRST}
REST = {"anthropic": ANTHROPIC_REST, "openai": OPENAI_REST}

# -- the upstream is a support.upstream.ScriptedUpstream ----------------------------------


def settings_for(url: str, kind: str = "anthropic", **upstream: Any) -> Settings:
    table = {"url": url, "kind": kind, "tokenizer": "estimate", **upstream}
    return build_settings({"upstreams": {"local": table}}, {}, {})


def gateway(url: str, kind: str = "anthropic", **upstream: Any) -> Starlette:
    return create_app(settings_for(url, kind, **upstream), audit=MemoryAudit())


# -- what the client and the audit log got -----------------------------------------------


def events_of(content: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    decoder = SSEDecoder()
    out = []
    for event in decoder.decode(content) + decoder.flush():
        with contextlib.suppress(ValueError):
            data = event.json()
            if isinstance(data, dict):
                out.append((event.event, data))
    return out


def assert_error_body(response: httpx.Response, status: int, error_type: str, *parts: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type, body
    for part in parts:
        assert part in body["error"]["message"], (part, body)


def assert_stream_error(content: bytes, error_type: str, *parts: str) -> str:
    """The stream ends with an ``error`` event, after the text that came first, and
    without ``message_stop``; returns the error's message."""
    events = events_of(content)
    assert events, content
    names = [name for name, _ in events]
    assert "message_stop" not in names, names
    assert names.count("error") == 1, names
    name, data = events[-1]
    assert name == "error", names
    assert data["error"]["type"] == error_type, data
    message: str = data["error"]["message"]
    for part in parts:
        assert part in message, (part, message)
    return message


async def one_record(app: Starlette, timeout: float = 5.0) -> AuditRecord:
    """The only audit record, once written; fails if there is none or more than one."""
    audit = app.state.audit
    observer = app.state.proxy.observer
    deadline = time.monotonic() + timeout
    while not audit.records or observer.pending:
        assert time.monotonic() < deadline, "no audit record in time"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)  # a second record would show up now
    records: list[AuditRecord] = list(audit.records)
    assert len(records) == 1, records
    return records[0]


# -- before the answer began: a JSON error with the right status ----------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_refused_connection_is_a_502(stream: bool) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    app = gateway(url)
    async with running(app) as client:
        response = await client.post("/v1/messages", json=STREAM_REQUEST if stream else REQUEST)
        assert_error_body(response, 502, "api_error", "refused the connection", url)
        rec = await one_record(app)
    assert rec.status == 502 and rec.error is not None and "refused" in rec.error


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_an_upstream_slower_than_read_timeout_is_a_504(stream: bool) -> None:
    async def silent(conn: Conn) -> None:
        await conn.hang()

    async with scripted_upstream(silent) as upstream:
        app = gateway(upstream.url, read_timeout=0.3)
        async with running(app) as client:
            response = await client.post("/v1/messages", json=STREAM_REQUEST if stream else REQUEST)
            assert_error_body(response, 504, "timeout_error", "did not answer in time")
            rec = await one_record(app)
        await asyncio.wait_for(upstream.hung_up.wait(), 2)  # the gateway hung up
    assert rec.status == 504 and rec.error is not None and "did not answer" in rec.error


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("application/json", b"<html>502 Bad Gateway</html>"), ("text/plain", b"\x00\xff\xfe")],
    ids=["html-as-json", "binary"],
)
async def test_garbage_with_a_200_is_a_502_never_relayed(content_type: str, body: bytes) -> None:
    async def garbage(conn: Conn) -> None:
        await conn.whole(200, content_type, body)

    async with scripted_upstream(garbage) as upstream:
        app = gateway(upstream.url)
        async with running(app) as client:
            response = await client.post("/v1/messages", json=REQUEST)
            assert_error_body(response, 502, "api_error")
            rec = await one_record(app)
    assert rec.status == 502 and rec.error


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("status", "error_type"), [(500, "api_error"), (429, "rate_limit_error")], ids=["500", "429"]
)
async def test_an_error_status_is_passed_through_as_an_anthropic_error(
    status: int, error_type: str, stream: bool, kind: str
) -> None:
    body = {"type": "error", "error": {"type": error_type, "message": "upstream says no"}}

    async def failing(conn: Conn) -> None:
        await conn.whole(status, "application/json", json.dumps(body).encode())

    async with scripted_upstream(failing) as upstream:
        app = gateway(upstream.url, kind)
        async with running(app) as client:
            response = await client.post("/v1/messages", json=STREAM_REQUEST if stream else REQUEST)
            assert_error_body(response, status, error_type, "upstream says no")
            rec = await one_record(app)
    assert rec.status == status
    assert rec.error is not None and "upstream says no" in rec.error


# -- once the stream is under way: an error event, never a silent cut -------------------------


async def _cut_clean(conn: Conn, kind: str) -> None:
    await conn.head()
    await conn.chunk(FIRST[kind])
    await conn.end()


async def _cut_hard(conn: Conn, kind: str) -> None:
    await conn.head()
    await conn.chunk(FIRST[kind])
    conn.writer.close()  # no end of the chunked body


async def _reset(conn: Conn, kind: str) -> None:
    await conn.head()
    await conn.chunk(FIRST[kind])
    await asyncio.sleep(0.1)
    conn.reset()


async def _idle(conn: Conn, kind: str) -> None:
    await conn.head()
    await conn.chunk(FIRST[kind])
    await conn.hang()


async def _garbage(conn: Conn, kind: str) -> None:
    await conn.head()
    await conn.chunk(FIRST[kind] + b"data: \x00\xff{not json\n\n\x01\x02junk")
    await conn.end()


STREAM_FAULTS = [
    pytest.param(_cut_clean, "api_error", "ended the stream before", id="cut-clean"),
    pytest.param(_cut_hard, "api_error", "RemoteProtocolError", id="cut-hard"),
    pytest.param(_reset, "api_error", "failed", id="reset"),
    pytest.param(_idle, "timeout_error", "stream_idle_timeout=0.3s", id="idle"),
    pytest.param(_garbage, "api_error", "upstream", id="garbage"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("fault", "error_type", "fragment"), STREAM_FAULTS)
async def test_a_stream_that_breaks_off_ends_with_an_error_event(
    fault: Callable[[Conn, str], Awaitable[None]], error_type: str, fragment: str, kind: str
) -> None:
    async with scripted_upstream(functools.partial(_as_script, fault, kind)) as upstream:
        app = gateway(upstream.url, kind, stream_idle_timeout=0.3)
        async with running(app) as client:
            started = time.monotonic()
            response = await client.post("/v1/messages", json=STREAM_REQUEST)
            elapsed = time.monotonic() - started
            assert response.status_code == 200
            assert b"Hel" in response.content  # what came first went out
            message = assert_stream_error(response.content, error_type, fragment)
            rec = await one_record(app)
            assert elapsed < 5
    assert rec.error == message
    assert rec.stream


async def _as_script(fault: Callable[[Conn, str], Awaitable[None]], kind: str, conn: Conn) -> None:
    await fault(conn, kind)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stream_slower_than_read_timeout_between_events_still_completes(
    kind: str,
) -> None:
    """Inside a stream, only ``stream_idle_timeout`` bounds the silence."""

    async def slow(conn: Conn) -> None:
        await conn.head()
        await conn.chunk(FIRST[kind])
        await asyncio.sleep(0.6)
        await conn.chunk(REST[kind])
        await conn.end()

    async with scripted_upstream(slow) as upstream:
        app = gateway(upstream.url, kind, read_timeout=0.2, stream_idle_timeout=3)
        async with running(app) as client:
            response = await client.post("/v1/messages", json=STREAM_REQUEST)
            names = [name for name, _ in events_of(response.content)]
            assert names[-1] == "message_stop", names
            assert "error" not in names
            rec = await one_record(app)
    assert rec.error is None and rec.status == 200


@pytest.mark.parametrize("kind", KINDS)
async def test_a_complete_stream_has_no_error(kind: str) -> None:
    async def whole(conn: Conn) -> None:
        await conn.head()
        await conn.chunk(FIRST[kind])
        await conn.chunk(REST[kind])
        await conn.end()

    async with scripted_upstream(whole) as upstream:
        app = gateway(upstream.url, kind)
        async with running(app) as client:
            response = await client.post("/v1/messages", json=STREAM_REQUEST)
            if kind == "anthropic":
                assert response.content == FIRST[kind] + REST[kind]  # byte for byte
            names = [name for name, _ in events_of(response.content)]
            assert names[-1] == "message_stop" and "error" not in names
            rec = await one_record(app)
    assert rec.error is None


# -- the relay itself: recorded before the end goes out, and ended on abort -------------------


class _Observer:
    """Stands for the observer: notes what the exchange tells it; commits after ``delay``."""

    def __init__(self, calls: list[Any], delay: float = 0.0) -> None:
        self.calls = calls
        self.delay = delay

    def finish(
        self,
        rec: AuditRecord,
        seen: Any,
        *,
        on_commit: Callable[[], None] | None = None,
    ) -> Callable[[], None]:
        self.calls.append(("finish", rec.error))
        if on_commit is not None:
            asyncio.get_running_loop().call_later(self.delay, on_commit)
        return lambda: self.calls.append("settled")


def _relay(
    response: httpx.Response,
    calls: list[Any],
    streams: Streams | None = None,
    commit_delay: float = 0.0,
    **upstream: Any,
) -> Relay:
    config = UpstreamConfig(name="local", url="http://runtime.test", **upstream)
    observer = CacheObserver(Settings(), MemoryAudit(), Metrics())
    rw = rewrite(json.dumps(REQUEST).encode())
    seen = observer.begin(
        observer.identify({}, "/v1/messages", rw, "default"), rw, config, "default"
    )
    ex = Exchange(
        route="/v1/messages",
        tenant="default",
        session=None,
        observer=_Observer(calls, commit_delay),
    )
    ex.sent_to(config, seen, None)
    return Relay(ex, config, response, Passthrough(), streams)


async def test_the_record_is_made_and_committed_before_the_last_bytes_go_out() -> None:
    calls: list[Any] = []
    stream = ANTHROPIC_FIRST + ANTHROPIC_REST
    relay = _relay(httpx.Response(200, content=stream), calls, commit_delay=0.2)
    started = time.monotonic()
    sent = [chunk async for chunk in relay.events()]
    assert time.monotonic() - started >= 0.15  # the end waited for the commit
    assert b"".join(sent) == stream
    assert calls == [("finish", None)]
    await relay.close()  # right after the last bytes: the rest of the observer's work
    assert calls == [("finish", None), "settled"]  # not recorded a second time


@pytest.mark.parametrize("reads", [1, 2])
async def test_the_events_read_with_the_end_go_out_with_it_and_earlier_ones_at_once(
    reads: int,
) -> None:
    async def answer() -> AsyncIterator[bytes]:
        if reads == 1:
            yield ANTHROPIC_FIRST + ANTHROPIC_REST
        else:
            yield ANTHROPIC_FIRST
            yield ANTHROPIC_REST

    calls: list[Any] = []
    relay = _relay(httpx.Response(200, content=answer()), calls)
    batches = []
    async for batch in relay.events():
        batches.append((batch, list(calls)))
    finished = [("finish", None)]
    if reads == 1:  # one write, once recorded
        assert batches == [(ANTHROPIC_FIRST + ANTHROPIC_REST, finished)]
    else:  # the first read at once, before the end is known
        assert batches == [(ANTHROPIC_FIRST, []), (ANTHROPIC_REST, finished)]


async def test_a_stream_cut_before_message_stop_ends_with_an_error() -> None:
    calls: list[Any] = []
    partial = ANTHROPIC_FIRST + b'event: content_block_delta\ndata: {"ty'
    relay = _relay(httpx.Response(200, content=partial), calls)
    sent = b"".join([chunk async for chunk in relay.events()])
    assert sent.startswith(ANTHROPIC_FIRST)
    assert sent[len(ANTHROPIC_FIRST) :].startswith(b"event: error\n")  # the unfinished one dropped
    assert_stream_error(sent, "api_error", "before message_stop")
    assert len(calls) == 1 and "before message_stop" in calls[0][1]
    await relay.close()
    assert calls[1:] == ["settled"]


async def test_a_stream_abandoned_by_its_client_is_recorded_as_abandoned() -> None:
    calls: list[Any] = []

    async def two_reads() -> AsyncIterator[bytes]:  # the end comes in a read of its own
        yield ANTHROPIC_FIRST
        yield ANTHROPIC_REST

    relay = _relay(httpx.Response(200, content=two_reads()), calls)
    events = relay.events()
    assert await anext(events) == ANTHROPIC_FIRST
    await relay.close()  # the client went away
    assert calls == [("finish", Relay.ABANDONED), "settled"]


async def test_closing_a_response_under_a_pending_read_raises_an_httpx_error() -> None:
    """What ``Streams.abort`` may rely on: httpx ends a read the response is closed under."""

    async def stalled(conn: Conn) -> None:
        await conn.head()
        await conn.chunk(ANTHROPIC_FIRST)
        await conn.hang()

    async with scripted_upstream(stalled) as upstream, httpx.AsyncClient() as client:
        request = client.build_request("POST", upstream.url + "/v1/messages", json=REQUEST)
        response = await client.send(request, stream=True)
        chunks = response.aiter_bytes()
        assert await anext(chunks)
        reading = asyncio.create_task(anext(chunks))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        await response.aclose()
        with pytest.raises(httpx.HTTPError):
            await asyncio.wait_for(reading, 2)
        await asyncio.wait_for(upstream.hung_up.wait(), 2)


@pytest.mark.parametrize("when", ["reading", "before-start"])
async def test_abort_ends_a_live_stream_with_an_overloaded_error(when: str) -> None:
    async def stalled(conn: Conn) -> None:
        await conn.head()
        await conn.chunk(ANTHROPIC_FIRST)
        await conn.hang()

    calls: list[Any] = []
    streams = Streams()
    async with scripted_upstream(stalled) as upstream, httpx.AsyncClient() as client:
        request = client.build_request("POST", upstream.url + "/v1/messages", json=REQUEST)
        response = await client.send(request, stream=True)
        relay = _relay(response, calls, streams)
        events = relay.events()
        sent = b""
        if when == "before-start":
            await streams.abort(STOPPING)
        else:
            sent += await anext(events)
            assert len(streams) == 1
            pending = asyncio.create_task(anext(events))  # type: ignore[arg-type]
            await asyncio.sleep(0.1)  # the relay waits on the upstream's next bytes
            await streams.abort(STOPPING)
            sent += await asyncio.wait_for(pending, 2)
        sent += b"".join([chunk async for chunk in events])
        await relay.close()
        assert assert_stream_error(sent, "overloaded_error") == STOPPING
        assert calls == [("finish", STOPPING), "settled"]
        assert len(streams) == 0
        await asyncio.wait_for(upstream.hung_up.wait(), 2)  # the upstream stops generating


# -- through a real server: client disconnects, shutdown ---------------------------------------


async def _first_text(chunks: AsyncIterator[bytes]) -> bytes:
    seen = b""
    async for chunk in chunks:
        seen += chunk
        if b"Hel" in seen:
            return seen
    raise AssertionError(f"the stream ended before its first text: {seen!r}")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_client_that_goes_away_mid_stream_frees_the_upstream_at_once(kind: str) -> None:
    async def long(conn: Conn) -> None:
        await conn.head()
        await conn.chunk(FIRST[kind])
        await conn.hang()

    async with scripted_upstream(long) as upstream:
        app = gateway(upstream.url, kind)
        with ServerThread(app) as server:
            async with httpx.AsyncClient(timeout=10) as client:
                request = client.build_request(
                    "POST", server.url + "/v1/messages", json=STREAM_REQUEST
                )
                response = await client.send(request, stream=True)
                await _first_text(response.aiter_raw())
                await response.aclose()  # mid-answer: the connection is dropped
                gone = time.monotonic()
            await asyncio.wait_for(upstream.hung_up.wait(), 5)
            assert upstream.hung_up_at is not None
            assert upstream.hung_up_at - gone < 0.5
            records = await records_of(app)
    assert len(records) == 1
    assert records[0].error == Relay.ABANDONED


async def test_shutdown_refuses_new_connections_and_ends_streams_after_the_grace() -> None:
    async def long(conn: Conn) -> None:
        await conn.head()
        await conn.chunk(ANTHROPIC_FIRST)
        await conn.hang()

    async with scripted_upstream(long) as upstream:
        app = gateway(upstream.url)
        grace = 0.5
        config = server_config(app, timeout_graceful_shutdown=5)
        draining = DrainingServer(
            config, grace=grace, on_grace_over=functools.partial(abort_streams, app)
        )
        with ServerThread(app, draining) as server:
            async with httpx.AsyncClient(timeout=10) as client:
                request = client.build_request(
                    "POST", server.url + "/v1/messages", json=STREAM_REQUEST
                )
                response = await client.send(request, stream=True)
                chunks = response.aiter_raw()
                seen = await _first_text(chunks)
                draining.should_exit = True  # what SIGTERM does
                stopping = time.monotonic()
                await asyncio.sleep(0.3)
                with pytest.raises(httpx.ConnectError):
                    await client.get(server.url + "/healthz")
                async for chunk in chunks:
                    seen += chunk
                ended = time.monotonic() - stopping
            server.thread.join(10)
            assert not server.thread.is_alive()
            assert draining.drained
    assert grace - 0.1 < ended < grace + 2
    assert assert_stream_error(seen, "overloaded_error") == STOPPING
    records = app.state.audit.records
    assert len(records) == 1 and records[0].error == STOPPING


async def test_abort_through_the_gateway_ends_its_streams() -> None:
    """``Proxy.streams`` holds the gateway's streams under way."""
    app: Starlette | None = None
    live: list[int] = []

    async def aborted_mid_stream(conn: Conn) -> None:
        await conn.head()
        await conn.chunk(ANTHROPIC_FIRST)
        await asyncio.sleep(0.2)  # the relay now waits for more
        assert app is not None
        streams = getattr(app.state.proxy, "streams", None)
        if isinstance(streams, Streams):
            live.append(len(streams))
            await abort_streams(app)
            await conn.hang()

    async with scripted_upstream(aborted_mid_stream) as upstream:
        app = gateway(upstream.url)
        async with running(app) as client:
            response = await client.post("/v1/messages", json=STREAM_REQUEST)
            assert live == [1], "Proxy.streams is not set, or does not hold the stream"
            assert response.content.startswith(ANTHROPIC_FIRST)
            assert assert_stream_error(response.content, "overloaded_error") == STOPPING
            rec = await one_record(app)
    assert rec.error == STOPPING
