"""The official Anthropic SDK through prefixgate to llama-server's OpenAI endpoint.

    anthropic SDK -> prefixgate (kind openai) -> Recorder -> llama-server /v1/chat/completions

Every request prefixgate sends upstream is also handed to the official
``openai`` SDK (``validate_openai_request``), an independent parser of what a
chat completions request may contain. The small model will not choose a tool
by itself, so the tool round trip forces one with ``tool_choice``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from servers import Gateway, Seen, gateway_in_front_of
from test_sdk_stream import (
    MODEL,
    assert_upstream_never_saw_the_block,
    sdk_client,
    system,
    user,
)

from prefixgate.runtime.local import LocalRuntime

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
# longer than OpenAI's 64-character limit on function names: sent shortened, mapped back
LONG_TOOL = "mcp__inventory_service__look_up_the_current_stock_level_of_one_article"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city name"}},
        "required": ["city"],
    },
}
STOCK_TOOL = {
    "name": LONG_TOOL,
    "description": "Look up how many pieces of an article are in stock.",
    "input_schema": {
        "type": "object",
        "properties": {"article": {"type": "string"}},
        "required": ["article"],
    },
}


@pytest.fixture(scope="module")
def openai_gateway(local_runtime: LocalRuntime) -> Iterator[Gateway]:
    with gateway_in_front_of(local_runtime.base_url, "openai") as gw:
        yield gw


@pytest.fixture
def sdk(openai_gateway: Gateway) -> Iterator[anthropic.Anthropic]:
    with sdk_client(openai_gateway.url) as client:
        yield client


def chat_requests(seen: list[Seen]) -> list[dict[str, Any]]:
    return [json.loads(s.body) for s in seen if s.path.split("?")[0] == CHAT]


def check_upstream(
    gateway: Gateway, before: int, validate: Callable[[dict[str, Any]], None]
) -> list[dict[str, Any]]:
    """What the upstream received since ``before``: chat completions only, each one
    taken by the openai SDK, none with the block or the client's key."""
    seen = gateway.recorder.seen[before:]
    assert_upstream_never_saw_the_block(seen)
    assert {s.path.split("?")[0] for s in seen} <= {CHAT, "/tokenize"}
    bodies = chat_requests(seen)
    assert bodies
    for body in bodies:
        validate(body)
    return bodies


def test_streamed_text_through_chat_completions(
    sdk: anthropic.Anthropic,
    openai_gateway: Gateway,
    openai_request_validator: Callable[[dict[str, Any]], None],
) -> None:
    before, recorded = len(openai_gateway.recorder.seen), len(openai_gateway.audit.records)
    events: list[str] = []
    with sdk.messages.stream(
        model=MODEL,
        max_tokens=8,
        system=system("a01"),  # type: ignore[arg-type]
        messages=[user("Say hello.", reminder=True)],  # type: ignore[list-item]
        extra_headers={"x-claude-code-session-id": "openai-text"},
    ) as stream:
        for event in stream:
            events.append(event.type)
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_delta" in events
    assert final.model == MODEL  # the client's model name, not the runtime's
    assert final.content and final.content[0].type == "text" and final.content[0].text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0
    assert final.usage.cache_read_input_tokens is not None  # llama.cpp reports it
    (body,) = check_upstream(openai_gateway, before, openai_request_validator)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][0]["content"].startswith("You are Claude Code")
    assert body["user"] == "openai-text" == body["prompt_cache_key"]
    (record,) = openai_gateway.records(at_least=recorded + 1)[recorded:]
    assert record.session == "openai-text"
    assert record.status == 200 and record.error is None
    assert record.cached_tokens is not None and record.prompt_tokens is not None
    assert record.prompt_tokens == final.usage.input_tokens + final.usage.cache_read_input_tokens


