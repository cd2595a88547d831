"""Expected vs actual cached tokens, and the cause the tracker gives each miss."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefixgate.core.misses import (
    CAUSE_WORDS,
    CAUSES,
    TOLERANCE_TOKENS,
    CacheTracker,
    Comparison,
    Owner,
    Verdict,
    compare,
    expected_tokens,
    is_miss,
    prefix_tokens,
    verdict,
)
from prefixgate.core.prompt import PromptView, prompt_view
from prefixgate.core.promptdiff import CAUSE_OF_SECTION

TENANT = "acme"
ALICE = Owner(TENANT, "aaaaaaaa-1111-4111-8111-111111111111", "main")
ALICE_SUB = Owner(TENANT, ALICE.session, "sub")
BOB = Owner(TENANT, "bbbbbbbb-2222-4222-8222-222222222222", "main")
MALLORY = Owner("other-tenant", "cccccccc-3333-4333-8333-333333333333", "main")
UPSTREAM = "local"


def view(
    *turns: str, system: str = "You are Claude Code.", tools: tuple[str, ...] = ("Bash",)
) -> PromptView:
    """A request whose messages alternate user/assistant with the texts ``turns``."""
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": text}
        for i, text in enumerate(turns)
    ]
    body: dict[str, Any] = {
        "model": "m",
        "system": system,
        "tools": [{"name": name, "description": name.lower()} for name in tools],
        "messages": messages,
    }
    return prompt_view(body, None)


def compared(
    v: PromptView,
    session_prev: PromptView | None = None,
    upstream_prev: tuple[Owner, PromptView] | None = None,
    owner: Owner = ALICE,
) -> Comparison:
    return compare(v, owner, session_prev, upstream_prev)


# -- Owner ---------------------------------------------------------------------


def test_an_owner_of_the_same_tenant_is_named_by_a_short_session() -> None:
    assert ALICE_SUB.describe(TENANT) == "session aaaaaaaa (sub)"


def test_another_tenants_session_is_never_named() -> None:
    described = MALLORY.describe(TENANT)
    assert described == "a request of another tenant"
    assert MALLORY.session[:8] not in described


# -- compare -------------------------------------------------------------------


def test_no_reference_is_no_change() -> None:
    cmp = compared(view("hi"))
    assert cmp == Comparison(
        change=None,
        reference=None,
        session_change=None,
        upstream_change=None,
        session_common=0,
        upstream_common=0,
        has_session_ref=False,
        has_upstream_ref=False,
        interloper=None,
    )
    assert cmp.predicted_cause == "none"


def test_the_session_reference_wins_over_the_upstream() -> None:
    previous, current = view("hi"), view("hi", "hello", "list files")
    other = view("hi", system="You are a title generator.")
    # the upstream's last request had another system prompt, the session's did not
    cmp = compared(current, previous, (BOB, other))
    assert cmp.upstream_change is not None
    assert cmp.upstream_change.cause == "system_prompt_changed"
    assert cmp.change is None and cmp.reference is None
    assert cmp.predicted_cause == "none"
    assert cmp.has_session_ref
    # and the other way round: the session's prompt changed, the upstream's matches
    changed = view("hi", "hello", system="You are a title generator.")
    cmp = compared(changed, previous, (BOB, other))
    assert cmp.change is not None and cmp.change.cause == "system_prompt_changed"
    assert cmp.reference == "session"
    assert cmp.change == cmp.session_change


def test_a_first_request_is_judged_against_the_upstreams_last() -> None:
    other = view("something else", tools=("Bash", "Read"))
    cmp = compared(view("hi"), None, (BOB, other))
    assert cmp.change is not None
    assert (cmp.change.cause, cmp.change.segment) == ("tools_changed", "tools:Read")
    assert cmp.reference == "upstream"
    assert not cmp.has_session_ref
    assert cmp.session_change is None
    assert cmp.interloper is None  # no earlier request of ours to be evicted


def test_another_sessions_conversation_is_no_change() -> None:
    cmp = compared(view("hi"), None, (BOB, view("something else", "answer")))
    assert cmp.change is None and cmp.upstream_change is None
    assert cmp.predicted_cause == "none"
    # but what the two share still counts towards what the cache can serve
    assert cmp.upstream_common == 2  # system[0], tools:Bash
    shorter = compared(view("hi"), None, (BOB, view("hi", "answer", "more")))
    assert shorter.change is None


def test_an_interloper_is_the_upstreams_last_owner_when_not_us() -> None:
    previous = view("hi")
    current = view("hi", "hello", "next")
    assert compared(current, previous, (ALICE, previous)).interloper is None
    assert compared(current, previous, (ALICE_SUB, view("task"))).interloper == (
        "session aaaaaaaa (sub)"
    )
    assert compared(current, previous, (BOB, view("x"))).interloper == "session bbbbbbbb (main)"
    assert compared(current, previous, (MALLORY, view("x"))).interloper == (
        "a request of another tenant"
    )


def test_common_pieces_against_each_reference() -> None:
    previous = view("hi", "hello")
    current = view("hi", "hello", "next")
    cmp = compared(current, previous, (BOB, view("other")))
    assert cmp.session_common == len(previous.pieces) == 4
    assert cmp.upstream_common == 2


# -- CacheTracker --------------------------------------------------------------


def test_the_tracker_remembers_per_owner_and_per_upstream() -> None:
    tracker = CacheTracker()
    first = tracker.observe(UPSTREAM, ALICE, view("hi"))
    assert not first.has_session_ref and first.upstream_common == 0
    second = tracker.observe(UPSTREAM, ALICE, view("hi", "hello", "next"))
    assert second.has_session_ref
    assert second.session_common == 3 and second.interloper is None
    # another upstream has its own last request
    elsewhere = tracker.observe("remote", BOB, view("other"))
    assert elsewhere.upstream_common == 0


def test_remember_false_leaves_the_tracker_untouched() -> None:
    tracker = CacheTracker()
    tracker.observe(UPSTREAM, ALICE, view("hi"))
    counted = tracker.observe(UPSTREAM, BOB, view("x"), remember=False)
    assert counted.upstream_common == 2  # it was compared ...
    never_seen = tracker.observe(UPSTREAM, BOB, view("x", "y", "z"), remember=False)
    assert not never_seen.has_session_ref  # ... but not remembered for its owner
    later = tracker.observe(UPSTREAM, ALICE, view("hi", "hello", "next"))
    assert later.interloper is None  # nor as the upstream's last request
    assert later.has_session_ref and later.session_common == 3


def test_the_limit_forgets_the_least_recently_seen_owner() -> None:
    tracker = CacheTracker(limit=2)
    tracker.observe(UPSTREAM, ALICE, view("a"))
    tracker.observe(UPSTREAM, BOB, view("b"))
    tracker.observe(UPSTREAM, ALICE, view("a", "1", "2"))  # Alice is now the most recent
    tracker.observe(UPSTREAM, ALICE_SUB, view("s"))  # evicts Bob
    assert not tracker.observe(UPSTREAM, BOB, view("b", "1", "2")).has_session_ref
    # Bob came back and pushed out the least recent of the two others: Alice
    assert tracker.observe(UPSTREAM, ALICE_SUB, view("s", "1", "2")).has_session_ref
    assert not tracker.observe(UPSTREAM, ALICE, view("a", "1", "2", "3", "4")).has_session_ref


# -- tokens --------------------------------------------------------------------


def tokens_for(v: PromptView, *counts: int) -> dict[str, int]:
    assert len(counts) == len(v.pieces)
    return {p.digest: n for p, n in zip(v.pieces, counts, strict=True)}


def test_prefix_tokens_counts_the_leading_pieces() -> None:
    v = view("hi", "hello")  # system, tool, two messages
    tokens = tokens_for(v, 100, 50, 10, 40)
    assert prefix_tokens(v, 0, tokens, None) == 0
    assert prefix_tokens(v, 2, tokens, None) == 150
    assert prefix_tokens(v, 4, tokens, None) == 200
    # scaled to the reported prompt size: template tokens shared out in proportion
    assert prefix_tokens(v, 2, tokens, 400) == 300
    assert prefix_tokens(v, 4, tokens, 400) == 400
    assert prefix_tokens(v, 2, tokens, 0) == 0


def test_prefix_tokens_with_unknown_pieces() -> None:
    v = view("hi", "hello")
    assert prefix_tokens(v, 4, {}, 500) == 0
    assert prefix_tokens(v, 4, {v.pieces[0].digest: 30}, None) == 30


def test_expected_tokens_uses_the_longer_reference() -> None:
    v = view("hi", "hello")
    tokens = tokens_for(v, 100, 50, 10, 40)
    session_longer = compared(v, view("hi"), (BOB, view("x")))
    assert (session_longer.session_common, session_longer.upstream_common) == (3, 2)
    assert expected_tokens(v, session_longer, tokens, None) == 160
    upstream_longer = compared(v, view("hi", system="other"), (BOB, view("hi")))
    assert (upstream_longer.session_common, upstream_longer.upstream_common) == (0, 3)
    assert expected_tokens(v, upstream_longer, tokens, None) == 160
    assert expected_tokens(v, compared(v), tokens, None) == 0


@pytest.mark.parametrize(
    ("expected", "actual", "miss"),
    [
        (1000, 1000, False),
        (1000, 1200, False),
        (1000, 1000 - TOLERANCE_TOKENS, False),
        (1000, 1000 - TOLERANCE_TOKENS - 1, True),
        (100_000, 95_000, False),  # 5% of a large prompt is noise
        (100_000, 94_999, True),
        (0, 0, False),
        (1000, 0, True),
        (None, 0, False),
        (1000, None, False),
        (None, None, False),
    ],
)
def test_is_miss(expected: int | None, actual: int | None, miss: bool) -> None:
    assert is_miss(expected, actual) is miss


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**9))
def test_serving_at_least_what_was_expected_is_never_a_miss(expected: int, extra: int) -> None:
    assert not is_miss(expected, expected + extra)
    assert not is_miss(expected, None)


# -- verdict -------------------------------------------------------------------


def test_a_prefix_change_is_the_cause_whatever_was_served() -> None:
    cmp = compared(view("hi", system="new"), view("hi"), (ALICE, view("hi")))
    judged = verdict(cmp, 5000, 5000)
    assert judged.cause == "system_prompt_changed"
    assert judged.changed_segment == "system[0]"
    assert judged.detail is not None
    assert judged.detail.endswith("(vs the previous request of the session)")
    missed = verdict(cmp, 5000, 1000)
    assert missed.cause == "system_prompt_changed"
    assert missed.detail == (
        f"{judged.detail}; and the upstream served only 1,000 of the 5,000 tokens before it"
    )


def test_a_change_against_the_upstream_says_so() -> None:
    cmp = compared(view("hi", tools=("Read",)), None, (BOB, view("x")))
    judged = verdict(cmp, None, None)
    assert judged.cause == "tools_changed"
    assert judged.detail is not None
    assert judged.detail.endswith("(vs the last request on the upstream)")


def test_within_tolerance_is_none() -> None:
    cmp = compared(view("hi", "a", "b"), view("hi"), (BOB, view("x")))
    assert verdict(cmp, 10_000, 9_990) == Verdict("none", None, None)
    assert verdict(cmp, 10_000, None) == Verdict("none", None, None)  # unknown is never a miss


def test_evicted_by_another_session() -> None:
    cmp = compared(view("hi", "a", "b"), view("hi"), (BOB, view("x")))
    assert verdict(cmp, 10_000, 2_000) == Verdict(
        "evicted_by_other_session",
        None,
        "session bbbbbbbb (main) used the upstream in between; "
        "served 2,000 of 10,000 expected tokens",
    )


def test_evicted_by_another_tenant_never_names_its_session() -> None:
    cmp = compared(view("hi", "a", "b"), view("hi"), (MALLORY, view("x")))
    judged = verdict(cmp, 10_000, 0)
    assert judged.cause == "evicted_by_other_session"
    assert judged.detail is not None
    assert "another tenant" in judged.detail
    assert MALLORY.session not in judged.detail
    assert MALLORY.session[:8] not in judged.detail


def test_upstream_dropped_when_nobody_came_in_between() -> None:
    previous = view("hi")
    cmp = compared(view("hi", "a", "b"), previous, (ALICE, previous))
    assert verdict(cmp, 10_000, 0) == Verdict(
        "upstream_dropped", None, "prefix unchanged; served 0 of 10,000 expected tokens"
    )


def test_causes_cover_every_section() -> None:
    assert set(CAUSE_OF_SECTION.values()) | {"model_changed"} <= set(CAUSES)
    assert len(CAUSES) == len(set(CAUSES))


# -- the tracker, request by request -------------------------------------------


def judge(tracker: CacheTracker, owner: Owner, v: PromptView, actual: int | None) -> Verdict:
    """Observe ``v`` and judge it, one token per character of each piece."""
    cmp = tracker.observe(UPSTREAM, owner, v)
    tokens = {p.digest: len(p.text) for p in v.pieces}
    return verdict(cmp, expected_tokens(v, cmp, tokens, None), actual)


def test_a_session_evicted_by_another_then_dropped_by_the_upstream() -> None:
    tracker = CacheTracker()
    system = "S" * 2000
    assert judge(tracker, ALICE, view("hi", system=system), 0).cause == "none"
    assert judge(tracker, BOB, view("other", system=system), 2000).cause == "none"
    evicted = judge(tracker, ALICE, view("hi", "a", "b", system=system), 0)
    assert evicted.cause == "evicted_by_other_session"
    assert evicted.detail is not None and "session bbbbbbbb (main)" in evicted.detail
    dropped = judge(tracker, ALICE, view("hi", "a", "b", "c", "d", system=system), 10)
    assert dropped.cause == "upstream_dropped"
    served = judge(tracker, ALICE, view("hi", "a", "b", "c", "d", "e", system=system), 3000)
    assert served.cause == "none"
    changed = judge(tracker, ALICE, view("hi", system=system + "!"), 0)
    assert (changed.cause, changed.changed_segment) == ("system_prompt_changed", "system[0]")


# -- the new pieces, between sessions -------------------------------------------


def deferred_view(prompt: str, names: tuple[str, ...], cwd: str = "/home/dev/proj") -> PromptView:
    """A 2.1.332-shaped request: environment and deferred tools in messages[1]."""
    listed = "".join(f"{n}\n" for n in names)
    text = (
        f"# Environment\n - Primary working directory: {cwd}\n\n"
        f"The following deferred tools are now available via ToolSearch:\n{listed}\n"
        "Today's date is 2026-12-06."
    )
    body = {
        "model": "m",
        "system": "You are Claude Code.",
        "tools": [{"name": "ToolSearch"}],
        "messages": [{"role": "user", "content": prompt}, {"role": "system", "content": text}],
    }
    return prompt_view(body, None)


def test_an_mcp_server_added_between_sessions_is_named_against_the_upstream() -> None:
    before = deferred_view("first", ("WebFetch",))
    after = deferred_view("second", ("WebFetch", "mcp__projfs__read_note", "mcp__projfs__ls"))
    cmp = compared(after, upstream_prev=(BOB, before))
    assert cmp.predicted_cause == "deferred_tools_changed"
    assert cmp.change is not None and cmp.change.segment == "deferred_tools"
    judged = verdict(cmp, None, None)
    assert judged.detail == (
        "an MCP server was added between these sessions: mcp__projfs__read_note, "
        "mcp__projfs__ls (vs the last request on the upstream)"
    )
    # the same change within one session is no "between these sessions"
    same = compared(deferred_view("first", after.deferred_names), session_prev=before)
    assert same.change is not None and "between" not in same.change.detail


def test_another_working_directory_between_sessions() -> None:
    before = deferred_view("first", ("WebFetch",))
    after = deferred_view("second", ("WebFetch",), cwd="/home/dev/other")
    cmp = compared(after, upstream_prev=(BOB, before))
    assert cmp.change is not None
    assert (cmp.change.cause, cmp.change.detail) == (
        "environment_changed",
        "the working directory differs: /home/dev/proj -> /home/dev/other",
    )


def test_another_conversation_of_the_same_project_is_no_change() -> None:
    before = deferred_view("first", ("WebFetch",))
    cmp = compared(deferred_view("second", ("WebFetch",)), upstream_prev=(BOB, before))
    assert cmp.change is None
    # what it can reuse: the system prompt and the tools, up to the other first prompt
    assert cmp.upstream_common == 2


def test_every_cause_has_words() -> None:
    assert set(CAUSE_WORDS) == set(CAUSES)
    assert all(CAUSE_WORDS[c] for c in CAUSES)


def test_another_tenants_request_is_neither_counted_nor_described() -> None:
    """Issue: hostile tenants, defect 1: every comparison stays inside one tenant."""
    current = view("hi", tools=("Bash", "Read"))
    mine = compared(current, None, (BOB, view("hi", tools=("Grep",))))
    assert mine.change is not None and "Grep" in mine.change.detail
    assert mine.upstream_common > 0
    theirs = compared(current, None, (MALLORY, view("hi", tools=("Grep",))))
    assert theirs.upstream_change is None and theirs.change is None
    assert theirs.upstream_common == 0
    judged = verdict(theirs, 10_000, 0)
    assert judged.detail is not None and "Grep" not in judged.detail


def test_the_tracker_compares_inside_a_tenant_and_says_only_that_someone_came_between() -> None:
    """Issue: hostile tenants, defect 1: a tenant's first request was compared with the
    upstream's last request, which could be another tenant's."""
    tracker = CacheTracker()
    tracker.observe("up", ALICE, view("hi", tools=("Grep",)))
    tracker.observe("up", MALLORY, view("hi", tools=("Secret",)))
    first_of_bob = tracker.observe("up", BOB, view("hi", tools=("Bash",)))
    assert first_of_bob.upstream_common > 0  # against alice's prompt, same tenant
    assert first_of_bob.change is not None and "Secret" not in first_of_bob.change.detail
    tracker.observe("up", MALLORY, view("hi", tools=("Secret",)))
    again = tracker.observe("up", BOB, view("hi", tools=("Bash",)))
    assert again.interloper == "a request of another tenant"
    first_of_mallory = CacheTracker()
    first_of_mallory.observe("up", ALICE, view("hi", tools=("Grep",)))
    theirs = first_of_mallory.observe("up", MALLORY, view("hi", tools=("Grep",)))
    assert theirs.upstream_common == 0 and theirs.change is None
