"""Anthropic Messages -> OpenAI chat completions requests: fields, messages, cache safety."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixgate.core.errors import InvalidRequest
from prefixgate.core.pipeline import rewrite
from prefixgate.translate.names import openai_name
from prefixgate.translate.request import (
    TOOL_IMAGE_NOTE,
    OpenAIRequest,
    OpenAIRequestOptions,
    loaded_tools,
    to_openai,
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPHEMERAL = {"type": "ephemeral"}
LONG_NAME = "mcp__a_very_long_server_name_for_tests__and_an_even_longer_tool_name_x"
SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}}


def request(*messages: Any, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "max_tokens": 100, "messages": list(messages)}
    body.update(fields)
    return body


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def text(value: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": value, **extra}


def tool_use(call_id: str, name: str = "Read", **arguments: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def tool_result(call_id: Any, content: Any = "ok", **extra: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": content, **extra}


def image(data: str = "AAAA", media_type: str = "image/png") -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def translate(body: dict[str, Any], **options: Any) -> OpenAIRequest:
    return to_openai(body, OpenAIRequestOptions(**options))


def messages_of(body: dict[str, Any], **options: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = translate(body, **options).body["messages"]
    return out


def dumped(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- top-level fields ---------------------------------------------------------


def test_sampling_fields_and_key_order() -> None:
    body = request(
        user("hi"),
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        stop_sequences=["END", "STOP"],
        stream=True,
    )
    out = translate(body, user="sess-1", prompt_cache_key="key-1").body
    assert list(out) == [
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "stream",
        "stream_options",
        "user",
        "prompt_cache_key",
    ]
    assert out["max_tokens"] == 100
    assert "max_completion_tokens" not in out
    assert out["stop"] == ["END", "STOP"]
    assert out["stream_options"] == {"include_usage": True}
    assert out["user"] == "sess-1"
    assert out["prompt_cache_key"] == "key-1"


def test_stream_only_when_present_and_usage_only_when_streaming() -> None:
    assert "stream" not in translate(request(user("hi"))).body
    off = translate(request(user("hi"), stream=False)).body
    assert off["stream"] is False
    assert "stream_options" not in off
    quiet = translate(request(user("hi"), stream=True), include_usage=False).body
    assert quiet["stream"] is True
    assert "stream_options" not in quiet


def test_absent_and_null_fields_are_not_sent() -> None:
    body = {"model": "m", "messages": [user("hi")], "temperature": None, "stop_sequences": []}
    assert translate(body).body == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_metadata_is_never_sent_and_what_is_dropped_is_listed_sorted() -> None:
    body = request(
        user([text("hi", cache_control=EPHEMERAL)]),
        metadata={"user_id": "u", "device": "d"},
        context_management={"edits": []},
        service_tier="auto",
    )
    result = translate(body)
    assert "metadata" not in result.body
    assert "user" not in result.body
    assert result.dropped == (
        "cache_control",
        "context_management",
        "metadata.device",
        "metadata.user_id",
        "service_tier",
    )


def test_the_input_is_not_changed_and_the_output_shares_nothing_with_it() -> None:
    body = request(
        user([text("hi", cache_control=EPHEMERAL)]),
        system=[text("s", cache_control=EPHEMERAL)],
        tools=[{"name": "Read", "input_schema": copy.deepcopy(SCHEMA)}],
        output_config={"format": {"type": "json_schema", "schema": copy.deepcopy(SCHEMA)}},
    )
    before = copy.deepcopy(body)
    out = translate(body).body
    assert body == before
    out["tools"][0]["function"]["parameters"]["x"] = 1
    out["response_format"]["json_schema"]["schema"]["x"] = 1
    assert body == before


def test_translation_is_deterministic() -> None:
    body = request(user("a"), assistant([text("b"), tool_use("t1", x=1)]), user("c"))
    assert dumped(translate(body).body) == dumped(translate(copy.deepcopy(body)).body)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="system_messages"):
        OpenAIRequestOptions(system_messages="developer")


# -- system -------------------------------------------------------------------


def test_a_string_system_is_one_leading_system_message() -> None:
    assert messages_of(request(user("hi"), system="be brief"))[0] == {
        "role": "system",
        "content": "be brief",
    }


def test_system_blocks_are_joined_with_a_blank_line_and_cache_control_is_dropped() -> None:
    system = [
        text("x-anthropic-billing-header: cc_version=1; cc_entrypoint=cli;"),
        text("You are Claude Code.", cache_control=EPHEMERAL),
        text("Rules.", cache_control=EPHEMERAL),
    ]
    result = translate(request(user("hi"), system=system))
    assert result.body["messages"][0] == {
        "role": "system",
        "content": (
            "x-anthropic-billing-header: cc_version=1; cc_entrypoint=cli;"
            "\n\nYou are Claude Code.\n\nRules."
        ),
    }
    assert "cache_control" in result.dropped


@pytest.mark.parametrize("system", [None, "", []])
def test_an_empty_system_gives_no_system_message(system: Any) -> None:
    body = request(user("hi"))
    if system is not None:
        body["system"] = system
    assert messages_of(body) == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("mode", ["system", "user"])
def test_a_system_message_in_the_conversation_stays_at_its_position(mode: str) -> None:
    body = request(
        user("first"),
        {"role": "system", "content": [text("one"), text("two")]},
        assistant("ok"),
        {"role": "system", "content": "late"},
        system="top",
    )
    assert messages_of(body, system_messages=mode) == [
        {"role": "system", "content": "top"},
        {"role": "user", "content": "first"},
        {"role": mode, "content": "one\n\ntwo"},
        {"role": "assistant", "content": "ok"},
        {"role": mode, "content": "late"},
    ]


# -- user messages ------------------------------------------------------------


def test_user_content_rule_one_text_part_is_a_string_else_a_list() -> None:
    assert messages_of(request(user("hi"))) == [{"role": "user", "content": "hi"}]
    assert messages_of(request(user([text("hi", cache_control=EPHEMERAL)]))) == [
        {"role": "user", "content": "hi"}
    ]
    assert messages_of(request(user([text("a"), text("b")]))) == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        }
    ]
    assert messages_of(request(user([image()]))) == [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _png()}}]}
    ]


def _png(data: str = "AAAA") -> str:
    return f"data:image/png;base64,{data}"


def test_tool_results_come_first_in_block_order_then_one_user_message() -> None:
    body = request(
        user([text("before"), tool_result("t2", "two"), tool_result("t1", "one"), text("after")])
    )
    assert messages_of(body) == [
        {"role": "tool", "tool_call_id": "t2", "content": "two"},
        {"role": "tool", "tool_call_id": "t1", "content": "one"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "before"}, {"type": "text", "text": "after"}],
        },
    ]


def test_only_tool_results_give_no_user_message() -> None:
    assert messages_of(request(user([tool_result("t1", cache_control=EPHEMERAL)]))) == [
        {"role": "tool", "tool_call_id": "t1", "content": "ok"}
    ]


def test_tool_result_content_forms_and_errors() -> None:
    body = request(
        user(
            [
                tool_result("a", [text("line 1"), text("line 2")]),
                tool_result("b", "boom", is_error=True),
                {"type": "tool_result", "tool_use_id": "c"},
                tool_result("d", [], is_error=False),
            ]
        )
    )
    assert messages_of(body) == [
        {"role": "tool", "tool_call_id": "a", "content": "line 1\nline 2"},
        {"role": "tool", "tool_call_id": "b", "content": "[tool error] boom"},
        {"role": "tool", "tool_call_id": "c", "content": ""},
        {"role": "tool", "tool_call_id": "d", "content": ""},
    ]


def test_images_in_a_tool_result_go_into_the_following_user_message() -> None:
    body = request(
        user(
            [
                tool_result("a", [text("shot:"), image("AAAA")]),
                text("look"),
                tool_result("b", [image("BBBB", "image/jpeg")]),
            ]
        )
    )
    result = translate(body)
    assert result.body["messages"] == [
        {"role": "tool", "tool_call_id": "a", "content": f"shot:\n{TOOL_IMAGE_NOTE}"},
        {"role": "tool", "tool_call_id": "b", "content": TOOL_IMAGE_NOTE},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": _png("AAAA")}},
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,BBBB"}},
            ],
        },
    ]
    assert result.dropped == ()


def test_image_sources() -> None:
    url = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
    file = {"type": "image", "source": {"type": "file", "file_id": "f1"}}
    result = translate(request(user([image(), url, file])))
    assert result.body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": _png()}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ],
        }
    ]
    assert result.dropped == ("block:image.file",)


def test_documents() -> None:
    def doc(source: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"type": "document", "source": source, **extra}

    blocks = [
        doc({"type": "text", "media_type": "text/plain", "data": "body"}, title="Notes"),
        doc({"type": "text", "media_type": "text/plain", "data": "untitled"}),
        doc({"type": "base64", "media_type": "application/pdf", "data": "JVBE"}),
        doc({"type": "base64", "media_type": "application/pdf", "data": "JVBE"}, title="a.pdf"),
        doc({"type": "url", "url": "https://x/d.pdf"}, title="Paper"),
        doc({"type": "content", "content": [text("c1"), image()]}, title="Mixed"),
        doc({"type": "file", "file_id": "f1"}),
    ]
    result = translate(request(user(blocks)))
    assert result.body["messages"][0]["content"] == [
        {"type": "text", "text": "Notes\nbody"},
        {"type": "text", "text": "untitled"},
        {
            "type": "file",
            "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,JVBE"},
        },
        {
            "type": "file",
            "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"},
        },
        {"type": "text", "text": "Paper\n[document: https://x/d.pdf]"},
        {"type": "text", "text": "Mixed\nc1"},
        {"type": "image_url", "image_url": {"url": _png()}},
    ]
    assert result.dropped == ("block:document.file",)


def test_unknown_blocks_are_dropped_and_named() -> None:
    body = request(
        user([text("hi"), {"type": "search_result", "content": []}]),
        assistant(
            [
                {"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {}},
                {"type": "redacted_thinking", "data": "xyz"},
                text("answer"),
            ]
        ),
    )
    result = translate(body)
    assert result.body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "answer"},
    ]
    assert result.dropped == (
        "block:redacted_thinking",
        "block:search_result",
        "block:server_tool_use",
    )


# -- assistant messages -------------------------------------------------------


def test_assistant_text_and_tool_calls_keep_ids_exactly() -> None:
    body = request(
        assistant(
            [
                text("Let me look."),
                tool_use("toolu_01AbC-xyz", "Read", file_path="/tmp/ä", n=1),
                tool_use("call 2 / odd", "Bash", command="ls"),
            ]
        )
    )
    assert messages_of(body) == [
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "toolu_01AbC-xyz",
                    "type": "function",
                    "function": {"name": "Read", "arguments": '{"file_path":"/tmp/ä","n":1}'},
                },
                {
                    "id": "call 2 / odd",
                    "type": "function",
                    "function": {"name": "Bash", "arguments": '{"command":"ls"}'},
                },
            ],
        }
    ]


def test_arguments_keep_the_clients_key_order() -> None:
    block = {"type": "tool_use", "id": "t", "name": "X", "input": {"z": 1, "a": {"y": 2, "b": 3}}}
    call = messages_of(request(assistant([block])))[0]["tool_calls"][0]
    assert call["function"]["arguments"] == '{"z":1,"a":{"y":2,"b":3}}'


def test_assistant_without_text_has_null_content_only_with_tool_calls() -> None:
    assert messages_of(request(assistant([tool_use("t")])))[0]["content"] is None
    assert messages_of(request(assistant([])))[0] == {"role": "assistant", "content": ""}
    assert messages_of(request(assistant("plain")))[0] == {"role": "assistant", "content": "plain"}
    two = messages_of(request(assistant([text("a"), text("b")])))[0]
    assert two == {"role": "assistant", "content": "a\n\nb"}


def test_thinking_becomes_reasoning_content() -> None:
    content = [
        {"type": "thinking", "thinking": "step 1", "signature": "sig"},
        {"type": "thinking", "thinking": "step 2", "signature": "sig"},
        text("done"),
        tool_use("t"),
    ]
    message = messages_of(request(assistant(content)))[0]
    assert list(message) == ["role", "content", "reasoning_content", "tool_calls"]
    assert message["reasoning_content"] == "step 1\n\nstep 2"
    off = translate(request(assistant(content)), reasoning=False)
    assert "reasoning_content" not in off.body["messages"][0]
    assert off.dropped == ("block:thinking",)


# -- tools --------------------------------------------------------------------


def test_tools_in_order_with_long_names_mapped_everywhere() -> None:
    tools = [
        {"name": "Read", "description": "read a file", "input_schema": SCHEMA},
        {"name": LONG_NAME, "input_schema": SCHEMA, "cache_control": EPHEMERAL},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        {"type": "custom", "name": "Bash", "description": "run", "input_schema": SCHEMA},
    ]
    body = request(
        user("go"),
        assistant([tool_use("t1", LONG_NAME, path="x")]),
        user([tool_result("t1")]),
        tools=tools,
        tool_choice={"type": "tool", "name": LONG_NAME},
    )
    result = translate(body)
    short = openai_name(LONG_NAME)
    assert len(short) <= 64
    assert result.body["tools"] == [
        {
            "type": "function",
            "function": {"name": "Read", "description": "read a file", "parameters": SCHEMA},
        },
        {"type": "function", "function": {"name": short, "description": "", "parameters": SCHEMA}},
        {
            "type": "function",
            "function": {"name": "Bash", "description": "run", "parameters": SCHEMA},
        },
    ]
    assert result.body["messages"][1]["tool_calls"][0]["function"]["name"] == short
    assert result.body["tool_choice"] == {"type": "function", "function": {"name": short}}
    assert result.names.to_anthropic(short) == LONG_NAME
    assert result.dropped == ("cache_control", "tool:web_search_20250305")


def test_only_server_tools_send_no_tools() -> None:
    body = request(user("hi"), tools=[{"type": "web_search_20250305", "name": "web_search"}])
    result = translate(body)
    assert "tools" not in result.body
    assert result.dropped == ("tool:web_search_20250305",)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "Read"},
            {"tool_choice": {"type": "function", "function": {"name": "Read"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
        (
            {"type": "any", "disable_parallel_tool_use": False},
            {"tool_choice": "required"},
        ),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    tools = [{"name": "Read", "input_schema": SCHEMA}]
    out = translate(request(user("hi"), tools=tools, tool_choice=choice)).body
    assert {k: out[k] for k in ("tool_choice", "parallel_tool_calls") if k in out} == expected


# -- thinking and output ------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "effort"),
    [(1024, "low"), (4095, "low"), (4096, "medium"), (16383, "medium"), (16384, "high")],
)
def test_thinking_budget_to_reasoning_effort(budget: int, effort: str) -> None:
    thinking = {"type": "enabled", "budget_tokens": budget}
    out = translate(request(user("hi"), thinking=thinking)).body
    assert out["reasoning_effort"] == effort


@pytest.mark.parametrize(
    ("config", "effort"),
    [
        ({"effort": "low"}, "low"),
        ({"effort": "medium"}, "medium"),
        ({"effort": "high"}, "high"),
        ({"effort": "max"}, "medium"),
        ({}, "medium"),
        (None, "medium"),
    ],
)
def test_adaptive_thinking_uses_the_effort(config: dict[str, Any] | None, effort: str) -> None:
    body = request(user("hi"), thinking={"type": "adaptive"})
    if config is not None:
        body["output_config"] = config
    result = translate(body)
    assert result.body["reasoning_effort"] == effort
    assert result.dropped == ()


def test_no_reasoning_when_disabled_absent_or_switched_off() -> None:
    disabled = translate(
        request(user("hi"), thinking={"type": "disabled"}, output_config={"effort": "high"})
    )
    assert "reasoning_effort" not in disabled.body
    assert disabled.dropped == ("output_config.effort",)
    assert "reasoning_effort" not in translate(request(user("hi"))).body
    off = translate(request(user("hi"), thinking={"type": "adaptive"}), reasoning=False)
    assert "reasoning_effort" not in off.body
    assert off.dropped == ("thinking",)


def test_structured_output_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"title": {"type": "string"}}}
    body = request(
        user("hi"),
        output_config={"effort": "high", "format": {"type": "json_schema", "schema": schema}},
    )
    out = translate(body).body
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


# -- invalid shapes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "request body must be a JSON object"),
        ({"messages": []}, "model: "),
        ({"model": "m"}, "messages: "),
        ({"model": "m", "messages": {}}, "messages: "),
        (request("hello"), "messages[0]: "),
        (request(user("a"), {"role": "tool", "content": "x"}), "messages[1].role: "),
        (request(user(3)), "messages[0].content: "),
        (request(user(["x"])), "messages[0].content[0]: "),
        (request(user([text("a"), {"type": 1}])), "messages[0].content[1].type: "),
        (request(user([{"type": "text"}])), "messages[0].content[0].text: "),
        (request(user([tool_result(5)])), "messages[0].content[0].tool_use_id: "),
        (request(user([tool_result("t", 5)])), "messages[0].content[0].content: "),
        (request(user([tool_result("t", [7])])), "messages[0].content[0].content[0]: "),
        (request(user([{"type": "image"}])), "messages[0].content[0].source: "),
        (
            request(user([{"type": "image", "source": {"type": "base64", "data": "x"}}])),
            "messages[0].content[0].source.media_type: ",
        ),
        (request(assistant([{"type": "tool_use", "id": "t", "name": "X"}])), ".input: "),
        (request(assistant([{"type": "tool_use", "name": "X", "input": {}}])), ".id: "),
        (request(assistant([{"type": "thinking"}])), "messages[0].content[0].thinking: "),
        (request({"role": "system", "content": [image()]}), "messages[0].content[0]: "),
        (request(user("a"), system=5), "system: "),
        (request(user("a"), system=[text("a"), {"type": "image"}]), "system[1]: "),
        (request(user("a"), max_tokens="9"), "max_tokens: "),
        (request(user("a"), temperature=True), "temperature: "),
        (request(user("a"), top_k=0.5), "top_k: "),
        (request(user("a"), stop_sequences="END"), "stop_sequences: "),
        (request(user("a"), stream="yes"), "stream: "),
        (request(user("a"), tools={}), "tools: "),
        (request(user("a"), tools=[{"name": "x"}]), "tools[0].input_schema: "),
        (request(user("a"), tools=[{"input_schema": {}}]), "tools[0].name: "),
        (request(user("a"), tool_choice="auto"), "tool_choice: "),
        (request(user("a"), tool_choice={"type": "tool"}), "tool_choice.name: "),
        (request(user("a"), tool_choice={"type": "some"}), "tool_choice.type: "),
        (request(user("a"), thinking="on"), "thinking: "),
        (request(user("a"), thinking={"type": "enabled"}), "thinking.budget_tokens: "),
        (request(user("a"), output_config=[]), "output_config: "),
    ],
)
def test_invalid_shapes_name_the_path(body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_openai(body)
    assert caught.value.message.startswith(message) or message in caught.value.message


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
KEYS = st.sampled_from(
    [
        "type",
        "text",
        "source",
        "content",
        "tool_use_id",
        "id",
        "name",
        "input",
        "is_error",
        "thinking",
        "media_type",
        "data",
        "url",
        "title",
        "cache_control",
    ]
)
TYPES = st.sampled_from(
    ["text", "image", "document", "tool_use", "tool_result", "thinking", "base64", "url", "x"]
)
JSONISH = st.recursive(
    JSON_SCALARS | TYPES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(KEYS, children, max_size=5)
        | st.dictionaries(st.text(max_size=3), children, max_size=3)
        | st.fixed_dictionaries({"type": TYPES}, optional={"text": children, "source": children})
    ),
    max_leaves=20,
)
FIELDS = (
    *("system", "tools", "tool_choice", "thinking", "output_config", "stop_sequences"),
    *("metadata", "stream", "temperature", "top_k", "max_tokens"),
)
ROLES = st.sampled_from(["user", "assistant", "system", "other"]) | JSON_SCALARS


@PROPERTY
@given(
    st.lists(
        st.fixed_dictionaries({"role": ROLES, "content": JSONISH}) | JSONISH,
        max_size=4,
    ),
    st.dictionaries(
        st.sampled_from(FIELDS),
        JSONISH,
        max_size=3,
    ),
)
def test_only_invalid_request_escapes_for_any_json(
    messages: list[Any], fields: dict[str, Any]
) -> None:
    try:
        result = to_openai(request(*messages, **fields))
    except InvalidRequest:
        return
    json.dumps(result.body, allow_nan=False)


# -- cache safety -------------------------------------------------------------


def without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [without_cache_control(v) for v in value]
    return value


def assert_prefix(shorter: OpenAIRequest, longer: OpenAIRequest) -> None:
    short, long = shorter.body["messages"], longer.body["messages"]
    assert len(long) >= len(short)
    assert dumped(long[: len(short)]) == dumped(short)


NAMES = st.sampled_from(["Read", "Bash", LONG_NAME, "mcp.server/tool"])
IDS = st.text("abc_-01", min_size=1, max_size=6)
WORDS = st.text(max_size=12)
B64 = st.text("ABCD", min_size=1, max_size=8)
IMAGE = st.builds(image, B64)
TEXT = st.builds(text, WORDS)
TOOL_RESULT = st.builds(
    lambda call_id, content, error: tool_result(call_id, content, is_error=error),
    IDS,
    WORDS | st.lists(TEXT | IMAGE, max_size=3),
    st.booleans(),
)
USER = st.builds(user, WORDS | st.lists(TEXT | IMAGE | TOOL_RESULT, min_size=1, max_size=4))
ARGUMENTS = st.dictionaries(st.text(max_size=4), JSON_SCALARS, max_size=3)
TOOL_USE = st.builds(
    lambda call_id, name, args: {"type": "tool_use", "id": call_id, "name": name, "input": args},
    IDS,
    NAMES,
    ARGUMENTS,
)
THINKING = st.builds(lambda t: {"type": "thinking", "thinking": t, "signature": "s"}, WORDS)
ASSISTANT = st.builds(assistant, WORDS | st.lists(TEXT | TOOL_USE | THINKING, max_size=4))
SYSTEM = st.builds(lambda c: {"role": "system", "content": c}, WORDS | st.lists(TEXT, max_size=2))
CONVERSATION = st.lists(USER | ASSISTANT | SYSTEM, min_size=1, max_size=8)
TOOLS = [{"name": n, "input_schema": SCHEMA} for n in ("Read", "Bash", LONG_NAME)]


def marked(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Claude Code's habit: cache_control on the last block of the newest user message."""
    out = copy.deepcopy(messages)
    for message in reversed(out):
        if message["role"] == "user" and isinstance(message["content"], list):
            message["content"][-1]["cache_control"] = EPHEMERAL
            break
    return out


