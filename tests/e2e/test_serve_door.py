"""``prefixgate serve`` as a real process: keys, header limits through uvicorn,
and the refusal to listen beyond loopback without keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from servers import stub_upstream

from prefixgate.core.auth import hash_key
from prefixgate.demo import ManagedProcess, free_port

pytestmark = pytest.mark.e2e
KEY = "pg-e2e-door-key"
BODY = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


def test_keys_and_header_limits_on_a_real_server(tmp_path: Path) -> None:
    stub_port, port = free_port(), free_port()
    config = tmp_path / "prefixgate.toml"
    config.write_text(
        f'[server]\nport = {port}\naudit_path = "memory"\n'
        f'[upstreams.stub]\nurl = "http://127.0.0.1:{stub_port}"\n'
        f'[tenants.team]\nkeys = ["{hash_key(KEY)}"]\n',
        encoding="utf-8",
    )
    stub = stub_upstream(stub_port)
    gateway = ManagedProcess(
        "gateway",
        [sys.executable, "-m", "prefixgate", "serve", "--config", str(config)],
        f"http://127.0.0.1:{port}/healthz",
    )
    url = f"http://127.0.0.1:{port}/v1/messages"
    with stub, gateway, httpx.Client(timeout=30, trust_env=False) as client:
        assert client.post(url, json=BODY).status_code == 401
        assert client.post(url, json=BODY, headers={"x-api-key": KEY}).status_code == 200
        # above uvicorn's own default cap (16 KiB) but within ours: served
        pad = {"x-api-key": KEY, "x-pad": "p" * 20_000}
        assert client.post(url, json=BODY, headers=pad).status_code == 200
        # above ours: 431, Anthropic-shaped, naming the limit (not uvicorn's plain 400)
        r = client.post(url, json=BODY, headers={"x-api-key": KEY, "x-pad": "p" * 40_000})
        assert r.status_code == 431, r.text
        assert r.json()["error"]["type"] == "request_too_large"
        assert "max_header_bytes=32768" in r.json()["error"]["message"]


def test_serve_refuses_a_public_address_without_keys() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "prefixgate", "serve", "--host", "0.0.0.0",
         "--upstream", "http://127.0.0.1:9", "--audit", "memory"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "no tenant keys are configured" in done.stderr
    assert "--allow-unauthenticated" in done.stderr
