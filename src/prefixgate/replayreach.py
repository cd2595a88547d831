"""The oracle over a replayed column: each request against an ideal cache and the runtime.

``bench/replay.py`` replays recorded requests through one path to an upstream
(a column); ``reach_column`` then does, over the prompts as the upstream saw
them, the bookkeeping the gateway's observer does live (``core/oracle.py``):
per request the oracle, what a runtime of the column's capacity should have
served, what it did, and what it lost and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prefixgate.core.misses import prefix_tokens
from prefixgate.core.oracle import Capacity, ReachTracker, judge_loss, prompt_chain
from prefixgate.replay import CaptureRecord, ReplayResult, view_of


@dataclass(frozen=True)
class Reached:
    """One replayed request against an ideal cache and the runtime's model, in tokens.

    ``oracle``: the longest prefix it shares with any earlier prompt of the
    column; ``expected``: what a runtime of the column's capacity holds of it;
    ``actual``: what the runtime served; ``lost``: ``expected - actual`` beyond
    noise, with its ``cause`` (``core/oracle.py``; ``capacity`` when only the
    runtime's size stood between the oracle and what it served).
    """

    index: int
    prompt_tokens: int | None
    oracle: int | None
    expected: int | None
    actual: int | None
    lost: int
    cause: str


def reach_column(
    records: Sequence[CaptureRecord],
    results: Sequence[ReplayResult],
    capacity: Capacity,
    tokens: Mapping[str, int],
    *,
    attribution_removed: bool = False,
) -> list[Reached]:
    """Oracle, expected and actual for each request of one column, in its order.

    The same bookkeeping the gateway's observer does (``prompt_chain``,
    ``ReachTracker``, ``judge_loss``), over the prompts as the upstream saw them
    (``view_of``). ``tokens`` maps piece digests to token counts (the runtime's
    tokenizer); piece counts are scaled to the prompt size the upstream
    reported. A failed request is compared but not remembered.
    """
    tracker = ReachTracker()
    out: list[Reached] = []
    for record, result in zip(records, results, strict=True):
        view = view_of(record.body, attribution_removed)
        chain = prompt_chain(view)
        reach = tracker.reach("column", chain, capacity)
        size = result.prompt_tokens
        oracle = prefix_tokens(view, reach.oracle, tokens, size)
        expected = prefix_tokens(view, reach.expected, tokens, size)
        ok = result.error is None and result.status == 200
        loss = judge_loss(reach, oracle, expected, result.cached_tokens if ok else None)
        out.append(
            Reached(
                index=record.index,
                prompt_tokens=size,
                oracle=oracle,
                expected=expected,
                actual=result.cached_tokens,
                lost=loss.lost_by_runtime if loss else 0,
                cause=loss.cause if loss else "unknown",
            )
        )
        if ok:
            total = size if size is not None else sum(tokens.get(p.digest, 0) for p in view.pieces)
            tracker.remember("column", chain, total, capacity)
    return out


def reach_pieces(
    records: Sequence[CaptureRecord], *, attribution_removed: bool = False
) -> dict[str, str]:
    """Every distinct piece of ``records`` as the upstream sees them: digest -> text
    (what ``reach_column`` needs token counts of)."""
    pieces: dict[str, str] = {}
    for record in records:
        for piece in view_of(record.body, attribution_removed).pieces:
            pieces.setdefault(piece.digest, piece.text)
    return pieces
