"""Credentials and cookies across a real ``prefixgate serve`` (issue: hostile clients,
tenants and upstreams). Each test names the defect it guards against."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import httpx
from support.hostile import (
    REDACTED,
    SECRETS,
    UPSTREAM_KEY,
    URL_PASSWORD,
    URL_USER,
    Running,
    row_of,
)


def body(model: str, stream: bool = False) -> dict[str, object]:
    return {
        "model": model,
        "max_tokens": 8,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }


def post(gw: Running, payload: dict[str, object], **headers: str) -> httpx.Response:
    with httpx.Client(timeout=30, trust_env=False) as client:
        return client.post(f"{gw.url}/v1/messages", json=payload, headers=headers)


def assert_no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} holds a configured secret"


def test_credentials_in_the_upstream_url_are_used_but_never_shown(
    hostile_gateway: Running,
) -> None:
    """Defect 6: ``url = "http://user:secret@host"`` put the secret into 502 bodies,
    /healthz, logs and audit rows."""
    gw = hostile_gateway
    ok = post(gw, body("plain"))
    assert ok.status_code == 200, ok.text
    seen = gw.upstream.seen[-1].headers
    assert seen["authorization"].startswith("Basic ")  # the URL's credentials were sent
    assert seen["x-api-key"] == UPSTREAM_KEY
    with httpx.Client(timeout=10, trust_env=False) as client:
        health = client.get(f"{gw.url}/healthz")
    assert health.status_code == 200
    assert "127.0.0.1" in health.text and URL_PASSWORD not in health.text
    assert URL_USER not in health.text
    error = post(gw, body("echo-error"))
    assert error.status_code == 400
    assert_no_secret("an error answer", error.text)
    assert_no_secret("the gateway's log", gw.log())
    assert_no_secret("the audit file", gw.stored())


def test_an_upstream_that_echoes_its_key_is_redacted_everywhere(hostile_gateway: Running) -> None:
    """Defect 7: an upstream answer or error text holding the configured upstream key
    was relayed to the client verbatim and stored."""
    gw = hostile_gateway
    whole = post(gw, body("echo-key"))
    assert whole.status_code == 200
    text = whole.json()["content"][0]["text"]
    assert REDACTED in text and UPSTREAM_KEY not in text
    error = post(gw, body("echo-error"))
    assert error.json()["type"] == "error" and REDACTED in error.json()["error"]["message"]
    streamed = post(gw, body("echo-stream", stream=True))
    assert streamed.status_code == 200 and "message_stop" in streamed.text
    assert REDACTED in streamed.text
    for answer in (whole, error, streamed):
        assert_no_secret("an answer", answer.text)
    assert_no_secret("the audit file", gw.stored())
    assert_no_secret("the gateway's log", gw.log())


def test_no_client_credential_header_reaches_the_upstream(hostile_gateway: Running) -> None:
    """Defect 8: ``api-key``, ``x-goog-api-key`` and ``anthropic-api-key`` from the
    client went upstream although ``api_key_env`` replaces the client's credentials."""
    gw = hostile_gateway
    client_values = {
        "api-key": "client-azure-key-1",
        "x-goog-api-key": "client-google-key-2",
        "anthropic-api-key": "client-anthropic-key-3",
        "x-api-key": "client-x-api-key-4",
        "authorization": "Bearer client-bearer-5",
        "ocp-apim-subscription-key": "client-apim-key-6",
    }
    assert post(gw, body("plain"), **client_values).status_code == 200
    seen = gw.upstream.seen[-1].headers
    sent = json.dumps(seen)
    for value in client_values.values():
        assert value.split()[-1] not in sent
    assert seen["x-api-key"] == UPSTREAM_KEY


def test_an_upstream_cookie_is_never_replayed_nor_relayed(hostile_gateway: Running) -> None:
    """Defect 9: cookies an upstream set for one client's request were sent on every
    later request, whoever made it. Exposure: ``set-cookie``, ``access-control-*`` and
    hop-by-hop headers were relayed from the upstream to the client."""
    gw = hostile_gateway
    first = post(gw, body("cookies"))
    assert first.status_code == 200
    assert first.headers.get("x-upstream-note") == "kept"  # other headers still travel
    for name in ("set-cookie", "access-control-allow-origin", "keep-alive"):
        assert name not in first.headers, name
    assert not any(k.startswith("access-control-") for k in first.headers)
    second = post(gw, body("plain"))
    assert second.status_code == 200
    assert "cookie" not in gw.upstream.seen[-1].headers


