"""What the audit says about prompt-cache reuse: per session, in total, and why it missed.

Pure functions over a sequence of ``AuditRecord`` values (no I/O, no clock):

``build_report``   totals, one row per (tenant, session), miss causes with examples
``render_report``  rich tables for a terminal, fitted to its width (``reporttables.py``)
``report_json``    the same numbers as plain JSON-ready values

Rules, shared with the dashboard (which is built from ``build_report``):

* Cache numbers cover ``message`` and ``probe`` requests; ``count_tokens``
  requests are counted as requests but never touch a cache.
* Unknown is never zero. A request is *measured* when its prompt and actual
  cached tokens are both known; the hit share is cached / prompt over measured
  requests only, and requests that are not measured are counted as
  ``unknown_cached``. The expected share is expected / prompt over requests whose
  prompt and expected tokens are known. A share over no known tokens is ``None``.
* Tokens saved are the cached tokens. Time saved is an *estimate*: each
  measured request's cached tokens times the median prefill time per uncached
  token on its upstream (``ttfb_ms / (prompt_tokens - cached_tokens)`` over
  successful requests where that denominator is positive); ``None`` when no
  measured request has an upstream with such a rate.
* An error is a request with ``error`` set or a status of 400 or more.
* Oracle, runtime expected and lost (``core/oracle.py``): ``oracle_tokens`` and
  ``runtime_expected_tokens`` are summed over requests where each is known. The
  share of the oracle reached is actual / oracle over requests where both are
  known. Lost tokens are counted by cause: ``capacity`` is oracle - runtime
  expected where that is more than noise, every other cause is the record's
  ``lost_by_runtime`` (``lost_by_cause``); together they make up the gap
  between oracle and actual.
* Money saved, only where the user configured prices for the upstream
  (``price_input`` and ``price_cached`` per million tokens, ``Prices``): each
  measured request's cached tokens times (input price - cached price) / 1e6,
  by the record's upstream; ``None`` (nothing shown) when no measured request
  went to an upstream with prices. ``money`` splits it by upstream and model.
  The currency is whatever the prices were given in.
* Saved prefixes of the bundled runtime: ``restores`` counts the requests whose
  ``restored_tokens`` is known (a restore came right before them, whatever
  their outcome) and ``restored_tokens`` sums it (``None`` when there is none).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from prefixgate.config.upstream import UpstreamConfig
from prefixgate.core.misses import CAUSE_WORDS
from prefixgate.core.oracle import LOSS_CAUSES, LOSS_WORDS, capacity_gap
from prefixgate.reporttables import (
    UNKNOWN,
    format_agents,
    format_count,
    format_duration,
    format_money,
    format_share,
    format_time,
    render_report,
)
from prefixgate.store.audit import AuditRecord

__all__ = [
    "CACHE_KINDS",
    "HIT",
    "UNKNOWN",
    "CauseExample",
    "CauseRow",
    "LostRow",
    "MoneyRow",
    "PrefillRate",
    "Prices",
    "Report",
    "SessionRow",
    "Totals",
    "build_report",
    "cause_words",
    "format_agents",
    "format_count",
    "format_duration",
    "format_money",
    "format_share",
    "format_time",
    "is_error",
    "lost_by_cause",
    "prices_of",
    "render_report",
    "report_json",
]

CACHE_KINDS = frozenset({"message", "probe"})
HIT = "none"


@dataclass(frozen=True)
class LostRow:
    """Tokens lost between oracle and actual for one cause, and in how many requests."""

    cause: str
    tokens: int
    requests: int

    @property
    def words(self) -> str:
        return LOSS_WORDS.get(self.cause, LOSS_WORDS["unknown"])


@dataclass(frozen=True)
class Prices:
    """The user's prices per million tokens for one upstream (``price_*`` keys)."""

    input: float
    cached: float
    output: float | None = None

    def saved(self, cached_tokens: int) -> float:
        """What ``cached_tokens`` would have cost more at the input price."""
        return cached_tokens * (self.input - self.cached) / 1e6


