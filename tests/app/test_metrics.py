"""``GET /metrics`` and ``GET /dashboard`` after real traffic through the app.

A fake llama.cpp upstream (``httpx.MockTransport``) answers ``/v1/messages``
with the usage a test sets and counts tokens at ``/tokenize``; the numbers the
endpoints show are checked against the audit records the same requests left.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from support.app import running

from prefixgate.app.gateway import create_app
from prefixgate.app.metrics import Metrics
from prefixgate.app.saved import SavedPrefixes
from prefixgate.config import build_settings
from prefixgate.core.pipeline import rewrite
from prefixgate.report import build_report
from prefixgate.runtime.prefixes import PrefixStore, model_digest
from prefixgate.store.audit import AuditRecord, MemoryAudit

URL = "http://runtime.test:8080"
TENANT = "team-a"
SESSION = "11111111-aaaa-4bbb-8ccc-000000000001"
OTHER = "22222222-aaaa-4bbb-8ccc-000000000002"
PROMPT = 2000

ATTRIBUTION = {
    "type": "text",
    "text": "x-anthropic-billing-header: cc_version=2.1.197.56c; cc_entrypoint=cli;",
}
SYSTEM = "You are a coding agent.\n" + "".join(
    f"Rule {i}: keep the prompt prefix stable between turns.\n" for i in range(40)
)
TOOLS = [
    {
        "name": "Bash",
        "description": "Run a shell command. " * 8,
        "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}},
    }
]


def body(messages: int, opening: str = "list the files please", **extra: Any) -> dict[str, Any]:
    turns = [{"role": "user", "content": opening}]
    turns += [
        {"role": "assistant" if i % 2 else "user", "content": f"turn {i}"}
        for i in range(1, messages)
    ]
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": 256,
        "system": [ATTRIBUTION, {"type": "text", "text": SYSTEM}],
        "tools": TOOLS,
        "messages": turns,
        **extra,
    }


def ideal(earlier: dict[str, Any], later: dict[str, Any]) -> int:
    """Tokens of ``later`` an ideal cache holding ``earlier`` serves: the leading
    pieces they share, counted by the fake tokenizer, scaled to the prompt's size."""
    before, after = (
        [p.text for p in rewrite(json.dumps(b).encode()).view.pieces] for b in (earlier, later)
    )
    shared = 0
    while shared < min(len(before), len(after)) and before[shared] == after[shared]:
        shared += 1
    tokens = [len(text) // 4 for text in after]
    return round(sum(tokens[:shared]) * PROMPT / sum(tokens))


class Runtime:
    """A fake llama.cpp; ``cached`` is what the next answer reports read from
    cache, ``None`` for an answer without cache fields."""

    def __init__(self) -> None:
        self.cached: int | None = 0
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            text = json.loads(request.content)["content"]
            return httpx.Response(200, json={"tokens": [1] * (len(text) // 4)})
        if request.url.path == "/v1/messages/count_tokens":
            return httpx.Response(200, json={"input_tokens": PROMPT})
        usage: dict[str, Any] = {"input_tokens": PROMPT, "output_tokens": 3}
        if self.cached is not None:
            usage.update(input_tokens=PROMPT - self.cached, cache_read_input_tokens=self.cached)
        message = {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": "Hello"}],
            "usage": usage,
        }
        return httpx.Response(200, json=message)


def gateway(runtime: Runtime) -> Starlette:
    settings = build_settings(
        {"server": {"tenant": TENANT}, "upstreams": {"local": {"url": URL}}}, {}, {}
    )
    return create_app(settings, transport=runtime.transport, audit=MemoryAudit())


async def traffic(client: httpx.AsyncClient, runtime: Runtime) -> None:
    """Six requests: a session of three turns (the second one missing), a token
    count, an invalid body and another session's answer without cache fields."""
    session = {"x-claude-code-session-id": SESSION}
    runtime.cached = 0
    await client.post("/v1/messages", json=body(1), headers=session)
    await client.post("/v1/messages", json=body(3), headers=session)  # upstream_dropped
    runtime.cached = ideal(body(3), body(5))
    await client.post("/v1/messages", json=body(5), headers=session)  # a hit
    counted = {k: v for k, v in body(5).items() if k != "max_tokens"}
    await client.post("/v1/messages/count_tokens", json=counted, headers=session)
    bad = await client.post("/v1/messages", content=b"{", headers=session)
    assert bad.status_code == 400
    runtime.cached = None
    other = {"x-claude-code-session-id": OTHER}
    await client.post("/v1/messages", json=body(1, "write a poem"), headers=other)


async def finished(app: Starlette) -> list[AuditRecord]:
    await app.state.proxy.observer.drain()
    return list(app.state.audit.records)


# -- /metrics -------------------------------------------------------------------


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    found = [
        v
        for n, have, v in samples(text)
        if n == name and all(have.get(k) == want for k, want in labels.items())
    ]
    assert found, f"no sample {name} with {labels}"
    return sum(found)


async def test_metrics_add_up_to_the_audit_records() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    async with running(app) as client:
        await traffic(client, runtime)
        recs = await finished(app)
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    local = {"tenant": TENANT, "upstream": "local"}

    requests = "prefixgate_requests_total"
    ok = {"tenant": TENANT, "status": "200", "upstream": "local", "policy": "strip"}
    assert value(text, requests, **ok, kind="message") == 4
    assert value(text, requests, **ok, kind="count_tokens") == 1
    invalid = {"status": "400", "upstream": "-", "policy": "-", "kind": "message"}
    assert value(text, requests, tenant=TENANT, **invalid) == 1
    assert value(text, requests) == len(recs) == 6

    # a token count's size is recorded but is no cache traffic
    (count,) = [r for r in recs if r.kind == "count_tokens"]
    assert count.prompt_tokens == PROMPT and count.cached_tokens is None
    prompt = sum(r.prompt_tokens or 0 for r in recs if r.kind != "count_tokens")
    cached = sum(r.cached_tokens or 0 for r in recs)
    expected = sum(r.expected_cached_tokens or 0 for r in recs)
    assert prompt == 4 * PROMPT
    assert cached == ideal(body(3), body(5))
    # the other session shares the system prompt and tools with the last request
    poem = ideal(body(5), body(1, "write a poem"))
    assert expected == 0 + ideal(body(1), body(3)) + ideal(body(3), body(5)) + poem
    assert value(text, "prefixgate_prompt_tokens_total", **local) == prompt
    assert value(text, "prefixgate_cached_tokens_total", **local) == cached
    assert value(text, "prefixgate_expected_cached_tokens_total", **local) == expected
    # the other session's answer had no cache fields (a token count uses no cache)
    assert value(text, "prefixgate_cache_unknown_total", **local) == 1

    misses = [(labels["cause"], v) for n, labels, v in samples(text) if n.endswith("misses_total")]
    assert misses == [("upstream_dropped", 1.0)]
    assert [r.cause for r in recs if r.cause not in (None, "none")] == ["upstream_dropped"]
    blocks = "prefixgate_attribution_blocks_total"
    assert value(text, blocks, tenant=TENANT, policy="strip") == 5  # all but the invalid body

    timed = [r for r in recs if r.ttfb_ms is not None]
    assert len(timed) == 5
    ttfb = "prefixgate_time_to_first_byte_seconds"
    assert value(text, f"{ttfb}_count", **local) == 5
    assert value(text, f"{ttfb}_bucket", **local, le="+Inf") == 5
    total = "prefixgate_request_seconds"
    assert value(text, f"{total}_count", **local) == 5
    assert value(text, f"{total}_count", tenant=TENANT, upstream="-") == 1
    seconds = sum(r.total_ms or 0 for r in recs) / 1000
    assert abs(value(text, f"{total}_sum") - seconds) < 1e-6


async def test_two_apps_do_not_share_counters() -> None:
    busy, idle = gateway(Runtime()), gateway(Runtime())
    async with running(busy) as client:
        await client.post("/v1/messages", json=body(1))
        await finished(busy)
        busy_text = (await client.get("/metrics")).text
    async with running(idle) as client:
        idle_text = (await client.get("/metrics")).text
    assert value(busy_text, "prefixgate_requests_total") == 1
    assert [s for s in samples(idle_text) if s[0].startswith("prefixgate_")] == []


# -- /dashboard -----------------------------------------------------------------


def headline(page: str) -> dict[str, str]:
    """``data-total`` name: its ``data-value``."""
    return dict(re.findall(r'data-total="([^"]+)" data-value="([^"]*)"', page))


def raw(number: float | None) -> str:
    return "" if number is None else repr(number)


async def test_the_dashboard_shows_the_report_of_the_apps_records() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    async with running(app) as client:
        empty = await client.get("/dashboard")
        await traffic(client, runtime)
        recs = await finished(app)
        response = await client.get("/dashboard")
    assert empty.status_code == 200
    assert headline(empty.text)["requests"] == "0"
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    totals = build_report(recs).totals
    shown = headline(response.text)
    assert shown == {
        "requests": str(totals.requests),
        "errors": str(totals.errors),
        "unknown_cached": str(totals.unknown_cached),
        "prompt_tokens": raw(totals.prompt_tokens),
        "cached_tokens": raw(totals.cached_tokens),
        "expected_cached_tokens": raw(totals.expected_cached_tokens),
        "hit_share": raw(totals.hit_share),
        "expected_share": raw(totals.expected_share),
        "oracle_tokens": raw(totals.oracle_tokens),
        "runtime_expected_tokens": raw(totals.runtime_expected_tokens),
        "oracle_share": raw(totals.oracle_share),
        "time_saved_estimate_ms": raw(totals.time_saved_estimate_ms),
    }
    # real numbers, not an empty page that happens to agree
    assert (shown["requests"], shown["errors"]) == ("6", "1")
    assert shown["cached_tokens"] == str(ideal(body(3), body(5)))
    assert "upstream_dropped" in response.text


def test_oracle_runtime_expected_and_lost_tokens_by_cause() -> None:
    metrics = Metrics()
    base = AuditRecord(
        time=0.0, route="/v1/messages", tenant=TENANT, session="s", model="m",
        upstream="local", policy="strip", status=200, prompt_tokens=10_000,
    )  # fmt: skip
    metrics.observe(replace(base, cached_tokens=0, oracle_tokens=8000,
                            runtime_expected_tokens=5000, lost_by_runtime=5000,
                            lost_cause="evicted"))  # fmt: skip
    metrics.observe(replace(base, cached_tokens=900, oracle_tokens=1000,
                            runtime_expected_tokens=1000, lost_by_runtime=0,
                            lost_cause="none"))  # fmt: skip
    metrics.observe(replace(base, cached_tokens=9, oracle_tokens=90,
                            runtime_expected_tokens=90, lost_by_runtime=90,
                            lost_cause="not-a-cause"))  # fmt: skip
    text = metrics.exposition().decode()
    up = {"tenant": TENANT, "upstream": "local"}
    assert value(text, "prefixgate_oracle_cached_tokens_total", **up) == 9090
    assert value(text, "prefixgate_runtime_expected_tokens_total", **up) == 6090
    lost = "prefixgate_lost_tokens_total"
    assert value(text, lost, cause="capacity", **up) == 3000
    assert value(text, lost, cause="evicted", **up) == 5000
    assert value(text, lost, cause="unknown", **up) == 90
    causes = {have["cause"] for n, have, _ in samples(text) if n == lost}
    assert causes == {"capacity", "evicted", "unknown"}


def test_saved_prefix_series_per_record_and_gateway_wide(tmp_path: Path) -> None:
    """Restores counted from the records, by tenant; saves, failures, restarts and
    the files read from the saved prefixes at each scrape, with no tenant: only an
    admin (or a gateway without keys, ``exposition()``) sees those."""
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF weights")
    prefixes = SavedPrefixes(URL, PrefixStore(tmp_path / "saved", 1 << 30), model)
    metrics = Metrics()
    metrics.watch_prefixes(prefixes)
    base = AuditRecord(
        time=0.0, route="/v1/messages", tenant=TENANT, session="s", model="m",
        upstream="local", policy="strip", status=200, prompt_tokens=5000, cached_tokens=0,
    )  # fmt: skip
    metrics.observe(replace(base, restored_tokens=1643))
    metrics.observe(replace(base, restored_tokens=0))
    metrics.observe(base)  # no restore before it
    metrics.observe(replace(base, tenant="team-b", restored_tokens=3286))
    text = metrics.exposition().decode()
    restores, restored = (
        "prefixgate_saved_prefix_restores_total",
        "prefixgate_restored_tokens_total",
    )
    assert value(text, restores, tenant=TENANT, upstream="local") == 2
    assert value(text, restored, tenant=TENANT, upstream="local") == 1643
    assert (value(text, restores), value(text, restored)) == (3, 4929)
    gateway_wide = (
        "prefixgate_saved_prefix_saves_total",
        "prefixgate_saved_prefix_save_failures_total",
        "prefixgate_saved_prefix_restore_failures_total",
        "prefixgate_runtime_restarts_total",
        "prefixgate_saved_prefix_bytes",
        "prefixgate_saved_prefix_files",
    )
    assert [value(text, name) for name in gateway_wide] == [0] * 6
    # read when scraped, not when registered
    name = f"{model_digest(model)[:12]}-{'0' * 40}.kv"
    (tmp_path / "saved" / name).write_bytes(b"kv" * 1000)
    prefixes.store.saved(name, 3000)
    counts = prefixes.counts
    counts.saves, counts.save_failures, counts.restore_failures, counts.restarts = 4, 3, 2, 1
    text = metrics.exposition().decode()
    assert [value(text, name) for name in gateway_wide] == [4, 3, 2, 1, 2000, 1]
    assert all(labels == {} for n, labels, _ in samples(text) if n in gateway_wide)
    # a tenant's key sees its own restores, not the other tenant's nor the gateway's
    mine = metrics.exposition(TENANT).decode()
    assert value(mine, restores) == 2 and value(mine, restored) == 1643
    assert {n for n, _, _ in samples(mine)}.isdisjoint(gateway_wide)
    assert all(labels.get("tenant") == TENANT for _, labels, _ in samples(mine))
