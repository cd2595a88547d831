"""Replica choices: consistent hashing with bounded load, round robin, least busy."""

from __future__ import annotations

import collections
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefixgate.core.routing import bounded_pick, ring_order, route_order

R4 = ["http://r0:8080", "http://r1:8080", "http://r2:8080", "http://r3:8080"]


def test_ring_order_lists_every_replica_once_and_is_stable() -> None:
    order = ring_order("key-a", R4)
    assert sorted(order) == sorted(R4)
    assert ring_order("key-a", list(reversed(R4))) == order  # the listing order does not matter


def test_keys_spread_over_the_ring() -> None:
    firsts = collections.Counter(ring_order(f"key-{i}", R4)[0] for i in range(4000))
    assert set(firsts) == set(R4)
    assert max(firsts.values()) / min(firsts.values()) < 1.5  # 160 virtual nodes each


def test_removing_a_replica_moves_only_its_keys() -> None:
    keys = [f"key-{i}" for i in range(2000)]
    before = {k: ring_order(k, R4)[0] for k in keys}
    after = {k: ring_order(k, R4[:3])[0] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == R4[3] for k in moved)
    # and they go where the ring said they would fail over to
    assert all(after[k] == ring_order(k, R4)[1] for k in moved)


def test_bounded_pick_prefers_the_keys_replica_until_it_is_full() -> None:
    home = ring_order("hot", R4)[0]
    assert bounded_pick("hot", R4, {}) == home
    loads = dict.fromkeys(R4, 0)
    chosen = []
    for _ in range(40):  # one hot prefix, 40 sessions
        pick = bounded_pick("hot", R4, loads, 1.25)
        loads[pick] += 1
        chosen.append(pick)
    assert chosen[0] == home
    assert max(loads.values()) <= math.ceil(1.25 * 40 / 4)
    assert min(loads.values()) > 0  # the hot prefix spilled to every replica


@given(
    st.lists(st.integers(0, 50), min_size=1, max_size=6),
    st.floats(1.0, 3.0),
    st.text(max_size=20),
)
def test_bounded_pick_never_exceeds_the_bound(loads: list[int], factor: float, key: str) -> None:
    replicas = [f"http://r{i}" for i in range(len(loads))]
    current = dict(zip(replicas, loads, strict=True))
    pick = bounded_pick(key, replicas, current, factor)
    cap = math.ceil(factor * (sum(loads) + 1) / len(replicas))
    assert current[pick] + 1 <= cap or current[pick] == min(loads)


def test_prefix_affinity_order_is_the_choice_then_the_ring() -> None:
    order = route_order("prefix_affinity", "k", R4, loads={})
    assert order == ring_order("k", R4)
    full = {order[0]: 10}
    spilled = route_order("prefix_affinity", "k", R4, loads=full)
    assert spilled[0] == order[1] and sorted(spilled) == sorted(R4)


def test_round_robin_rotates_with_the_turn() -> None:
    assert [route_order("round_robin", "k", R4, turn=t)[0] for t in range(5)] == [*R4, R4[0]]


def test_least_busy_takes_the_idlest_and_rotates_ties() -> None:
    busy = {R4[0]: 3, R4[1]: 0, R4[2]: 1, R4[3]: 0}
    assert route_order("least_busy", "k", R4, busy=busy, turn=0)[:2] == [R4[1], R4[3]]
    assert route_order("least_busy", "k", R4, busy=busy, turn=3)[:2] == [R4[3], R4[1]]
    assert route_order("least_busy", "k", R4, busy={}, turn=2)[0] == R4[2]


def test_unknown_policy_and_empty_replicas() -> None:
    assert route_order("prefix_affinity", "k", []) == []
    with pytest.raises(ValueError, match="unknown routing policy"):
        route_order("random", "k", R4)
    with pytest.raises(ValueError):
        bounded_pick("k", [], {})
