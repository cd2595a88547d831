"""Faults against the real bundled llama-server: it dies mid-answer, the client
goes away mid-answer, the gateway is stopped (SIGTERM) mid-answer.

The module runs its own runtime (it kills it), behind the gateway in a thread
or, for SIGTERM, behind ``prefixgate serve`` in a process of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import ServerThread

from prefixgate.app.gateway import create_app
from prefixgate.app.relay import Relay
from prefixgate.config import Settings
from prefixgate.core.sse import SSEDecoder
from prefixgate.demo import free_port
from prefixgate.runtime.local import LocalRuntime, default_spec
from prefixgate.store.audit import AuditRecord, MemoryAudit
from prefixgate.store.sqlite import read_records

pytestmark = pytest.mark.e2e

LONG: dict[str, Any] = {
    "model": "local",
    "max_tokens": 400,
    "stream": True,
    "messages": [
        {"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}
    ],
}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """A runtime of this module's own: its tests kill it."""
    log_path = tmp_path_factory.mktemp("faults-runtime") / "llama-server.log"
    rt = LocalRuntime(default_spec(), log_path=log_path, startup_timeout=300.0)
    rt.start()
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture
def live(runtime: LocalRuntime) -> LocalRuntime:
    """The runtime, started again if a test before killed it."""
    runtime.start()
    return runtime


def events_of(content: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    decoder = SSEDecoder()
    out = []
    for event in decoder.decode(content) + decoder.flush():
        try:
            data = event.json()
        except ValueError:
            continue
        if isinstance(data, dict):
            out.append((event.event, data))
    return out


def read_until_text(chunks: Iterator[bytes]) -> bytes:
    seen = b""
    for chunk in chunks:
        seen += chunk
        if b'"text_delta"' in seen:
            return seen
    raise AssertionError(f"the stream ended before its first text delta: {seen[-500:]!r}")


def records(
    audit: MemoryAudit, app: Any, count: int = 1, timeout: float = 30.0
) -> list[AuditRecord]:
    deadline = time.monotonic() + timeout
    while len(audit.records) < count or app.state.proxy.observer.pending:
        assert time.monotonic() < deadline, f"fewer than {count} audit records"
        time.sleep(0.05)
    return list(audit.records)


def slots_busy(runtime: LocalRuntime) -> bool:
    slots = httpx.get(f"{runtime.base_url}/slots", timeout=5.0, trust_env=False).json()
    assert isinstance(slots, list) and slots, slots
    return any(slot.get("is_processing") for slot in slots)


def test_a_runtime_killed_mid_answer_ends_the_stream_with_an_error_event(
    live: LocalRuntime,
) -> None:
    audit = MemoryAudit()
    app = create_app(Settings().with_upstream(live.base_url), audit=audit)
    try:
        with ServerThread(app) as server, httpx.Client(timeout=60.0, trust_env=False) as client:
            with client.stream("POST", server.url + "/v1/messages", json=LONG) as response:
                assert response.status_code == 200
                chunks = response.iter_raw()
                seen = read_until_text(chunks)
                assert live.pid is not None
                os.kill(live.pid, signal.SIGKILL)
                started = time.monotonic()
                for chunk in chunks:
                    seen += chunk
                assert time.monotonic() - started < 10
            names = [name for name, _ in events_of(seen)]
            assert "message_stop" not in names, names
            assert names[-1] == "error", names
            error = events_of(seen)[-1][1]["error"]
            assert error["type"] == "api_error" and error["message"], error
            (rec,) = records(audit, app)
            assert rec.error == error["message"]
    finally:
        live.start()  # for the tests after this one


FREED_WITHIN_S = 5.0  # a 400-token answer takes far longer than this on a CPU
TRIES = 4  # a sampled answer may end on its own before the client leaves: try again


def test_a_client_gone_mid_answer_frees_the_runtime_slot_at_once(live: LocalRuntime) -> None:
    audit = MemoryAudit()
    app = create_app(Settings().with_upstream(live.base_url), audit=audit)
    with ServerThread(app) as server, httpx.Client(timeout=120.0, trust_env=False) as client:
        tries = 0
        while tries < TRIES:
            tries += 1
            with client.stream("POST", server.url + "/v1/messages", json=LONG) as response:
                assert response.status_code == 200
                chunks = response.iter_raw()
                read_until_text(chunks)
                left_mid_answer = slots_busy(live)
                if not left_mid_answer:
                    for _ in chunks:  # it ended already: finish it, and try again
                        pass
            if left_mid_answer:
                break
        assert left_mid_answer, f"every one of {TRIES} answers ended before the client left"
        # the client connection is closed mid-answer here
        gone = time.monotonic()
        while slots_busy(live):
            elapsed = time.monotonic() - gone
            assert elapsed < FREED_WITHIN_S, "the runtime still generates for nobody"
            time.sleep(0.05)
        rec = records(audit, app, count=tries)[-1]
    assert rec.error == Relay.ABANDONED


def test_sigterm_drains_refuses_new_connections_and_keeps_the_record(
    live: LocalRuntime, tmp_path: Path
) -> None:
    grace = 3
    port = free_port()
    db = tmp_path / "audit.db"
    config = tmp_path / "prefixgate.toml"
    config.write_text(f"[server]\nshutdown_grace = {grace}\n")
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "gateway.log").open("wb")
    command = [
        sys.executable, "-m", "prefixgate", "serve", "--config", str(config),
        "--upstream", live.base_url, "--port", str(port), "--audit", str(db),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "gateway.log").read_text()
            try:
                if httpx.get(url + "/healthz", timeout=2.0, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.2)
        with (
            httpx.Client(timeout=60.0, trust_env=False) as client,
            client.stream("POST", url + "/v1/messages", json=LONG) as response,
        ):
            assert response.status_code == 200
            request_id = response.headers["x-prefixgate-request-id"]
            chunks = response.iter_raw()
            seen = read_until_text(chunks)
            process.send_signal(signal.SIGTERM)
            stopping = time.monotonic()
            time.sleep(0.5)
            with pytest.raises(httpx.ConnectError):
                httpx.get(url + "/healthz", timeout=2.0, trust_env=False)
            try:
                for chunk in chunks:
                    seen += chunk
            except httpx.HTTPError as exc:  # cut without an error event
                raise AssertionError(f"the stream was cut: {exc!r}") from None
            ended = time.monotonic() - stopping
        code = process.wait(timeout=grace + 15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    output = (tmp_path / "gateway.log").read_text()
    assert code == 0, output
    assert ended < grace + 5, ended
    events = events_of(seen)
    names = [name for name, _ in events]
    assert names[-1] in ("message_stop", "error"), names
    if names[-1] == "error":
        assert "message_stop" not in names
        assert events[-1][1]["error"]["type"] == "overloaded_error", events[-1]
        assert "shutting down" in events[-1][1]["error"]["message"]
    (rec,) = [r for r in read_records(db) if r.request_id == request_id]
    assert rec.stream
    if names[-1] == "error":
        assert rec.error is not None and "shutting down" in rec.error, json.dumps(rec.error)
    else:
        assert rec.error is None
    assert live.is_running()  # the gateway stops only what it started
