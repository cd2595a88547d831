"""A saved prefix survives a gateway and runtime restart (app/saved.py on the real
bundled llama-server: the session's runtime, started with ``--slot-save-path``).

The request is a recorded Claude Code request (2.1.332, shrunk), sent as the
client sends it. A first gateway forwards it to the restarted (cold) runtime
and then saves its prefix in the background: a priming request with the same
system prompt and tools and a one-character message, ``save``, the store's LRU.
Then the gateway stops, the runtime restarts, a new gateway starts, and the
same request comes again: the gateway restores the saved prefix into an idle
slot and sends the request there (``id_slot``). What counts is the runtime's own
report of cached tokens (``cache_read_input_tokens``, as llama-server reads it
from ``timings.cache_n``) and the audit record's accounting: the restored
prefix is expected, and nothing of it was lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import ServerThread, settle
from starlette.applications import Starlette

from prefixgate.app.gateway import create_app
from prefixgate.app.saved import SavedPrefixes
from prefixgate.config import Settings
from prefixgate.corpusmix import shrink_body
from prefixgate.replay import load_capture
from prefixgate.runtime.local import LocalRuntime
from prefixgate.runtime.prefixes import PrefixStore
from prefixgate.store.audit import AuditRecord, MemoryAudit

pytestmark = pytest.mark.e2e

CORPUS_FILE = "claude-code-2.1.332.jsonl"
CAP = 512 * 1024 * 1024
SESSION = "5a7e0000-0000-4000-8000-000000000001"


def recorded_request(corpus_directory: Path) -> dict[str, Any]:
    """The first main-agent request, shrunk, as Claude Code sends it; one token out."""
    record = next(r for r in load_capture(corpus_directory / CORPUS_FILE) if r.agent == "main")
    body = shrink_body(json.loads(record.body))
    body.update(max_tokens=1, stream=False)
    return body


class Running:
    """One gateway with saved prefixes in front of the session's runtime."""

    def __init__(self, app: Starlette, server: ServerThread) -> None:
        self.app, self.server = app, server
        self.prefixes: SavedPrefixes = app.state.prefixes
        self.audit: MemoryAudit = app.state.audit

    def send(self, body: dict[str, Any]) -> tuple[int, int, float]:
        """(prompt tokens, cached tokens, seconds) of one request through the gateway."""
        started = time.perf_counter()
        response = httpx.post(
            f"{self.server.url}/v1/messages",
            json=body,
            headers={"x-claude-code-session-id": SESSION},
            timeout=900.0,
            trust_env=False,
        )
        seconds = time.perf_counter() - started
        assert response.status_code == 200, response.text[:500]
        usage = response.json()["usage"]
        cached = int(usage.get("cache_read_input_tokens") or 0)
        return int(usage["input_tokens"]) + cached, cached, seconds

    def records(self) -> list[AuditRecord]:
        settle(self.app)
        return list(self.audit.records)


@pytest.fixture
def store(local_runtime: LocalRuntime) -> Iterator[PrefixStore]:
    """The session runtime's slot-save folder, emptied before and after."""
    folder = local_runtime.spec.slot_save_path
    assert folder is not None, "the session runtime runs without --slot-save-path"
    for path in folder.iterdir():
        path.unlink()
    yield PrefixStore(folder, CAP)
    for path in folder.iterdir():
        path.unlink()


@contextlib.contextmanager
def gateway(runtime: LocalRuntime, store: PrefixStore, *, owns: bool = False) -> Iterator[Running]:
    """prefixgate straight in front of the runtime, its saved prefixes in ``store``;
    ``owns``: the gateway watches the runtime and starts it again if it dies."""
    settings = Settings().with_upstream(runtime.base_url, cache={"cache_slots": runtime.spec.slots})
    prefixes = SavedPrefixes(runtime.base_url, store, runtime.spec.model, runtime if owns else None)
    app = create_app(settings, audit=MemoryAudit(), prefixes=prefixes)
    with ServerThread(app) as server:
        yield Running(app, server)


