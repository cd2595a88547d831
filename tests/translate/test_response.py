"""Tests for translating a whole OpenAI chat completion into an Anthropic message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixgate.core.errors import UpstreamStatus
from prefixgate.translate.names import ToolNames
from prefixgate.translate.response import (
    anthropic_usage,
    matched_stop,
    message_id,
    openai_error,
    stop_reason,
    to_anthropic_message,
    tool_input,
    tool_use_id,
)

MODEL = "claude-opus-4-1-20250805"
LONG_MCP = "mcp__claude_ai_Google_Drive__search_files_and_folders_in_the_shared_drive"
NAMES = ToolNames.from_tools([{"name": "Read"}, {"name": "Bash"}, {"name": LONG_MCP}])
ANTHROPIC_ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
}


def completion(message: dict[str, Any], finish: str | None = "stop", **extra: Any) -> Any:
    body: dict[str, Any] = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1752163421,
        "model": "gemma-3-270m-it",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
    }
    body.update(extra)
    return body


def translate(payload: Any) -> dict[str, Any]:
    return to_anthropic_message(payload, NAMES, model=MODEL)


# -- stop reasons -------------------------------------------------------------


@pytest.mark.parametrize(
    ("finish", "expected"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        ("eos", "end_turn"),
        ("something_new", "end_turn"),
        (7, "end_turn"),
        (None, None),
    ],
)
def test_stop_reason(finish: object, expected: str | None) -> None:
    assert stop_reason(finish) == expected


def test_stop_reason_with_a_matched_stop_sequence() -> None:
    assert stop_reason("stop", "END") == "stop_sequence"
    assert stop_reason("stop", "") == "end_turn"
    assert stop_reason("length", "END") == "max_tokens"


@pytest.mark.parametrize("key", ["stop_reason", "matched_stop", "stopping_word"])
def test_matched_stop_from_vllm_sglang_llamacpp(key: str) -> None:
    assert matched_stop({"finish_reason": "stop", key: "###"}) == "###"
    assert matched_stop({"finish_reason": "length", key: "###"}) is None
    assert matched_stop({"finish_reason": "stop", key: 151645}) is None  # a stop token id
    assert matched_stop({"finish_reason": "stop", key: ""}) is None


def test_stop_sequence_in_the_message() -> None:
    payload = completion({"content": "a, b"}, "stop")
    payload["choices"][0]["stop_reason"] = ", c"
    message = translate(payload)
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", ", c")
    assert translate(completion({"content": "a"}))["stop_sequence"] is None


# -- usage ----------------------------------------------------------------------


def test_usage_openai_cached_tokens() -> None:
    payload = {
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 60},
        }
    }
    assert anthropic_usage(payload) == {
        "input_tokens": 40,
        "cache_read_input_tokens": 60,
        "output_tokens": 7,
    }


def test_usage_without_a_cached_count_has_no_cache_key() -> None:
    assert anthropic_usage({"usage": {"prompt_tokens": 100, "completion_tokens": 7}}) == {
        "input_tokens": 100,
        "output_tokens": 7,
    }


def test_usage_reported_zero_cached_is_kept() -> None:
    payload = {"usage": {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 0}}}
    assert anthropic_usage(payload) == {
        "input_tokens": 9,
        "cache_read_input_tokens": 0,
        "output_tokens": 0,
    }


def test_usage_llamacpp_timings_only() -> None:
    payload = {"timings": {"cache_n": 2000, "prompt_n": 48, "predicted_n": 12}}
    assert anthropic_usage(payload) == {
        "input_tokens": 48,
        "cache_read_input_tokens": 2000,
        "output_tokens": 12,
    }


def test_usage_llamacpp_usage_and_timings() -> None:
    payload = {
        "usage": {"prompt_tokens": 2048, "completion_tokens": 3},
        "timings": {"cache_n": 2000, "prompt_n": 48, "predicted_n": 3},
    }
    assert anthropic_usage(payload) == {
        "input_tokens": 48,
        "cache_read_input_tokens": 2000,
        "output_tokens": 3,
    }


def test_usage_deepseek() -> None:
    payload = {
        "usage": {
            "completion_tokens": 5,
            "prompt_cache_hit_tokens": 384,
            "prompt_cache_miss_tokens": 128,
        }
    }
    assert anthropic_usage(payload) == {
        "input_tokens": 128,
        "cache_read_input_tokens": 384,
        "output_tokens": 5,
    }


def test_usage_ollama_native_counts() -> None:
    payload = {"prompt_eval_count": 40, "prompt_eval_cached_count": 60, "eval_count": 9}
    assert anthropic_usage(payload) == {
        "input_tokens": 40,
        "cache_read_input_tokens": 60,
        "output_tokens": 9,
    }


def test_usage_already_anthropic_shaped_is_kept() -> None:
    usage = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 10,
        "cache_read_input_tokens": 20,
        "output_tokens": 3,
    }
    assert anthropic_usage({"usage": usage}) == usage


@pytest.mark.parametrize("payload", [{}, {"usage": None}, {"usage": "many"}, {"usage": {}}])
def test_usage_unknown_is_zero_for_the_required_fields(payload: dict[str, Any]) -> None:
    assert anthropic_usage(payload) == {"input_tokens": 0, "output_tokens": 0}


def test_usage_cached_above_prompt_never_goes_negative() -> None:
    payload = {"usage": {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 60}}}
    assert anthropic_usage(payload)["input_tokens"] == 0


def test_usage_bad_counts_are_ignored() -> None:
    payload = {"usage": {"prompt_tokens": -1, "completion_tokens": True}}
    assert anthropic_usage(payload) == {"input_tokens": 0, "output_tokens": 0}


# -- messages -------------------------------------------------------------------------


def test_text_answer_in_full() -> None:
    payload = completion(
        {"content": "Hello!"},
        usage={
            "prompt_tokens": 100,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 60},
        },
    )
    assert translate(payload) == {
        "id": "msg_chatcmpl-abc123",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 40, "cache_read_input_tokens": 60, "output_tokens": 2},
    }


def test_ids() -> None:
    assert message_id("chatcmpl-1", None) == "msg_chatcmpl-1"
    assert message_id("msg_01ABC", None) == "msg_01ABC"
    derived = message_id(None, {"a": 1})
    assert derived == message_id("", {"a": 1}) != message_id(None, {"a": 2})
    assert derived.startswith("msg_") and len(derived) == 4 + 24
    assert tool_use_id("call_X", "msg_1", 0) == "call_X"
    assert (
        tool_use_id(None, "msg_1", 0)
        == tool_use_id("", "msg_1", 0)
        != tool_use_id(None, "msg_1", 1)
    )
    payload = completion({"content": "x"})
    del payload["id"]
    assert translate(payload)["id"] == translate(payload)["id"]


def test_reasoning_comes_first_as_thinking() -> None:
    for key in ("reasoning_content", "reasoning"):
        message = translate(completion({"content": "4", key: "2+2 is 4"}))
        assert message["content"] == [
            {"type": "thinking", "thinking": "2+2 is 4", "signature": ""},
            {"type": "text", "text": "4"},
        ]


def test_tool_calls_shortened_names_mapped_back_and_ids_kept() -> None:
    short = NAMES.to_openai(LONG_MCP)
    assert short != LONG_MCP and len(short) <= 64
    message = translate(
        completion(
            {
                "content": "Searching.",
                "tool_calls": [
                    {
                        "id": "call_Qw3rTy",
                        "type": "function",
                        "function": {"name": short, "arguments": '{"query": "q3"}'},
                    },
                    {
                        "id": "Xb1cD2eF3gH4",
                        "type": "function",
                        "function": {"name": "Read", "arguments": '{"file_path": "/a"}'},
                    },
                    {"type": "function", "function": {"name": "unknown_tool", "arguments": ""}},
                ],
            },
            "tool_calls",
        )
    )
    assert message["content"] == [
        {"type": "text", "text": "Searching."},
        {"type": "tool_use", "id": "call_Qw3rTy", "name": LONG_MCP, "input": {"query": "q3"}},
        {"type": "tool_use", "id": "Xb1cD2eF3gH4", "name": "Read", "input": {"file_path": "/a"}},
        {
            "type": "tool_use",
            "id": tool_use_id(None, "msg_chatcmpl-abc123", 2),
            "name": "unknown_tool",
            "input": {},
        },
    ]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ("", {}),
        ("   ", {}),
        ("null", {}),
        ("[1, 2]", {}),
        ('"text"', {}),
        ("{not json", {}),
        ('{"cut": "in the mid', {}),
        ({"already": "decoded"}, {"already": "decoded"}),
        (None, {}),
        (42, {}),
    ],
)
def test_tool_arguments(arguments: object, expected: dict[str, Any]) -> None:
    assert tool_input(arguments) == expected
    call = {"id": "c", "function": {"name": "Bash", "arguments": arguments}}
    [block] = translate(completion({"content": None, "tool_calls": [call]}))["content"]
    assert block["input"] == expected


def test_tool_calls_under_stop_are_tool_use_but_length_stays() -> None:
    call = {"id": "c", "function": {"name": "Bash", "arguments": "{}"}}
    assert translate(completion({"tool_calls": [call]}, "stop"))["stop_reason"] == "tool_use"
    assert translate(completion({"tool_calls": [call]}, "length"))["stop_reason"] == "max_tokens"


def test_legacy_function_call() -> None:
    message = translate(
        completion({"function_call": {"name": "Read", "arguments": "{}"}}, "function_call")
    )
    [block] = message["content"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "Read", {})
    assert message["stop_reason"] == "tool_use"


def test_refusal() -> None:
    message = translate(completion({"content": None, "refusal": "I can't help with that."}))
    assert message["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert message["stop_reason"] == "refusal"
    assert translate(completion({"content": "x"}, "content_filter"))["stop_reason"] == "refusal"


@pytest.mark.parametrize("content", [None, "", []])
def test_empty_answer_has_one_empty_text_block(content: object) -> None:
    message = translate(completion({"content": content}))
    assert message["content"] == [{"type": "text", "text": ""}]
    assert message["stop_reason"] == "end_turn"


def test_content_as_a_list_of_parts() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
    assert translate(completion({"content": parts}))["content"] == [{"type": "text", "text": "ab"}]


def test_no_finish_reason_is_end_turn() -> None:
    assert translate(completion({"content": "x"}, None))["stop_reason"] == "end_turn"


def test_the_choice_with_index_0_is_used() -> None:
    payload = completion({"content": "first"})
    payload["choices"].insert(0, {"index": 1, "message": {"content": "other"}})
    assert translate(payload)["content"] == [{"type": "text", "text": "first"}]


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "text",
        None,
        {},
        {"choices": []},
        {"choices": "many"},
        {"choices": [1, 2]},
        {"choices": [{"index": 0}]},
        {"choices": [{"index": 0, "message": "hi"}]},
    ],
)
def test_garbage_answers_are_502(payload: Any) -> None:
    with pytest.raises(UpstreamStatus) as caught:
        translate(payload)
    assert caught.value.upstream_status == 502
    assert caught.value.to_body()["error"]["type"] == "api_error"


def test_error_body_in_a_success_answer_is_raised_with_its_type() -> None:
    body = {"error": {"message": "Too many tokens", "code": "context_length_exceeded"}}
    with pytest.raises(UpstreamStatus) as caught:
        translate(body)
    assert caught.value.upstream_status == 502
    assert caught.value.to_body()["error"]["type"] == "invalid_request_error"
    assert "Too many tokens" in caught.value.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "choices",
                    "message",
                    "content",
                    "tool_calls",
                    "function",
                    "arguments",
                    "name",
                    "id",
                    "index",
                    "usage",
                    "finish_reason",
                    "error",
                    "refusal",
                    "reasoning_content",
                ]
            )
            | st.text(max_size=3),
            c,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_any_payload_gives_a_message_or_a_502(payload: Any) -> None:
    try:
        message = translate(payload)
    except UpstreamStatus as exc:
        assert exc.upstream_status == 502
        return
    assert message["content"] and message["model"] == MODEL
    assert message["id"].startswith("msg_")
    json.dumps(message)


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "payload", "expected_type", "message_part"),
    [
        (
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 128000 tokens.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
            "invalid_request_error",
            "prompt is too long: (This model's maximum context length is 128000 tokens.)",
        ),
        (
            429,
            {
                "error": {
                    "message": "Rate limit reached",
                    "type": "tokens",
                    "code": "rate_limit_exceeded",
                }
            },
            "rate_limit_error",
            "Rate limit reached",
        ),
        (
            401,
            {
                "error": {
                    "message": "Incorrect API key",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
            "authentication_error",
            "Incorrect API key",
        ),
        (
            400,
            {
                "error": {
                    "code": 400,
                    "message": "request (40213 tokens) exceeds the available context size"
                    " (32768 tokens)",
                    "type": "exceed_context_size_error",
                    "n_prompt_tokens": 40213,
                    "n_ctx": 32768,
                }
            },
            "invalid_request_error",
            "prompt is too long: 40213 tokens > 32768 maximum (request (40213 tokens)",
        ),
        (
            503,
            {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
            "overloaded_error",
            "Loading model",
        ),
        (
            500,
            {"error": {"code": 500, "message": "boom", "type": "server_error"}},
            "api_error",
            "boom",
        ),
        (
            503,
            {"error": {"code": 503, "message": "busy", "type": "server_error"}},
            "overloaded_error",
            "busy",
        ),
        (404, {"error": "model 'qwen3' not found"}, "not_found_error", "model 'qwen3' not found"),
        (
            400,
            {
                "object": "error",
                "message": "bad temperature",
                "type": "BadRequestError",
                "code": 400,
            },
            "invalid_request_error",
            "bad temperature",
        ),
        (422, {"detail": "Field required"}, "invalid_request_error", "Field required"),
        (
            529,
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            "overloaded_error",
            "Overloaded",
        ),
        (502, b"<html>Bad Gateway</html>", "api_error", "<html>Bad Gateway</html>"),
        (504, "upstream timed out", "timeout_error", "upstream timed out"),
        (502, None, "api_error", "upstream answered HTTP 502"),
        (500, {"error": {}}, "api_error", "upstream answered HTTP 500"),
        (200, {"error": {"message": "mid-stream failure"}}, "api_error", "mid-stream failure"),
    ],
)
def test_openai_error(status: int, payload: object, expected_type: str, message_part: str) -> None:
    error_type, message = openai_error(status, payload)
    assert error_type == expected_type
    assert message_part in message


def test_openai_error_already_saying_prompt_is_too_long_is_kept() -> None:
    body = {"error": {"message": "prompt is too long: 5 > 4", "code": "context_length_exceeded"}}
    assert openai_error(400, body) == ("invalid_request_error", "prompt is too long: 5 > 4")


def test_openai_error_message_is_capped() -> None:
    assert len(openai_error(500, {"error": {"message": "x" * 10_000}})[1]) == 2000


@settings(max_examples=300, deadline=None)
@given(st.integers(100, 599), json_values | st.binary(max_size=20))
def test_openai_error_never_raises(status: int, payload: object) -> None:
    error_type, message = openai_error(status, payload)
    assert error_type in ANTHROPIC_ERROR_TYPES
    assert isinstance(message, str) and message


def test_a_recorded_llama_server_answer_with_tool_calls() -> None:
    """A real answer of the bundled llama-server (Gemma 3 270M, tool_choice "required",
    max_tokens 200): text that rambles, two tool calls it parsed out of it, cut at
    the length limit."""
    path = Path(__file__).parent / "fixtures" / "llamacpp_recorded_tool_calls.json"
    payload = json.loads(path.read_text(encoding="utf-8"))
    calls = payload["choices"][0]["message"]["tool_calls"]
    message = to_anthropic_message(payload, ToolNames.from_tools([]), model="claude-haiku-4-5")
    uses = [b for b in message["content"] if b["type"] == "tool_use"]
    assert [(u["id"], u["name"], u["input"]) for u in uses] == [
        (c["id"], "get_weather", {"city": "Paris"}) for c in calls
    ]
    assert message["content"][0]["type"] == "text" and message["content"][0]["text"]
    assert message["stop_reason"] == "max_tokens"  # finish_reason "length" wins over the calls
    assert message["usage"] == {
        "input_tokens": 1,
        "cache_read_input_tokens": 173,
        "output_tokens": 200,
    }