def prices_of(upstreams: Mapping[str, UpstreamConfig]) -> dict[str, Prices]:
    """The configured prices by upstream name; upstreams without prices are left out."""
    return {
        name: Prices(up.price_input, up.price_cached, up.price_output)
        for name, up in upstreams.items()
        if up.price_input is not None and up.price_cached is not None
    }


@dataclass(frozen=True)
class MoneyRow:
    """Money the cache saved on one upstream and model, at the user's prices."""

    upstream: str
    model: str | None
    requests: int  # measured requests
    cached_tokens: int
    price_input: float
    price_cached: float
    saved: float


@dataclass(frozen=True)
class Totals:
    """Numbers over a set of requests. Token sums are ``None`` when no request
    in the set has them known; ``*_base_tokens`` are the shares' denominators."""

    requests: int
    errors: int
    unknown_cached: int
    unknown_expected: int
    prompt_tokens: int | None
    cached_tokens: int | None
    expected_cached_tokens: int | None
    hit_base_tokens: int
    expected_base_tokens: int
    time_saved_estimate_ms: float | None
    agents: tuple[tuple[str, int], ...]
    oracle_tokens: int | None = None
    runtime_expected_tokens: int | None = None
    reached_tokens: int = 0  # actual, over requests whose oracle is known
    reached_base_tokens: int = 0  # their oracle
    lost: tuple[LostRow, ...] = ()
    money_saved: float | None = None  # at the user's prices; None: none configured
    restores: int = 0  # requests a saved-prefix restore came right before
    restored_tokens: int | None = None  # their prompts' tokens it restored; None: no restore

    @property
    def oracle_share(self) -> float | None:
        """Actual over oracle tokens, where both are known: how much of the oracle was reached."""
        return _share(self.reached_tokens, self.reached_base_tokens)

    @property
    def hit_share(self) -> float | None:
        """Cached over prompt tokens, over measured requests only."""
        return _share(self.cached_tokens, self.hit_base_tokens)

    @property
    def expected_share(self) -> float | None:
        """Expected cached over prompt tokens, where both are known."""
        return _share(self.expected_cached_tokens, self.expected_base_tokens)

    @property
    def tokens_saved(self) -> int | None:
        return self.cached_tokens


@dataclass(frozen=True)
class SessionRow:
    tenant: str
    session: str | None
    first_time: float
    last_time: float
    totals: Totals


@dataclass(frozen=True)
class CauseExample:
    """The latest request that missed for a cause."""

    tenant: str
    session: str | None
    time: float
    changed_segment: str | None
    cause_detail: str | None


@dataclass(frozen=True)
class CauseRow:
    cause: str
    count: int
    example: CauseExample

    @property
    def words(self) -> str:
        """The cause the way a person would act on it."""
        return cause_words(self.cause)


def cause_words(cause: str) -> str:
    """What ``cause`` means and what to do about it (``core/misses.py``'s words)."""
    return CAUSE_WORDS.get(cause, "an unknown cause")


@dataclass(frozen=True)
class PrefillRate:
    """Median milliseconds to first byte per uncached prompt token on an upstream."""

    upstream: str | None
    ms_per_token: float
    samples: int


@dataclass(frozen=True)
class Report:
    totals: Totals
    sessions: tuple[SessionRow, ...]
    causes: tuple[CauseRow, ...]
    prefill_rates: tuple[PrefillRate, ...]
    money: tuple[MoneyRow, ...] = ()


# -- building (pure) --------------------------------------------------------


