"""The attribution block as a request header, through the whole app.

A fake upstream (``httpx.MockTransport``) keeps what it received; each policy
is checked on what reached it and on the audit record.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.applications import Starlette
from support.app import running
from support.upstream import FakeUpstream

from prefixgate.app.gateway import create_app
from prefixgate.config import build_settings
from prefixgate.core.attribution import HEADER_NAME
from prefixgate.core.policy import METADATA_HEADER
from prefixgate.store.audit import AuditRecord, MemoryAudit

KV = "cc_version=2.1.332.0b8; cc_entrypoint=sdk-cli; cch=fa690;"
FIELDS = {"cc_version": "2.1.332.0b8", "cc_entrypoint": "sdk-cli", "cch": "fa690"}
BODY_BLOCK = "x-anthropic-billing-header: cc_version=2.1.332.111; cc_entrypoint=cli;"
ANSWER: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [{"type": "text", "text": "ok"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 1},
}
OPENAI_ANSWER: dict[str, Any] = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}  # fmt: skip


def app_for(
    upstream: FakeUpstream, policy: str, kind: str = "anthropic", **table: Any
) -> Starlette:
    config = {"url": "http://up.test", "kind": kind, "policy": policy, "tokenizer": "estimate"}
    settings = build_settings({"upstreams": {"local": {**config, **table}}}, {}, {})
    return create_app(settings, transport=upstream.transport, audit=MemoryAudit())


def body(block: bool = False) -> bytes:
    system = [{"type": "text", "text": "You are terse."}]
    if block:
        system.insert(0, {"type": "text", "text": BODY_BLOCK})
    return json.dumps(
        {"model": "m", "max_tokens": 8, "system": system,
         "messages": [{"role": "user", "content": "hi"}]}
    ).encode()  # fmt: skip


async def send(app: Starlette, headers: dict[str, str], *, block: bool = False) -> AuditRecord:
    async with running(app) as client:
        response = await client.post("/v1/messages", content=body(block), headers=headers)
        assert response.status_code == 200, response.text
        await app.state.proxy.observer.drain()
    records = app.state.audit.records
    assert len(records) == 1
    record: AuditRecord = records[0]
    return record


async def test_strip_removes_the_header_and_records_its_fields() -> None:
    upstream = FakeUpstream(answer=ANSWER)
    rec = await send(app_for(upstream, "strip"), {HEADER_NAME: KV, "x-app": "cli"})
    (sent,) = upstream.requests
    assert HEADER_NAME not in sent.headers and sent.headers["x-app"] == "cli"
    assert sent.content == body()  # the body had no block: forwarded as sent
    assert rec.attribution_headers == {HEADER_NAME: {"form": "kv", "fields": FIELDS}}
    assert rec.attribution_found is False  # that field is about the body's block


async def test_passthrough_forwards_the_header_as_sent_and_still_records_it() -> None:
    upstream = FakeUpstream(answer=ANSWER)
    rec = await send(app_for(upstream, "passthrough", first_party=True), {HEADER_NAME: KV})
    assert upstream.requests[0].headers[HEADER_NAME] == KV
    assert rec.attribution_headers == {HEADER_NAME: {"form": "kv", "fields": FIELDS}}


async def test_normalize_forwards_the_normalized_value() -> None:
    upstream = FakeUpstream(answer=ANSWER)
    rec = await send(app_for(upstream, "normalize"), {HEADER_NAME: KV})
    assert upstream.requests[0].headers.get_list(HEADER_NAME) == ["cc_entrypoint=sdk-cli;"]
    assert rec.attribution_headers == {HEADER_NAME: {"form": "kv", "fields": FIELDS}}


async def test_preserve_as_metadata_moves_the_fields_into_the_metadata_header() -> None:
    upstream = FakeUpstream(answer=ANSWER)
    app = app_for(upstream, "preserve_as_metadata", metadata_header="x-attr")
    json_value = '{"cc_is_subagent":true}'
    rec = await send(app, {HEADER_NAME: json_value})
    sent = upstream.requests[0].headers
    assert HEADER_NAME not in sent and sent["x-attr"] == "cc_is_subagent=true;"
    assert rec.attribution_headers == {
        HEADER_NAME: {"form": "json", "fields": {"cc_is_subagent": True}}
    }


async def test_preserve_as_metadata_the_bodys_block_wins_the_metadata_header() -> None:
    upstream = FakeUpstream(answer=ANSWER)
    app = app_for(upstream, "preserve_as_metadata", metadata_header="x-attr")
    rec = await send(app, {HEADER_NAME: KV}, block=True)
    sent = upstream.requests[0]
    assert sent.headers["x-attr"] == "cc_version=2.1.332.111; cc_entrypoint=cli;"
    assert HEADER_NAME not in sent.headers and HEADER_NAME.encode() not in sent.content
    assert rec.attribution_found and rec.attribution_headers is not None


async def test_a_gateway_in_front_set_the_metadata_header() -> None:
    """Another prefixgate in front used preserve_as_metadata: its header is ours to handle."""
    upstream = FakeUpstream(answer=ANSWER)
    rec = await send(app_for(upstream, "strip"), {METADATA_HEADER: KV})
    assert METADATA_HEADER not in upstream.requests[0].headers
    assert rec.attribution_headers == {METADATA_HEADER: {"form": "kv", "fields": FIELDS}}
    configured = FakeUpstream(answer=ANSWER)
    app = app_for(configured, "strip", metadata_header="x-gw-attr")
    rec = await send(app, {"X-Gw-Attr": KV})
    assert "x-gw-attr" not in configured.requests[0].headers
    assert rec.attribution_headers == {"x-gw-attr": {"form": "kv", "fields": FIELDS}}


async def test_no_attribution_header_records_none() -> None:
    upstream = FakeUpstream(answer=ANSWER)
    rec = await send(app_for(upstream, "strip"), {"x-app": "cli"})
    assert rec.attribution_headers is None


@pytest.mark.parametrize("policy", ["strip", "passthrough", "preserve_as_metadata"])
async def test_the_openai_kind_never_forwards_it(policy: str) -> None:
    upstream = FakeUpstream(answer=OPENAI_ANSWER)
    rec = await send(app_for(upstream, policy, kind="openai"), {HEADER_NAME: KV})
    assert HEADER_NAME not in upstream.requests[0].headers
    assert rec.attribution_headers == {HEADER_NAME: {"form": "kv", "fields": FIELDS}}


async def test_the_models_route_drops_it_too() -> None:
    upstream = FakeUpstream(answer={"data": []})
    app = app_for(upstream, "strip")
    async with running(app) as client:
        response = await client.get("/v1/models", headers={HEADER_NAME: KV})
    assert response.status_code == 200
    assert HEADER_NAME not in upstream.requests[0].headers
