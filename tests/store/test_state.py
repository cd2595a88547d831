"""Session pins, in this process and in a real Redis shared by several gateways."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from prefixgate.store.state import MemoryState, RedisState, StateStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def made(request: pytest.FixtureRequest) -> AsyncIterator[tuple[StateStore, Clock]]:
    clock = Clock()
    store: StateStore
    if request.param == "memory":
        store = MemoryState(clock=clock)
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisState(url, prefix=f"test-{uuid.uuid4().hex}:", clock=clock)
    yield store, clock
    await store.close()


async def test_first_pin_wins_and_is_kept(made: tuple[StateStore, Clock]) -> None:
    store, _ = made
    assert await store.pin("up", "s1", "http://a", 60) == "http://a"
    assert await store.pin("up", "s1", "http://b", 60) == "http://a"
    assert await store.get("up", "s1") == "http://a"
    assert await store.get("up", "nobody") is None
    assert await store.get("other-scope", "s1") is None


async def test_loads_count_recent_requests_per_replica(made: tuple[StateStore, Clock]) -> None:
    store, _ = made
    for replica in ["http://a", "http://a", "http://b"]:
        await store.routed("up", replica, 60)
    await store.routed("other", "http://c", 60)
    assert await store.loads("up", ["http://a", "http://b", "http://c"]) == {
        "http://a": 2,
        "http://b": 1,
        "http://c": 0,
    }


async def test_repin_moves_the_pin(made: tuple[StateStore, Clock]) -> None:
    store, _ = made
    await store.pin("up", "s1", "http://a", 60)
    await store.repin("up", "s1", "http://b", 60)
    assert await store.get("up", "s1") == "http://b"
    assert await store.pin("up", "s1", "http://c", 60) == "http://b"


async def test_loads_forget_expired_requests(made: tuple[StateStore, Clock]) -> None:
    store, clock = made
    await store.routed("up", "http://a", 30)
    clock.now += 31
    await store.routed("up", "http://a", 30)
    assert await store.loads("up", ["http://a"]) == {"http://a": 1}


async def test_memory_pins_expire_after_their_idle_time() -> None:
    clock = Clock()
    store = MemoryState(clock=clock)
    await store.pin("up", "s1", "http://a", 10)
    clock.now += 5
    assert await store.pin("up", "s1", "http://b", 10) == "http://a"  # renewed at 1005
    clock.now += 9
    assert await store.get("up", "s1") == "http://a"
    clock.now += 2
    assert await store.get("up", "s1") is None


async def test_redis_pin_expires_on_the_server(redis_url: str) -> None:
    store = RedisState(redis_url, prefix=f"test-{uuid.uuid4().hex}:")
    try:
        await store.pin("up", "s1", "http://a", 0.2)
        await asyncio.sleep(0.4)
        assert await store.get("up", "s1") is None
    finally:
        await store.close()


async def test_two_gateways_racing_for_a_new_session_agree(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    stores = [RedisState(redis_url, prefix=prefix) for _ in range(8)]
    try:
        chosen = await asyncio.gather(
            *(s.pin("up", "s1", f"http://r{i}", 60) for i, s in enumerate(stores))
        )
        assert len(set(chosen)) == 1
        assert await stores[3].get("up", "s1") == chosen[0]
    finally:
        for s in stores:
            await s.close()
