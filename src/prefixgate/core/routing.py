"""Which replica: pure choices over plain values.

Replicas (several servers behind one upstream name):

``prefix_affinity``  consistent hashing of the stable prefix key with bounded
                     load (Mirrokni, Thorup and Zadimoghaddam, 2018): walk the
                     ring clockwise from the key's point and take the first
                     replica whose load (its recent requests) stays within
                     ``factor`` times the mean once this one is added.
                     Requests that share a prefix meet on one replica until it
                     is full; one hot prefix spills to
                     the next replica on the ring instead of overloading one.
``round_robin``      each request to the next replica, prefix ignored.
``least_busy``       the replica with the fewest requests in flight.

Every policy returns an order, not one replica: the first is the choice, the
rest are where a request fails over to, in ring order.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
from collections.abc import Mapping, Sequence

ROUTING_POLICIES = ("prefix_affinity", "round_robin", "least_busy")
VIRTUAL_NODES = 160


def _point(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


@functools.lru_cache(maxsize=64)
def _ring(replicas: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    nodes = sorted(
        (_point(f"{replica}#{i}"), replica) for replica in replicas for i in range(VIRTUAL_NODES)
    )
    return tuple(p for p, _ in nodes), tuple(r for _, r in nodes)


def ring_order(key: str, replicas: Sequence[str]) -> list[str]:
    """Every replica once, in the order met walking the ring clockwise from ``key``."""
    if len(replicas) <= 1:
        return list(replicas)
    points, owners = _ring(tuple(sorted(set(replicas))))
    start = bisect.bisect(points, _point(key))
    seen: list[str] = []
    for i in range(len(owners)):
        owner = owners[(start + i) % len(owners)]
        if owner not in seen:
            seen.append(owner)
            if len(seen) == len(set(replicas)):
                break
    return seen


def bounded_pick(
    key: str, replicas: Sequence[str], loads: Mapping[str, int], factor: float = 1.25
) -> str:
    """The first replica on ``key``'s ring walk whose load stays within the bound.

    The bound is ``ceil(factor * (total + 1) / n)``, the total counting the
    new assignment: no replica ever holds more than ``factor`` times the mean
    (rounded up), and some replica is always under it.
    """
    order = ring_order(key, replicas)
    if not order:
        raise ValueError("no replica to choose from")
    total = sum(loads.get(r, 0) for r in order) + 1
    cap = math.ceil(factor * total / len(order))
    for replica in order:
        if loads.get(replica, 0) + 1 <= cap:
            return replica
    return order[0]  # not reached: the least loaded replica is always under the cap


def route_order(
    policy: str,
    key: str,
    replicas: Sequence[str],
    *,
    loads: Mapping[str, int] | None = None,
    busy: Mapping[str, int] | None = None,
    turn: int = 0,
    factor: float = 1.25,
) -> list[str]:
    """``replicas`` in the order ``policy`` would try them for a request with ``key``.

    ``loads``: requests each replica was sent lately (prefix affinity's bound);
    ``busy``: requests in flight on each (least busy); ``turn``: a counter
    that advances per request (round robin, and least busy's tie-break).
    """
    if not replicas:
        return []
    ring = ring_order(key, replicas)
    if policy == "prefix_affinity":
        first = bounded_pick(key, replicas, loads or {}, factor)
        return [first, *(r for r in ring if r != first)]
    ordered = sorted(set(replicas), key=list(replicas).index)
    if policy == "round_robin":
        start = turn % len(ordered)
        return ordered[start:] + ordered[:start]
    if policy == "least_busy":
        n = len(ordered)
        return sorted(
            ordered,
            key=lambda r: ((busy or {}).get(r, 0), (ordered.index(r) - turn) % n),
        )
    raise ValueError(f"unknown routing policy {policy!r} ({', '.join(ROUTING_POLICIES)})")