@PROPERTY
@given(CONVERSATION, st.sampled_from(["system", "user"]), st.booleans())
def test_one_turn_longer_only_appends(
    conversation: list[dict[str, Any]], mode: str, reasoning: bool
) -> None:
    options = OpenAIRequestOptions(system_messages=mode, reasoning=reasoning)
    system = [text("sys", cache_control=EPHEMERAL)]
    full = to_openai(request(*marked(conversation), system=system, tools=TOOLS), options)
    for k in range(len(conversation)):
        part = to_openai(request(*marked(conversation[:k]), system=system, tools=TOOLS), options)
        assert_prefix(part, full)


@PROPERTY
@given(CONVERSATION)
def test_cache_control_changes_nothing(conversation: list[dict[str, Any]]) -> None:
    plain = to_openai(request(*conversation))
    assert dumped(to_openai(request(*marked(conversation))).body) == dumped(plain.body)


# -- the recorded corpus ------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One corpus request: ``body`` as recorded, ``stripped`` as the pipeline hands it on."""

    label: str
    session: str
    body: dict[str, Any]
    stripped: dict[str, Any]


@pytest.fixture(scope="module")
def recorded(corpus_directory: Path) -> list[list[Recorded]]:
    """Every corpus file's requests, in recording order."""
    files = sorted(corpus_directory.glob("*.jsonl"))
    assert files, f"no corpus files (*.jsonl) in {corpus_directory}"
    out = []
    for path in files:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        out.append(
            [
                Recorded(
                    f"{path.name}[{i}]",
                    session_header(row["headers"]),
                    json.loads(row["body"]),
                    rewrite(row["body"].encode("utf-8")).parsed,
                )
                for i, row in enumerate(rows)
            ]
        )
    return out


