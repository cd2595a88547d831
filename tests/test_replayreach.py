"""The oracle over a replayed column (``prefixgate/replayreach.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from prefixgate.core.oracle import Capacity
from prefixgate.replay import CaptureRecord, ReplayResult, load_capture
from prefixgate.replayreach import reach_column, reach_pieces
from prefixgate.upstreams.tokenize import estimate

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "claude-code-2.1.197.jsonl"


@pytest.fixture(scope="module")
def records() -> list[CaptureRecord]:
    return load_capture(CORPUS)


def _served(
    records: list[CaptureRecord], cached: Callable[[int], int | None]
) -> list[ReplayResult]:
    return [
        ReplayResult(r.index, r.session, 200, 20_000, cached(i), 0.1, 0.05)
        for i, r in enumerate(records)
    ]


def test_reach_column_measures_each_request_against_every_earlier_one(
    records: list[CaptureRecord],
) -> None:
    pieces = reach_pieces(records, attribution_removed=True)
    tokens = {digest: estimate(text) for digest, text in pieces.items()}
    big = Capacity(slots=16, tokens=10_000_000)
    ideal = reach_column(records, _served(records, lambda i: 0), big, tokens,
                         attribution_removed=True)  # fmt: skip
    assert ideal[0].oracle == 0 and ideal[0].lost == 0  # nothing came before it
    later = [r for r in ideal[1:] if r.oracle]
    assert later, "the sessions of a project share their system prompt and tools"
    for r in later:
        assert r.oracle is not None and r.expected is not None and r.prompt_tokens is not None
        assert r.expected <= r.oracle <= r.prompt_tokens
    # a runtime that served nothing lost what it should have held
    assert any(r.lost and r.cause != "capacity" for r in ideal)
    # one that served all it should have lost nothing
    expected = {r.index: r.expected for r in ideal}
    full = reach_column(records, _served(records, lambda i: expected[records[i].index]), big,
                        tokens, attribution_removed=True)  # fmt: skip
    assert all(r.lost == 0 for r in full)
    # a one-slot runtime without a RAM cache should hold less than the oracle
    small = reach_column(records, _served(records, lambda i: 0), Capacity(slots=1), tokens,
                         attribution_removed=True)  # fmt: skip
    assert sum(r.expected or 0 for r in small) < sum(r.oracle or 0 for r in small)


def test_reach_column_does_not_remember_a_failed_request(records: list[CaptureRecord]) -> None:
    pieces = reach_pieces(records[:2], attribution_removed=True)
    tokens = {digest: estimate(text) for digest, text in pieces.items()}
    first, second = records[:2]
    failed = [
        ReplayResult(first.index, first.session, 502, None, None, 0.1, None, "x"),
        ReplayResult(second.index, second.session, 200, 20_000, 0, 0.1, 0.05),
    ]
    reached = reach_column(records[:2], failed, Capacity(), tokens, attribution_removed=True)
    assert reached[1].oracle == 0
