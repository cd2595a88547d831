"""Tests for the HTML dashboard: totals from the report, chart, causes, latest
requests, escaping, and the Starlette endpoint."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from prefixgate.app.dashboard import dashboard_endpoint, render_dashboard, share_points
from prefixgate.report import build_report
from prefixgate.store.audit import AuditRecord, MemoryAudit

T0 = 1_750_000_000.0


def rec(**kw: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "time": T0,
        "route": "/v1/messages",
        "tenant": "acme",
        "session": "0123456789abcdef",
        "model": "claude-opus-4-8",
        "upstream": "local",
        "policy": "strip",
        "status": 200,
        "agent": "main",
    }
    fields.update(kw)
    return AuditRecord(**fields)


def sample() -> list[AuditRecord]:
    return [
        rec(prompt_tokens=12_000, cached_tokens=0, expected_cached_tokens=0, ttfb_ms=1200.0),
        rec(
            time=T0 + 10,
            agent="sub",
            prompt_tokens=12_345,
            cached_tokens=11_000,
            expected_cached_tokens=12_000,
            ttfb_ms=134.5,
            cause="attribution_changed",
            changed_segment="system[0]",
            cause_detail="cch=abc12 -> cch=def34",
        ),
        rec(time=T0 + 20, prompt_tokens=13_000, cached_tokens=None, cause="upstream_dropped"),
        rec(time=T0 + 30, kind="count_tokens", prompt_tokens=900),
        rec(time=T0 + 40, status=529, error="HTTP 529: overloaded"),
    ]


def totals(page: str) -> dict[str, tuple[str, str]]:
    """``data-total`` name: (``data-value``, shown text)."""
    found = re.findall(r'data-total="([^"]+)" data-value="([^"]*)">([^<]*)<', page)
    return {name: (value, text) for name, value, text in found}


def table_rows(page: str, table_id: str) -> list[str]:
    match = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert match, f"no table {table_id}"
    return re.findall(r"<tr[^>]*>.*?</tr>", match.group(1), re.S)


def cells(row: str) -> dict[str, str]:
    return dict(re.findall(r'<td data-col="([^"]+)"[^>]*>([^<]*)</td>', row))


# -- page -----------------------------------------------------------------------


def test_headline_totals_come_from_the_report() -> None:
    records = sample()
    page = render_dashboard(records)
    t = build_report(records).totals
    shown = totals(page)
    assert shown["requests"] == ("5", "5")
    assert shown["errors"] == ("1", "1")
    assert shown["unknown_cached"] == (str(t.unknown_cached), "1")  # the 529 is an error
    assert shown["prompt_tokens"] == ("37345", "37,345")
    assert shown["cached_tokens"] == ("11000", "11,000")
    assert shown["expected_cached_tokens"] == ("12000", "12,000")
    assert shown["hit_share"] == (repr(t.hit_share), "45.2%")
    assert shown["expected_share"] == (repr(t.expected_share), "49.3%")
    assert shown["time_saved_estimate_ms"][1] == "~1.1 s"


def test_saved_prefix_restores_show_in_the_totals_only_when_there_were_any() -> None:
    assert "restored_tokens" not in totals(render_dashboard(sample()))
    restored = [
        rec(prompt_tokens=5000, cached_tokens=1643, restored_tokens=1643),
        rec(prompt_tokens=5000, cached_tokens=4000),
        rec(prompt_tokens=5000, cached_tokens=3286, restored_tokens=3286),
    ]
    page = render_dashboard(restored)
    assert totals(page)["restored_tokens"] == ("4929", "4,929 (2 restores)")
    assert "restored (saved prefixes)" in page
    one = render_dashboard([rec(prompt_tokens=10, cached_tokens=0, restored_tokens=0)])
    assert totals(one)["restored_tokens"] == ("0", "0 (1 restore)")


def test_unknown_totals_show_unknown() -> None:
    shown = totals(render_dashboard([rec(prompt_tokens=100)]))
    assert shown["cached_tokens"] == ("", "unknown")
    assert shown["hit_share"] == ("", "unknown")
    assert shown["expected_share"] == ("", "unknown")


def test_page_is_self_contained() -> None:
    page = render_dashboard(sample())
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"]
    assert "<link" not in page and "@import" not in page


def test_chart_has_two_series_and_a_legend() -> None:
    page = render_dashboard(sample())
    assert 'id="share-chart"' in page and 'data-points="3"' in page
    assert 'data-series="hit"' in page and 'data-series="expected"' in page
    assert "actual hit share" in page and "expected share" in page
    # request 3's actual cache is unknown: the hit line breaks there, the dot is missing
    hit = re.search(r'data-series="hit">(.*?)</g>', page, re.S)
    assert hit and hit.group(1).count("<circle") == 2


def test_share_points_follow_requests_and_bucket_long_runs() -> None:
    records = [rec(time=T0 + i, prompt_tokens=100, cached_tokens=i % 2 * 100) for i in range(10)]
    points = share_points(records)
    assert [p.hit for p in points] == [0.0, 1.0] * 5
    assert all(p.expected is None for p in points)
    bucketed = share_points(records, max_points=4)
    assert [(p.first, p.last) for p in bucketed] == [(0, 2), (3, 5), (6, 8), (9, 9)]
    assert [p.hit for p in bucketed] == pytest.approx([1 / 3, 2 / 3, 1 / 3, 1.0])


def test_empty_page() -> None:
    page = render_dashboard([])
    assert "No requests recorded yet." in page
    assert totals(page)["requests"] == ("0", "0")
    assert 'id="requests"' not in page and 'id="causes"' not in page


def test_causes_table_counts_with_bars_and_examples() -> None:
    rows = table_rows(render_dashboard(sample()), "causes")
    assert len(rows) == 2
    assert 'data-cause="attribution_changed" data-count="1"' in rows[0]
    assert "system[0]" in rows[0] and "cch=abc12 -&gt; cch=def34" in rows[0]
    assert 'class="bar"' in rows[0]
    assert 'data-cause="upstream_dropped"' in rows[1]
    # each cause worded the way a person would act on it
    assert '<td class="words">the attribution block differs: use policy strip' in rows[0]
    assert "check its cache settings" in rows[1]


def test_latest_requests_newest_first_and_limited() -> None:
    records = [rec(time=T0 + i, prompt_tokens=1000 + i, cached_tokens=i) for i in range(60)]
    rows = table_rows(render_dashboard(records), "requests")
    assert len(rows) == 50
    first = cells(rows[0])
    assert first["prompt"] == "1,059" and first["cached"] == "59"
    assert cells(rows[-1])["prompt"] == "1,010"
    assert len(table_rows(render_dashboard(records, latest=5), "requests")) == 5


def test_latest_request_cells() -> None:
    rows = table_rows(render_dashboard(sample()), "requests")
    error, count, dropped, miss, _ = (cells(r) for r in rows)
    assert miss == {
        "time": "2025-06-15 15:06:50",
        "session": "01234567",
        "tenant": "acme",
        "agent": "sub",
        "kind": "message",
        "model": "claude-opus-4-8",
        "status": "200",
        "prompt": "12,345",
        "cached": "11,000",
        "expected": "12,000",
        "oracle": "unknown",
        "runtime": "unknown",
        "lost": "unknown",
        "cause": "attribution_changed",
        "detail": "system[0]: cch=abc12 -&gt; cch=def34",
    }
    assert dropped["cached"] == "unknown" and dropped["cause"] == "upstream_dropped"
    assert count["kind"] == "count_tokens"
    assert error["status"] == "529" and error["detail"] == "HTTP 529: overloaded"
    assert rows[0].startswith('<tr class="error">')


def test_record_text_is_escaped() -> None:
    evil = "<script>alert(1)</script>"
    records = [
        rec(
            session=evil,
            tenant=evil,
            model=f'm"><img src=x onerror=alert(1)>{evil}',
            cause=evil,
            changed_segment=evil,
            cause_detail=f"x{evil}",
            agent=evil,
        )
    ]
    page = render_dashboard(records, title=evil)
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'data-cause="&lt;script&gt;alert(1)&lt;/script&gt;"' in page
    assert cells(table_rows(page, "requests")[0])["session"] == "&lt;script&gt;"


# -- endpoint -------------------------------------------------------------------


def test_endpoint_serves_fresh_html_that_is_never_cached() -> None:
    audit = MemoryAudit()
    app = Starlette(routes=[Route("/dashboard", dashboard_endpoint(audit.query))])
    with TestClient(app) as client:
        empty = client.get("/dashboard")
        for record in sample():
            audit.record(record)
        full = client.get("/dashboard")
    assert empty.status_code == full.status_code == 200
    assert full.headers["content-type"].startswith("text/html")
    assert full.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in full.headers["content-security-policy"]
    assert totals(empty.text)["requests"] == ("0", "0")
    assert totals(full.text)["cached_tokens"] == ("11000", "11,000")
    assert totals(full.text) == totals(render_dashboard(sample()))


def test_the_oracle_and_what_was_lost_are_shown() -> None:
    records = [
        rec(prompt_tokens=10_000, cached_tokens=0, oracle_tokens=8000,
            runtime_expected_tokens=5000, lost_by_runtime=5000, lost_cause="evicted"),
        rec(time=T0 + 1, prompt_tokens=10_000, cached_tokens=1000, oracle_tokens=9000,
            runtime_expected_tokens=1000, lost_by_runtime=0, lost_cause="capacity"),
    ]  # fmt: skip
    page = render_dashboard(records)
    shown = totals(page)
    assert shown["oracle_tokens"] == ("17000", "17,000")
    assert shown["runtime_expected_tokens"] == ("6000", "6,000")
    assert shown["oracle_share"][1] == "5.9%"
    lost = table_rows(page, "lost")
    assert 'data-cause="capacity" data-tokens="11000" data-requests="2"' in lost[0]
    assert 'data-cause="evicted" data-tokens="5000" data-requests="1"' in lost[1]
    capacity, evicted = (cells(r) for r in table_rows(page, "requests"))
    assert (evicted["oracle"], evicted["runtime"], evicted["lost"]) == (
        "8,000",
        "5,000",
        "5,000 evicted",
    )
    assert (capacity["lost"], capacity["runtime"]) == ("capacity", "1,000")
    assert "Nothing lost between oracle and actual." in render_dashboard([rec(prompt_tokens=5)])


def test_the_chart_draws_the_oracle_when_it_is_known() -> None:
    known = [
        rec(time=T0 + i, prompt_tokens=100, cached_tokens=50, oracle_tokens=80) for i in range(3)
    ]
    page = render_dashboard(known)
    oracle = re.search(r'data-series="oracle">(.*?)</g>', page, re.S)
    assert oracle and oracle.group(1).count("<circle") == 3 and "oracle 80.0%" in page
    assert [p.oracle for p in share_points(known)] == [0.8] * 3
    assert 'data-series="oracle"' not in render_dashboard([rec(prompt_tokens=100)])