def system_text(content: Any) -> str:
    """A system message's text: the string, or its text blocks joined with a blank line."""
    if isinstance(content, str):
        return content
    return "\n\n".join(block["text"] for block in content)


def session_header(headers: dict[str, str]) -> str:
    """Claude Code's session id header (recorded in either case)."""
    lower = {k.lower(): v for k, v in headers.items()}
    return lower["x-claude-code-session-id"]


def sent_tools(body: dict[str, Any]) -> list[str]:
    """The tools a translation sends: the others in order, then loaded deferred ones."""
    loaded = loaded_tools(body["messages"])
    tools = body.get("tools", [])
    deferred = {t["name"] for t in tools if t.get("defer_loading") is True}
    plain = [t["name"] for t in tools if t["name"] not in deferred]
    return plain + [name for name in loaded if name in deferred]


def every(recorded: list[list[Recorded]]) -> Iterator[Recorded]:
    for records in recorded:
        yield from records


def test_every_corpus_request_translates(
    recorded: list[list[Recorded]], openai_request_validator: Any
) -> None:
    count = 0
    for record in every(recorded):
        for body in (record.body, record.stripped):
            result = to_openai(body, OpenAIRequestOptions(user=record.session))
            assert result.body["model"] == body["model"]
            assert result.body["user"] == record.session
            assert "cache_control" not in dumped(result.body["messages"]), record.label
            functions = [t["function"]["name"] for t in result.body.get("tools", [])]
            assert functions == [openai_name(n) for n in sent_tools(body)], record.label
            openai_request_validator(result.body)
        count += 1
    assert count >= 42


