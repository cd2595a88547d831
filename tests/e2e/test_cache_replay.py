"""The recorded corpus replayed through prefixgate to the real llama-server.

    replay (httpx) -> prefixgate, tenant "default" (SQLite audit) -> llama-server
                   -> prefixgate, tenant "team-b" (same SQLite file) --^

Every request's expected and actual cached tokens must be recorded, every
miss attributed to the segment ``diagnose`` predicts offline, and the report,
``/metrics`` and ``/dashboard`` (in headless Chromium) must show the numbers
the audit log holds. The report, the per-request table and a screenshot are
kept under ``$PREFIXGATE_ARTIFACTS`` (default ``tests/artifacts/``).
"""

from __future__ import annotations

import json

import httpx
import pytest
from browser import dump_dom, find_chromium, png_size, read_dashboard, screenshot
from click.testing import CliRunner
from corpusreplay import TENANT_B, Replayed, artifacts
from prometheus_client.parser import text_string_to_metric_families

from prefixgate.cli import main
from prefixgate.core.misses import is_miss
from prefixgate.store.sqlite import read_records

pytestmark = pytest.mark.e2e

# The fixture ``replayed`` (tests/e2e/conftest.py, session-scoped) replays the
# full-size corpus once, for these tests; test_openai_replay.py compares the two
# upstream kinds on the corpus shrunk.


# -- every request recorded, every miss attributed ------------------------------------


def test_every_request_has_expected_and_actual_cached_tokens(replayed: Replayed) -> None:
    assert len(replayed.rows) == len(replayed.records) == 14
    for row in replayed.rows:
        assert row.status == 200 and row.error is None, row
        assert row.prompt_tokens and row.prompt_tokens > 10_000, row
        assert row.cached_tokens is not None, row
        assert row.expected_cached_tokens is not None, row
        assert row.expected_source == "tokenizer", row  # llama-server's own /tokenize
        assert row.attribution_found and row.policy == "strip"
        assert row.cause is not None


def test_sessions_and_agents_are_the_client_s(replayed: Replayed) -> None:
    for rec, row in zip(replayed.records, replayed.rows, strict=True):
        assert row.session == rec.header("X-Claude-Code-Session-Id")
        assert row.session_source == "header"
        assert row.agent == rec.agent
        assert row.kind == "message"
    assert [row.agent for row in replayed.rows].count("sub") == 2


def test_each_prefix_change_is_attributed_to_the_segment_diagnose_predicts(
    replayed: Replayed,
) -> None:
    changed = 0
    for d, row in zip(replayed.predicted, replayed.rows, strict=True):
        assert row.key == d.key  # same pipeline offline and live
        if d.cause == "none":
            continue
        changed += 1
        assert (row.cause, row.changed_segment) == (d.cause, d.changed_segment), (d, row)
        # the runtime's own numbers agree that the prefix broke: it re-processed
        # a real part of the prompt
        assert row.prompt_tokens is not None and row.cached_tokens is not None
        assert row.cached_tokens < 0.95 * row.prompt_tokens - 64, row
    assert changed == 5


def test_the_corpus_misses_are_named(replayed: Replayed) -> None:
    rows = replayed.rows
    # --continue re-rendered the model line, in the environment section
    assert (rows[2].cause, rows[2].changed_segment) == ("environment_changed", "environment")
    assert rows[2].cause_detail and "the model line differs" in rows[2].cause_detail
    assert (rows[5].agent, rows[5].cause) == ("sub", "system_prompt_changed")  # subagent
    assert rows[8].cause == "mcp_tools_changed" and "added" in (rows[8].cause_detail or "")
    assert rows[12].cause == "mcp_tools_changed" and "removed" in (rows[12].cause_detail or "")


def test_unchanged_prefixes_are_hits_or_named_misses(replayed: Replayed) -> None:
    for d, row in zip(replayed.predicted, replayed.rows, strict=True):
        if d.cause != "none":
            continue
        missed = is_miss(row.expected_cached_tokens, row.cached_tokens)
        assert row.cause == ("none" if not missed else row.cause), row
        if missed:
            assert row.cause in ("evicted_by_other_session", "upstream_dropped"), row
        else:
            assert row.cause == "none", row
    # follow-up turns of a conversation are hits, served from cache
    for i in (1, 3, 6, 9, 11, 13):
        assert replayed.rows[i].cause == "none", replayed.rows[i]
        assert replayed.rows[i].cached_tokens > 0.9 * replayed.rows[i].prompt_tokens  # type: ignore[operator]


