"""Oracle, runtime-expected and lost tokens through the whole app, with two tenants.

The upstream is a fake llama.cpp (``httpx.MockTransport``): ``/tokenize``
counts one token per 4 characters, ``/v1/messages`` reports a prompt of
``PROMPT`` tokens and as cached whatever a test sets. Tenant alpha's main agent
and subagent come first; then tenant beta starts a session with the same
system prompt and tools. The upstream's last request (the subagent's) shares
only the system prompt with it, so the older "expected" stops there, while
the oracle finds alpha's main prompt: system prompt and tools. The oracle is a
count: nothing of alpha's request may show in beta's records.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from support.app import records_of, running
from support.upstream import MESSAGE

from prefixgate.app.gateway import create_app
from prefixgate.config import build_settings
from prefixgate.core.auth import hash_key
from prefixgate.core.misses import CAUSES, is_miss
from prefixgate.core.oracle import LOSS_CAUSES
from prefixgate.store.audit import AuditRecord, MemoryAudit

URL = "http://runtime.test:8080"
ALPHA, BETA = "pg-alpha-key", "pg-beta-key"
ALPHA_SESSION = "aaaaaaaa-1111-4111-8111-111111111111"
BETA_SESSION = "bbbbbbbb-2222-4222-8222-222222222222"
ALPHA_TASK = "alpha-secret: fix the payroll bug in ledger.py"
PROMPT = 2000
SYSTEM = "You are a coding agent.\n" + "Keep the prompt prefix stable.\n" * 30


OK = [{"type": "text", "text": "ok"}]  # the answer's content


def tool(name: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"arg": {"type": "string"}}}
    return {"name": name, "description": f"{name} does its job well. " * 30, "input_schema": schema}


MAIN_TOOLS = [tool("Bash"), tool("Read"), tool("Edit")]
SUB_TOOLS = [tool("Grep"), tool("Glob")]


def body(text: str, tools: list[dict[str, Any]], *history: str) -> dict[str, Any]:
    turns = [text, *history]
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)
    ]
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "system": [{"type": "text", "text": SYSTEM}],
        "tools": tools,
        "messages": messages,
    }


class Runtime:
    def __init__(self) -> None:
        self.cached = 0
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            text = json.loads(request.content)["content"]
            return httpx.Response(200, json={"tokens": [7] * (len(text) // 4)})
        usage = {
            "input_tokens": PROMPT - self.cached,
            "cache_read_input_tokens": self.cached,
            "cache_creation_input_tokens": 0,
            "output_tokens": 2,
        }
        return httpx.Response(200, json={**MESSAGE, "content": OK, "usage": usage})


def gateway(runtime: Runtime, cache_tokens: int) -> Any:
    """One upstream modelled as one slot, and a RAM prompt cache of ``cache_tokens``."""
    local = {"url": URL, "cache_slots": 1, "cache_tokens": cache_tokens}
    settings = build_settings(
        {
            "upstreams": {"local": local},
            "tenants": {
                "alpha": {"keys": [hash_key(ALPHA)]},
                "beta": {"keys": [hash_key(BETA)]},
            },
        },
        {},
        {},
    )
    return create_app(settings, transport=runtime.transport, audit=MemoryAudit())


async def send(client: httpx.AsyncClient, key: str, session: str, request: dict[str, Any]) -> None:
    headers = {"x-api-key": key, "x-claude-code-session-id": session}
    response = await client.post("/v1/messages", json=request, headers=headers)
    assert response.status_code == 200, response.text


async def interleaved(beta_cached: int, cache_tokens: int = 0) -> list[AuditRecord]:
    """Alpha's main agent, alpha's subagent, then beta's first request."""
    runtime = Runtime()
    app = gateway(runtime, cache_tokens)
    async with running(app) as client:
        await send(client, ALPHA, ALPHA_SESSION, body(ALPHA_TASK, MAIN_TOOLS))
        await records_of(app, 1)
        await send(client, ALPHA, ALPHA_SESSION, body("alpha-secret: grep ledger", SUB_TOOLS))
        await records_of(app, 2)
        runtime.cached = beta_cached
        await send(client, BETA, BETA_SESSION, body("list the files", MAIN_TOOLS))
        return await records_of(app, 3)


