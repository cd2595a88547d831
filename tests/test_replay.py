"""Tests for the replay engine: loading, preparing, sending, summarising, labelling."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from prefixgate.core.sse import encode_event
from prefixgate.replay import (
    LABELS,
    CaptureRecord,
    Column,
    ReplayResult,
    forward_headers,
    load_capture,
    miss_reason,
    miss_reasons,
    prepare_body,
    render_report,
    replay,
    select,
    summarize,
)

CORPUS_DIR = Path(__file__).resolve().parents[1] / "corpus"
CORPUS = CORPUS_DIR / "claude-code-2.1.197.jsonl"
CCH_CORPUS = CORPUS_DIR / "claude-code-2.1.197-cch-per-request.jsonl"


@pytest.fixture(scope="module")
def records() -> list[CaptureRecord]:
    return load_capture(CORPUS)


def result(index: int, prompt: int | None = 100, cached: int | None = 0, **kw: Any) -> ReplayResult:
    fields: dict[str, Any] = {"session": "s", "status": 200, "seconds": 1.0, "ttfb": 0.5}
    fields.update(kw)
    return ReplayResult(index=index, prompt_tokens=prompt, cached_tokens=cached, **fields)


# -- load_capture ---------------------------------------------------------------


def test_load_capture_reads_every_recorded_request(records: list[CaptureRecord]) -> None:
    assert [r.index for r in records] == list(range(14))
    assert {r.method for r in records} == {"POST"}
    assert all(r.path.startswith("/v1/messages") for r in records)
    assert {r.model for r in records} == {"claude-opus-4-8"}
    assert [r.session[:8] for r in records[:5]] == ["15389b44"] * 4 + ["5229c4e6"]
    assert [r.agent for r in records[4:8]] == ["main", "sub", "sub", "main"]
    raw = json.loads(CORPUS.read_text(encoding="utf-8").splitlines()[12])
    assert records[12].body == raw["body"].encode("utf-8")
    assert records[12].session == raw["headers"]["X-Claude-Code-Session-Id"]


def test_header_lookup_ignores_case(records: list[CaptureRecord]) -> None:
    assert records[0].header("x-claude-code-session-id") == records[0].session
    assert records[0].header("CONTENT-TYPE") == "application/json"
    assert records[0].header("x-missing") is None


def test_requests_without_tools_are_side_requests(tmp_path: Path) -> None:
    body = {"model": "m", "system": "x", "messages": [{"role": "user", "content": "title"}]}
    line = {"method": "POST", "path": "/v1/messages", "headers": {}, "body": json.dumps(body)}
    as_value = {**line, "body": body}
    path = tmp_path / "two.jsonl"
    path.write_text(json.dumps(line) + "\n\n" + json.dumps(as_value) + "\n", encoding="utf-8")
    first, second = load_capture(path)
    assert (first.agent, first.session, first.model) == ("side", "", "m")
    assert json.loads(second.body) == body and second.index == 1


def test_select_picks_indices_and_ranges(records: list[CaptureRecord]) -> None:
    assert [r.index for r in select(records, "0-2, 12,5")] == [0, 1, 2, 12, 5]
    for bad in ("", "a", "3-", "14", "1-20"):
        with pytest.raises(ValueError):
            select(records, bad)


# -- prepare_body ---------------------------------------------------------------


def test_prepare_body_changes_only_max_tokens(records: list[CaptureRecord]) -> None:
    for record in records:
        out = prepare_body(record.body)
        assert out.replace(b'"max_tokens":1,', b'"max_tokens":64000,', 1) == record.body
        parsed, original = json.loads(out), json.loads(record.body)
        assert list(parsed) == list(original)
        assert parsed == {**original, "max_tokens": 1}
        assert parsed["stream"] is True


def test_prepare_body_keeps_spacing_and_appends_a_missing_key() -> None:
    body = b'{ "b" : [1, {"max_tokens": 9}] ,\n "max_tokens" : 64000 , "stream": false }'
    assert prepare_body(body, 32) == body.replace(b"64000", b"32")
    assert prepare_body(b'{"a": 1}') == b'{"a": 1,"max_tokens":1}'
    assert prepare_body(b" {} ") == b' {"max_tokens":1} '


def test_prepare_body_refuses_what_is_not_an_object() -> None:
    with pytest.raises(ValueError):
        prepare_body(b"[1, 2]")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.text(), json_values, max_size=6), st.integers(0, 10**6), st.booleans())
def test_prepare_body_round_trips(body: dict[str, Any], max_tokens: int, pretty: bool) -> None:
    raw = json.dumps(body, indent=2 if pretty else None, ensure_ascii=False).encode()
    parsed = json.loads(prepare_body(raw, max_tokens))
    assert parsed == {**body, "max_tokens": max_tokens}
    assert list(parsed) == list(body) + ([] if "max_tokens" in body else ["max_tokens"])


# -- summarize --------------------------------------------------------------------


def test_summarize_totals_a_run() -> None:
    summary = summarize(
        [
            result(0, 1000, 0, seconds=2.0),
            result(1, 1200, 999, seconds=0.5),
            result(2, None, None, status=500, error="HTTP 500", seconds=0.1),
        ]
    )
    assert (summary.requests, summary.errors) == (3, 1)
    assert (summary.prompt_tokens, summary.cached_tokens) == (2200, 999)
    assert summary.cached_share == pytest.approx(999 / 2200)
    assert summary.seconds == pytest.approx(2.6)
    assert summarize([]).cached_share == 0.0


# -- miss_reason --------------------------------------------------------------------

# The words are the gateway's miss causes (core/misses.py), named by the piece that differs.
DIRECT = [
    "cold", "none", "environment_changed", "none", "attribution_changed",
    "attribution_changed", "none", "none", "attribution_changed", "none", "none", "none",
    "attribution_changed", "none",
]  # fmt: skip
STRIPPED = [
    "cold", "none", "environment_changed", "none", "none", "system_prompt_changed", "none",
    "none", "mcp_tools_changed", "none", "none", "none", "none", "none",
]  # fmt: skip


@pytest.mark.parametrize(("removed", "expected"), [(False, DIRECT), (True, STRIPPED)])
def test_miss_reason_from_the_bodies(
    records: list[CaptureRecord], removed: bool, expected: list[str]
) -> None:
    labels = [
        miss_reason(records[:i], record, attribution_removed=removed)
        for i, record in enumerate(records)
    ]
    assert labels == expected


def test_miss_reason_uses_the_tokens(records: list[CaptureRecord]) -> None:
    history, current = records[:3], records[3]  # 3 continues 2's conversation
    assert miss_reason(history, current, result(3, 19500, 19100)) == "none"
    # the request before it is its own session's: nobody came in between
    assert miss_reason(history, current, result(3, 19500, 25)) == "upstream_dropped"
    assert miss_reason(history, current, result(3, None, None, error="boom")) == "error"
    assert miss_reason(history, current, result(3, 19500, None)) == "none"
    # request 7 continues 4's conversation after a subagent used the upstream
    assert miss_reason(records[:7], records[7], result(7, 19500, 25)) == (
        "evicted_by_other_session"
    )


def test_every_label_is_a_cause_or_cold_or_error(records: list[CaptureRecord]) -> None:
    for removed in (False, True):
        for i, record in enumerate(records):
            assert miss_reason(records[:i], record, attribution_removed=removed) in LABELS


def test_a_neutralised_block_is_not_blamed() -> None:
    cch = load_capture(CCH_CORPUS)[:2]
    first = cch[:1]
    assert miss_reason(first, cch[1]) == "attribution_changed"
    assert miss_reason(first, cch[1], result(1, 19100, 18990)) == "none"
    assert miss_reason(first, cch[1], result(1, 19100, 12)) == "attribution_changed"


def test_miss_reasons_labels_a_whole_run(records: list[CaptureRecord]) -> None:
    chosen = [records[0], records[1], records[12]]
    direct = [result(0, 19600, 0), result(1, 19700, 19599), result(12, 19650, 25)]
    through = [result(0, 19580, 0), result(1, 19680, 19579), result(12, 19630, 18002)]
    assert miss_reasons(chosen, direct) == ["cold", "none", "attribution_changed"]
    assert miss_reasons(chosen, through, attribution_removed=True) == ["cold", "none", "none"]


# -- replay against a mock transport ---------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def sse_answer(input_tokens: int, cached: int) -> bytes:
    usage = {"input_tokens": input_tokens, "cache_read_input_tokens": cached, "output_tokens": 0}
    message = {"id": "m", "type": "message", "role": "assistant", "content": [], "usage": usage}
    events = [
        encode_event("message_start", {"type": "message_start", "message": message}),
        b": ping\n\n",
        encode_event(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {}},
        ),
        encode_event("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(events)


def json_answer(input_tokens: int, cached: int | None) -> dict[str, Any]:
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": 1}
    if cached is not None:
        usage["cache_read_input_tokens"] = cached
    return {"id": "m", "type": "message", "role": "assistant", "content": [], "usage": usage}


async def run(records: list[CaptureRecord], handler: Handler) -> list[ReplayResult]:
    seen: list[str] = []
    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport) as client:
        results = await replay(
            records,
            "http://upstream.test/",
            client=client,
            on_start=lambda r: seen.append(f"start {r.index}"),
            on_result=lambda r: seen.append(f"done {r.index}"),
        )
    assert seen == [f"{step} {r.index}" for r in records for step in ("start", "done")]
    return results


async def test_replay_sends_the_recorded_request(records: list[CaptureRecord]) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=json_answer(10, 5))

    await run(records[:1], handler)
    [request] = sent
    assert str(request.url) == "http://upstream.test/v1/messages?beta=true"
    assert request.content == prepare_body(records[0].body)
    assert request.headers["x-claude-code-session-id"] == records[0].session
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["host"] == "upstream.test"
    assert request.headers["content-length"] == str(len(request.content))
    assert "zstd" not in request.headers.get("accept-encoding", "")


def test_forward_headers_drops_hop_by_hop_and_framing(records: list[CaptureRecord]) -> None:
    recorded = {k.lower() for k, _ in records[0].headers}
    kept = {k.lower() for k in forward_headers(records[0])}
    assert recorded - kept == {"connection", "host", "content-length", "accept-encoding"}


async def test_replay_reads_usage_from_json_and_sse(records: list[CaptureRecord]) -> None:
    answers = iter(
        [
            httpx.Response(200, json=json_answer(1000, 0)),
            httpx.Response(
                200, content=sse_answer(150, 1050), headers={"content-type": "text/event-stream"}
            ),
            httpx.Response(200, json=json_answer(700, None)),
        ]
    )
    results = await run(records[:3], lambda _: next(answers))
    assert [(r.prompt_tokens, r.cached_tokens) for r in results] == [
        (1000, 0),
        (1200, 1050),
        (700, None),
    ]
    assert all(r.status == 200 and r.error is None for r in results)
    assert all(r.ttfb is not None and 0 <= r.ttfb <= r.seconds for r in results)
    assert [r.session for r in results] == [r.session for r in records[:3]]


async def test_replay_records_failures_and_goes_on(records: list[CaptureRecord]) -> None:
    calls = iter(range(3))

    def handler(request: httpx.Request) -> httpx.Response:
        call = next(calls)
        if call == 0:
            raise httpx.ConnectError("refused", request=request)
        if call == 1:
            return httpx.Response(500, text="upstream broke")
        stream_error = encode_event("error", {"type": "error", "error": {"type": "overloaded"}})
        return httpx.Response(
            200, content=stream_error, headers={"content-type": "text/event-stream"}
        )

    results = await run([records[0], records[1], records[8]], handler)
    assert results[0].status == 0 and "ConnectError" in str(results[0].error)
    assert results[1].status == 500 and "upstream broke" in str(results[1].error)
    assert "overloaded" in str(results[2].error)
    assert all(r.prompt_tokens is None for r in results)


async def test_replay_flags_an_answer_without_usage(records: list[CaptureRecord]) -> None:
    results = await run(records[:2], lambda _: httpx.Response(200, content=b"not json"))
    assert results[0].error is not None and "not JSON" in results[0].error
    results = await run(records[:1], lambda _: httpx.Response(200, json={"type": "message"}))
    assert results[0].error == "answer reports no usage"


# -- rendering ------------------------------------------------------------------------


def test_render_report_shows_rows_totals_and_ratio(records: list[CaptureRecord]) -> None:
    chosen = [records[0], records[1], records[12]]
    direct = [result(0, 19600, 0, seconds=60), result(1, 19700, 19599, seconds=1),
              result(12, 19650, 25, seconds=59)]  # fmt: skip
    through = [result(0, 19580, 0, seconds=60), result(1, 19680, 19579, seconds=1),
               result(12, 19630, 18002, seconds=9)]  # fmt: skip
    failed = [result(0, None, None, status=502, error="bad gateway", seconds=0.1)] * 3
    console = Console(record=True, width=200)
    console.print(
        render_report(
            chosen,
            [
                Column("direct", direct),
                Column("prefixgate", through, attribution_removed=True),
                Column("broken", failed),
            ],
        )
    )
    text = console.export_text()
    assert "18,002 / 9.0" in text and "25 / 59.0" in text
    assert "attribution_changed" in text and "94df3dbb" in text
    assert "33.3% / 120.0" in text and "63.8% / 70.0" in text
    assert "total time 0.58x of direct" in text
    assert "3 failed" in text


def test_render_report_fits_80_columns_leaving_out_session_then_agent(
    records: list[CaptureRecord],
) -> None:
    """The demo's table in an 80-column terminal: no number or label cut."""
    chosen = [records[0], records[1], records[12]]
    direct = [result(0, 12108, 0, seconds=73.1), result(1, 12186, 12108, seconds=1.6),
              result(12, 12106, 25, seconds=76.1)]  # fmt: skip
    through = [result(0, 12074, 0, seconds=72.3), result(1, 12152, 12074, seconds=0.9),
               result(12, 12073, 9838, seconds=16.4)]  # fmt: skip
    runs = [Column("direct", direct), Column("prefixgate", through, attribution_removed=True)]
    for width, left_out in ((80, "session"), (200, None)):
        console = Console(record=True, width=width)
        console.print(render_report(chosen, runs))
        text = console.export_text()
        assert "…" not in text
        assert max(len(line) for line in text.splitlines()) <= width
        for whole in ("12,108 / 1.6", "9,838 / 16.4", "attribution_changed", "total", "36,400"):
            assert whole in text, (width, whole)
        if left_out:
            assert f"Left out at this width: {left_out}" in text
        else:
            assert "Left out" not in text and "94df3dbb" in text


def test_current_corpus_labels_are_the_gateways_causes(corpus_directory: Path) -> None:
    records = load_capture(corpus_directory / "claude-code-2.1.332.jsonl")
    stripped = [
        miss_reason(records[:i], record, attribution_removed=True)
        for i, record in enumerate(records)
    ]
    # through prefixgate: block stripped, tool loads placed where they were loaded
    assert stripped == [
        "cold", "none", "none", "none", "none", "system_prompt_changed", "none", "none",
        "deferred_tools_changed", "none", "none", "none", "deferred_tools_changed",
        "none", "environment_changed", "system_prompt_changed",
    ]  # fmt: skip
    direct = [miss_reason(records[:i], record) for i, record in enumerate(records)]
    # forwarded, each new conversation's block differs first, and each load moves tools[]
    assert {direct[i] for i in (3, 4, 9, 12)} == {"attribution_changed"}
    assert direct[10] == direct[13] == "tool_loaded"