def test_tool_call_round_trip(
    sdk: anthropic.Anthropic,
    openai_gateway: Gateway,
    openai_request_validator: Callable[[dict[str, Any]], None],
) -> None:
    """Tools, a named tool_choice, then the client's tool_use and tool_result.

    This llama-server build cannot be made to call a tool: it ignores an object
    ``tool_choice`` (it logs "Wrong type supplied for parameter 'tool_choice'")
    and its grammar for this template only starts once the model writes
    ``<tool_call>``, which Gemma 270M rarely does. So the model's side of the
    round trip is checked on a recorded llama-server answer
    (``tests/translate/test_response.py``), and here the runtime gets the whole
    conversation a tool call makes: the definitions, the choice, the call and
    its result, all translated, and must answer it."""
    before = len(openai_gateway.recorder.seen)
    question = user("How many blue mugs are in stock?")
    tools = [WEATHER_TOOL, STOCK_TOOL]
    with sdk.messages.stream(
        model=MODEL,
        max_tokens=8,
        system=system("a02"),  # type: ignore[arg-type]
        messages=[question],  # type: ignore[list-item]
        tools=tools,  # type: ignore[arg-type]
        tool_choice={"type": "tool", "name": LONG_TOOL},
    ) as stream:
        first = stream.get_final_message()
    assert first.content and first.stop_reason in ("end_turn", "max_tokens", "tool_use")
    call = {
        "type": "tool_use",
        "id": "toolu_01Mugs",
        "name": LONG_TOOL,
        "input": {"article": "mug"},
    }
    follow_up = [
        question,
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check."}, call]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "7 pieces"}],
        },
    ]
    second = sdk.messages.create(
        model=MODEL,
        max_tokens=8,
        system=system("a02"),  # type: ignore[arg-type]
        messages=follow_up,  # type: ignore[arg-type]
        tools=tools,  # type: ignore[arg-type]
    )
    assert second.content and second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert second.usage.cache_read_input_tokens  # the first request's prefix was reused
    first_body, second_body = check_upstream(openai_gateway, before, openai_request_validator)
    function = first_body["tool_choice"]["function"]["name"]
    assert len(function) <= 64 and function != LONG_TOOL
    assert [t["function"]["name"] for t in first_body["tools"]] == ["get_weather", function]
    assistant, tool = second_body["messages"][2:4]
    assert assistant["content"] == "Let me check."
    assert assistant["tool_calls"] == [
        {
            "id": "toolu_01Mugs",  # ids kept, never regenerated
            "type": "function",
            "function": {"name": function, "arguments": '{"article":"mug"}'},
        }
    ]
    assert tool == {"role": "tool", "tool_call_id": "toolu_01Mugs", "content": "7 pieces"}
    # the second request only appends to the first: its prefix is cacheable
    assert second_body["messages"][:2] == first_body["messages"]
    assert second_body["tools"] == first_body["tools"]


def test_mid_conversation_system_message_stays_in_place(
    openai_gateway: Gateway, openai_request_validator: Callable[[dict[str, Any]], None]
) -> None:
    before = len(openai_gateway.recorder.seen)
    note = "Available agent types: general-purpose."
    body = {
        "model": MODEL,
        "max_tokens": 4,
        "system": system("a03"),
        "messages": [
            user("Hello."),
            {"role": "system", "content": note},
            {"role": "assistant", "content": "Hi."},
            user("Bye."),
        ],
    }
    response = httpx.post(
        f"{openai_gateway.url}/v1/messages",
        json=body,
        headers={"anthropic-version": "2023-06-01", "x-api-key": "sk-client-dummy"},
        timeout=300,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "message"
    (sent,) = check_upstream(openai_gateway, before, openai_request_validator)
    assert [m["role"] for m in sent["messages"]] == [
        "system",
        "user",
        "system",
        "assistant",
        "user",
    ]
    assert sent["messages"][2]["content"] == note


def test_count_tokens_does_not_reach_the_chat_endpoint(
    sdk: anthropic.Anthropic, openai_gateway: Gateway
) -> None:
    message = sdk.messages.create(
        model=MODEL,
        max_tokens=2,
        system=system("a04"),  # type: ignore[arg-type]
        messages=[user("Say yes.")],  # type: ignore[list-item]
    )
    prompt = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    before = len(openai_gateway.recorder.seen)
    raw = sdk.messages.with_raw_response.count_tokens(
        model=MODEL,
        system=system("a04"),  # type: ignore[arg-type]
        messages=[user("Say yes.")],  # type: ignore[list-item]
    )
    count = raw.parse()
    assert raw.headers["x-prefixgate-token-count"] == "tokenizer"
    # the pieces' tokens, without the chat template's few turn markers
    assert 0.8 * prompt <= count.input_tokens <= 1.05 * prompt
    seen = openai_gateway.recorder.seen[before:]
    assert CHAT not in {s.path for s in seen}


def test_upstream_errors_are_anthropic_shaped(openai_gateway: Gateway) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 4,
        "messages": [user("x " * 40_000)],  # beyond the runtime's context
    }
    response = httpx.post(
        f"{openai_gateway.url}/v1/messages", json=body, timeout=300, trust_env=False
    )
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"]