def test_the_first_system_block_is_not_special(recorded: list[list[Recorded]]) -> None:
    """Stripping the attribution block is the pipeline's job: every block is kept as sent."""
    for record in every(recorded):
        for body in (record.body, record.stripped):
            texts = [block["text"] for block in body["system"]]
            leading = to_openai(body).body["messages"][0]
            assert leading == {"role": "system", "content": "\n\n".join(texts)}, record.label


def test_corpus_messages_one_turn_longer_only_append(recorded: list[list[Recorded]]) -> None:
    checked = 0
    for record in every(recorded):
        messages = record.body["messages"]
        previous = to_openai({**record.stripped, "messages": []})
        for k in range(1, len(messages) + 1):
            current = to_openai({**record.stripped, "messages": messages[:k]})
            assert_prefix(previous, current)
            previous = current
            checked += 1
    assert checked >= 150


def comparable(message: dict[str, Any]) -> Any:
    """A message without cache_control, a lone text block read as its string."""
    content = without_cache_control(message["content"])
    if isinstance(content, list) and len(content) == 1 and content[0].get("type") == "text":
        content = content[0]["text"]
    return {**message, "content": content}


def extends(earlier: Recorded, later: Recorded) -> bool:
    a, b = earlier.body["messages"], later.body["messages"]
    return len(b) > len(a) and [comparable(m) for m in b[: len(a)]] == [comparable(m) for m in a]