# -- report, metrics, dashboard show the audit log's numbers --------------------------


def test_report_shows_the_audit_log_numbers(replayed: Replayed) -> None:
    result = CliRunner().invoke(
        main, ["report", "--db", str(replayed.db), "--tenant", "default", "--json"]
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    rows = replayed.rows
    totals = shown["totals"]
    assert totals["requests"] == 14
    assert totals["prompt_tokens"] == sum(r.prompt_tokens or 0 for r in rows)
    assert totals["cached_tokens"] == sum(r.cached_tokens or 0 for r in rows)
    assert totals["expected_cached_tokens"] == sum(r.expected_cached_tokens or 0 for r in rows)
    sessions = {s["session"] for s in shown["sessions"]}
    assert sessions == {r.session for r in rows}
    causes = {c["cause"]: c["count"] for c in shown["causes"]}
    assert causes == {
        cause: sum(1 for r in rows if r.cause == cause)
        for cause in {r.cause for r in rows}
        if cause != "none"
    }
    text = CliRunner().invoke(main, ["report", "--db", str(replayed.db), "--tenant", "default"])
    assert text.exit_code == 0
    assert "system_prompt_changed" in text.output


def test_metrics_show_the_audit_log_numbers(replayed: Replayed) -> None:
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(replayed.metrics)
        for s in family.samples
    }

    def total(name: str) -> float:
        return sum(v for (n, _), v in samples.items() if n == name)

    rows = replayed.rows
    assert total("prefixgate_cached_tokens_total") == sum(r.cached_tokens or 0 for r in rows)
    assert total("prefixgate_prompt_tokens_total") == sum(r.prompt_tokens or 0 for r in rows)
    assert total("prefixgate_expected_cached_tokens_total") == sum(
        r.expected_cached_tokens or 0 for r in rows
    )
    assert total("prefixgate_requests_total") == 14
    assert total("prefixgate_attribution_blocks_total") == 14
    assert total("prefixgate_cache_misses_total") == sum(1 for r in rows if r.cause != "none")


def test_dashboard_in_chromium_shows_the_audit_log_numbers(replayed: Replayed) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.fail("chromium not found: apt-get install chromium (or set PREFIXGATE_CHROMIUM)")
    url = f"{replayed.url}/dashboard"
    page = read_dashboard(dump_dom(chromium, url))
    rows = replayed.rows
    assert page.totals["requests"][0] == "14"
    assert int(page.totals["prompt_tokens"][0]) == sum(r.prompt_tokens or 0 for r in rows)
    assert int(page.totals["cached_tokens"][0]) == sum(r.cached_tokens or 0 for r in rows)
    assert int(page.totals["expected_cached_tokens"][0]) == sum(
        r.expected_cached_tokens or 0 for r in rows
    )
    assert len(page.requests) == 14
    newest_first = list(reversed(rows))
    assert [p["cause"] for p in page.requests] == [r.cause for r in newest_first]
    assert [p["cached"] for p in page.requests] == [f"{r.cached_tokens:,}" for r in newest_first]
    assert page.causes == {
        c: sum(1 for r in rows if r.cause == c) for c in {r.cause for r in rows} if c != "none"
    }
    png = artifacts() / "dashboard-after-replay.png"
    screenshot(chromium, url, png)
    assert png_size(png)[0] == 1280 and png.stat().st_size > 20_000


# -- tenants ----------------------------------------------------------------------------


def test_tenants_never_share_a_key_or_a_report(replayed: Replayed) -> None:
    rows_b = read_records(replayed.db, tenant=TENANT_B)
    assert len(rows_b) == 2
    keys_a = {r.key for r in replayed.rows}
    assert not keys_a & {r.key for r in rows_b}  # the same prompts, other keys
    # B's first request followed A's last on the same runtime, but its detail
    # never names A's session
    for row in rows_b:
        for a in replayed.rows:
            assert a.session is None or a.session[:8] not in (row.cause_detail or "")
    result = CliRunner().invoke(
        main, ["report", "--db", str(replayed.db), "--tenant", TENANT_B, "--json"]
    )
    shown = json.loads(result.output)
    assert {s["tenant"] for s in shown["sessions"]} == {TENANT_B}
    assert shown["totals"]["requests"] == 2
    assert replayed.dashboard_html.count(TENANT_B) == 0
    page_b = httpx.get(f"{replayed.url_b}/dashboard", timeout=30).text
    assert "team-b" in page_b and read_dashboard(page_b).totals["requests"][0] == "2"
