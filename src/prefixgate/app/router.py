"""Where a request goes: which replica of its upstream.

The choices are the pure functions of ``core/routing.py``; this module holds
what they are made over:

- the session pins (``store/state.py``: in this process, or in Redis so several
  gateways agree), renewed on every use and released after ``pin_idle``;
- each replica's health (a background check of ``/health`` every
  ``health_interval`` seconds, and a replica that refused a request is marked
  down at once) and its requests in flight.

``plan`` returns every replica in the order to try: the first is the choice,
the others are the failover order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from prefixgate.config import Settings, UpstreamConfig
from prefixgate.core.identity import Identity
from prefixgate.core.pipeline import Rewrite
from prefixgate.core.routing import ring_order, route_order
from prefixgate.store.state import MemoryState, StateStore
from prefixgate.upstreams.http import UpstreamClient

log = logging.getLogger("prefixgate")
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Target:
    """One replica to try, as an upstream config of its own."""

    config: UpstreamConfig
    owner: str  # tenant:session:agent, what pins are held for


class Router:
    def __init__(
        self,
        settings: Settings,
        upstreams: UpstreamClient | None = None,
        state: StateStore | None = None,
    ) -> None:
        self.settings = settings
        self.upstreams = upstreams or UpstreamClient()  # for the health checks
        self.state: StateStore = state or MemoryState()
        self._down: set[str] = set()
        self._busy: dict[str, int] = {}
        self._turns = itertools.count()

    # -- choosing -----------------------------------------------------------

    async def plan(
        self, upstream: UpstreamConfig, rw: Rewrite, who: Identity, tenant: str
    ) -> list[Target]:
        """The replicas of ``upstream`` in the order to try them for this request."""
        owner = f"{tenant}:{who.session}:{who.agent}"
        urls = upstream.urls
        if len(urls) == 1:
            return [Target(upstream.for_replica(urls[0]), owner)]
        up = [u for u in urls if u not in self._down] or list(urls)
        down = [u for u in urls if u not in up]
        if upstream.routing == "prefix_affinity":
            first = await self._affine(upstream, rw.key.hex, owner, up)
            rest = [u for u in ring_order(rw.key.hex, up) if u != first]
            order = [first, *rest]
        else:
            order = route_order(
                upstream.routing, rw.key.hex, up, busy=self._busy, turn=next(self._turns)
            )
        return [Target(upstream.for_replica(u), owner) for u in order + down]

    async def _affine(self, upstream: UpstreamConfig, key: str, owner: str, up: list[str]) -> str:
        """The owner's pinned replica while it is up, else a bounded-load ring choice."""
        scope, ttl = upstream.name, upstream.pin_idle
        try:
            chosen = await self._pinned(upstream, key, owner, up)
            await self.state.routed(scope, chosen, ttl)
            return chosen
        except Exception as exc:  # shared state down: route on the ring alone
            log.warning("routing state unavailable (%s); routing by prefix alone", exc)
            return ring_order(key, up)[0]

    async def _pinned(self, upstream: UpstreamConfig, key: str, owner: str, up: list[str]) -> str:
        scope, ttl = upstream.name, upstream.pin_idle
        pinned = await self.state.get(scope, owner)
        if pinned in up:
            return await self.state.pin(scope, owner, pinned, ttl)
        loads = await self.state.loads(scope, up)
        choice = route_order("prefix_affinity", key, up, loads=loads, factor=upstream.load_factor)[
            0
        ]
        if pinned is None:
            chosen = await self.state.pin(scope, owner, choice, ttl)  # another gateway may win
            if chosen in up:
                return chosen
        await self.state.repin(scope, owner, choice, ttl)
        return choice

    async def moved(self, target: Target) -> None:
        """The request was served by ``target`` after its first choice failed."""
        up = target.config
        if len(up.urls) > 1 and up.routing == "prefix_affinity":
            with contextlib.suppress(Exception):
                await self.state.repin(up.name, target.owner, up.url, up.pin_idle)
                await self.state.routed(up.name, up.url, up.pin_idle)

    # -- what happened ------------------------------------------------------

    def started(self, target: Target) -> None:
        url = target.config.url
        self._busy[url] = self._busy.get(url, 0) + 1

    def ended(self, target: Target) -> None:
        url = target.config.url
        self._busy[url] = max(0, self._busy.get(url, 0) - 1)

    def failed(self, target: Target) -> None:
        """``target`` refused or dropped a request: route around it until it is healthy."""
        if len(target.config.urls) > 1 and target.config.url not in self._down:
            log.warning("replica %s is down; failing over", target.config.url)
            self._down.add(target.config.url)

    def is_up(self, url: str) -> bool:
        return url not in self._down

    # -- health -------------------------------------------------------------

    async def check(self, upstreams: Iterable[UpstreamConfig]) -> None:
        """One round of health checks over every replica of ``upstreams``."""
        if not self.upstreams.started:
            return
        replicas = {
            u: up.for_replica(u).basic_auth()
            for up in upstreams
            if len(up.urls) > 1
            for u in up.urls
        }
        urls = list(replicas)
        results = await asyncio.gather(*(self._healthy(u, replicas[u]) for u in urls))
        for url, healthy in zip(urls, results, strict=True):
            if healthy and url in self._down:
                log.info("replica %s is healthy again", url)
                self._down.discard(url)
            elif not healthy and url not in self._down:
                log.warning("replica %s failed its health check", url)
                self._down.add(url)

    async def _healthy(self, url: str, auth: tuple[str, str] | None = None) -> bool:
        try:
            response = await self.upstreams.http.get(
                url + "/health", timeout=PROBE_TIMEOUT_S, auth=auth
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def watch(self) -> None:
        """Check health until cancelled (the app's lifespan runs this as a task)."""
        replicated = [up for up in self.settings.upstreams.values() if len(up.urls) > 1]
        if not replicated:
            return
        interval = min(up.health_interval for up in replicated)
        while True:
            try:
                await self.check(replicated)
            except Exception:
                log.exception("health check failed")
            await asyncio.sleep(interval)