def build_report(
    records: Sequence[AuditRecord], prices: Mapping[str, Prices] | None = None
) -> Report:
    """Totals, per-session rows (in order of first request) and miss causes
    (most frequent first) over ``records``; money saved where ``prices`` (by
    upstream name) has the record's upstream."""
    prices = prices or {}
    rates = _prefill_rates(records)
    by_rate = {r.upstream: r.ms_per_token for r in rates}
    groups: dict[tuple[str, str | None], list[AuditRecord]] = defaultdict(list)
    for rec in records:
        groups[(rec.tenant, rec.session)].append(rec)
    sessions = [
        SessionRow(
            tenant=tenant,
            session=session,
            first_time=min(r.time for r in group),
            last_time=max(r.time for r in group),
            totals=_totals(group, by_rate, prices),
        )
        for (tenant, session), group in groups.items()
    ]
    sessions.sort(key=lambda row: row.first_time)
    return Report(
        totals=_totals(records, by_rate, prices),
        sessions=tuple(sessions),
        causes=_causes(records),
        prefill_rates=rates,
        money=_money(records, prices),
    )


def is_error(rec: AuditRecord) -> bool:
    return rec.error is not None or rec.status >= 400


def _measured(rec: AuditRecord) -> bool:
    return (
        rec.kind in CACHE_KINDS and rec.prompt_tokens is not None and rec.cached_tokens is not None
    )


def _totals(
    records: Sequence[AuditRecord],
    rates: dict[str | None, float],
    prices: Mapping[str, Prices],
) -> Totals:
    cache = [r for r in records if r.kind in CACHE_KINDS and not is_error(r)]
    measured = [r for r in cache if _measured(r)]
    expected = [
        r for r in cache if r.prompt_tokens is not None and r.expected_cached_tokens is not None
    ]
    saved = [(r.cached_tokens or 0) * rates[r.upstream] for r in measured if r.upstream in rates]
    reached = [r for r in measured if r.oracle_tokens is not None]
    money = [
        prices[r.upstream].saved(r.cached_tokens or 0)
        for r in measured
        if r.upstream is not None and r.upstream in prices
    ]
    agents = Counter(r.agent or "?" for r in records)
    return Totals(
        requests=len(records),
        errors=sum(1 for r in records if is_error(r)),
        unknown_cached=len(cache) - len(measured),
        unknown_expected=len(cache) - len(expected),
        prompt_tokens=_sum(r.prompt_tokens for r in cache),
        cached_tokens=_sum(r.cached_tokens for r in measured),
        expected_cached_tokens=_sum(r.expected_cached_tokens for r in expected),
        hit_base_tokens=sum(r.prompt_tokens or 0 for r in measured),
        expected_base_tokens=sum(r.prompt_tokens or 0 for r in expected),
        time_saved_estimate_ms=sum(saved) if saved else None,
        agents=tuple(sorted(agents.items(), key=lambda kv: (-kv[1], kv[0]))),
        oracle_tokens=_sum(r.oracle_tokens for r in cache),
        runtime_expected_tokens=_sum(r.runtime_expected_tokens for r in cache),
        reached_tokens=sum(r.cached_tokens or 0 for r in reached),
        reached_base_tokens=sum(r.oracle_tokens or 0 for r in reached),
        lost=_lost(cache),
        money_saved=sum(money) if money else None,
        restores=sum(1 for r in records if r.restored_tokens is not None),
        restored_tokens=_sum(r.restored_tokens for r in records),
    )


def _priced(rec: AuditRecord) -> bool:
    return not is_error(rec) and _measured(rec)


def _money(records: Sequence[AuditRecord], prices: Mapping[str, Prices]) -> tuple[MoneyRow, ...]:
    """Money saved per (upstream, model) over measured requests to priced upstreams."""
    groups: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for rec in records:
        if rec.upstream is not None and rec.upstream in prices and _priced(rec):
            groups[(rec.upstream, rec.model)].append(rec.cached_tokens or 0)
    rows = []
    for (upstream, model), cached in groups.items():
        price = prices[upstream]
        rows.append(
            MoneyRow(
                upstream=upstream,
                model=model,
                requests=len(cached),
                cached_tokens=sum(cached),
                price_input=price.input,
                price_cached=price.cached,
                saved=price.saved(sum(cached)),
            )
        )
    return tuple(sorted(rows, key=lambda row: (-row.saved, row.upstream, row.model or "")))


