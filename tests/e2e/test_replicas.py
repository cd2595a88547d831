"""Several real llama-server replicas behind prefixgate: shared routing through a
real Redis, and failover when a replica is killed mid-replay.

The requests are the recorded corpus, shrunk and mixed into six sessions
(``prefixgate.corpusmix``), so each replica can run with a small context. Each
recorded session gives its first three requests (15 in all): enough for every
session to have a follow-up turn that must find its replica again, for sessions
to cross the two gateways, and for a second half after the kill, at three fifths
of the prompts the whole sessions (25 requests) cost.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import ServerThread

from prefixgate.app.gateway import create_app
from prefixgate.config import build_settings
from prefixgate.core.sse import SSEDecoder
from prefixgate.corpusmix import mixed_corpus, session_id
from prefixgate.demo import ManagedProcess, free_port
from prefixgate.replay import prepare_body
from prefixgate.runtime.local import LocalRuntime, default_spec
from prefixgate.store.audit import MemoryAudit
from prefixgate.store.sqlite import read_records

pytestmark = pytest.mark.e2e
SOURCES = ("claude-code-2.1.197.jsonl", "claude-code-2.1.197-interactive.jsonl")
TIMEOUT = httpx.Timeout(300.0, connect=10.0)
TURNS = 3  # requests kept from each recorded session


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalRuntime]]:
    """Two bundled llama-servers, two slots of 8k tokens each."""
    spec = default_spec(slots=2, ctx_size=16384)
    logs = tmp_path_factory.mktemp("replicas")
    runtimes = [
        LocalRuntime(spec, log_path=logs / f"replica-{i}.log", startup_timeout=300.0)
        for i in range(2)
    ]
    with contextlib.ExitStack() as stack:
        for runtime in runtimes:
            stack.enter_context(runtime)
        yield runtimes


@pytest.fixture(scope="module")
def mixed(corpus_directory: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for name in SOURCES:
        with (corpus_directory / name).open(encoding="utf-8") as f:
            lines += [json.loads(x) for x in f if x.strip()]
    return mixed_corpus(lines, 6, seed=5, turns=TURNS)


def headers_of(line: dict[str, Any]) -> dict[str, str]:
    skip = {"host", "content-length", "connection", "accept-encoding"}
    return {k: v for k, v in line["headers"].items() if k.lower() not in skip}


def send(client: httpx.Client, url: str, line: dict[str, Any], *, stream: bool) -> httpx.Response:
    body = json.loads(prepare_body(line["body"].encode(), 1))
    body["stream"] = stream
    return client.post(url + "/v1/messages", json=body, headers=headers_of(line))


def test_two_gateway_processes_sharing_redis_route_sessions_alike(
    replicas: list[LocalRuntime], mixed: list[dict[str, Any]], redis_url: str, tmp_path: Path
) -> None:
    """Each request goes to one of two separate prefixgate processes, in turn;
    both use one Redis, so every session's agent (its main conversation, its
    subagent, its side requests: each a prompt of its own) stays on one replica."""
    for runtime in replicas:
        runtime.restart()
    ports = [free_port(), free_port()]
    dbs = [tmp_path / f"gateway-{i}.db" for i in range(2)]
    gateways = []
    for port, db in zip(ports, dbs, strict=True):
        command = [sys.executable, "-m", "prefixgate", "serve", "--port", str(port)]
        for runtime in replicas:
            command += ["--upstream", runtime.base_url]
        command += ["--state", redis_url, "--audit", str(db), "--log-level", "warning"]
        gateways.append(ManagedProcess("prefixgate", command, f"http://127.0.0.1:{port}/healthz"))
    with contextlib.ExitStack() as stack:
        for gw in gateways:
            stack.enter_context(gw)
        with httpx.Client(timeout=TIMEOUT, trust_env=False) as client:
            for i, line in enumerate(mixed):
                response = send(client, f"http://127.0.0.1:{ports[i % 2]}", line, stream=i % 3 == 0)
                assert response.status_code == 200, response.text
        deadline = time.monotonic() + 60
        while sum(len(read_records(db)) for db in dbs) < len(mixed):
            assert time.monotonic() < deadline, "the gateways did not record every request"
            time.sleep(0.2)
    records = [r for db in dbs for r in read_records(db)]
    assert {r.status for r in records} == {200}
    per_session: dict[tuple[str, str], set[str]] = {}
    gateways_per_session: dict[tuple[str, str], set[int]] = {}
    for i, db in enumerate(dbs):
        for r in read_records(db):
            owner = (str(r.session), str(r.agent))
            per_session.setdefault(owner, set()).add(str(r.replica))
            gateways_per_session.setdefault(owner, set()).add(i)
    assert len({s for s, _ in per_session}) == len({session_id(x) for x in mixed}) == 6
    assert all(len(v) == 1 for v in per_session.values()), per_session
    assert any(len(v) == 2 for v in gateways_per_session.values())  # sessions did cross gateways
    assert {next(iter(v)) for v in per_session.values()} == {r.base_url for r in replicas}
    # the replicas' own counters agree that both did work and the cache served most of it
    prompt = sum(r.prompt_tokens or 0 for r in records)
    cached = sum(r.cached_tokens or 0 for r in records)
    assert cached / prompt > 0.5


def wait_for_record(audit: MemoryAudit, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(audit.query()) < count:
        assert time.monotonic() < deadline, "records missing"
        time.sleep(0.1)


def busy_replica(replicas: list[LocalRuntime]) -> LocalRuntime | None:
    for runtime in replicas:
        with contextlib.suppress(httpx.HTTPError):
            slots = httpx.get(runtime.base_url + "/slots", timeout=2.0).json()
            if any(s.get("is_processing") for s in slots):
                return runtime
    return None


def kill(runtime: LocalRuntime) -> None:
    assert runtime.pid is not None
    os.kill(runtime.pid, signal.SIGKILL)


def test_killing_a_replica_mid_replay(
    replicas: list[LocalRuntime], mixed: list[dict[str, Any]]
) -> None:
    """Non-streaming requests fail over with no client-visible error; a stream
    already under way when its replica dies ends with an Anthropic ``error`` event."""
    for runtime in replicas:
        runtime.restart()
    upstream = {"urls": [r.base_url for r in replicas], "health_interval": 0.5}
    settings = build_settings({"upstreams": {"local": upstream}}, {}, {"audit_path": "memory"})
    audit = MemoryAudit()
    killed: list[LocalRuntime] = []

    def kill_when_busy() -> None:  # kill whichever replica is computing the next prompt
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runtime = busy_replica(replicas)
            if runtime is not None:
                kill(runtime)
                killed.append(runtime)
                return
            time.sleep(0.05)

    with (
        ServerThread(create_app(settings, audit=audit)) as gw,
        httpx.Client(timeout=TIMEOUT, trust_env=False) as client,
    ):
        half = len(mixed) // 2
        for line in mixed[:half]:
            assert send(client, gw.url, line, stream=False).status_code == 200
        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        statuses = [send(client, gw.url, line, stream=False).status_code for line in mixed[half:]]
        killer.join()
        assert killed, "no replica was seen busy"
        assert statuses == [200] * len(statuses)  # failed over, never an error
        wait_for_record(audit, len(mixed))
        survivor = next(r for r in replicas if r is not killed[0])
        after = audit.query()[half:]
        assert {r.status for r in after} == {200}
        moved = [r for r in after if r.replica == survivor.base_url]
        assert moved, "nothing went to the surviving replica"
        metrics = client.get(gw.url + "/metrics").text
        assert f'prefixgate_failovers_total{{replica="{killed[0].base_url}"' in metrics

        # a stream under way: ask for a long answer, kill its replica after the first text
        killed[0].start()  # back up (same port); the health check notices it
        deadline = time.monotonic() + 30
        while (
            client.get(gw.url + "/healthz").json()["replicas"]["local"][killed[0].base_url] != "up"
        ):
            assert time.monotonic() < deadline, "the restarted replica was never seen healthy"
            time.sleep(0.2)
        body = {
            "model": "claude-test",
            "max_tokens": 400,
            "stream": True,
            "messages": [{"role": "user", "content": "Count from 1 to 200, one number a line."}],
        }
        events = []
        with client.stream("POST", gw.url + "/v1/messages", json=body) as response:
            assert response.status_code == 200
            decoder = SSEDecoder()
            for chunk in response.iter_bytes():
                for event in decoder.decode(chunk):
                    events.append(event)
                    if event.event == "content_block_delta" and len(events) < 50:
                        runtime = busy_replica(replicas)
                        if runtime is not None:
                            kill(runtime)
                            events.append(None)  # where the kill happened
    names = [e.event if e is not None else "KILLED" for e in events]
    assert "KILLED" in names, names
    assert names[-1] == "error", names
    assert "message_stop" not in names
    error = json.loads(events[-1].data)  # type: ignore[union-attr]
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    for runtime in replicas:  # leave the module's replicas running for later tests
        if not runtime.is_running():
            runtime.start()