def test_log_level_trace_is_accepted_and_an_unknown_one_is_a_usage_error() -> None:
    """Defect 10: ``--log-level trace`` crashed ``serve`` with a traceback."""
    from support.servers import free_port

    port = free_port()
    trace = subprocess.Popen(
        [sys.executable, "-m", "prefixgate", "serve", "--log-level", "trace",
         "--upstream", "http://127.0.0.1:9", "--port", str(port), "--audit", "memory"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        healthy = False
        with httpx.Client(timeout=2, trust_env=False) as client:
            for _ in range(120):
                if trace.poll() is not None:
                    break
                with contextlib.suppress(httpx.HTTPError):
                    healthy = client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                if healthy:
                    break
                subprocess.run(["sleep", "0.25"], check=True)
        assert healthy, trace.stdout.read() if trace.poll() is not None and trace.stdout else ""
    finally:
        trace.terminate()
        output, _ = trace.communicate(timeout=30)
    assert "Traceback" not in output
    bad = subprocess.run(
        [sys.executable, "-m", "prefixgate", "serve", "--log-level", "loud"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--log-level" in bad.stderr


def test_web_pages_of_other_sites_and_rebound_names_are_turned_away(
    hostile_gateway: Running,
) -> None:
    """Exposure "Host and Origin": the keyless loopback gateway accepted any Host and
    any Origin, so a page the user visits could POST to it and a DNS-rebinding page
    could read /report and the dashboard."""
    gw = hostile_gateway
    with httpx.Client(timeout=30, trust_env=False) as client:
        page = client.post(
            f"{gw.url}/v1/messages",
            content=json.dumps(body("plain")),
            headers={"origin": "https://evil.example", "content-type": "text/plain"},
        )
        rebound = client.get(f"{gw.url}/dashboard", headers={"host": "evil.example:8787"})
        rebound_report = client.get(f"{gw.url}/report", headers={"host": "evil.example"})
        own = client.post(
            f"{gw.url}/v1/messages",
            json=body("plain"),
            headers={"origin": gw.url},  # the gateway's own pages
        )
        sdk = client.post(f"{gw.url}/v1/messages", json=body("plain"))
    assert page.status_code == 403 and page.json()["error"]["type"] == "permission_error"
    assert "allowed_origins" in page.json()["error"]["message"]
    assert rebound.status_code == 403 and rebound_report.status_code == 403
    assert "allowed_hosts" in rebound.json()["error"]["message"]
    assert own.status_code == 200 and sdk.status_code == 200
    assert row_of(gw.audit, page)["status"] == 403


def test_a_clients_forwarding_headers_do_not_reach_the_upstream(hostile_gateway: Running) -> None:
    """Exposure "What is relayed back": X-Forwarded-* from clients were relayed upstream
    although no proxy of the operator's set them (``trust_forwarded`` is off)."""
    gw = hostile_gateway
    claims = {
        "x-forwarded-for": "203.0.113.9",
        "x-forwarded-host": "admin.example",
        "forwarded": "for=203.0.113.9",
        "x-real-ip": "203.0.113.9",
    }
    assert post(gw, body("plain"), **claims).status_code == 200
    seen = gw.upstream.seen[-1].headers
    assert not set(claims) & set(seen), seen


def test_a_whole_answer_beyond_the_cap_is_a_502_not_buffered(hostile_gateway: Running) -> None:
    """Exposure "Unbounded answers": a non-streamed upstream answer was buffered
    whole, however large."""
    gw = hostile_gateway
    answer = post(gw, body("huge"))
    assert answer.status_code == 502
    assert "max_answer_bytes=1048576" in answer.json()["error"]["message"]
    assert row_of(gw.audit, answer)["status"] == 502
    assert post(gw, body("plain")).status_code == 200


def test_odd_system_prompts_are_forwarded_untouched(hostile_gateway: Running) -> None:
    """Exposure "Edge cases": ``system`` as ``""``, ``[]``, ``null`` or a non-text block,
    and the block in upper case or after a byte-order mark: no traceback, no half strip
    (the last two are not Claude Code's block: forwarded as written)."""
    gw = hostile_gateway
    systems: list[object] = [
        "",
        [],
        None,
        [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}],
        "X-ANTHROPIC-BILLING-HEADER: CC_VERSION=2.1.332.3AB; CCH=0A1B2;\nYou are.",
        "\ufeffx-anthropic-billing-header: cc_version=2.1.332.3ab; cch=0a1b2;\nYou are.",
    ]
    for system in systems:
        payload = json.dumps({**body("plain"), "system": system}).encode()
        with httpx.Client(timeout=30, trust_env=False) as client:
            answer = client.post(
                f"{gw.url}/v1/messages",
                content=payload,
                headers={"content-type": "application/json"},
            )
        assert answer.status_code == 200, (system, answer.text)
        assert gw.upstream.seen[-1].body == payload, system