def test_a_saved_prefix_is_served_after_a_gateway_and_runtime_restart(
    local_runtime: LocalRuntime, store: PrefixStore, corpus_directory: Path
) -> None:
    body = recorded_request(corpus_directory)
    local_runtime.restart()  # cold: the first request pays for its whole prompt

    with gateway(local_runtime, store) as first:
        prompt, cold_cached, cold_s = first.send(body)
        deadline = time.monotonic() + 300
        while first.prefixes.counts.saves + first.prefixes.counts.save_failures < 1:
            assert time.monotonic() < deadline, "the prefix was not saved in 300 s"
            time.sleep(0.1)
        counts = first.prefixes.counts
        assert (counts.saves, counts.save_failures, counts.restores) == (1, 0, 0)
        # the slot's own prompt was put back after the priming: the conversation
        # goes on from the whole first request, not just from the saved prefix
        turn = [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "go on"}]
        _, went_on, _ = first.send({**body, "messages": [*body["messages"], *turn]})
        assert went_on >= prompt - 16, (went_on, prompt)
        cold, _ = first.records()
    (saved,) = store.entries()
    assert saved.tokens == counts.saved_tokens > 1000
    assert cold_cached < 0.1 * saved.tokens, "a restarted runtime should hold nothing"
    assert cold.cached_tokens == cold_cached and cold.runtime_expected_tokens == 0

    local_runtime.restart()
    with gateway(local_runtime, store, owns=True) as second:
        prompt_after, cached, warm_s = second.send(body)
        (rec,) = second.records()
        assert second.prefixes.counts.restores == 1
        # the runtime dies under the gateway: it is started again, and the next
        # request of the same prefix gets it restored again
        os.kill(pid_of(local_runtime), signal.SIGKILL)
        deadline = time.monotonic() + 300
        while second.prefixes.counts.restarts < 1 or not local_runtime.is_running():
            assert time.monotonic() < deadline, "the runtime was not started again in 300 s"
            time.sleep(0.1)
        _, cached_again, _ = second.send(body)
        _, again = second.records()
        counts = second.prefixes.counts
    assert (counts.restores, counts.restored_tokens, counts.saves) == (2, 2 * saved.tokens, 0)
    assert prompt_after == prompt > saved.tokens
    print(
        f"\nthe next turn after the background save: {went_on} cached"
        f"\nsaved prefix {saved.tokens} tokens ({saved.size / 2**20:.1f} MiB);"
        f" request {prompt} tokens: cold {cold_cached} cached in {cold_s:.1f} s,"
        f" after the restart and restore {cached} cached in {warm_s:.1f} s;"
        f" audit: expected {rec.runtime_expected_tokens}, oracle {rec.oracle_tokens},"
        f" lost {rec.lost_by_runtime} ({rec.lost_cause})"
    )
    # the runtime's own count: the restored prefix served, not just a 200
    assert cached >= 0.9 * saved.tokens
    # the audit: the restored system prompt and tools expected, and served
    assert rec.cached_tokens == cached
    assert rec.runtime_expected_tokens is not None and rec.oracle_tokens is not None
    assert 0.8 * saved.tokens <= rec.runtime_expected_tokens <= rec.oracle_tokens
    assert (rec.lost_by_runtime, rec.lost_cause) == (0, "none")
    print(
        f"after the runtime died and the gateway started it again: {cached_again} cached;"
        f" audit: expected {again.runtime_expected_tokens}, lost {again.lost_by_runtime}"
        f" ({again.lost_cause})"
    )
    # after the runtime restarted under the gateway: the prefix restored again,
    # what the restart lost beyond it (the request's own tail) named so
    assert cached_again >= 0.9 * saved.tokens and again.cached_tokens == cached_again
    assert again.runtime_expected_tokens is not None and again.lost_by_runtime is not None
    assert again.runtime_expected_tokens > rec.runtime_expected_tokens
    assert again.lost_by_runtime > 0 and again.lost_cause == "restarted"
    assert store.total <= store.cap


def pid_of(runtime: LocalRuntime) -> int:
    pid = runtime.pid
    assert pid is not None
    return pid
