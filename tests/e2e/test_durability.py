"""Durability: ``prefixgate serve`` killed with -9 under load keeps every record
of a request whose answer reached the client before the kill.

The gateway runs as a real process with its SQLite audit log in front of the
stub upstream (``bench/stub_upstream.py``); 32 clients stream and post for a
few seconds, each noting the ``x-prefixgate-request-id`` of every answer it got
in full (a stream: up to ``message_stop``). Then SIGKILL, no warning. The log
must open cleanly (schema, WAL recovery) and hold every one of those ids.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from servers import stub_upstream

from prefixgate.demo import ManagedProcess, free_port
from prefixgate.store.sqlite import SqliteAudit, read_records

pytestmark = pytest.mark.e2e
CLIENTS = 32
LOAD_S = 4.0


def body(i: int, stream: bool) -> dict[str, object]:
    return {
        "model": "stub-model",
        "max_tokens": 16,
        "stream": stream,
        "system": [{"type": "text", "text": "You are a careful assistant. " * 40}],
        "messages": [{"role": "user", "content": f"request {i}"}],
        "metadata": {"user_id": json.dumps({"session_id": f"s{i % 8}"})},
    }


async def client_loop(
    client: httpx.AsyncClient, url: str, n: int, answered: list[str], stop: asyncio.Event
) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        stream = (i + n) % 2 == 0
        try:
            if stream:
                async with client.stream("POST", url, json=body(i, True)) as response:
                    text = b""
                    async for chunk in response.aiter_bytes():
                        text += chunk
                    if response.status_code == 200 and b"event: message_stop" in text:
                        answered.append(response.headers["x-prefixgate-request-id"])
            else:
                response = await client.post(url, json=body(i, False))
                if response.status_code == 200 and response.json().get("type") == "message":
                    answered.append(response.headers["x-prefixgate-request-id"])
        except (httpx.HTTPError, json.JSONDecodeError):
            return  # the gateway is gone


async def load_then_kill(url: str, pid: int) -> tuple[list[str], int]:
    answered: list[str] = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    timeout = httpx.Timeout(30.0, connect=5.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        tasks = [
            asyncio.create_task(client_loop(client, url, n, answered, stop)) for n in range(CLIENTS)
        ]
        await asyncio.sleep(LOAD_S)
        os.kill(pid, signal.SIGKILL)  # while requests are under way
        killed_at = len(answered)
        stop.set()
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)
    return answered, killed_at


def test_kill_9_under_load_loses_no_answered_request(tmp_path: Path) -> None:
    stub_port, port = free_port(), free_port()
    db = tmp_path / "audit.db"
    stub = stub_upstream(stub_port)
    gateway = ManagedProcess(
        "gateway",
        [
            sys.executable, "-m", "prefixgate", "serve",
            "--upstream", f"http://127.0.0.1:{stub_port}",
            "--port", str(port), "--audit", str(db), "--log-level", "warning",
        ],
        f"http://127.0.0.1:{port}/healthz",
    )  # fmt: skip
    with stub, gateway:
        pid = gateway.pid
        assert pid is not None
        answered, killed_at = asyncio.run(
            load_then_kill(f"http://127.0.0.1:{port}/v1/messages", pid)
        )
        deadline = time.monotonic() + 10
        while gateway._process is not None and gateway._process.poll() is None:
            assert time.monotonic() < deadline, "the gateway survived SIGKILL"
            time.sleep(0.05)

    assert killed_at > 50, f"only {killed_at} answers before the kill: no load to speak of"
    with SqliteAudit(db) as reopened:  # opens cleanly: schema checked, WAL recovered
        assert reopened.query(limit=1)
    records = read_records(db)
    stored = {r.request_id for r in records}
    lost = [rid for rid in answered if rid not in stored]
    print(
        f"durability: {len(answered)} answered ({killed_at} when the kill was sent), "
        f"{len(records)} records, {len(lost)} answered requests without a record"
    )
    assert lost == [], f"{len(lost)} of {len(answered)} answered requests have no record"
    assert len(stored) == len(records)  # one row per request, provisional ones replaced
    assert all(r.tenant == "default" and r.status for r in records)
