"""Tests for the cache-reuse report: aggregation, unknowns, estimates, causes, output."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rich.console import Console

from prefixgate.core.misses import CAUSE_WORDS, CAUSES
from prefixgate.report import (
    build_report,
    cause_words,
    format_duration,
    render_report,
    report_json,
)
from prefixgate.store.audit import AuditRecord

T0 = 1_750_000_000.0


def rec(**kw: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "time": T0,
        "route": "/v1/messages",
        "tenant": "acme",
        "session": "s1",
        "model": "claude-opus-4-8",
        "upstream": "local",
        "policy": "strip",
        "status": 200,
        "agent": "main",
    }
    fields.update(kw)
    return AuditRecord(**fields)


def show(renderable: Any) -> str:
    console = Console(record=True, width=220)
    console.print(renderable)
    return console.export_text()


# -- totals and shares ----------------------------------------------------------


def test_shares_are_computed_over_known_numbers_only() -> None:
    records = [
        rec(prompt_tokens=1000, cached_tokens=800, expected_cached_tokens=900),
        rec(prompt_tokens=1000, cached_tokens=None, expected_cached_tokens=1000),
        rec(prompt_tokens=500, cached_tokens=0, expected_cached_tokens=None),
    ]
    t = build_report(records).totals
    assert (t.requests, t.errors) == (3, 0)
    assert t.prompt_tokens == 2500
    assert t.cached_tokens == 800
    assert t.hit_base_tokens == 1500
    assert t.hit_share == pytest.approx(800 / 1500)
    assert t.expected_cached_tokens == 1900
    assert t.expected_base_tokens == 2000
    assert t.expected_share == pytest.approx(1900 / 2000)
    assert (t.unknown_cached, t.unknown_expected) == (1, 1)
    assert t.tokens_saved == 800


def test_unknown_is_not_zero() -> None:
    records = [rec(session="blind", prompt_tokens=1000), rec(session="blind", prompt_tokens=10)]
    report = build_report(records)
    (row,) = report.sessions
    t = row.totals
    assert t.cached_tokens is None and t.hit_share is None
    assert t.expected_cached_tokens is None and t.expected_share is None
    assert t.unknown_cached == 2 and t.prompt_tokens == 1010
    text = show(render_report(report))
    blind = next(line for line in text.splitlines() if line.strip().startswith("blind"))
    assert "unknown / unknown" in blind
    assert "0.0%" not in text


def test_zero_cached_is_a_known_zero() -> None:
    t = build_report([rec(prompt_tokens=100, cached_tokens=0)]).totals
    assert t.cached_tokens == 0 and t.hit_share == 0.0 and t.unknown_cached == 0


def test_count_tokens_is_a_request_but_not_cache_traffic() -> None:
    records = [
        rec(prompt_tokens=100, cached_tokens=50),
        rec(kind="count_tokens", prompt_tokens=100),
        rec(kind="probe", prompt_tokens=100, cached_tokens=100),
    ]
    t = build_report(records).totals
    assert t.requests == 3
    assert t.prompt_tokens == 200 and t.cached_tokens == 150
    assert t.unknown_cached == 0


def test_errors_count_error_text_and_error_status() -> None:
    records = [rec(), rec(status=529), rec(status=0, error="ConnectError"), rec(status=200)]
    assert build_report(records).totals.errors == 2


def test_empty_report() -> None:
    report = build_report([])
    assert report.totals.requests == 0 and report.sessions == () and report.causes == ()
    assert report.totals.hit_share is None and report.totals.time_saved_estimate_ms is None
    assert "Total: 0 requests" in show(render_report(report))
    assert report_json(report)["totals"]["requests"] == 0


# -- sessions -------------------------------------------------------------------


def test_two_tenants_with_the_same_session_are_two_rows() -> None:
    records = [
        rec(tenant="acme", session="same", time=T0 + 1, prompt_tokens=100, cached_tokens=10),
        rec(tenant="globex", session="same", time=T0, prompt_tokens=100, cached_tokens=90),
        rec(tenant="acme", session="same", time=T0 + 2, prompt_tokens=100, cached_tokens=30),
    ]
    rows = build_report(records).sessions
    assert [(r.tenant, r.session) for r in rows] == [("globex", "same"), ("acme", "same")]
    assert [r.totals.requests for r in rows] == [1, 2]
    assert rows[1].totals.hit_share == pytest.approx(0.2)
    assert (rows[1].first_time, rows[1].last_time) == (T0 + 1, T0 + 2)


def test_session_rows_split_by_agent() -> None:
    agents = ["main", "sub", "main", "side", "sub", "main", None]
    (row,) = build_report([rec(agent=a) for a in agents]).sessions
    assert row.totals.agents == (("main", 3), ("sub", 2), ("?", 1), ("side", 1))


# -- time saved -----------------------------------------------------------------


def test_time_saved_is_cached_tokens_times_the_median_prefill_rate_per_upstream() -> None:
    records = [
        # upstream "local": 0.5, 0.6 and 0.7 ms per uncached token -> median 0.6
        rec(session="a", prompt_tokens=1000, cached_tokens=0, ttfb_ms=500.0),
        rec(session="a", prompt_tokens=1000, cached_tokens=800, ttfb_ms=120.0),
        rec(session="a", prompt_tokens=1000, cached_tokens=900, ttfb_ms=70.0),
        # failed: its timing is not a prefill sample (and it is not measured)
        rec(session="a", prompt_tokens=1000, cached_tokens=0, ttfb_ms=1.0, status=500),
        # "remote": fully cached, no uncached token to divide by -> no rate
        rec(session="b", upstream="remote", prompt_tokens=2000, cached_tokens=2000, ttfb_ms=50.0),
    ]
    report = build_report(records)
    (rate,) = report.prefill_rates
    assert (rate.upstream, rate.samples) == ("local", 3)
    assert rate.ms_per_token == pytest.approx(0.6)
    a, b = report.sessions
    assert a.totals.time_saved_estimate_ms == pytest.approx(1700 * 0.6)
    assert b.totals.time_saved_estimate_ms is None
    assert b.totals.tokens_saved == 2000
    assert report.totals.time_saved_estimate_ms == pytest.approx(1020.0)


def test_time_saved_is_unknown_without_timings() -> None:
    report = build_report([rec(prompt_tokens=100, cached_tokens=50)])
    assert report.totals.time_saved_estimate_ms is None
    assert "time saved unknown" in show(render_report(report))


@pytest.mark.parametrize(
    ("ms", "text"),
    [(None, "unknown"), (12.4, "~12 ms"), (1020.0, "~1.0 s"), (185_000.0, "~3 min 5 s")],
)
def test_format_duration(ms: float | None, text: str) -> None:
    assert format_duration(ms) == text


# -- causes ---------------------------------------------------------------------


def test_miss_causes_are_counted_with_the_latest_example() -> None:
    records = [
        rec(time=T0 + 5, cause="tools_changed", changed_segment="tools:Bash", cause_detail="old"),
        rec(time=T0 + 9, cause="none"),
        rec(time=T0 + 1, cause="system_prompt_changed", changed_segment="system[2]"),
        rec(
            time=T0 + 7,
            session="s2",
            cause="tools_changed",
            changed_segment="tools:mcp__x",
            cause_detail="new",
        ),
        rec(time=T0 + 6, cause="tools_changed", cause_detail="middle"),
        rec(time=T0 + 3, cause=None),
    ]
    causes = build_report(records).causes
    assert [(c.cause, c.count) for c in causes] == [
        ("tools_changed", 3),
        ("system_prompt_changed", 1),
    ]
    example = causes[0].example
    assert (example.session, example.time) == ("s2", T0 + 7)
    assert (example.changed_segment, example.cause_detail) == ("tools:mcp__x", "new")


# -- output ---------------------------------------------------------------------


def sample() -> list[AuditRecord]:
    session = "0123456789abcdef"
    return [
        rec(session=session, prompt_tokens=12_000, cached_tokens=0, ttfb_ms=1200.0),
        rec(
            session=session,
            agent="sub",
            time=T0 + 10,
            prompt_tokens=12_345,
            cached_tokens=11_000,
            expected_cached_tokens=12_000,
            ttfb_ms=134.5,
            cause="attribution_changed",
            changed_segment="system[0]",
            cause_detail="cch=abc12 -> cch=def34",
        ),
    ]


def test_render_report_shows_sessions_causes_and_totals() -> None:
    text = show(render_report(build_report(sample())))
    assert "Sessions" in text and "Miss causes" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("01234567"))
    assert "0123456789" not in text
    for cell in ("acme", "main 1, sub 1", "24,345", "11,000", "12,000", "45.2% / 97.2%"):
        assert cell in row, cell
    assert "~1.1 s" in row  # 11,000 x 0.1 ms per token
    cause = next(
        line for line in text.splitlines() if line.strip().startswith("attribution_changed")
    )
    assert "system[0]" in cause and "cch=abc12 -> cch=def34" in cause
    assert "2025-06-15 15:06:50" in cause
    assert "attribution_changed: the attribution block differs: use policy strip" in text
    assert "Total: 2 requests" in text and "(estimate)" in text


@pytest.mark.parametrize(
    ("cause", "words"),
    [
        ("deferred_tools_changed", "an MCP server was added or removed between these sessions"),
        ("environment_changed", "the working directory differs"),
        ("date_changed", "a new day"),
        ("tool_loaded", "ToolSearch loaded a tool definition"),
        ("git_status_changed", "the git status snapshot differs"),
        ("evicted_by_other_session", "another session or agent used the upstream"),
    ],
)
def test_each_cause_is_worded_the_way_a_person_would_fix_it(cause: str, words: str) -> None:
    report = build_report([rec(cause=cause, changed_segment="x", cause_detail="d")])
    assert report.causes[0].words.startswith(words) or words in report.causes[0].words
    assert f"{cause}: " in show(render_report(report))
    assert report_json(report)["causes"][0]["words"] == report.causes[0].words


def test_every_cause_has_words() -> None:
    assert set(CAUSE_WORDS) == set(CAUSES)
    assert cause_words("something_new") == "an unknown cause"


def test_render_report_shows_record_text_literally() -> None:
    records = [rec(session="[red]x[/red]", tenant="[b]t", cause="c", cause_detail="[i]d[/i]")]
    text = show(render_report(build_report(records)))
    assert "[red]x[/" in text and "[b]t" in text and "[i]d[/i]" in text


def test_report_json_carries_the_same_numbers() -> None:
    report = build_report(sample())
    data = report_json(report)
    assert json.loads(json.dumps(data)) == data
    totals = data["totals"]
    assert totals["requests"] == 2 and totals["prompt_tokens"] == 24_345
    assert totals["cached_tokens"] == totals["tokens_saved"] == 11_000
    assert totals["hit_share"] == report.totals.hit_share
    assert totals["expected_share"] == pytest.approx(12_000 / 12_345)
    assert totals["unknown_expected"] == 1
    assert totals["time_saved_estimate_ms"] == pytest.approx(1100.0)
    assert totals["agents"] == {"main": 1, "sub": 1}
    (session,) = data["sessions"]
    assert session["tenant"] == "acme" and session["session"] == "0123456789abcdef"
    assert session["hit_share"] == totals["hit_share"]
    (cause,) = data["causes"]
    assert cause["cause"] == "attribution_changed" and cause["count"] == 1
    assert cause["example"]["changed_segment"] == "system[0]"
    (rate,) = data["prefill_rates"]
    assert rate == {"upstream": "local", "ms_per_token": pytest.approx(0.1), "samples": 2}


# -- oracle, runtime expected, lost -----------------------------------------------


def reached() -> list[AuditRecord]:
    """Three requests: one lost nothing, one lost to capacity, one the runtime evicted
    (and lost to capacity besides); one more from before the oracle was recorded."""
    common = {"prompt_tokens": 10_000}
    return [
        rec(cached_tokens=4000, oracle_tokens=4000, runtime_expected_tokens=4000,
            lost_by_runtime=0, lost_cause="none", **common),
        rec(cached_tokens=1000, oracle_tokens=9000, runtime_expected_tokens=1000,
            lost_by_runtime=0, lost_cause="capacity", **common),
        rec(cached_tokens=0, oracle_tokens=8000, runtime_expected_tokens=5000,
            lost_by_runtime=5000, lost_cause="evicted", **common),
        rec(cached_tokens=500, **common),
    ]  # fmt: skip


def test_oracle_runtime_expected_and_lost_by_cause() -> None:
    t = build_report(reached()).totals
    assert (t.oracle_tokens, t.runtime_expected_tokens) == (21_000, 10_000)
    assert (t.reached_tokens, t.reached_base_tokens) == (5000, 21_000)
    assert t.oracle_share == pytest.approx(5000 / 21_000)
    lost = [(row.cause, row.tokens, row.requests) for row in t.lost]
    assert lost == [("capacity", 11_000, 2), ("evicted", 5000, 1)]
    # together, the causes make up the gap between oracle and actual
    assert sum(row.tokens for row in t.lost) == t.reached_base_tokens - t.reached_tokens
    assert "more slots" in t.lost[0].words


def test_oracle_unknown_is_not_zero() -> None:
    t = build_report([rec(prompt_tokens=100, cached_tokens=10)]).totals
    assert t.oracle_tokens is None and t.runtime_expected_tokens is None
    assert t.oracle_share is None and t.lost == ()
    assert "oracle unknown, runtime expected unknown, unknown of the oracle reached" in show(
        render_report(build_report([rec(prompt_tokens=100, cached_tokens=10)]))
    )


def test_report_shows_the_oracle_and_what_was_lost() -> None:
    report = build_report(reached())
    text = show(render_report(report))
    assert "Lost between oracle and actual" in text
    line = next(row for row in text.splitlines() if row.strip().startswith("evicted"))
    assert "5,000" in line and "dropped a prefix" in line
    assert "oracle 21,000, runtime expected 10,000, 23.8% of the oracle reached" in text
    session = next(row for row in text.splitlines() if row.strip().startswith("s1"))
    assert "21,000" in session and "23.8%" in session
    data = report_json(report)["totals"]
    assert data["oracle_share"] == pytest.approx(5000 / 21_000)
    assert data["lost"] == {
        "capacity": {"tokens": 11_000, "requests": 2},
        "evicted": {"tokens": 5000, "requests": 1},
    }


def test_a_lost_cause_from_elsewhere_counts_as_unknown() -> None:
    odd = rec(prompt_tokens=100, cached_tokens=0, oracle_tokens=90, runtime_expected_tokens=90,
              lost_by_runtime=90, lost_cause="made-up")  # fmt: skip
    (row,) = build_report([odd]).totals.lost
    assert (row.cause, row.tokens) == ("unknown", 90)


# -- saved prefixes of the bundled runtime ----------------------------------------


def test_saved_prefix_restores_get_a_line_under_the_totals() -> None:
    records = [
        rec(prompt_tokens=5000, cached_tokens=1643, restored_tokens=1643),
        rec(prompt_tokens=5000, cached_tokens=4000),  # no restore before it
        rec(prompt_tokens=5000, cached_tokens=0, restored_tokens=0),  # a known zero
        rec(
            status=529, error="HTTP 529: overloaded", restored_tokens=3286
        ),  # restored all the same
    ]
    report = build_report(records)
    assert (report.totals.restores, report.totals.restored_tokens) == (3, 4929)
    lines = show(render_report(report)).splitlines()
    total = next(i for i, line in enumerate(lines) if line.startswith("Total: 4 requests"))
    assert lines[total + 1] == "saved prefixes: 3 restores, 4,929 tokens restored"
    data = report_json(report)["totals"]
    assert (data["restores"], data["restored_tokens"]) == (3, 4929)


def test_no_restore_no_saved_prefix_line() -> None:
    report = build_report(sample())
    assert (report.totals.restores, report.totals.restored_tokens) == (0, None)
    assert "saved prefixes" not in show(render_report(report))
    one = build_report([rec(prompt_tokens=10, cached_tokens=0, restored_tokens=0)])
    assert "saved prefixes: 1 restore, 0 tokens restored" in show(render_report(one))