def comparable_system(record: Recorded) -> Any:
    return without_cache_control(record.stripped["system"])


def conversation(result: OpenAIRequest) -> OpenAIRequest:
    """The translation without its leading system message (the one from ``system``)."""
    assert result.body["messages"][0]["role"] == "system"
    body = {**result.body, "messages": result.body["messages"][1:]}
    return OpenAIRequest(body, result.names, result.dropped)


def test_corpus_sessions_only_append_across_requests(recorded: list[list[Recorded]]) -> None:
    pairs = moved = same_system = restyled = 0
    for records in recorded:
        for i, earlier in enumerate(records):
            for later in records[i + 1 :]:
                if later.session != earlier.session or not extends(earlier, later):
                    continue
                options = OpenAIRequestOptions(user=earlier.session)
                before = to_openai(earlier.stripped, options)
                after = to_openai(later.stripped, options)
                if comparable_system(earlier) == comparable_system(later):
                    assert_prefix(before, after)
                    same_system += 1
                # A --continue run re-renders the system prompt; the conversation still appends.
                assert_prefix(conversation(before), conversation(after))
                pairs += 1
                overlap = later.body["messages"][: len(earlier.body["messages"])]
                moved += without_cache_control(overlap) != earlier.body["messages"]
                restyled += without_cache_control(overlap) != without_cache_control(
                    earlier.body["messages"]
                )
    # In the recorded corpus: 39 pairs, 31 of them with the same system prompt. In
    # every pair the cache_control marker moved; in 6 the newest user message went
    # from [text block] to a plain string the next turn.
    assert pairs >= 39
    assert moved == pairs
    assert same_system >= 31
    assert restyled >= 6


