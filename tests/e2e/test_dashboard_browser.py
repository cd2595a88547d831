"""The dashboard in a real browser: uvicorn serves it, headless Chromium loads it.

    Chromium --dump-dom / --screenshot -> uvicorn (ServerThread) -> dashboard_endpoint(audit.query)

The numbers Chromium shows must be the ones ``build_report`` computes from the
same records. The screenshot is kept under ``$PREFIXGATE_ARTIFACTS`` (default
``tests/artifacts/``) for a person to look at.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import Dashboard, dump_dom, find_chromium, png_size, read_dashboard, screenshot
from servers import ServerThread
from starlette.applications import Starlette
from starlette.routing import Route

from prefixgate.app.dashboard import dashboard_endpoint
from prefixgate.report import Totals, build_report
from prefixgate.store.audit import AuditRecord, MemoryAudit

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_ENV = "PREFIXGATE_ARTIFACTS"
T0 = 1_750_000_000.0
SESSION_A = "9f1c2b7e-4d1a-4c55-9a0e-6b1f0c3d2e11"
SESSION_B = "b2e80d4f-1e2a-4f0b-8c7d-3a9e5f6b7c80"


def realistic_records() -> list[AuditRecord]:
    """Two tenants (sharing a session id), main/sub/side agents, probes, a
    token count, misses with causes, unknown cache numbers and an error."""
    out: list[AuditRecord] = []

    def add(dt: float, **kw: Any) -> None:
        base: dict[str, Any] = {
            "route": "/v1/messages",
            "tenant": "acme",
            "session": SESSION_A,
            "model": "claude-opus-4-8",
            "upstream": "local",
            "policy": "strip",
            "status": 200,
            "agent": "main",
        }
        out.append(AuditRecord(time=T0 + dt, **{**base, **kw}))

    add(
        0,
        kind="probe",
        prompt_tokens=17_900,
        cached_tokens=0,
        expected_cached_tokens=0,
        ttfb_ms=2_150.0,
        cause="none",
    )
    for turn in range(30):
        prompt = 18_000 + 900 * turn
        miss = turn in (7, 15)
        add(
            10 + 30 * turn,
            prompt_tokens=prompt,
            cached_tokens=(0 if miss else prompt - 900) if turn != 11 else None,
            expected_cached_tokens=prompt - 900 if turn else 0,
            expected_source="tokenizer",
            ttfb_ms=0.12 * (prompt if miss else 900) + 40,
            cause=("attribution_changed" if turn == 7 else "evicted_by_other_session")
            if miss
            else ("upstream_dropped" if turn == 11 else "none"),
            changed_segment="system[0]" if turn == 7 else None,
            cause_detail={7: "cch=1f2e3 -> cch=9a8b7", 15: f"session {SESSION_B[:8]}"}.get(turn),
        )
        if turn % 6 == 3:
            add(
                15 + 30 * turn,
                agent="sub",
                prompt_tokens=9_500 + 100 * turn,
                cached_tokens=9_000,
                expected_cached_tokens=9_400,
                ttfb_ms=95.0,
                cause="none",
            )
    add(
        12,
        agent="side",
        prompt_tokens=320,
        cached_tokens=0,
        expected_cached_tokens=0,
        ttfb_ms=61.0,
        cause="none",
    )
    add(400, kind="count_tokens", route="/v1/messages/count_tokens", prompt_tokens=25_000)
    for turn in range(16):
        add(
            20 + 55 * turn,
            tenant="globex",
            session=SESSION_A if turn < 8 else SESSION_B,
            upstream="anthropic",
            model="claude-sonnet-4-6",
            prompt_tokens=30_000 + 1_200 * turn,
            cached_tokens=1_200 * turn if turn % 4 == 2 else 29_000 + 1_100 * turn,
            expected_cached_tokens=29_000 + 1_100 * turn if turn else 0,
            expected_source="estimate",
            ttfb_ms=900.0 if turn % 4 == 2 else 310.0,
            cause="mcp_tools_changed" if turn % 4 == 2 else "none",
            changed_segment="tools:mcp__github__create_issue" if turn % 4 == 2 else None,
            cause_detail="tool <mcp__github__create_issue> added" if turn % 4 == 2 else None,
        )
    add(700, status=529, error="HTTP 529: overloaded", ttfb_ms=35.0)
    return out


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.fail("chromium not found: apt-get install chromium (or set PREFIXGATE_CHROMIUM)")
    return binary


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, list[AuditRecord]]]:
    records = realistic_records()
    audit = MemoryAudit()
    for record in records:
        audit.record(record)
    app = Starlette(routes=[Route("/dashboard", dashboard_endpoint(audit.query))])
    with ServerThread(app) as server:
        yield f"{server.url}/dashboard", records


def artifacts_dir() -> Path:
    return Path(os.environ.get(ARTIFACTS_ENV) or REPO_ROOT / "tests" / "artifacts")


def expected_totals(t: Totals) -> dict[str, tuple[str, str]]:
    def count(n: int | None) -> tuple[str, str]:
        return ("", "unknown") if n is None else (str(n), f"{n:,}")

    def share(s: float | None) -> tuple[str, str]:
        return ("", "unknown") if s is None else (repr(s), f"{100 * s:.1f}%")

    return {
        "requests": count(t.requests),
        "errors": count(t.errors),
        "unknown_cached": count(t.unknown_cached),
        "prompt_tokens": count(t.prompt_tokens),
        "cached_tokens": count(t.cached_tokens),
        "expected_cached_tokens": count(t.expected_cached_tokens),
        "hit_share": share(t.hit_share),
        "expected_share": share(t.expected_share),
        "oracle_tokens": count(t.oracle_tokens),
        "runtime_expected_tokens": count(t.runtime_expected_tokens),
        "oracle_share": share(t.oracle_share),
    }


def expected_row(r: AuditRecord) -> dict[str, str]:
    def count(n: int | None) -> str:
        return "unknown" if n is None else f"{n:,}"

    def lost(r: AuditRecord) -> str:
        if r.lost_by_runtime is None:
            return "unknown"
        if r.lost_by_runtime:
            return f"{r.lost_by_runtime:,} {r.lost_cause or ''}".strip()
        return "capacity" if r.lost_cause == "capacity" else ""

    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.time)),
        "session": (r.session or "-")[:8],
        "tenant": r.tenant,
        "agent": r.agent or "?",
        "kind": r.kind,
        "model": r.model or "-",
        "status": str(r.status),
        "prompt": count(r.prompt_tokens),
        "cached": count(r.cached_tokens),
        "expected": count(r.expected_cached_tokens),
        "oracle": count(r.oracle_tokens),
        "runtime": count(r.runtime_expected_tokens),
        "lost": lost(r),
        "cause": r.cause or "-",
        "detail": ": ".join(x for x in (r.changed_segment, r.cause_detail or r.error) if x),
    }


def test_browser_shows_the_report_numbers(
    chromium: str, served: tuple[str, list[AuditRecord]]
) -> None:
    url, records = served
    dom = dump_dom(chromium, url)
    (artifacts_dir() / "dashboard.html").parent.mkdir(parents=True, exist_ok=True)
    (artifacts_dir() / "dashboard.html").write_text(dom, encoding="utf-8")
    page: Dashboard = read_dashboard(dom)
    report = build_report(records)
    t = report.totals
    # unknown: turn 11 only (the error and the token count are no cache traffic)
    assert (t.requests, t.errors, t.unknown_cached) == (len(records), 1, 1)
    assert t.hit_share is not None and t.expected_share is not None
    assert t.hit_share < t.expected_share
    shown = {k: v for k, v in page.totals.items() if k != "time_saved_estimate_ms"}
    assert shown == expected_totals(t)
    assert float(page.totals["hit_share"][0]) == t.hit_share
    assert page.totals["time_saved_estimate_ms"][1].startswith("~")

    assert len(records) > 50
    newest = sorted(records, key=lambda r: r.time)[::-1][:50]
    assert page.requests == [expected_row(r) for r in newest]
    assert page.causes == {c.cause: c.count for c in report.causes}
    assert page.causes["mcp_tools_changed"] == 4
    assert page.series == ["expected", "hit"]
    assert page.chart_points == sum(
        1 for r in records if r.kind != "count_tokens" and r.prompt_tokens
    )


def test_browser_screenshot_is_kept_as_an_artifact(
    chromium: str, served: tuple[str, list[AuditRecord]]
) -> None:
    url, _ = served
    path = screenshot(chromium, url, artifacts_dir() / "dashboard.png")
    assert png_size(path) == (1280, 2000)
    assert path.stat().st_size > 20_000, "the screenshot looks blank"
