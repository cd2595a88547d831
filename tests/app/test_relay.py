"""The stream relay: what reaches the client, and when the observer hears of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from support.observer import Told

from prefixgate.app.exchange import Exchange
from prefixgate.app.metrics import Metrics
from prefixgate.app.observer import CacheObserver, Observation
from prefixgate.app.relay import Passthrough, Relay
from prefixgate.config import Settings, UpstreamConfig
from prefixgate.core.pipeline import rewrite
from prefixgate.core.sse import encode_event
from prefixgate.store.audit import MemoryAudit

LOCAL = UpstreamConfig(name="local", url="http://runtime.test")

EVENTS = [
    ("message_start", {"type": "message_start", "message": {"id": "m", "usage": {}}}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
    ("message_stop", {"type": "message_stop"}),
]
STREAM = b"".join(encode_event(name, data) for name, data in EVENTS)
FIRST = encode_event(*EVENTS[0])


class Broken(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield FIRST + STREAM[len(FIRST) : len(FIRST) + 10]  # then a cut
        raise httpx.ReadError("connection reset")


def observation() -> Observation:
    """What the observer makes of a request when it is sent."""
    observer = CacheObserver(Settings(), MemoryAudit(), Metrics())
    body = b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}'
    rw = rewrite(body)
    who = observer.identify({}, "/v1/messages", rw, "default")
    return observer.begin(who, rw, LOCAL, "default")


def relay(content: bytes | httpx.AsyncByteStream, calls: list[str]) -> Relay:
    ex = Exchange(route="/v1/messages", tenant="default", session=None, observer=Told(calls))
    ex.sent_to(LOCAL, observation(), None)
    if isinstance(content, bytes):
        response = httpx.Response(200, content=content)
    else:
        response = httpx.Response(200, stream=content)
    return Relay(ex, LOCAL, response, Passthrough())


async def test_a_whole_answer_is_recorded_before_its_last_bytes_and_settled_after() -> None:
    calls: list[str] = []
    r = relay(STREAM, calls)
    seen: list[tuple[bytes, list[str]]] = []
    async for chunk in r.events():
        seen.append((chunk, list(calls)))
    assert b"".join(chunk for chunk, _ in seen) == STREAM
    # the last bytes go out only once the answer's record is made
    assert seen[-1][1] == ["finish"]
    assert all(not before for _, before in seen[:-1])
    await r.close()  # right after the last bytes
    assert calls == ["finish", "settled"]  # close does not record it twice


async def test_a_broken_answer_ends_with_an_error_event() -> None:
    calls: list[str] = []
    r = relay(Broken(), calls)
    seen: list[tuple[bytes, list[str]]] = []
    async for chunk in r.events():
        seen.append((chunk, list(calls)))
    sent = b"".join(chunk for chunk, _ in seen)
    assert sent.startswith(FIRST)  # the complete event went out as it arrived
    assert sent[len(FIRST) :].startswith(b"event: error\n")
    assert seen[-1][1] == ["finish"]  # recorded (as failed) before the error event
    await r.close()
    assert calls == ["finish", "settled"]