def test_corpus_system_message_keeps_its_index(recorded: list[list[Recorded]]) -> None:
    seen = 0
    for record in every(recorded):
        messages = record.body["messages"]
        if len(messages) < 2 or messages[1]["role"] != "system":
            continue
        translated = to_openai(record.body).body["messages"]
        assert translated[0]["role"] == "system"
        content = system_text(messages[1]["content"])  # 2.1.332: [text block] on a first turn
        assert translated[2] == {"role": "system", "content": content}
        as_user = to_openai(record.body, OpenAIRequestOptions(system_messages="user"))
        assert as_user.body["messages"][2] == {"role": "user", "content": content}
        seen += 1
    assert seen >= 30


def test_corpus_tool_ids_are_kept_exactly(recorded: list[list[Recorded]]) -> None:
    for record in every(recorded):
        uses, results = [], []
        for message in record.body["messages"]:
            for block in message["content"] if isinstance(message["content"], list) else []:
                if block["type"] == "tool_use":
                    uses.append(block["id"])
                elif block["type"] == "tool_result":
                    results.append(block["tool_use_id"])
        translated = to_openai(record.body).body["messages"]
        calls = [c["id"] for m in translated for c in m.get("tool_calls", [])]
        answers = [m["tool_call_id"] for m in translated if m["role"] == "tool"]
        assert calls == uses, record.label
        assert answers == results, record.label


