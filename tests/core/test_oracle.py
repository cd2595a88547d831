"""The oracle (any earlier prompt), the runtime model (slots and RAM cache) and the
cause of what a runtime lost."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefixgate.core.misses import TOLERANCE_TOKENS
from prefixgate.core.oracle import (
    BUNDLED_KV_BYTES_PER_TOKEN,
    LOSS_CAUSES,
    LOSS_WORDS,
    Capacity,
    PrefixOracle,
    Reach,
    ReachTracker,
    RuntimeModel,
    capacity_gap,
    common_prefix,
    judge_loss,
    prompt_chain,
    ram_cache_tokens,
)
from prefixgate.core.prompt import PromptView, prompt_view

SYSTEM = "You are Claude Code."
SUBAGENT = "You are a subagent that searches files."


def view(*turns: str, system: str = SYSTEM, model: str = "m") -> PromptView:
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": text}
        for i, text in enumerate(turns)
    ]
    body: dict[str, Any] = {
        "model": model,
        "system": system,
        "tools": [{"name": "Bash", "description": "run"}],
        "messages": messages,
    }
    return prompt_view(body, None)


def chain(*turns: str, system: str = SYSTEM, model: str = "m") -> tuple[int, ...]:
    return prompt_chain(view(*turns, system=system, model=model))


# -- chains and the oracle ----------------------------------------------------------------


def test_chains_share_exactly_the_common_leading_pieces() -> None:
    a, b = chain("hi", "hello", "more"), chain("hi", "hello", "other")
    assert len(a) == len(view("hi", "hello", "more").pieces)
    assert a[:-1] == b[:-1] and a[-1] != b[-1]
    assert chain("hi", model="m2")[0] != chain("hi")[0]  # another model shares nothing
    assert common_prefix(b, set(a)) == len(a) - 1
    assert common_prefix(a, set()) == 0 and common_prefix((), set(a)) == 0


def test_the_oracle_finds_the_longest_prefix_of_any_earlier_prompt() -> None:
    oracle = PrefixOracle()
    main = chain("fix the bug", "looking", "go on")
    sub = chain("search for foo", system=SUBAGENT)
    oracle.remember(main)
    oracle.remember(sub)
    resumed = chain("fix the bug", "looking", "go on", "found it", "thanks")
    assert oracle.longest(resumed) == len(main)  # older than the last prompt, still found
    assert oracle.longest(chain("search for foo", "x", "y", system=SUBAGENT)) == len(sub)
    assert oracle.longest(chain("new", system="another system")) == 0


def test_the_oracle_is_bounded_and_stays_prefix_closed() -> None:
    oracle = PrefixOracle(max_nodes=12)
    prompts = [chain(f"conversation {i}", "answer", "next") for i in range(10)]
    for c in prompts:
        oracle.remember(c)
        assert len(oracle) <= 12
    last = prompts[-1]
    assert oracle.longest(last) == len(last)  # the most recent is whole
    assert oracle.longest(prompts[0]) < len(prompts[0])  # the oldest lost its tail
    # whatever is left of a chain is a prefix of it: never a hole in the middle
    for c in prompts:
        kept = [h in oracle._nodes for h in c]
        assert kept == sorted(kept, reverse=True)


@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=6), min_size=1, max_size=30))
def test_the_oracle_matches_a_scan_of_every_remembered_prompt(paths: list[list[int]]) -> None:
    oracle = PrefixOracle()
    seen: list[tuple[int, ...]] = []
    for path in paths:
        c = chain(*(f"turn {x}" for x in path))
        scan = max((_lcp(c, s) for s in seen), default=0)
        assert oracle.longest(c) == scan
        oracle.remember(c)
        seen.append(c)


def _lcp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# -- the runtime model --------------------------------------------------------------------


def test_one_slot_without_ram_holds_only_the_last_prompt() -> None:
    model = RuntimeModel(Capacity(slots=1, tokens=0))
    main = chain("fix the bug", "looking", "go on")
    model.remember(main, 1000)
    model.remember(chain("search", system=SUBAGENT), 300)
    landing = model.land(chain("fix the bug", "looking", "go on", "found", "ok"))
    assert landing.pieces == 0 and landing.source == "none"


def test_two_slots_keep_main_agent_and_subagent_apart() -> None:
    model = RuntimeModel(Capacity(slots=2))
    main, sub = chain("fix the bug", "looking", "go on"), chain("search", system=SUBAGENT)
    model.remember(main, 1000)
    model.remember(sub, 300)
    resumed = chain("fix the bug", "looking", "go on", "found", "ok")
    landing = model.land(resumed)
    assert (landing.pieces, landing.source) == (len(main), "slot")
    assert model.land(sub).slot != landing.slot


def test_the_least_recently_used_slot_takes_a_prompt_that_shares_nothing() -> None:
    model = RuntimeModel(Capacity(slots=2))
    first, second = chain("one", system="a"), chain("two", system="b")
    model.remember(first, 10)
    model.remember(second, 10)
    model.remember(chain("one", "x", "y", system="a"), 10)  # touches the first slot
    model.remember(chain("three", system="c"), 10)  # evicts the second (least recent)
    assert model.land(second).pieces == 0
    assert model.land(first).pieces == len(first)


def test_the_ram_cache_restores_an_evicted_prompt_exactly_extended() -> None:
    model = RuntimeModel(Capacity(slots=1, tokens=10_000))
    main = chain("fix the bug", "looking", "go on")
    model.remember(main, 1000)
    model.remember(chain("search", system=SUBAGENT), 300)  # main goes to RAM
    landing = model.land(chain("fix the bug", "looking", "go on", "found", "ok"))
    assert (landing.pieces, landing.source) == (len(main), "ram_exact")
    model.remember(chain("fix the bug", "looking", "go on", "found", "ok"), 1200)
    assert model.held_prompts == 2  # main left the RAM cache; the subagent entered it


def test_a_partial_ram_match_is_expected_and_named() -> None:
    model = RuntimeModel(Capacity(slots=1, tokens=10_000))
    main = chain("fix the bug", "looking", "go on")
    model.remember(main, 1000)
    model.remember(chain("search", system=SUBAGENT), 300)
    rewound = chain("fix the bug", "looking", "something else")
    landing = model.land(rewound)
    assert (landing.pieces, landing.source) == (len(main) - 1, "ram_partial")


def test_reach_says_what_exact_restores_alone_would_serve() -> None:
    tracker = ReachTracker()
    cap = Capacity(slots=1, tokens=10_000)
    main = chain("fix the bug", "looking", "go on")
    tracker.remember("t", main, 1000, cap)
    tracker.remember("t", chain("search", system=SUBAGENT), 300, cap)
    rewound = tracker.reach("t", chain("fix the bug", "looking", "something else"), cap)
    assert (rewound.expected, rewound.source, rewound.exact) == (len(main) - 1, "ram_partial", 0)
    resumed = tracker.reach("t", chain("fix the bug", "looking", "go on", "ok", "more"), cap)
    assert (resumed.expected, resumed.source, resumed.exact) == (len(main), "ram_exact", len(main))


def test_the_ram_cache_is_bounded_by_tokens() -> None:
    model = RuntimeModel(Capacity(slots=1, tokens=1500))
    prompts = [chain(f"conversation {i}", system=f"s{i}") for i in range(4)]
    for c in prompts:
        model.remember(c, 1000)  # each pushes the previous into RAM, which holds one
    assert model.land(prompts[2]).source == "ram_exact"
    assert model.land(prompts[1]).pieces == 0
    assert model.land(prompts[3]).source == "slot"
    too_big = RuntimeModel(Capacity(slots=1, tokens=500))
    too_big.remember(prompts[0], 1000)
    too_big.remember(prompts[1], 1000)
    assert too_big.land(prompts[0]).pieces == 0


def test_a_restart_marks_what_the_model_held_as_stale() -> None:
    model = RuntimeModel(Capacity(slots=1))
    main = chain("fix the bug", "looking")
    model.remember(main, 1000)
    model.restarted()
    assert model.land(chain("fix the bug", "looking", "go on")).stale
    model.remember(chain("fix the bug", "looking", "go on"), 1100)
    assert not model.land(chain("fix the bug", "looking", "go on", "ok")).stale


def test_capacity_is_checked() -> None:
    with pytest.raises(ValueError):
        Capacity(slots=0)
    with pytest.raises(ValueError):
        Capacity(tokens=-1)
    with pytest.raises(ValueError):
        PrefixOracle(max_nodes=0)


# -- the tracker and the verdict ------------------------------------------------------------


def test_the_tracker_keeps_each_replica_apart() -> None:
    tracker = ReachTracker()
    cap = Capacity(slots=1)
    main = chain("fix the bug", "looking")
    tracker.remember("local@a", main, 1000, cap)
    assert tracker.reach("local@a", main, cap).oracle == len(main)
    assert tracker.reach("local@b", main, cap).oracle == 0
    assert tracker.reach("local@b", main, cap, floor=2).oracle == 2
    tracker.restarted("local@a")
    tracker.restarted("never-seen")
    assert tracker.reach("local@a", main, cap).stale
    assert tracker.nodes("local@a") == len(main) and tracker.nodes("local@b") == 0


def test_the_tracker_oracle_outreaches_a_one_slot_runtime() -> None:
    tracker = ReachTracker()
    cap = Capacity(slots=1, tokens=0)
    main = chain("fix the bug", "looking", "go on")
    tracker.remember("t", main, 1000, cap)
    tracker.remember("t", chain("search", system=SUBAGENT), 300, cap)
    reach = tracker.reach("t", chain("fix the bug", "looking", "go on", "found", "ok"), cap)
    assert (reach.oracle, reach.expected, reach.source) == (len(main), 0, "none")


BIG = 10 * TOLERANCE_TOKENS


@pytest.mark.parametrize(
    ("reach", "cause"),
    [
        (Reach(9, 9, "slot", stale=False), "evicted"),
        (Reach(9, 9, "ram_partial", stale=False), "partial_restore_refused"),
        (Reach(9, 9, "slot", stale=True), "restarted"),
        (Reach(9, 9, "ram_exact", stale=False), "unknown"),
    ],
)
def test_a_runtime_that_serves_less_than_expected_lost_tokens(reach: Reach, cause: str) -> None:
    loss = judge_loss(reach, oracle=BIG, expected=BIG, actual=0)
    assert loss is not None
    assert (loss.lost_by_runtime, loss.cause, loss.capacity_tokens) == (BIG, cause, 0)


def test_capacity_when_the_oracle_had_more_than_the_runtime_could_hold() -> None:
    loss = judge_loss(Reach(9, 3, "slot", stale=False), oracle=2 * BIG, expected=BIG, actual=BIG)
    assert loss is not None
    assert (loss.lost_by_runtime, loss.cause, loss.capacity_tokens) == (0, "capacity", BIG)
    both = judge_loss(Reach(9, 3, "slot", stale=False), oracle=2 * BIG, expected=BIG, actual=0)
    assert both is not None
    assert (both.lost_by_runtime, both.cause, both.capacity_tokens) == (BIG, "evicted", BIG)


def test_noise_is_no_loss_and_unknown_actual_is_no_verdict() -> None:
    reach = Reach(9, 9, "slot", stale=False)
    loss = judge_loss(reach, oracle=BIG, expected=BIG, actual=BIG - TOLERANCE_TOKENS // 2)
    assert loss is not None and (loss.lost_by_runtime, loss.cause) == (0, "none")
    assert judge_loss(reach, oracle=BIG, expected=BIG, actual=None) is None
    assert capacity_gap(None, 5) == 0 and capacity_gap(BIG, BIG - 1) == 0


def test_every_loss_cause_has_words() -> None:
    assert set(LOSS_WORDS) == set(LOSS_CAUSES)


def test_the_bundled_runtimes_ram_cache_in_tokens() -> None:
    assert BUNDLED_KV_BYTES_PER_TOKEN == 18_432
    assert ram_cache_tokens(None) == ram_cache_tokens(8192) == 466_033
    assert ram_cache_tokens(0) == 0
    assert ram_cache_tokens(-1) > 10**9
    assert ram_cache_tokens(1, bytes_per_token=1024) == 1024
