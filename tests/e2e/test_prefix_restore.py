"""A saved prefix survives a runtime restart (runtime/prefixes.py on the real
bundled llama-server, started here with ``--slot-save-path`` and a small context).

The prefix is that of a recorded Claude Code request (shrunk, attribution block
removed the way the gateway removes it): its system prompt and tools, primed in
slot 0 with a one-character first message, saved under the name made of the
gateway's prefix key and the model file's digest. After a restart the request
itself is sent twice: cold (nothing restored), then, after another restart, to
the slot the saved prefix was restored into (``id_slot``). What counts is the
runtime's own report of cached tokens, not the restore's HTTP status.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefixgate.core.pipeline import rewrite
from prefixgate.corpusmix import shrink_body
from prefixgate.replay import load_capture
from prefixgate.runtime.local import LocalRuntime, default_spec
from prefixgate.runtime.prefixes import PrefixStore, SlotClient, model_digest, saved_name

pytestmark = pytest.mark.e2e

CORPUS_FILE = "claude-code-2.1.332.jsonl"
CTX = 8192
CAP = 512 * 1024 * 1024


@pytest.fixture
def saves(tmp_path: Path) -> Path:
    return tmp_path / "saved"


@pytest.fixture
def runtime(tmp_path: Path, saves: Path) -> Iterator[LocalRuntime]:
    saves.mkdir()
    spec = default_spec(ctx_size=CTX, slots=1, extra_args=("--slot-save-path", f"{saves}/"))
    runtime = LocalRuntime(spec, log_path=tmp_path / "llama-server.log", startup_timeout=300.0)
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=900.0, trust_env=False) as client:
        yield client


def recorded_request(corpus_directory: Path) -> tuple[dict[str, Any], str]:
    """The first main-agent request, shrunk, as the gateway forwards it; and its prefix key."""
    record = next(r for r in load_capture(corpus_directory / CORPUS_FILE) if r.agent == "main")
    body = shrink_body(json.loads(record.body))
    body.update(max_tokens=1, stream=False)
    rewritten = rewrite(json.dumps(body).encode())
    return json.loads(rewritten.body), rewritten.key.hex


async def send(
    http: httpx.AsyncClient, url: str, body: dict[str, Any], slot: int
) -> tuple[int, int, float]:
    """(prompt tokens, cached tokens, seconds) of one /v1/messages request to ``slot``."""
    started = time.perf_counter()
    response = await http.post(f"{url}/v1/messages", json={**body, "id_slot": slot})
    seconds = time.perf_counter() - started
    assert response.status_code == 200, response.text[:500]
    usage = response.json()["usage"]
    cached = int(usage.get("cache_read_input_tokens") or 0)
    return int(usage["input_tokens"]) + cached, cached, seconds


async def test_saved_prefix_is_served_after_a_restart(
    runtime: LocalRuntime, saves: Path, http: httpx.AsyncClient, corpus_directory: Path
) -> None:
    body, key = recorded_request(corpus_directory)
    stub = {**body, "messages": [{"role": "user", "content": "."}]}
    store = PrefixStore(saves, cap=CAP)
    name = saved_name(key, model_digest(runtime.spec.model))
    slots = SlotClient(runtime.base_url, http)

    await send(http, runtime.base_url, stub, 0)  # the stable prefix and a short tail
    saved = await slots.save(0, name)
    assert store.saved(name, saved.tokens) == []
    assert saved.tokens > 1000, saved

    runtime.restart()
    prompt, cold_cached, cold_s = await send(http, runtime.base_url, body, 0)
    assert prompt > saved.tokens
    assert cold_cached < 0.1 * saved.tokens, "a restarted runtime should hold nothing"

    runtime.restart()
    entry = store.lookup(name)
    assert entry is not None and entry.tokens == saved.tokens
    slot = await slots.idle_slot()
    assert slot is not None
    restored = await slots.restore(slot, name)
    assert restored.tokens == saved.tokens
    prompt_after, cached, warm_s = await send(http, runtime.base_url, body, slot)
    assert prompt_after == prompt
    print(
        f"\nsaved prefix {saved.tokens} tokens ({saved.size / 2**20:.1f} MiB);"
        f" request {prompt} tokens: cold {cold_cached} cached in {cold_s:.1f} s,"
        f" after restore {cached} cached in {warm_s:.1f} s"
    )
    assert cached >= 0.9 * saved.tokens
    assert store.total <= store.cap
