"""Routing state: which replica each (session, agent) is pinned to, and how
many requests each replica was sent lately.

Two stores with one protocol. ``MemoryState`` keeps both in the process (one
gateway). ``RedisState`` keeps them in Redis so that several gateway processes
behind any load balancer send a session to the same replica: a new pin is set
with ``SET NX`` (the first gateway to decide wins, the others read its
choice), and each replica's recent requests are a sorted set scored by expiry
that every gateway adds to. That count is the load prefix affinity bounds: a
replica carrying long sessions takes fewer new ones.

A pin expires ``ttl`` seconds after its last use (every use renews it); a
request stops counting ``ttl`` seconds after it was routed.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
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

    async def routed(self, scope: str, replica: str, ttl: float) -> None:
        """Count one request sent to ``replica`` for the next ``ttl`` seconds."""
        ...

    async def loads(self, scope: str, replicas: Sequence[str]) -> dict[str, int]:
        """Requests counted per replica that have not expired."""
        ...

    async def close(self) -> None: ...


class MemoryState:
    """Pins in this process only."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._pins: dict[str, dict[str, tuple[str, float]]] = {}
        self._routed: dict[tuple[str, str], deque[float]] = {}
        self._swept: dict[str, float] = {}

    def _live(self, scope: str) -> dict[str, tuple[str, float]]:
        """The scope's pins, expired ones dropped (a full sweep at most once a second)."""
        now = self._clock()
        pins = self._pins.setdefault(scope, {})
        if now - self._swept.get(scope, float("-inf")) >= 1.0:
            self._swept[scope] = now
            for owner in [o for o, (_, expires) in pins.items() if expires <= now]:
                del pins[owner]
        return pins

    def _current(self, scope: str, owner: str) -> tuple[str, float] | None:
        found = self._live(scope).get(owner)
        return found if found is not None and found[1] > self._clock() else None

    async def pin(self, scope: str, owner: str, replica: str, ttl: float) -> str:
        found = self._current(scope, owner)
        current = found[0] if found else replica
        self._live(scope)[owner] = (current, self._clock() + ttl)
        return current

    async def repin(self, scope: str, owner: str, replica: str, ttl: float) -> None:
        self._live(scope)[owner] = (replica, self._clock() + ttl)

    async def get(self, scope: str, owner: str) -> str | None:
        found = self._current(scope, owner)
        return found[0] if found else None

    async def routed(self, scope: str, replica: str, ttl: float) -> None:
        self._routed.setdefault((scope, replica), deque()).append(self._clock() + ttl)

    async def loads(self, scope: str, replicas: Sequence[str]) -> dict[str, int]:
        now = self._clock()
        counts = {}
        for replica in replicas:
            expiries = self._routed.get((scope, replica), deque())
            while expiries and expiries[0] <= now:
                expiries.popleft()
            counts[replica] = len(expiries)
        return counts

    async def close(self) -> None:
        self._pins.clear()
        self._routed.clear()


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
        return str(current or replica)

    async def repin(self, scope: str, owner: str, replica: str, ttl: float) -> None:
        await self._redis.set(self._pin_key(scope, owner), replica, px=max(1, int(ttl * 1000)))

    async def routed(self, scope: str, replica: str, ttl: float) -> None:
        member = uuid.uuid4().hex
        await self._redis.zadd(self._load_key(scope, replica), {member: self._clock() + ttl})

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