def test_a_request_using_every_feature_is_valid_for_the_openai_sdk(
    openai_request_validator: Any,
) -> None:
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}
    body = request(
        {"role": "system", "content": "mid"},
        user([text("look"), image(), {"type": "document", "source": pdf, "title": "a.pdf"}]),
        assistant(
            [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                text("calling"),
                tool_use("t1", LONG_NAME, path="x"),
            ]
        ),
        user([tool_result("t1", [text("done"), image()], is_error=True), text("next")]),
        system=[text("sys", cache_control=EPHEMERAL)],
        tools=[{"name": LONG_NAME, "description": "d", "input_schema": SCHEMA}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        thinking={"type": "enabled", "budget_tokens": 2048},
        output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
        temperature=0.2,
        top_p=0.9,
        top_k=20,
        stop_sequences=["END"],
        metadata={"user_id": "u"},
    )
    for stream in (True, False):
        out = translate({**body, "stream": stream}, user="s", prompt_cache_key="k").body
        openai_request_validator(out)


# -- Claude Code 2.1.332: deferred tools, ToolSearch, new top-level fields ---------------

CURRENT_CORPUS = "claude-code-2.1.332*.jsonl"
PLACEHOLDER = "DeferredToolPlaceholder"


def deferred(name: str) -> dict[str, Any]:
    return {"name": name, "description": f"{name} tool", "input_schema": SCHEMA,
            "defer_loading": True}  # fmt: skip


def plain_tool(name: str) -> dict[str, Any]:
    return {"name": name, "description": f"{name} tool", "input_schema": SCHEMA}


def reference(name: str) -> dict[str, Any]:
    return {"type": "tool_reference", "tool_name": name}


def function_names(result: OpenAIRequest) -> list[str]:
    return [t["function"]["name"] for t in result.body.get("tools", [])]


def test_deferred_tools_are_sent_only_once_loaded_after_the_others_in_load_order() -> None:
    tools = [plain_tool("Bash"), deferred("CronCreate"), plain_tool("Read"),
             deferred(PLACEHOLDER), deferred("WebFetch"), deferred("mcp__fs__read")]  # fmt: skip
    nothing = translate(request(user("hi"), tools=tools))
    assert function_names(nothing) == ["Bash", "Read"]
    assert {"deferred:CronCreate", f"deferred:{PLACEHOLDER}", "deferred:WebFetch"} <= set(
        nothing.dropped
    )
    assert not [d for d in nothing.dropped if d.startswith("tools.")]  # defer_loading is read
    loads = [
        user("load two"),
        assistant([tool_use("t1", "ToolSearch", query="select:mcp__fs__read")]),
        user([tool_result("t1", [reference("mcp__fs__read")]), text("Tool loaded.")]),
        assistant([tool_use("t2", "ToolSearch", query="select:WebFetch")]),
        user([tool_result("t2", [reference("WebFetch")])]),
    ]
    result = translate(request(*loads, tools=tools))
    assert function_names(result) == ["Bash", "Read", "mcp__fs__read", "WebFetch"]
    function = {"name": "mcp__fs__read", "description": "mcp__fs__read tool", "parameters": SCHEMA}
    assert result.body["tools"][2]["function"] == function
    assert "deferred:WebFetch" not in result.dropped and f"deferred:{PLACEHOLDER}" in result.dropped


def test_a_tool_reference_becomes_text_where_it_stands() -> None:
    body = request(
        assistant([tool_use("t1", "ToolSearch", query="select:WebFetch,WebSearch")]),
        user([tool_result("t1", [reference("WebFetch"), reference("WebSearch")]),
              text("Tool loaded.")]),
        user([reference("Grep"), text("go")]),
        tools=[deferred("WebFetch")],
    )  # fmt: skip
    out = messages_of(body)
    assert out[1] == {
        "role": "tool",
        "tool_call_id": "t1",
        "content": "[tool loaded: WebFetch]\n[tool loaded: WebSearch]",
    }
    assert out[2] == {"role": "user", "content": "Tool loaded."}
    assert out[3]["content"] == [
        {"type": "text", "text": "[tool loaded: Grep]"},
        {"type": "text", "text": "go"},
    ]
    assert not [d for d in translate(body).dropped if d.startswith("block:")]


def test_loaded_tools_reads_references_only_in_their_places() -> None:
    messages = [
        user([tool_result("a", [reference("B"), reference("A"), text("x")])]),
        user([reference("C"), tool_result("b", "reference(D) as text"), reference("B")]),
        assistant([text("tool_reference"), {"type": "tool_reference", "tool_name": "E"}]),
        user("plain"),
        {"role": "system", "content": [reference("F")]},
    ]
    assert loaded_tools(messages) == ["B", "A", "C"]
    assert loaded_tools(None) == loaded_tools([1, {"content": [2]}]) == []


def test_a_tool_reference_without_a_name_names_the_path() -> None:
    body = request(user([tool_result("t", [{"type": "tool_reference"}])]))
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.content\[0\]\.content\[0\]"):
        translate(body)


def test_unknown_top_level_fields_are_never_sent_and_are_named() -> None:
    fields = {"safeguards": {"mode": "x"}, "context_management": {"edits": []},
              "container": "c", "mcp_servers": [], "some_future_field": 1}  # fmt: skip
    result = translate(request(user("hi"), **fields))
    assert not set(fields) & set(result.body)
    assert set(fields) <= set(result.dropped)


def with_tool_load(body: dict[str, Any], tool: dict[str, Any]) -> list[dict[str, Any]]:
    """``body`` and the two requests Claude Code 2.1.332 sends after loading ``tool``.

    What the client does (observed): the ToolSearch call, then a request whose
    ``tools`` gain the loaded definition (built-in tools in alphabetical order,
    ``defer_loading: true``) and whose last user turn carries the tool_reference.
    """
    call = assistant([tool_use("toolu_ts", "ToolSearch", query=f"select:{tool['name']}")])
    tools = list(body["tools"])
    at = next(
        (i for i, t in enumerate(tools) if t["name"] > tool["name"] and not t.get("defer_loading")),
        len(tools),
    )
    tools.insert(at, tool)
    loaded = {
        **body,
        "tools": tools,
        "messages": [
            *body["messages"],
            call,
            user([tool_result("toolu_ts", [reference(tool["name"])]), text("Tool loaded.")]),
        ],
    }
    called = {
        **loaded,
        "messages": [
            *loaded["messages"],
            assistant([tool_use("toolu_wf", tool["name"], url="https://example.com")]),
            user([tool_result("toolu_wf", "page text")]),
        ],
    }
    return [body, loaded, called]


@pytest.fixture(scope="module")
def current(corpus_directory: Path) -> list[dict[str, Any]]:
    """The main-agent requests of the recorded current client (bodies, stripped)."""
    files = sorted(corpus_directory.glob(CURRENT_CORPUS))
    assert files, f"no {CURRENT_CORPUS} in {corpus_directory}: record it (corpus/README.md)"
    bodies = []
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "/v1/messages" in row["path"] and "count_tokens" not in row["path"]:
                bodies.append(rewrite(row["body"].encode("utf-8")).parsed)
    return bodies


def test_current_client_requests_translate(
    current: list[dict[str, Any]], openai_request_validator: Any
) -> None:
    with_system_message = 0
    for body in current:
        result = to_openai(body)
        openai_request_validator(result.body)
        assert function_names(result) == [openai_name(n) for n in sent_tools(body)]
        assert PLACEHOLDER not in function_names(result)
        assert "safeguards" not in result.body and "context_management" not in result.body
        # role: "system" messages (the environment section, later reminders) stay in place
        expected = [system_text(m["content"]) for m in body["messages"] if m["role"] == "system"]
        got = [m["content"] for m in result.body["messages"][1:] if m["role"] == "system"]
        assert got == expected
        with_system_message += bool(expected)
    assert with_system_message >= 1


def test_current_client_tool_load_keeps_the_messages_and_appends_the_tool(
    current: list[dict[str, Any]], openai_request_validator: Any
) -> None:
    main = next(b for b in current if any(t["name"] == "ToolSearch" for t in b.get("tools", [])))
    web_fetch = deferred("WebFetch")
    before, loaded, called = (to_openai(b) for b in with_tool_load(main, web_fetch))
    for result in (before, loaded, called):
        openai_request_validator(result.body)
    assert PLACEHOLDER not in function_names(before) and "WebFetch" not in function_names(before)
    assert function_names(loaded) == [*function_names(before), "WebFetch"]
    assert function_names(called) == function_names(loaded)
    # The conversation only grows: every earlier message is sent as it was.
    assert_prefix(before, loaded)
    assert_prefix(loaded, called)
    tool_message = loaded.body["messages"][-2]
    assert tool_message == {"role": "tool", "tool_call_id": "toolu_ts",
                            "content": "[tool loaded: WebFetch]"}  # fmt: skip
    call = called.body["messages"][-2]["tool_calls"][0]
    assert call["function"]["name"] == "WebFetch"


def test_tools_the_tool_load_step_expanded_are_loaded_without_references() -> None:
    """core/toolload.py replaces references by definitions and says which it loaded."""
    tools = [plain_tool("Read"), deferred(PLACEHOLDER), deferred("WebFetch")]
    expanded = user([tool_result("t1", [text('<functions><function>{"name": "WebFetch"}'
                                             "</function></functions>")])])  # fmt: skip
    body = request(assistant([tool_use("t1", "ToolSearch", query="q")]), expanded, tools=tools)
    assert function_names(translate(body)) == ["Read"]
    told = translate(body, loaded_tools=("WebFetch",))
    assert function_names(told) == ["Read", "WebFetch"]
    assert f"deferred:{PLACEHOLDER}" in told.dropped


def test_current_client_recorded_tool_loads(corpus_directory: Path) -> None:
    """Recorded ToolSearch loads, as the client sent them: the loaded tools become functions."""
    seen = 0
    for path in sorted(corpus_directory.glob(CURRENT_CORPUS)):
        for line in path.read_text(encoding="utf-8").splitlines():
            body = json.loads(json.loads(line)["body"])
            loaded = loaded_tools(body["messages"])
            if not loaded:
                continue
            seen += 1
            result = to_openai(body)
            deferred_names = [t["name"] for t in body["tools"] if t.get("defer_loading")]
            assert set(loaded) <= set(deferred_names)
            names = function_names(result)
            assert names[-len(loaded) :] == [openai_name(n) for n in loaded]
            assert PLACEHOLDER not in names
            tool_texts = " ".join(
                m["content"] for m in result.body["messages"] if m["role"] == "tool"
            )
            for name in loaded:
                assert f"[tool loaded: {name}]" in tool_texts
    assert seen >= 1, f"no recorded ToolSearch load in {CURRENT_CORPUS}"
