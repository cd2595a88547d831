"""The runtime model after a slot action (core/oracle.py ``place``): a restored
saved prefix counts as expected for the next request, a shortfall on it is
``partial_restore_refused``, what a restart lost beyond it stays ``restarted``,
and a primed slot drops the prompt it held."""

from __future__ import annotations

from prefixgate.core.oracle import Capacity, ReachTracker, RuntimeModel, judge_loss

ONE_SLOT = Capacity(slots=1, tokens=0)
PREFIX = (1, 2, 3)
STUB = (*PREFIX, 9)  # the prefix and the priming request's one-character message
REQUEST = (1, 2, 3, 40, 41)
OTHER = (7, 8)


def test_a_restored_prefix_is_expected_and_marked() -> None:
    tracker = ReachTracker()
    before = tracker.reach("rt", REQUEST, ONE_SLOT)
    assert (before.oracle, before.expected, before.restored) == (0, 0, 0)
    tracker.place("rt", STUB, 1500, ONE_SLOT, restored=True)
    reach = tracker.reach("rt", REQUEST, ONE_SLOT)
    assert (reach.oracle, reach.expected, reach.source, reach.restored) == (3, 3, "slot", 3)
    served = judge_loss(reach, 1400, 1400, 1395, 1400)
    assert served is not None and (served.lost_by_runtime, served.cause) == (0, "none")
    refused = judge_loss(reach, 1400, 1400, 0, 1400)
    assert refused is not None
    assert (refused.lost_by_runtime, refused.cause) == (1400, "partial_restore_refused")


def test_the_request_after_the_restore_is_no_longer_marked() -> None:
    tracker = ReachTracker()
    tracker.place("rt", STUB, 1500, ONE_SLOT, restored=True)
    tracker.remember("rt", REQUEST, 2000, ONE_SLOT)
    reach = tracker.reach("rt", (*REQUEST, 42), ONE_SLOT)
    assert (reach.expected, reach.restored) == (5, 0)
    loss = judge_loss(reach, 2000, 2000, 0, 0)
    assert loss is not None and loss.cause == "evicted"


def test_after_a_restart_the_restored_head_is_current_and_the_rest_restarted() -> None:
    tracker = ReachTracker()
    tracker.remember("rt", REQUEST, 2000, ONE_SLOT)
    tracker.restarted("rt")
    lost = tracker.reach("rt", REQUEST, ONE_SLOT)
    assert (lost.expected, lost.stale, lost.restored) == (5, True, 0)
    tracker.place("rt", STUB, 1500, ONE_SLOT, restored=True)
    reach = tracker.reach("rt", REQUEST, ONE_SLOT)
    assert (reach.expected, reach.stale, reach.restored) == (5, True, 3)
    # the saved prefix served: the conversation after it was lost to the restart
    tail = judge_loss(reach, 2000, 2000, 1500, 1500)
    assert tail is not None and (tail.lost_by_runtime, tail.cause) == (500, "restarted")
    refused = judge_loss(reach, 2000, 2000, 0, 1500)
    assert refused is not None and refused.cause == "partial_restore_refused"
    head = tracker.reach("rt", (*PREFIX, 77), ONE_SLOT)  # only the restored head shared
    assert (head.expected, head.stale, head.restored) == (3, False, 3)


def test_a_restored_prefix_on_an_empty_model_is_not_stale() -> None:
    tracker = ReachTracker()
    tracker.restarted("rt")
    tracker.place("rt", STUB, 1500, ONE_SLOT, restored=True)
    reach = tracker.reach("rt", REQUEST, ONE_SLOT)
    assert (reach.expected, reach.stale, reach.restored) == (3, False, 3)


def test_a_primed_slot_drops_its_prompt_instead_of_caching_it() -> None:
    model = RuntimeModel(Capacity(slots=1, tokens=1_000_000))
    model.remember(REQUEST, 2000)
    model.place(STUB, 1500)  # a priming request pinned to the slot
    landing = model.land(REQUEST)
    assert (landing.pieces, landing.source, landing.restored) == (3, "slot", 0)
    assert model.held_prompts == 1
    model.remember(OTHER, 10)  # the primed prompt goes to the RAM cache as usual
    assert model.land(REQUEST).source == "ram_partial"
