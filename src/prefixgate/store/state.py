"""Routing state: which replica each (session, agent) is pinned to.

Two stores with one protocol. ``MemoryState`` keeps the pins in the process
(one gateway). ``RedisState`` keeps them in Redis so that several gateway
processes behind any load balancer send a session to the same replica: a new
pin is set with ``SET NX`` (the first gateway to decide wins, the others read
its choice), and each replica's live pins are a sorted set scored by expiry,
which is the load prefix affinity bounds.

A pin expires ``ttl`` seconds after its last use; every use renews it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

KEY_PREFIX = "prefixgate:"


class StateStore(Protocol):
    async def pin(self, scope: str, owner: str, replica: str, ttl: float) -> str:
        """``owner``'s replica in ``scope``: the existing pin if live, else ``replica``."""
        ...

    async def repin(self, scope: str, owner: str, replica: str, ttl: float) -> None:
        """Point ``owner`` at ``replica`` whatever it was pinned to (after a failover)."""
        ...

    async def get(self, scope: str, owner: str) -> str | None: ...

    async def loads(self, scope: str, replicas: Sequence[str]) -> dict[str, int]:
        """Live pins per replica."""
        ...

    async def close(self) -> None: ...


class MemoryState:
    """Pins in this process only."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._pins: dict[str, dict[str, tuple[str, float]]] = {}

    def _live(self, scope: str) -> dict[str, tuple[str, float]]:
        now = self._clock()
        pins = self._pins.setdefault(scope, {})
        for owner in [o for o, (_, expires) in pins.items() if expires <= now]:
            del pins[owner]
        return pins

    async def pin(self, scope: str, owner: str, replica: str, ttl: float) -> str:
        pins = self._live(scope)
        current = pins.get(owner, (replica, 0.0))[0]
        pins[owner] = (current, self._clock() + ttl)
        return current

    async def repin(self, scope: str, owner: str, replica: str, ttl: float) -> None:
        self._live(scope)[owner] = (replica, self._clock() + ttl)

    async def get(self, scope: str, owner: str) -> str | None:
        found = self._live(scope).get(owner)
        return found[0] if found else None

    async def loads(self, scope: str, replicas: Sequence[str]) -> dict[str, int]:
        counts = dict.fromkeys(replicas, 0)
        for replica, _ in self._live(scope).values():
            if replica in counts:
                counts[replica] += 1
        return counts

    async def close(self) -> None:
        self._pins.clear()


class RedisState:
    """Pins shared by every gateway that uses the same Redis (``redis://host:port/db``)."""

    def __init__(self, url: str, *, prefix: str = KEY_PREFIX, clock: Any = time.time) -> None:
        import redis.asyncio as redis  # the ``redis`` package; only needed with a Redis URL

        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=2.0)
        self._prefix = prefix
        self._clock = clock

    def _pin_key(self, scope: str, owner: str) -> str:
        return f"{self._prefix}pin:{scope}:{owner}"

    def _load_key(self, scope: str, replica: str) -> str:
        return f"{self._prefix}load:{scope}:{replica}"

    async def pin(self, scope: str, owner: str, replica: str, ttl: float) -> str:
        key = self._pin_key(scope, owner)
        millis = max(1, int(ttl * 1000))
        await self._redis.set(key, replica, nx=True, px=millis)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pexpire(key, millis)
            current, _ = await pipe.execute()
        current = str(current or replica)
        await self._redis.zadd(self._load_key(scope, current), {owner: self._clock() + ttl})
        return current

    async def repin(self, scope: str, owner: str, replica: str, ttl: float) -> None:
        key = self._pin_key(scope, owner)
        old = await self._redis.get(key)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, replica, px=max(1, int(ttl * 1000)))
            if old and old != replica:
                pipe.zrem(self._load_key(scope, str(old)), owner)
            pipe.zadd(self._load_key(scope, replica), {owner: self._clock() + ttl})
            await pipe.execute()

    async def get(self, scope: str, owner: str) -> str | None:
        value = await self._redis.get(self._pin_key(scope, owner))
        return str(value) if value is not None else None

    async def loads(self, scope: str, replicas: Sequence[str]) -> dict[str, int]:
        now = self._clock()
        async with self._redis.pipeline(transaction=False) as pipe:
            for replica in replicas:
                pipe.zremrangebyscore(self._load_key(scope, replica), "-inf", now)
                pipe.zcard(self._load_key(scope, replica))
            results = await pipe.execute()
        return {replica: int(results[2 * i + 1]) for i, replica in enumerate(replicas)}

    async def close(self) -> None:
        await self._redis.aclose()