async def test_the_oracle_sees_the_prompt_before_the_subagent() -> None:
    main, sub, beta = await interleaved(beta_cached=0)
    assert (main.tenant, main.agent, sub.agent, beta.tenant) == ("alpha", "main", "sub", "beta")
    assert main.oracle_tokens == main.runtime_expected_tokens == 0
    assert (main.lost_by_runtime, main.lost_cause) == (0, "none")
    assert sub.oracle_tokens is not None and sub.oracle_tokens > 0  # the system prompt
    # the old expected stays inside one tenant: beta has no earlier prompt of its
    # own; the oracle counts (never shows) alpha's, main prompt and tools included
    assert beta.expected_cached_tokens == 0 and beta.oracle_tokens is not None
    assert is_miss(beta.oracle_tokens, beta.expected_cached_tokens)
    # one slot, no RAM cache: the subagent's prompt took the slot; it shares the
    # system prompt, which this runtime should still have served
    assert beta.runtime_expected_tokens is not None
    assert 0 < beta.runtime_expected_tokens < beta.oracle_tokens
    assert beta.lost_by_runtime == beta.runtime_expected_tokens
    assert beta.lost_cause == "evicted"


async def test_what_the_runtime_could_not_hold_is_capacity() -> None:
    first = await interleaved(beta_cached=0)
    held = first[2].runtime_expected_tokens
    assert held is not None
    _, _, beta = await interleaved(beta_cached=held)  # it served all it could hold
    assert (beta.runtime_expected_tokens, beta.cached_tokens) == (held, held)
    assert (beta.lost_by_runtime, beta.lost_cause) == (0, "capacity")


async def test_a_ram_cache_holds_the_main_prompt_and_a_refused_restore_is_named() -> None:
    _, _, beta = await interleaved(beta_cached=0, cache_tokens=1_000_000)
    assert beta.oracle_tokens is not None and beta.expected_cached_tokens is not None
    assert beta.runtime_expected_tokens == beta.oracle_tokens > beta.expected_cached_tokens == 0
    # beta's prompt shares alpha's system prompt and tools but does not extend it
    assert (beta.lost_by_runtime, beta.lost_cause) == (
        beta.runtime_expected_tokens,
        "partial_restore_refused",
    )
    _, _, served = await interleaved(beta.oracle_tokens, cache_tokens=1_000_000)
    assert (served.lost_by_runtime, served.lost_cause) == (0, "none")


async def test_a_tenant_never_sees_anything_of_another_tenants_requests() -> None:
    for cache_tokens in (0, 1_000_000):
        _, _, beta = await interleaved(beta_cached=0, cache_tokens=cache_tokens)
        assert beta.oracle_tokens is not None and beta.oracle_tokens > 0  # alpha's, counted
        shown = beta.to_json()
        for secret in ("alpha", ALPHA_SESSION, ALPHA_SESSION[:8], "secret", "ledger", "Grep"):
            assert secret not in shown
        assert {beta.cause, beta.lost_cause} <= {"none", *CAUSES, *LOSS_CAUSES}


async def test_a_restarted_runtime_names_what_it_lost() -> None:
    runtime = Runtime()
    app = gateway(runtime, 0)
    async with running(app) as client:
        await send(client, ALPHA, ALPHA_SESSION, body("first task", MAIN_TOOLS))
        await records_of(app, 1)
        app.state.proxy.observer.restarted("local")
        await send(client, ALPHA, ALPHA_SESSION, body("first task", MAIN_TOOLS, "ok", "more"))
        _, after = await records_of(app, 2)
    assert after.runtime_expected_tokens is not None and after.runtime_expected_tokens > 0
    assert after.lost_by_runtime == after.runtime_expected_tokens
    assert after.lost_cause == "restarted"
