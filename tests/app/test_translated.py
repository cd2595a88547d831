"""The gateway in front of an upstream of kind ``openai``, through the whole app.

The upstream is a fake OpenAI server (``httpx.MockTransport``) that records what
it receives and hands every chat completions request to the official ``openai``
SDK (``validate_openai_request``), so what prefixgate sends is judged by a
parser that is not ours. It answers JSON, or replays the recorded streams in
``tests/translate/fixtures``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from inmemory import running
from starlette.applications import Starlette

from prefixgate.app.gateway import create_app
from prefixgate.config import build_settings
from prefixgate.core.sse import SSEDecoder
from prefixgate.store.audit import AuditRecord, MemoryAudit

URL = "http://runtime.test:8080"
FIXTURES = Path(__file__).resolve().parents[1] / "translate" / "fixtures"
BLOCK = "x-anthropic-billing-header: cc_version=2.1.197.{}; cc_entrypoint=cli;"
SYSTEM = "You are a coding agent. Keep the prompt prefix stable between turns."
TOOL = {
    "name": "Read",
    "description": "Read a file.",
    "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}},
}
COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1_750_000_000,
    "model": "gemma-3-270m",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "Read", "arguments": '{"file_path":"a.py"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 1000,
        "completion_tokens": 12,
        "total_tokens": 1012,
        "prompt_tokens_details": {"cached_tokens": 900},
    },
}


class OpenAIServer:
    """A fake OpenAI-compatible upstream."""

    def __init__(self, validate: Callable[[dict[str, Any]], None]) -> None:
        self.validate = validate
        self.requests: list[httpx.Request] = []
        self.stream_fixture = "llamacpp_text.sse"
        self.status = 200
        self.content: bytes | None = None  # a raw answer instead of COMPLETION
        self.transport = httpx.MockTransport(self._handle)

    def chats(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith("/chat/completions")]

    def chat_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.chats()]

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("/tokenize"):
            text = json.loads(request.content)["content"]
            return httpx.Response(200, json={"tokens": [1] * (len(text) // 4)})
        if request.url.path == "/v1/models":
            return httpx.Response(
                200, json={"object": "list", "data": [{"id": "gemma", "created": 0}]}
            )
        assert request.url.path.endswith("/chat/completions")
        body = json.loads(request.content)
        self.validate(body)
        if self.status != 200:
            error = {"message": "context length exceeded", "type": "invalid_request_error"}
            return httpx.Response(self.status, json={"error": error})
        if self.content is not None:
            return httpx.Response(200, content=self.content)
        if body.get("stream"):
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                content=(FIXTURES / self.stream_fixture).read_bytes(),
            )
        return httpx.Response(200, json=COMPLETION)


@pytest.fixture
def server(openai_request_validator: Callable[[dict[str, Any]], None]) -> OpenAIServer:
    return OpenAIServer(openai_request_validator)


def gateway(server: OpenAIServer, **upstream: Any) -> Starlette:
    table = {"url": URL, "kind": "openai", "api_key": "sk-upstream", **upstream}
    settings = build_settings({"upstreams": {"local": table}}, {}, {})
    return create_app(settings, transport=server.transport, audit=MemoryAudit())


async def records(app: Starlette) -> list[AuditRecord]:
    await app.state.proxy.observer.drain()
    return list(app.state.audit.records)


def request(suffix: str = "3ab", *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-opus-4-8",
        "max_tokens": 64,
        "stream": stream,
        "system": [
            {"type": "text", "text": BLOCK.format(suffix)},
            {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [TOOL],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Read a.py"}]},
            {"role": "system", "content": "Available agent types: none."},
        ],
        "metadata": {"user_id": json.dumps({"session_id": f"session-{suffix}"})},
        **extra,
    }


HEADERS = {"x-api-key": "sk-client", "anthropic-version": "2023-06-01"}


def events(content: bytes) -> list[dict[str, Any]]:
    decoder = SSEDecoder()
    return [e.json() for e in [*decoder.decode(content), *decoder.flush()] if e.data]


# -- requests ------------------------------------------------------------------------


async def test_a_message_is_translated_both_ways(server: OpenAIServer) -> None:
    app = gateway(server)
    async with running(app) as client:
        response = await client.post("/v1/messages", json=request(), headers=HEADERS)
    assert response.status_code == 200, response.text
    message = response.json()
    assert message["type"] == "message" and message["model"] == "claude-opus-4-8"
    assert message["stop_reason"] == "tool_use"
    assert [b["type"] for b in message["content"]] == ["text", "tool_use"]
    assert message["content"][1]["id"] == "call_1"
    assert message["content"][1]["input"] == {"file_path": "a.py"}
    assert message["usage"]["input_tokens"] == 100
    assert message["usage"]["cache_read_input_tokens"] == 900

    (sent,) = server.chats()
    assert sent.headers["authorization"] == "Bearer sk-upstream"
    assert "sk-client" not in str(sent.headers) and "anthropic-version" not in sent.headers
    assert b"x-anthropic-billing-header" not in sent.content
    (body,) = server.chat_bodies()
    assert [m["role"] for m in body["messages"]] == ["system", "user", "system"]
    assert body["messages"][0]["content"] == SYSTEM
    assert body["user"] == body["prompt_cache_key"] == "session-3ab"

    (rec,) = await records(app)
    assert (rec.status, rec.prompt_tokens, rec.cached_tokens) == (200, 1000, 900)
    assert rec.attribution_found and rec.attribution == {
        "cc_version": "2.1.197.3ab",
        "cc_entrypoint": "cli",
    }


async def test_sessions_differing_only_in_the_block_share_one_key(server: OpenAIServer) -> None:
    app = gateway(server)
    async with running(app) as client:
        for suffix in ("3ab", "9f0"):
            response = await client.post("/v1/messages", json=request(suffix), headers=HEADERS)
            assert response.status_code == 200
    first, second = await records(app)
    assert first.session != second.session
    assert first.key == second.key
    a, b = server.chat_bodies()
    assert a["messages"] == b["messages"] and a["tools"] == b["tools"]


async def test_the_openai_kind_has_its_own_key(server: OpenAIServer) -> None:
    from prefixgate.core.pipeline import RewriteOptions, rewrite

    app = gateway(server)
    async with running(app) as client:
        await client.post("/v1/messages", json=request(), headers=HEADERS)
    (rec,) = await records(app)
    same_but_anthropic = rewrite(
        json.dumps(request()).encode(), RewriteOptions(provider="openai:local")
    )
    assert rec.key != same_but_anthropic.key.hex  # another renderer: another adapter version


async def test_passthrough_forwards_the_block_as_the_head_of_the_system_message(
    server: OpenAIServer,
) -> None:
    async with running(gateway(server, policy="passthrough")) as client:
        await client.post("/v1/messages", json=request(), headers=HEADERS)
    (body,) = server.chat_bodies()
    assert body["messages"][0]["content"] == BLOCK.format("3ab") + "\n\n" + SYSTEM


@pytest.mark.parametrize(
    ("setting", "roles", "cache_key"),
    [
        ({"system_messages": "user"}, ["system", "user", "user"], "session-3ab"),
        ({"prompt_cache_key": "off"}, ["system", "user", "system"], None),
    ],
)
async def test_per_upstream_translation_settings(
    server: OpenAIServer, setting: dict[str, str], roles: list[str], cache_key: str | None
) -> None:
    async with running(gateway(server, **setting)) as client:
        await client.post("/v1/messages", json=request(), headers=HEADERS)
    (body,) = server.chat_bodies()
    assert [m["role"] for m in body["messages"]] == roles
    assert body.get("prompt_cache_key") == cache_key


async def test_prefix_cache_key_setting_sends_the_stable_key(server: OpenAIServer) -> None:
    app = gateway(server, prompt_cache_key="prefix")
    async with running(app) as client:
        await client.post("/v1/messages", json=request(), headers=HEADERS)
    (rec,) = await records(app)
    (body,) = server.chat_bodies()
    assert body["prompt_cache_key"] == rec.key


# -- streams -------------------------------------------------------------------------


async def test_a_stream_is_translated_event_by_event(server: OpenAIServer) -> None:
    app = gateway(server)
    async with running(app) as client:
        response = await client.post("/v1/messages", json=request(stream=True), headers=HEADERS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    got = events(response.content)
    kinds = [e["type"] for e in got]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    text = "".join(e["delta"]["text"] for e in got if e["type"] == "content_block_delta")
    assert text.startswith("Grüße")
    (body,) = server.chat_bodies()
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    (rec,) = await records(app)
    assert rec.status == 200 and rec.error is None and rec.stream
    assert rec.cached_tokens is not None and rec.prompt_tokens is not None
    delta = next(e for e in got if e["type"] == "message_delta")
    assert delta["usage"]["cache_read_input_tokens"] == rec.cached_tokens


async def test_a_stream_cut_before_its_end_ends_with_an_error_event(
    server: OpenAIServer,
) -> None:
    server.stream_fixture = "openai_cut_before_finish.sse"
    app = gateway(server)
    async with running(app) as client:
        response = await client.post("/v1/messages", json=request(stream=True), headers=HEADERS)
    got = events(response.content)
    assert got[-1]["type"] == "error"
    assert got[-1]["error"]["message"]
    (rec,) = await records(app)
    assert rec.error is not None


# -- errors, token counts, models ----------------------------------------------------


async def test_an_upstream_error_status_keeps_its_status_and_message(
    server: OpenAIServer,
) -> None:
    server.status = 400
    app = gateway(server)
    async with running(app) as client:
        response = await client.post("/v1/messages", json=request(), headers=HEADERS)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "context length exceeded" in error["error"]["message"]
    (rec,) = await records(app)
    assert rec.status == 400


@pytest.mark.parametrize("content", [b"not json", b"[]", b'{"choices": "x"}'])
async def test_a_garbled_answer_is_a_502(server: OpenAIServer, content: bytes) -> None:
    server.content = content
    app = gateway(server)
    async with running(app) as client:
        response = await client.post("/v1/messages", json=request(), headers=HEADERS)
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "api_error"
    (rec,) = await records(app)
    assert rec.status == 502 and rec.error


async def test_count_tokens_is_answered_without_the_chat_endpoint(
    server: OpenAIServer,
) -> None:
    app = gateway(server)
    body = {k: v for k, v in request().items() if k not in ("max_tokens", "stream")}
    async with running(app) as client:
        response = await client.post("/v1/messages/count_tokens", json=body, headers=HEADERS)
    assert response.status_code == 200
    assert response.headers["x-prefixgate-token-count"] == "tokenizer"
    assert response.json()["input_tokens"] > 10
    assert server.chat_bodies() == []
    (rec,) = await records(app)
    assert rec.kind == "count_tokens" and rec.prompt_tokens == response.json()["input_tokens"]


async def test_models_are_listed_in_the_anthropic_shape(server: OpenAIServer) -> None:
    async with running(gateway(server)) as client:
        response = await client.get("/v1/models", headers=HEADERS)
    assert response.status_code == 200
    listing = response.json()
    assert listing["data"] == [
        {
            "type": "model",
            "id": "gemma",
            "display_name": "gemma",
            "created_at": "1970-01-01T00:00:00Z",
        }
    ]


async def test_a_bare_host_gets_v1_and_a_versioned_base_url_does_not(
    server: OpenAIServer,
) -> None:
    async with running(gateway(server, url=URL + "/api/v1")) as client:
        await client.post("/v1/messages", json=request(), headers=HEADERS)
    assert [r.url.path for r in server.chats()] == ["/api/v1/chat/completions"]


# -- the corpus ----------------------------------------------------------------------


async def test_every_corpus_request_is_taken_by_the_openai_sdk(
    server: OpenAIServer, all_records: list[Any]
) -> None:
    app = gateway(server)
    async with running(app) as client:
        for record in all_records:
            headers = {**HEADERS, "x-claude-code-session-id": record.headers.get(
                "X-Claude-Code-Session-Id", "none"
            )}  # fmt: skip
            body = {**record.body, "stream": False}
            response = await client.post("/v1/messages", json=body, headers=headers)
            assert response.status_code == 200, (record.label, response.text)
    sent = server.chat_bodies()
    assert len(sent) == len(all_records)
    for body in sent:
        assert "x-anthropic-billing-header" not in json.dumps(body)


async def test_a_tool_loaded_through_tool_search_is_a_function(server: OpenAIServer) -> None:
    """The tool-load step replaces the reference; the translation still sends the function."""
    loaded = {
        "name": "WebFetch",
        "description": "Fetch a URL.",
        "defer_loading": True,
        "input_schema": {"type": "object", "properties": {"url": {"type": "string"}}},
    }
    placeholder = {
        "name": "DeferredToolPlaceholder",
        "description": "never call",
        "defer_loading": True,
        "input_schema": {"type": "object"},
    }
    body = request(tools=[TOOL, loaded, placeholder])
    body["messages"] += [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "ToolSearch",
             "input": {"query": "select:WebFetch"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1",
             "content": [{"type": "tool_reference", "tool_name": "WebFetch"}]},
            {"type": "text", "text": "Tool loaded."}]},
    ]  # fmt: skip
    app = gateway(server)
    async with running(app) as client:
        response = await client.post("/v1/messages", json=body, headers=HEADERS)
    assert response.status_code == 200, response.text
    (sent,) = server.chat_bodies()
    assert [t["function"]["name"] for t in sent["tools"]] == [TOOL["name"], "WebFetch"]
    tool_message = next(m for m in sent["messages"] if m["role"] == "tool")
    assert "WebFetch" in tool_message["content"] and "tool_reference" not in tool_message["content"]
