"""Side requests answered by the gateway: the official anthropic SDK reads the
answers, and the upstream's message route never sees them."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import httpx2
from inmemory import running

from prefixgate.app.gateway import create_app
from prefixgate.config import build_settings
from prefixgate.store.audit import MemoryAudit

UPSTREAM = "http://llama.test:8080"


class Upstream:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.tokenized = 0  # tokens the fake tokenizer handed out (one per character)
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if request.url.path == "/tokenize":
            tokens = [1] * len(json.loads(request.content)["content"])
            self.tokenized += len(tokens)
            return httpx.Response(200, json={"tokens": tokens})
        return httpx.Response(
            500, json={"error": {"message": "the message route must not be used"}}
        )


def app_for(upstream: Upstream, audit: MemoryAudit, side: str = "local") -> Any:
    table = {"url": UPSTREAM, "side_requests": side, "tokenizer": "llama.cpp"}
    settings = build_settings({"upstreams": {"local": table}}, {}, {"audit_path": "memory"})
    return create_app(settings, transport=upstream.transport, audit=audit)


PROBE: dict[str, Any] = {
    "model": "claude-test",
    "max_tokens": 1,
    "system": "You are terse.",
    "messages": [{"role": "user", "content": "quota"}],
}


def sdk(client: httpx.AsyncClient) -> anthropic.AsyncAnthropic:
    """The SDK talking to the same app in memory (it brings its own HTTP stack)."""
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    app = transport.app
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://localhost")
    return anthropic.AsyncAnthropic(
        api_key="dummy", base_url="http://localhost", http_client=http, max_retries=0
    )


async def test_a_probe_is_answered_without_the_upstream() -> None:
    upstream, audit = Upstream(), MemoryAudit()
    async with running(app_for(upstream, audit)) as client:
        message = await sdk(client).messages.create(**PROBE)
        raw = await client.post("/v1/messages", json=PROBE)
    assert message.stop_reason == "max_tokens" and message.content == []
    assert message.usage.input_tokens == upstream.tokenized > 0  # the upstream's own count
    assert raw.headers["x-prefixgate-answered-by"] == "gateway"
    assert raw.headers["x-prefixgate-token-count"] == "tokenizer"
    assert set(upstream.paths) == {"/tokenize"}
    assert [r.kind for r in audit.query()] == ["local_probe", "local_probe"]
    assert all(r.cached_tokens is None and r.cause is None for r in audit.query())


async def test_a_streamed_probe_is_a_clean_stream() -> None:
    upstream, audit = Upstream(), MemoryAudit()
    async with (
        running(app_for(upstream, audit)) as client,
        sdk(client).messages.stream(**PROBE) as stream,
    ):
        final = await stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens == 0
    assert set(upstream.paths) == {"/tokenize"}


async def test_count_tokens_is_answered_by_the_tokenizer() -> None:
    upstream, audit = Upstream(), MemoryAudit()
    async with running(app_for(upstream, audit)) as client:
        count = await sdk(client).messages.count_tokens(
            model="claude-test", messages=[{"role": "user", "content": "hello"}]
        )
    assert count.input_tokens == upstream.tokenized > len("hello")
    assert set(upstream.paths) == {"/tokenize"}


async def test_forward_is_the_default_and_sends_probes_upstream() -> None:
    upstream, audit = Upstream(), MemoryAudit()
    async with running(app_for(upstream, audit, side="forward")) as client:
        response = await client.post("/v1/messages", json=PROBE)
    assert response.status_code == 500  # this fake upstream refuses messages
    assert "/v1/messages" in upstream.paths
    assert [r.kind for r in audit.query()] == ["probe"]
