"""``prefixgate serve --preset llama.cpp`` as a real process in front of the real
bundled llama-server (the session's ``local_runtime``, on a port of its own, so
``--upstream`` overrides only the preset's URL): a request answers, the
preset's tokenizer counts the expected tokens, a repeated prompt is served
from the cache, and ``report --config`` with prices shows the money saved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from prefixgate.demo import ManagedProcess, free_port
from prefixgate.store.sinks import read_audit

pytestmark = pytest.mark.e2e
SESSION = "preset-llama-cpp-e2e"
BODY = {
    "model": "local",
    "max_tokens": 4,
    "system": [{"type": "text", "text": "You are a careful assistant. " * 40}],
    "messages": [{"role": "user", "content": "Say hi."}],
    "metadata": {"user_id": json.dumps({"session_id": SESSION})},
}


def test_serve_with_the_llama_cpp_preset_in_front_of_the_bundled_runtime(
    local_base_url: str, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "audit.jsonl"
    gateway = ManagedProcess(
        "gateway",
        [
            sys.executable, "-m", "prefixgate", "serve", "--preset", "llama.cpp",
            "--upstream", local_base_url,
            "--port", str(port), "--audit", str(log), "--log-level", "warning",
        ],
        f"http://127.0.0.1:{port}/healthz",
    )  # fmt: skip
    ids = []
    with gateway, httpx.Client(timeout=120, trust_env=False) as client:
        for _ in range(2):
            answer = client.post(f"http://127.0.0.1:{port}/v1/messages", json=BODY)
            assert answer.status_code == 200, answer.text
            assert answer.json()["type"] == "message"
            ids.append(answer.headers["x-prefixgate-request-id"])
    # the gateway has stopped (a graceful drain): the log is complete
    by_id = {r.request_id: r for r in read_audit(log)}
    first, second = by_id[ids[0]], by_id[ids[1]]
    assert (first.upstream, first.policy, first.session) == ("default", "strip", SESSION)
    assert second.expected_source == "tokenizer"  # the preset's tokenizer = "llama.cpp"
    assert second.prompt_tokens is not None and second.prompt_tokens > 200
    assert second.cached_tokens is not None and second.cached_tokens > 200

    config = tmp_path / "prices.toml"
    config.write_text(
        f"[upstreams.default]\npreset = 'llama.cpp'\nurl = '{local_base_url}'\n"
        "price_input = 2.0\nprice_cached = 0.5\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "prefixgate", "report", "--db", str(log), "--tenant", "default",
         "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    totals = json.loads(done.stdout)["totals"]
    cached = totals["cached_tokens"]
    assert cached >= second.cached_tokens
    assert totals["money_saved"] == pytest.approx(cached * 1.5 / 1e6)
