"""``prefixgate serve --audit FILE.jsonl`` as a real process in front of the stub
upstream, then ``prefixgate report --db FILE.jsonl``: the request is in the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from servers import stub_upstream

from prefixgate.demo import ManagedProcess, free_port
from prefixgate.store.sinks import read_audit

pytestmark = pytest.mark.e2e
SESSION = "report-jsonl-e2e-session"
BODY = {
    "model": "stub-model",
    "max_tokens": 8,
    "system": [{"type": "text", "text": "You are a careful assistant."}],
    "messages": [{"role": "user", "content": "hi"}],
    "metadata": {"user_id": json.dumps({"session_id": SESSION})},
}


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefixgate", "report", *args],
        env={**os.environ, "COLUMNS": "200"},  # room for every column of the tables
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_report_reads_the_jsonl_log_serve_wrote(tmp_path: Path) -> None:
    stub_port, port = free_port(), free_port()
    log = tmp_path / "audit.jsonl"
    stub = stub_upstream(stub_port)
    gateway = ManagedProcess(
        "gateway",
        [
            sys.executable, "-m", "prefixgate", "serve",
            "--upstream", f"http://127.0.0.1:{stub_port}",
            "--port", str(port), "--audit", str(log), "--log-level", "warning",
        ],
        f"http://127.0.0.1:{port}/healthz",
    )  # fmt: skip
    with stub, gateway, httpx.Client(timeout=30, trust_env=False) as client:
        answer = client.post(f"http://127.0.0.1:{port}/v1/messages", json=BODY)
        assert answer.status_code == 200, answer.text
        request_id = answer.headers["x-prefixgate-request-id"]
    # the gateway has stopped (SIGTERM, a graceful drain): the log is all there

    (rec,) = [r for r in read_audit(log) if r.request_id == request_id]
    assert (rec.session, rec.tenant, rec.status) == (SESSION, "default", 200)

    done = report("--db", str(log), "--tenant", "default", "--json")
    assert done.returncode == 0, done.stderr
    numbers = json.loads(done.stdout)
    assert numbers["totals"]["requests"] == 1
    assert [row["session"] for row in numbers["sessions"]] == [SESSION]

    text = report("--db", str(log), "--tenant", "default")
    assert text.returncode == 0, text.stderr
    assert SESSION[:8] in text.stdout
    assert "Total: 1 requests" in text.stdout