def lost_by_cause(rec: AuditRecord) -> list[tuple[str, int]]:
    """Tokens ``rec`` lost between oracle and actual, by cause (see the module docstring).

    Causes outside ``LOSS_CAUSES`` count as ``unknown``, so the values stay bounded."""
    out = []
    capacity = capacity_gap(rec.oracle_tokens, rec.runtime_expected_tokens)
    if capacity:
        out.append(("capacity", capacity))
    if rec.lost_by_runtime:
        cause = rec.lost_cause if rec.lost_cause in LOSS_CAUSES else "unknown"
        out.append((cause if cause not in ("none", "capacity") else "unknown", rec.lost_by_runtime))
    return out


def _lost(records: Sequence[AuditRecord]) -> tuple[LostRow, ...]:
    tokens: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    for rec in records:
        for cause, lost in lost_by_cause(rec):
            tokens[cause] += lost
            requests[cause] += 1
    rows = [LostRow(cause, tokens[cause], requests[cause]) for cause in tokens]
    return tuple(sorted(rows, key=lambda row: (-row.tokens, row.cause)))


def _sum(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _share(part: int | None, whole: int) -> float | None:
    return part / whole if part is not None and whole > 0 else None


def _prefill_rates(records: Sequence[AuditRecord]) -> tuple[PrefillRate, ...]:
    samples: dict[str | None, list[float]] = defaultdict(list)
    for rec in records:
        if is_error(rec) or rec.ttfb_ms is None or not _measured(rec):
            continue
        uncached = (rec.prompt_tokens or 0) - (rec.cached_tokens or 0)
        if uncached > 0:
            samples[rec.upstream].append(rec.ttfb_ms / uncached)
    return tuple(
        PrefillRate(upstream, statistics.median(values), len(values))
        for upstream, values in sorted(samples.items(), key=lambda kv: kv[0] or "")
    )


def _causes(records: Sequence[AuditRecord]) -> tuple[CauseRow, ...]:
    counts: Counter[str] = Counter()
    latest: dict[str, AuditRecord] = {}
    for rec in records:
        if rec.cause is None or rec.cause == HIT:
            continue
        counts[rec.cause] += 1
        if rec.cause not in latest or rec.time >= latest[rec.cause].time:
            latest[rec.cause] = rec
    rows = [
        CauseRow(cause, count, _example(latest[cause]))
        for cause, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return tuple(rows)


def _example(rec: AuditRecord) -> CauseExample:
    return CauseExample(rec.tenant, rec.session, rec.time, rec.changed_segment, rec.cause_detail)


# -- JSON -------------------------------------------------------------------


def report_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready values, shares included (``None`` = unknown)."""
    return {
        "totals": _totals_json(report.totals),
        "sessions": [
            {
                "tenant": row.tenant,
                "session": row.session,
                "first_time": row.first_time,
                "last_time": row.last_time,
                **_totals_json(row.totals),
            }
            for row in report.sessions
        ],
        "causes": [asdict(row) | {"words": row.words} for row in report.causes],
        "prefill_rates": [asdict(rate) for rate in report.prefill_rates],
        "money": [asdict(row) for row in report.money],
    }


def _totals_json(totals: Totals) -> dict[str, Any]:
    data = asdict(totals)
    data["agents"] = dict(totals.agents)
    data["hit_share"] = totals.hit_share
    data["expected_share"] = totals.expected_share
    data["tokens_saved"] = totals.tokens_saved
    data["oracle_share"] = totals.oracle_share
    data["lost"] = {
        row.cause: {"tokens": row.tokens, "requests": row.requests} for row in totals.lost
    }
    return data
