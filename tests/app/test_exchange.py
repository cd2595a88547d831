"""The exchange: told what happened, it ends once, with one record and one release."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from support.observer import Told

from prefixgate.app.exchange import INTERNAL, Exchange
from prefixgate.app.metrics import Metrics
from prefixgate.app.observer import CacheObserver, Observation
from prefixgate.config import Settings, UpstreamConfig
from prefixgate.core.auth import Tenant
from prefixgate.core.fold import summarize_message
from prefixgate.core.pipeline import rewrite
from prefixgate.store.audit import MemoryAudit

LOCAL = UpstreamConfig(name="local", url="http://runtime.test")
BODY = b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}'


def observation(session: str | None = None) -> Observation:
    observer = CacheObserver(Settings(), MemoryAudit(), Metrics())
    rw = rewrite(BODY)
    headers = {"x-claude-code-session-id": session} if session else {}
    who = observer.identify(headers, "/v1/messages", rw, "default")
    return observer.begin(who, rw, LOCAL, "default")


def exchange(told: Told, **kwargs: Any) -> Exchange:
    return Exchange(route="/v1/messages", tenant="default", session=None, observer=told, **kwargs)


async def test_it_ends_once_with_one_record_and_one_release() -> None:
    told, released = Told(), []
    ex = exchange(told)
    ex.sent_to(LOCAL, observation(), lambda: released.append(1))
    ex.answered(200, summarize_message({"content": [], "usage": {"input_tokens": 3}}))
    ex.end()
    ex.end()
    assert told.calls == ["finish"] and released == [1]
    (rec,) = told.records
    assert rec.status == 200 and rec.upstream == "local" and rec.input_tokens == 3
    assert rec.total_ms is not None and rec.request_id == ex.request_id
    await ex.durable(timeout=1)  # committed: returns at once
    assert ex.committed is not None and ex.committed.done()


async def test_a_commit_that_never_comes_delays_the_answer_by_the_timeout_only() -> None:
    ex = exchange(Told())
    ex.committed = asyncio.get_running_loop().create_future()  # a stuck disk
    started = time.monotonic()
    await ex.durable(timeout=0.1)
    await ex.durable(timeout=5)  # given up on: at once
    assert 0.09 <= time.monotonic() - started < 2


async def test_the_first_word_on_it_stands() -> None:
    told = Told()
    ex = exchange(told)
    ex.failed(502, "upstream answered garbage")
    ex.answered(200, None)
    ex.end()
    assert told.records[0].status == 502
    assert told.records[0].error == "upstream answered garbage"


async def test_an_exchange_nobody_told_is_recorded_as_an_internal_error() -> None:
    told = Told()
    ex = exchange(told)
    ex.end()
    assert (told.records[0].status, told.records[0].error) == (500, INTERNAL)


async def test_a_failed_replica_is_released_before_the_next_one_is_held() -> None:
    told, released = Told(), []
    ex = exchange(told)
    ex.sent_to(LOCAL, observation(), lambda: released.append("first"))
    ex.let_go()
    ex.sent_to(LOCAL, observation(), lambda: released.append("second"))
    assert released == ["first"]
    ex.failed(503, "down")
    ex.end()
    assert released == ["first", "second"]


async def test_settle_does_what_the_end_left_once() -> None:
    told = Told()
    ex = exchange(told)
    ex.settle()  # not ended: nothing left to do
    ex.sent_to(LOCAL, observation(), None)
    ex.answered(200, None)
    ex.end()
    assert told.calls == ["finish"]
    ex.settle()
    ex.settle()
    assert told.calls == ["finish", "settled"]


async def test_a_refusal_is_recorded_untimed_with_its_own_request_id() -> None:
    told = Told()
    ex = exchange(told, capture_bodies=True)
    ex.refused(401, "a valid gateway API key is required")
    ex.end()
    (rec,) = told.records
    assert rec.status == 401 and rec.total_ms is None and rec.ttfb_ms is None
    assert rec.request_id == ex.request_id and rec.request_body is None


def test_the_session_an_upstream_sees_is_the_tenants_own_with_keys() -> None:
    told = Told()
    ex = exchange(told)
    assert ex.scoped_session is None
    ex.identity = observation("abc").identity  # known before it is sent
    assert ex.scoped_session == "abc"
    alpha = Tenant(name="alpha")
    keyed = Exchange(
        route="/v1/messages", tenant="alpha", session=None, observer=told, principal=alpha
    )
    keyed.identity = observation("abc").identity
    assert keyed.scoped_session == "alpha:abc"
