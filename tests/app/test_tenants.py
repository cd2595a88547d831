"""Keys and tenants through the app: who may call, what each tenant can read,
and what a request cannot make the gateway do (security tests).

The upstream is an ``httpx.MockTransport`` that records what it received.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from support.app import running
from support.upstream import FakeUpstream

from prefixgate.app.gateway import create_app
from prefixgate.config import ConfigError, Settings, build_settings
from prefixgate.core.auth import hash_key
from prefixgate.store.audit import MemoryAudit

ALPHA, BETA, ROOT = "pg-alpha-key", "pg-beta-key", "pg-root-key"
UPSTREAM_KEY = "sk-upstream-secret-123"
MESSAGE: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 5},
}


def body(text: str = "hello", model: str = "claude-x") -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 8,
        "system": [{"type": "text", "text": "You are a careful assistant. " * 8}],
        "messages": [{"role": "user", "content": text}],
    }


def upstream_of_tenants() -> FakeUpstream:
    """Answers every message; health checks and ``/tokenize`` are not in ``requests``."""
    return FakeUpstream(answer=MESSAGE, unrecorded=("/health", "/tokenize"))


def settings(**server: Any) -> Settings:
    return build_settings(
        {
            "server": server,
            "upstreams": {
                "local": {"url": "http://local.test:8080", "api_key": UPSTREAM_KEY},
                "other": {"url": "http://other.test:8080"},
            },
            "routes": [{"model": "other-*", "upstream": "other"}],
            "tenants": {
                "alpha": {"keys": [hash_key(ALPHA)], "upstreams": ["local"]},
                "beta": {"keys": [hash_key(BETA)]},
                "root": {"keys": [hash_key(ROOT)], "admin": True},
            },
        },
        {},
        {},
    )


def app_for(upstream: FakeUpstream, audit: MemoryAudit, **server: Any) -> Any:
    return create_app(settings(**server), transport=upstream.transport, audit=audit)


def key(k: str) -> dict[str, str]:
    return {"x-api-key": k}


async def test_without_a_valid_key_nothing_but_health_answers() -> None:
    upstream, audit = upstream_of_tenants(), MemoryAudit()
    async with running(app_for(upstream, audit)) as client:
        for headers in ({}, key("pg-wrong"), {"authorization": f"Bearer {hash_key(ALPHA)}"}):
            r = await client.post("/v1/messages", json=body(), headers=headers)
            assert r.status_code == 401
            assert r.json()["type"] == "error"
            assert r.json()["error"]["type"] == "authentication_error"
            for path in ("/metrics", "/report", "/v1/models"):
                assert (await client.get(path, headers=headers)).status_code == 401
        dash = await client.get("/dashboard")
        assert dash.status_code == 401
        assert dash.headers["www-authenticate"].startswith("Basic")
        health = await client.get("/healthz")
        assert health.json() == {"status": "ok"}  # no upstream URLs without a key
        assert "local.test" in (await client.get("/healthz", headers=key(BETA))).text
    assert upstream.requests == []
    refused = list(audit.records)  # each refusal is audited, under no tenant
    assert len(refused) == 3 * 4 + 1
    assert {(r.tenant, r.status) for r in refused} == {("-", 401)}
    assert all(r.request_id and "pg-wrong" not in str(r) for r in refused)


async def test_a_key_names_the_tenant_of_the_record_and_every_metric() -> None:
    upstream, audit = upstream_of_tenants(), MemoryAudit()
    async with running(app_for(upstream, audit)) as client:
        r1 = await client.post("/v1/messages", json=body(), headers=key(ALPHA))
        r2 = await client.post(
            "/v1/messages", json=body(), headers={"authorization": f"Bearer {BETA}"}
        )
        assert (r1.status_code, r2.status_code) == (200, 200)
        assert r1.headers["x-prefixgate-request-id"] != r2.headers["x-prefixgate-request-id"]
        metrics = (await client.get("/metrics", headers=key(ROOT))).text
    assert [r.tenant for r in audit.records] == ["alpha", "beta"]
    assert audit.records[0].key != audit.records[1].key  # the tenant is in the cache key
    series = [line for line in metrics.splitlines() if line.startswith("prefixgate_requests_")]
    assert series and all('tenant="' in line for line in series)
    assert any('tenant="alpha"' in line for line in series)
    assert any('tenant="beta"' in line for line in series)


async def test_client_credentials_never_reach_the_upstream_and_its_key_never_leaks() -> None:
    upstream, audit = upstream_of_tenants(), MemoryAudit()
    async with running(app_for(upstream, audit)) as client:
        ok = await client.post("/v1/messages", json=body(), headers=key(ALPHA))
        upstream.status = 500
        failed = await client.post("/v1/messages", json=body(), headers=key(ALPHA))
        assert ok.status_code == 200
        assert failed.status_code == 500
        dashboard = (await client.get("/dashboard", headers=key(ROOT))).text
        report = (await client.get("/report", headers=key(ROOT))).text
    for sent in upstream.requests:
        assert sent.headers["x-api-key"] == UPSTREAM_KEY
        assert ALPHA not in str(sent.headers.raw)
    for text in (ok.text, failed.text, dashboard, report, *map(str, audit.records)):
        assert UPSTREAM_KEY not in text
        assert ALPHA not in text
    assert UPSTREAM_KEY not in repr(settings())


async def test_a_tenant_reads_only_its_own_dashboard_report_and_metrics() -> None:
    upstream, audit = upstream_of_tenants(), MemoryAudit()
    headers = {"x-claude-code-session-id": "aaaa1111-alpha-session"}
    async with running(app_for(upstream, audit)) as client:
        await client.post("/v1/messages", json=body("alpha's"), headers={**headers, **key(ALPHA)})
        beta_headers = {"x-claude-code-session-id": "bbbb2222-beta-session", **key(BETA)}
        await client.post("/v1/messages", json=body("beta's"), headers=beta_headers)

        beta_dash = await client.get("/dashboard", headers=key(BETA))
        basic = base64.b64encode(f"me:{BETA}".encode()).decode()
        beta_browser = await client.get("/dashboard", headers={"authorization": f"Basic {basic}"})
        beta_report = (await client.get("/report", headers=key(BETA))).json()
        beta_metrics = (await client.get("/metrics", headers=key(BETA))).text
        nosy = await client.get("/dashboard?tenant=alpha", headers=key(BETA))
        nosy_report = await client.get("/report?tenant=alpha", headers=key(BETA))
        root_alpha = (await client.get("/report?tenant=alpha", headers=key(ROOT))).json()
        root_all = (await client.get("/report", headers=key(ROOT))).json()

    assert beta_dash.status_code == beta_browser.status_code == 200
    assert "bbbb2222" in beta_dash.text and "aaaa1111" not in beta_dash.text
    assert "aaaa1111" not in beta_browser.text
    assert [row["tenant"] for row in beta_report["sessions"]] == ["beta"]
    assert 'tenant="alpha"' not in beta_metrics and 'tenant="beta"' in beta_metrics
    assert nosy.status_code == nosy_report.status_code == 403
    assert nosy.json()["error"]["type"] == "permission_error"
    assert [row["tenant"] for row in root_alpha["sessions"]] == ["alpha"]
    assert sorted(row["tenant"] for row in root_all["sessions"]) == ["alpha", "beta"]


async def test_a_forged_session_id_does_not_cross_tenants() -> None:
    """Beta sends alpha's session id: a session of its own, with its own cache key,
    and nothing of alpha's is named to it (nor beta's to alpha)."""
    upstream, audit = upstream_of_tenants(), MemoryAudit()
    session = {"x-claude-code-session-id": "aaaa1111-alpha-session"}
    async with running(app_for(upstream, audit)) as client:
        await client.post("/v1/messages", json=body("one"), headers={**session, **key(ALPHA)})
        await client.post("/v1/messages", json=body("one"), headers={**session, **key(BETA)})
        await client.post("/v1/messages", json=body("one two"), headers={**session, **key(ALPHA)})
        beta_report = (await client.get("/report", headers=key(BETA))).json()
        alpha_report = (await client.get("/report", headers=key(ALPHA))).json()
    alpha1, beta, alpha2 = audit.records
    assert (alpha1.tenant, beta.tenant, alpha2.tenant) == ("alpha", "beta", "alpha")
    assert alpha1.key != beta.key  # same prompt, same session id, another tenant
    assert alpha1.session == beta.session == "aaaa1111-alpha-session"
    for rec in audit.records:  # another tenant's session is never named
        assert "aaaa1111" not in (rec.cause_detail or "")
    assert [(r["tenant"], r["requests"]) for r in alpha_report["sessions"]] == [("alpha", 2)]
    assert [row["tenant"] for row in beta_report["sessions"]] == ["beta"]
    assert beta_report["totals"]["requests"] == 1


async def test_a_tenant_may_be_kept_off_an_upstream() -> None:
    upstream, audit = upstream_of_tenants(), MemoryAudit()
    async with running(app_for(upstream, audit)) as client:
        denied = await client.post(
            "/v1/messages", json=body(model="other-model"), headers=key(ALPHA)
        )
        allowed = await client.post(
            "/v1/messages", json=body(model="other-model"), headers=key(BETA)
        )
    assert denied.status_code == 403
    assert denied.json()["error"]["type"] == "permission_error"
    assert "may not use upstream 'other'" in denied.json()["error"]["message"]
    assert allowed.status_code == 200
    assert [r.url.host for r in upstream.requests] == ["other.test"]
    assert [r.status for r in audit.records] == [403, 200]


async def test_the_request_cannot_choose_the_upstream_url() -> None:
    upstream, audit = upstream_of_tenants(), MemoryAudit()
    tricks = {
        "host": "evil.test",
        "x-forwarded-host": "evil.test",
        "x-forwarded-proto": "http",
        "forwarded": "host=evil.test",
        "x-original-url": "http://evil.test/v1/messages",
        **key(BETA),
    }
    payload = {**body(), "base_url": "http://evil.test", "metadata": {"user_id": "http://evil"}}
    async with running(app_for(upstream, audit)) as client:
        r1 = await client.post(
            "/v1/messages?upstream=http://evil.test", json=payload, headers=tricks
        )
        r2 = await client.post("http://evil.test/v1/messages", json=payload, headers=key(BETA))
        r3 = await client.post("//evil.test/v1/messages", json=payload, headers=key(BETA))
    assert (r1.status_code, r2.status_code, r3.status_code) == (200, 200, 200)
    assert [r.url.host for r in upstream.requests] == ["local.test"] * 3
    assert all(r.url.path == "/v1/messages" for r in upstream.requests)
    for sent in upstream.requests:
        assert sent.headers["host"] == "local.test:8080"


async def test_header_values_cannot_inject_headers_upstream() -> None:
    """A header value with CR or LF (possible through a raw ASGI server) is refused,
    never forwarded as a second header."""
    upstream, audit = upstream_of_tenants(), MemoryAudit()
    app = app_for(upstream, audit)
    sent: list[dict[str, Any]] = []
    raw = json.dumps(body()).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/messages",
        "raw_path": b"/v1/messages",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            (b"x-api-key", BETA.encode()),
            (b"anthropic-beta", b"x\r\nx-api-key: stolen\r\nx-injected: 1"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("gateway.test", 80),
        "state": {},
    }
    chunks = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with running(app):
        await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = json.loads(
        b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    )
    assert start["status"] == 400
    assert payload["error"]["type"] == "invalid_request_error"
    assert "anthropic-beta" in payload["error"]["message"]
    assert upstream.requests == []
    assert [r.status for r in audit.records] == [400]


def test_without_keys_only_loopback_unless_said_explicitly() -> None:
    plain = {"upstreams": {"local": {"url": "http://local.test:8080"}}}
    for host in ("127.0.0.1", "::1", "localhost"):
        assert build_settings({**plain, "server": {"host": host}}, {}, {}).host == host
    with pytest.raises(ConfigError, match="no tenant keys"):
        build_settings({**plain, "server": {"host": "0.0.0.0"}}, {}, {})
    with pytest.raises(ConfigError, match="no tenant keys"):
        build_settings(plain, {}, {"host": "10.1.2.3"})
    opened = build_settings(plain, {}, {"host": "0.0.0.0", "allow_unauthenticated": True})
    assert opened.host == "0.0.0.0"
    env = {"PREFIXGATE_ALLOW_UNAUTHENTICATED": "true", "PREFIXGATE_HOST": "0.0.0.0"}
    assert build_settings(plain, env, {}).allow_unauthenticated
    keyed = {**plain, "tenants": {"a": {"keys": [hash_key("k")]}}, "server": {"host": "0.0.0.0"}}
    assert build_settings(keyed, {}, {}).keyed


def test_tenant_config_takes_digests_only() -> None:
    plain = {"upstreams": {"local": {"url": "http://local.test:8080"}}}
    with pytest.raises(ConfigError, match="not a key digest"):
        build_settings({**plain, "tenants": {"a": {"keys": ["pg-plain-key"]}}}, {}, {})
    with pytest.raises(ConfigError, match="two tenants"):
        digest = hash_key("k")
        build_settings(
            {**plain, "tenants": {"a": {"keys": [digest]}, "b": {"keys": [digest]}}}, {}, {}
        )
    with pytest.raises(ConfigError, match="upstreams"):
        build_settings(
            {**plain, "tenants": {"a": {"keys": [hash_key("k")], "upstreams": ["nope"]}}}, {}, {}
        )
