"""The compatibility matrix in ``docs/upstreams.md``, checked claim by claim.

Each row of the table is a ``Feature`` here with a check that exercises what the
``openai`` column says against the translator (the ``anthropic`` kind forwards
the request as the client sent it, which ``tests/app/test_gateway.py`` checks
byte for byte). The table in the docs must be exactly the one rendered from
these rows: a claim without a passing check cannot reach the docs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from prefixgate.translate.names import ToolNames
from prefixgate.translate.request import OpenAIRequestOptions, to_openai
from prefixgate.translate.response import anthropic_usage, openai_error, to_anthropic_message
from prefixgate.translate.stream import StreamTranslator

DOC = Path(__file__).resolve().parents[2] / "docs" / "upstreams.md"
START, END = "<!-- matrix:start -->", "<!-- matrix:end -->"
AS_SENT = "as sent"


def body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


def sent(**extra: Any) -> dict[str, Any]:
    return to_openai(body(**extra)).body


# -- the checks ------------------------------------------------------------------------


def check_system() -> None:
    system = [{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}]
    system.append({"type": "text", "text": "B"})
    assert sent(system=system)["messages"][0] == {"role": "system", "content": "A\n\nB"}


def check_mid_system() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "note"},
        {"role": "user", "content": "go"},
    ]
    assert [m["role"] for m in sent(messages=messages)["messages"]] == ["user", "system", "user"]
    as_user = to_openai(body(messages=messages), OpenAIRequestOptions(system_messages="user"))
    assert as_user.body["messages"][1] == {"role": "user", "content": "note"}


def check_cache_control() -> None:
    block = {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}
    out = to_openai(body(messages=[{"role": "user", "content": [block]}]))
    assert "cache_control" not in json.dumps(out.body) and "cache_control" in out.dropped


def check_images() -> None:
    b64 = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
    url = {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
    parts = sent(messages=[{"role": "user", "content": [b64, url]}])["messages"][0]["content"]
    assert [p["image_url"]["url"] for p in parts] == [
        "data:image/png;base64,AA",
        "https://x.test/a.png",
    ]


def check_documents() -> None:
    text = {"type": "document", "source": {"type": "text", "data": "DOC"}, "title": "T"}
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "AA"},
    }
    parts = sent(messages=[{"role": "user", "content": [text, pdf]}])["messages"][0]["content"]
    assert parts[0]["type"] == "text" and "DOC" in parts[0]["text"]
    assert parts[1]["type"] == "file"


def check_tools() -> None:
    long_name = "mcp__server__" + "x" * 70
    tools = [{"name": long_name, "description": "d", "input_schema": {"type": "object"}}]
    out = to_openai(body(tools=tools))
    function = out.body["tools"][0]["function"]
    assert len(function["name"]) <= 64 and function["parameters"] == {"type": "object"}
    assert out.names.to_anthropic(function["name"]) == long_name


def check_tool_round_trip() -> None:
    messages = [
        {"role": "user", "content": "read"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"f": 1}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"},
                {"type": "text", "text": "and now?"},
            ],
        },
    ]
    out = sent(messages=messages)["messages"]
    assert out[1]["tool_calls"][0]["id"] == "toolu_1"
    assert out[1]["tool_calls"][0]["function"]["arguments"] == '{"f":1}'
    assert out[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "ok"}
    assert out[3] == {"role": "user", "content": "and now?"}


def check_tool_error() -> None:
    result = {"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": True}
    messages = [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "X", "input": {}}],
        },
        {"role": "user", "content": [result]},
    ]
    assert sent(messages=messages)["messages"][1]["content"] == "[tool error] boom"


def check_tool_choice() -> None:
    tools = [{"name": "X", "input_schema": {"type": "object"}}]
    choices = [{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": "X"}]
    got = [sent(tools=tools, tool_choice=c)["tool_choice"] for c in choices]
    assert got == ["auto", "required", "none", {"type": "function", "function": {"name": "X"}}]
    parallel = sent(tools=tools, tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert parallel["parallel_tool_calls"] is False


def check_sampling() -> None:
    out = sent(stop_sequences=["END"], temperature=0.5, top_p=0.9, top_k=40)
    assert (out["stop"], out["temperature"], out["top_p"], out["top_k"]) == (["END"], 0.5, 0.9, 40)


def check_thinking() -> None:
    out = sent(thinking={"type": "enabled", "budget_tokens": 2048})
    assert out["reasoning_effort"] == "low"
    answer = {
        "id": "c",
        "choices": [
            {"message": {"reasoning_content": "hmm", "content": "yes"}, "finish_reason": "stop"}
        ],
    }
    message = to_anthropic_message(answer, ToolNames.from_tools([]), model="m")
    assert [b["type"] for b in message["content"]] == ["thinking", "text"]


def check_output_format() -> None:
    schema = {"type": "object", "properties": {"title": {"type": "string"}}}
    out = sent(output_config={"format": {"type": "json_schema", "schema": schema}})
    assert out["response_format"]["json_schema"]["schema"] == schema


def check_session() -> None:
    options = OpenAIRequestOptions(user="s-1", prompt_cache_key="s-1")
    out = to_openai(body(metadata={"user_id": "u"}), options).body
    assert (out["user"], out["prompt_cache_key"]) == ("s-1", "s-1") and "metadata" not in out


def check_stop_reasons() -> None:
    names = ToolNames.from_tools([])
    got = []
    for finish in ("stop", "length", "tool_calls", "content_filter"):
        answer = {"id": "c", "choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
        got.append(to_anthropic_message(answer, names, model="m")["stop_reason"])
    assert got == ["end_turn", "max_tokens", "tool_use", "refusal"]


def check_usage() -> None:
    openai_shape = {"usage": {"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 60}}}
    llama_shape = {"usage": {"prompt_tokens": 100}, "timings": {"cache_n": 60, "prompt_n": 40}}
    for payload in (openai_shape, llama_shape):
        usage = anthropic_usage(payload)
        assert (usage["input_tokens"], usage["cache_read_input_tokens"]) == (40, 60)
    assert "cache_read_input_tokens" not in anthropic_usage({"usage": {"prompt_tokens": 100}})


def check_streaming() -> None:
    translator = StreamTranslator(ToolNames.from_tools([]), model="m")
    chunks = [
        {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    events = [name for c in chunks for name, _ in translator.feed(c)]
    events += [name for name, _ in translator.done()]
    assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
    cut = StreamTranslator(ToolNames.from_tools([]), model="m")
    cut.feed(chunks[0])
    assert cut.done()[-1][0] == "error"  # a cut stream never ends silently


def check_errors() -> None:
    error = {"error": {"message": "too long", "type": "invalid_request_error"}}
    assert openai_error(400, error)[0] == "invalid_request_error"
    assert openai_error(429, {"error": {"message": "slow down"}})[0] == "rate_limit_error"


def check_server_tools() -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search"}]
    out = to_openai(body(tools=tools))
    assert "tools" not in out.body and any("web_search" in d for d in out.dropped)


def check_context_management() -> None:
    out = to_openai(body(context_management={"edits": []}))
    assert "context_management" not in out.body and "context_management" in out.dropped


def check_deferred_tools() -> None:
    schema = {"type": "object"}
    tools = [
        {"name": "Read", "input_schema": schema},
        {"name": "DeferredToolPlaceholder", "input_schema": schema, "defer_loading": True},
        {"name": "CronCreate", "input_schema": schema, "defer_loading": True},
        {"name": "WebFetch", "input_schema": schema, "defer_loading": True},
    ]
    before = sent(tools=tools)
    assert [t["function"]["name"] for t in before["tools"]] == ["Read"]
    load = [
        {"role": "user", "content": "fetch"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "ToolSearch", "input": {"query": "x"}}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1",
             "content": [{"type": "tool_reference", "tool_name": "WebFetch"}]}
        ]},
    ]  # fmt: skip
    after = sent(tools=tools, messages=load)
    assert [t["function"]["name"] for t in after["tools"]] == ["Read", "WebFetch"]


def check_tool_reference() -> None:
    result = {"type": "tool_result", "tool_use_id": "t1",
              "content": [{"type": "tool_reference", "tool_name": "WebFetch"}]}  # fmt: skip
    messages = [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "ToolSearch", "input": {}}]},
        {"role": "user", "content": [result, {"type": "text", "text": "Tool loaded."}]},
    ]  # fmt: skip
    out = sent(messages=messages)["messages"]
    assert out[1] == {"role": "tool", "tool_call_id": "t1", "content": "[tool loaded: WebFetch]"}


def check_unknown_fields() -> None:
    out = to_openai(body(safeguards={"x": 1}, a_field_from_a_later_client=True))
    assert "safeguards" not in out.body and "a_field_from_a_later_client" not in out.body
    assert {"safeguards", "a_field_from_a_later_client"} <= set(out.dropped)


def check_count_tokens() -> None:
    pass  # the gateway answers it: tests/app/test_translated.py and tests/e2e


@dataclass(frozen=True)
class Feature:
    name: str
    anthropic: str
    openai: str
    check: Callable[[], None]


FEATURES = [
    Feature("system prompt (string or blocks)", AS_SENT,
            "one leading `system` message, blocks joined with a blank line", check_system),
    Feature("`role: \"system\"` inside `messages`", AS_SENT,
            "kept at its position (`system_messages = \"user\"`: as a user message)",
            check_mid_system),
    Feature("`cache_control`", AS_SENT, "dropped (no such field)", check_cache_control),
    Feature("images (base64, URL)", AS_SENT, "`image_url` parts", check_images),
    Feature("documents (text, PDF)", AS_SENT, "text parts, `file` parts", check_documents),
    Feature("tool definitions", AS_SENT,
            "functions; names over 64 characters shortened with a hash, mapped back",
            check_tools),
    Feature("`tool_use` / `tool_result`", AS_SENT,
            "`tool_calls` / `tool` messages, ids kept, in order", check_tool_round_trip),
    Feature("`tool_result.is_error`", AS_SENT, "content prefixed `[tool error] `",
            check_tool_error),
    Feature("`tool_choice`, `disable_parallel_tool_use`", AS_SENT,
            "`auto`, `required`, `none`, a function; `parallel_tool_calls: false`",
            check_tool_choice),
    Feature("`stop_sequences`, `temperature`, `top_p`, `top_k`", AS_SENT,
            "`stop`, `temperature`, `top_p`, `top_k` (not OpenAI's; llama.cpp, vLLM, SGLang)",
            check_sampling),
    Feature("`thinking`", AS_SENT,
            "`reasoning_effort`; `reasoning_content` answers become thinking blocks",
            check_thinking),
    Feature("`output_config.format` (JSON schema)", AS_SENT, "`response_format`",
            check_output_format),
    Feature("session (`metadata.user_id`, session header)", AS_SENT,
            "`user` and `prompt_cache_key` (`prompt_cache_key = \"session\"|\"prefix\"|\"off\"`)",
            check_session),
    Feature("stop reasons", AS_SENT,
            "`stop`, `length`, `tool_calls`, `content_filter` -> `end_turn`, `max_tokens`, "
            "`tool_use`, `refusal`", check_stop_reasons),
    Feature("cached tokens in usage", "`cache_read_input_tokens`",
            "from `prompt_tokens_details.cached_tokens`, llama.cpp `timings.cache_n`, "
            "DeepSeek; absent when the upstream reports none", check_usage),
    Feature("streaming", "relayed event by event",
            "chunks translated one by one; a cut stream ends with an `error` event",
            check_streaming),
    Feature("error statuses", "relayed", "Anthropic error types and shape", check_errors),
    Feature("`/v1/messages/count_tokens`", "relayed",
            "answered by prefixgate: the upstream's `/tokenize` or an estimate",
            check_count_tokens),
    Feature("server tools (`web_search_...`)", AS_SENT, "dropped", check_server_tools),
    Feature("deferred tools (`defer_loading: true`)", AS_SENT,
            "functions only once loaded (a `tool_reference` in the messages names them), "
            "after the other tools in load order; `DeferredToolPlaceholder` never",
            check_deferred_tools),
    Feature("ToolSearch results (`tool_reference`)", AS_SENT,
            "the text `[tool loaded: NAME]` where the reference stands", check_tool_reference),
    Feature("`context_management`", AS_SENT, "dropped", check_context_management),
    Feature("`safeguards` and other top-level fields not listed here", AS_SENT,
            "dropped (never sent: OpenAI servers refuse unknown arguments)",
            check_unknown_fields),
]  # fmt: skip


def render_matrix() -> str:
    lines = ["| feature | kind `anthropic` | kind `openai` |", "|---|---|---|"]
    lines += [f"| {f.name} | {f.anthropic} | {f.openai} |" for f in FEATURES]
    return "\n".join(lines)


@pytest.mark.parametrize("feature", FEATURES, ids=lambda f: f.check.__name__)
def test_each_claim_holds(feature: Feature) -> None:
    feature.check()


def test_the_docs_show_exactly_the_checked_matrix() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert START in text and END in text, f"{DOC} lost its matrix markers"
    shown = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert shown == render_matrix(), "regenerate: python tests/translate/test_matrix.py"


if __name__ == "__main__":
    print(render_matrix())
