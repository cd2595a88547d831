"""Tests for translating an OpenAI chunk stream into Anthropic stream events.

Every ``*.sse`` file under ``fixtures/`` (bytes exactly as on the wire) is run
through the same checks: any cut of its bytes gives the same events, the
events follow the Anthropic stream grammar, and, for a finished answer, they
accumulate into the message ``to_anthropic_message`` makes of the same answer
sent whole. Recorded streams added there are picked up without code changes;
the hand-written ones also have their exact outcome pinned below.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixgate.core.fold import StreamFold, summarize_message
from prefixgate.core.sse import SSEDecoder, SSEEvent, encode_event
from prefixgate.translate.names import ToolNames
from prefixgate.translate.response import to_anthropic_message
from prefixgate.translate.stream import Event, StreamTranslator, translate_sse

FIXTURES = Path(__file__).parent / "fixtures"
SSE_FILES = sorted(FIXTURES.glob("*.sse"))
MODEL = "claude-sonnet-4-5-20250929"
LONG_MCP = "mcp__claude_ai_Google_Drive__search_files_and_folders_in_the_shared_drive"
NAMES = ToolNames.from_tools(
    [{"name": n} for n in ("Read", "Bash", "mcp__ide__getDiagnostics", LONG_MCP)]
)

DELTA_TYPES = {
    "text": {"text_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "tool_use": {"input_json_delta"},
}


# -- helpers ------------------------------------------------------------------


def check_grammar(events: list[Event]) -> None:
    """Assert ``events`` is one valid Anthropic stream, or a valid prefix of one ended by ``error``.

    message_start ping? (content_block_start content_block_delta* content_block_stop)*
    message_delta message_stop -- blocks numbered 0..n-1, one open at a time,
    deltas of the block's own kind, a thinking block's last delta its
    signature_delta; or any prefix of that followed by exactly one error.
    """
    assert events, "a stream must emit at least one event"
    for name, data in events:
        assert data.get("type") == name, (name, data)
        json.dumps(data, allow_nan=False)  # encodable as it will be sent
    names = [name for name, _ in events]
    assert names.count("error") <= 1
    errored = names[-1] == "error"
    if errored:
        error = events[-1][1]["error"]
        assert isinstance(error["type"], str) and error["type"]
        assert isinstance(error["message"], str) and error["message"]
    body = events[:-1] if errored else events
    if not body:
        assert errored
        return
    assert names[0] == "message_start"
    message = body[0][1]["message"]
    assert message["content"] == [] and message["stop_reason"] is None
    assert message["role"] == "assistant" and message["type"] == "message"
    assert {"input_tokens", "output_tokens"} <= message["usage"].keys()
    position = 1
    if position < len(body) and body[position][0] == "ping":
        position += 1
    expected_index = 0
    open_kind: str | None = None
    last_delta: str | None = None
    ended = False
    for name, data in body[position:]:
        assert not ended, f"{name} after message_stop"
        if name == "content_block_start":
            assert open_kind is None, "a block opened while another is open"
            assert data["index"] == expected_index
            block = data["content_block"]
            open_kind = block["type"]
            assert open_kind in DELTA_TYPES
            if open_kind == "tool_use":
                assert block["input"] == {} and isinstance(block["id"], str) and block["id"]
                assert isinstance(block["name"], str)
            else:
                assert block[open_kind] == ""
            last_delta = None
        elif name == "content_block_delta":
            assert open_kind is not None and data["index"] == expected_index
            last_delta = data["delta"]["type"]
            assert last_delta in DELTA_TYPES[open_kind]
        elif name == "content_block_stop":
            assert open_kind is not None and data["index"] == expected_index
            if open_kind == "thinking":
                assert last_delta == "signature_delta"
            open_kind = None
            expected_index += 1
        elif name == "message_delta":
            assert open_kind is None, "message_delta inside a block"
            assert data["delta"]["stop_reason"] is not None
            assert {"input_tokens", "output_tokens"} <= data["usage"].keys()
        elif name == "message_stop":
            assert names[names.index("message_stop") - 1] == "message_delta"
            ended = True
        else:
            raise AssertionError(f"unexpected event {name}")
    if not errored:
        assert ended and names[-2:] == ["message_delta", "message_stop"]
        assert expected_index >= 1, "a finished message has at least one block"


def accumulate(events: list[Event]) -> dict[str, Any]:
    """The message a client builds from the events (as the Anthropic SDK does)."""
    message: dict[str, Any] = {}
    blocks: list[dict[str, Any]] = []
    partial: dict[int, list[str]] = {}
    for name, data in events:
        if name == "message_start":
            message = copy.deepcopy(data["message"])
        elif name == "content_block_start":
            blocks.append(copy.deepcopy(data["content_block"]))
            partial[data["index"]] = []
        elif name == "content_block_delta":
            block, delta = blocks[data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                partial[data["index"]].append(delta["partial_json"])
        elif name == "content_block_stop":
            block = blocks[data["index"]]
            if block["type"] == "tool_use":
                joined = "".join(partial[data["index"]])
                block["input"] = json.loads(joined) if joined.strip() else {}
        elif name == "message_delta":
            message.update(data["delta"])
            message["usage"] = {**message["usage"], **data["usage"]}
    message["content"] = blocks
    return message


def normalized(message: Mapping[str, Any]) -> dict[str, Any]:
    """What must agree between the streamed and the whole answer (block splits aside)."""
    content = message["content"]
    return {
        **{k: v for k, v in message.items() if k != "content"},
        "thinking": "".join(b["thinking"] for b in content if b["type"] == "thinking"),
        "signatures": {b["signature"] for b in content if b["type"] == "thinking"},
        "text": "".join(b["text"] for b in content if b["type"] == "text"),
        "tools": [(b["id"], b["name"], b["input"]) for b in content if b["type"] == "tool_use"],
    }


def sse_chunks(data: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of an upstream stream (``[DONE]`` and comments left out)."""
    decoder = SSEDecoder()
    events = decoder.decode(data) + decoder.flush()
    chunks = []
    for event in events:
        if event.comment or event.data.strip() in ("", "[DONE]"):
            continue
        chunk = json.loads(event.data)
        if isinstance(chunk, dict):
            chunks.append(chunk)
    return chunks


def completion_from_chunks(chunks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The non-streamed chat completion that says what the chunks say."""
    first: Mapping[str, Any] | None = None
    text: list[str] = []
    reasoning: list[str] = []
    refusal: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    final: dict[str, Any] = {"finish_reason": None}
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for chunk in chunks:
        first = first if first is not None else chunk
        for key, target in (("usage", usage), ("timings", timings)):
            if isinstance(chunk.get(key), Mapping):
                target.update({k: v for k, v in chunk[key].items() if v is not None})
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            piece = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(piece, str):
                reasoning.append(piece)
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                refusal.append(delta["refusal"])
            for call in delta.get("tool_calls") or []:
                entry = calls.setdefault(call["index"], {"function": {"arguments": ""}})
                if call.get("id") and "id" not in entry:
                    entry["id"] = call["id"]
                function = call.get("function") or {}
                if function.get("name") and "name" not in entry["function"]:
                    entry["function"]["name"] = function["name"]
                entry["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason") is not None:
                final = {k: v for k, v in choice.items() if k not in ("delta", "index")}
    assert first is not None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if refusal:
        message["refusal"] = "".join(refusal)
    if calls:
        message["tool_calls"] = list(calls.values())  # dicts keep first-appearance order
    payload: dict[str, Any] = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, **final}],
        "usage": usage,
    }
    if "id" in first:
        payload["id"] = first["id"]
    if timings:
        payload["timings"] = timings
    return payload


def run(chunks: Iterable[Mapping[str, Any]], names: Any = NAMES) -> list[Event]:
    translator = StreamTranslator(names, model=MODEL)
    out: list[Event] = []
    for chunk in chunks:
        out += translator.feed(chunk)
    return out + translator.done()


def chunk(delta: Mapping[str, Any] | None = None, finish: str | None = None, **extra: Any) -> Any:
    body: dict[str, Any] = {"id": "chatcmpl-t", "object": "chat.completion.chunk"}
    if delta is not None:
        body["choices"] = [{"index": 0, "delta": dict(delta), "finish_reason": finish}]
    body.update(extra)
    return body


def call(index: int | None, fragment: str = "", **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"function": {"arguments": fragment}}
    if index is not None:
        entry["index"] = index
    if "name" in fields:
        entry["function"]["name"] = fields.pop("name")
    entry.update(fields)
    return {"tool_calls": [entry]}


# -- every fixture --------------------------------------------------------------


def test_fixtures_exist() -> None:
    assert len(SSE_FILES) >= 9, f"fixtures missing under {FIXTURES}"


@pytest.fixture(params=SSE_FILES, ids=[p.name for p in SSE_FILES])
def wire(request: pytest.FixtureRequest) -> bytes:
    data: bytes = request.param.read_bytes()
    return data


def translate(pieces: bytes | Iterable[bytes]) -> list[Event]:
    return translate_sse(pieces, NAMES, model=MODEL)


def test_fixture_any_two_way_cut_gives_the_same_events(wire: bytes) -> None:
    whole = translate(wire)
    for offset in range(len(wire) + 1):
        assert translate([wire[:offset], wire[offset:]]) == whole, offset


def test_fixture_one_byte_chunks_give_the_same_events(wire: bytes) -> None:
    assert translate([wire[i : i + 1] for i in range(len(wire))]) == translate(wire)


def test_fixture_follows_the_grammar(wire: bytes) -> None:
    check_grammar(translate(wire))


def test_fixture_matches_the_non_streamed_translation(wire: bytes) -> None:
    events = translate(wire)
    if events[-1][0] == "error":
        return  # nothing to compare with: no whole answer says this
    whole = to_anthropic_message(completion_from_chunks(sse_chunks(wire)), NAMES, model=MODEL)
    assert normalized(accumulate(events)) == normalized(whole)
    folded = StreamFold()
    for name, data in events:
        folded.feed(name, data)
    assert folded.result() == summarize_message(whole)


def test_fixture_folds_the_same_after_encoding(wire: bytes) -> None:
    events = translate(wire)
    direct, decoded = StreamFold(), StreamFold()
    for name, data in events:
        direct.feed(name, data)
    decoder = SSEDecoder()
    encoded = b"".join(encode_event(name, data) for name, data in events)
    decoded.feed_events(decoder.decode(encoded) + decoder.flush())
    assert decoded.result() == direct.result()


# -- the hand-written fixtures, pinned ----------------------------------------------


def fixture_events(name: str) -> list[Event]:
    return translate((FIXTURES / name).read_bytes())


def final_delta(events: list[Event]) -> dict[str, Any]:
    assert [n for n, _ in events[-2:]] == ["message_delta", "message_stop"]
    return events[-2][1]


def test_llamacpp_text_usage_from_cached_tokens() -> None:
    events = fixture_events("llamacpp_text.sse")
    message = accumulate(events)
    assert message["id"] == "msg_chatcmpl-8Qk2fT0bYv3nLmA9wZ1xRcE5uHsD7gJp"
    assert message["model"] == MODEL
    assert message["content"] == [
        {"type": "text", "text": "Grüße aus 日本語: the answer is 42 — done. 🎉"}
    ]
    assert final_delta(events)["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert final_delta(events)["usage"] == {
        "input_tokens": 480,
        "cache_read_input_tokens": 20000,
        "output_tokens": 11,
    }
    assert events[1] == ("ping", {"type": "ping"})


def test_openai_tool_call_name_mapped_back_and_usage_chunk_kept() -> None:
    events = fixture_events("openai_tool_call.sse")
    [block] = accumulate(events)["content"]
    assert block == {
        "type": "tool_use",
        "id": "call_Qw3rTy7UiOp9AsDf1GhJ2kLz",
        "name": LONG_MCP,
        "input": {"query": 'quarterly report "Q3" ünïcode', "max_results": 10, "shared": True},
    }
    assert final_delta(events)["delta"]["stop_reason"] == "tool_use"
    assert final_delta(events)["usage"] == {
        "input_tokens": 166,
        "cache_read_input_tokens": 1664,
        "output_tokens": 31,
    }
    deltas = [d for n, d in events if n == "content_block_delta"]
    assert len(deltas) == 15, "every non-empty fragment passed on as it came"


def test_reasoning_then_text() -> None:
    events = fixture_events("deepseek_reasoning.sse")
    content = accumulate(events)["content"]
    assert content == [
        {
            "type": "thinking",
            "thinking": "The user asks for 2+2. Simple arithmetic: 4.",
            "signature": "",
        },
        {"type": "text", "text": "2 + 2 = **4**."},
    ]
    assert final_delta(events)["usage"] == {
        "input_tokens": 128,
        "cache_read_input_tokens": 384,
        "output_tokens": 40,
    }


def test_parallel_tool_calls_each_get_a_block() -> None:
    events = fixture_events("llamacpp_parallel_tools.sse")
    content = accumulate(events)["content"]
    assert [b["type"] for b in content] == ["text", "tool_use", "tool_use", "tool_use"]
    assert [(b["name"], b["input"]) for b in content[1:]] == [
        ("Read", {"file_path": "/src/a.py"}),
        ("Read", {"file_path": "/src/b.py", "limit": 20}),
        ("mcp__ide__getDiagnostics", {}),
    ]
    assert final_delta(events)["usage"] == {
        "input_tokens": 14,
        "cache_read_input_tokens": 20990,
        "output_tokens": 58,
    }
    # sequential calls go out live: each block opens when its first fragment arrives
    starts = [i for i, (n, _) in enumerate(events) if n == "content_block_start"]
    assert all(events[i + 1][0] == "content_block_delta" for i in starts[:3])


def test_interleaved_tool_calls_are_held_not_mixed() -> None:
    events = fixture_events("openai_interleaved_tools.sse")
    content = accumulate(events)["content"]
    assert [(b["id"], b["name"], b["input"]) for b in content] == [
        ("call_one", "Bash", {"command": "ls -la", "timeout": 5000}),
        ("call_two", "Read", {"file_path": "/etc/hosts"}),
    ]
    assert final_delta(events)["usage"]["cache_read_input_tokens"] == 0  # reported 0 is known


def test_error_chunk_mid_stream_ends_with_one_error() -> None:
    events = fixture_events("llamacpp_error_chunk.sse")
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": {
                "type": "api_error",
                "message": "Failed to decode the batch: KV cache is full",
            },
        },
    )
    assert [n for n, _ in events].count("content_block_stop") == 0


def test_llamacpp_error_line_says_prompt_is_too_long() -> None:
    [(name, data)] = fixture_events("llamacpp_error_line.sse")
    assert name == "error"
    assert data["error"]["type"] == "invalid_request_error"
    assert data["error"]["message"].startswith("prompt is too long: 40213 tokens > 32768 maximum")


def test_stream_cut_before_finish_reason_is_an_error() -> None:
    events = fixture_events("openai_cut_before_finish.sse")
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "api_error"
    assert "before finishing" in events[-1][1]["error"]["message"]
    assert "message_stop" not in [n for n, _ in events]


def test_stop_sequence_named_by_the_upstream() -> None:
    events = fixture_events("vllm_stop_sequence_crlf.sse")
    assert final_delta(events)["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "four"}
    assert final_delta(events)["usage"] == {"input_tokens": 30, "output_tokens": 7}


# -- the state machine, case by case --------------------------------------------


def test_no_chunk_at_all_is_one_error() -> None:
    translator = StreamTranslator(NAMES, model=MODEL)
    [(name, data)] = translator.done()
    assert name == "error" and data["error"]["type"] == "api_error"
    assert translator.finished
    assert translator.done() == [] and translator.feed(chunk({"content": "x"})) == []


def test_error_as_first_chunk_is_only_an_error() -> None:
    events = run([{"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}])
    assert events == [
        (
            "error",
            {
                "type": "error",
                "error": {"type": "rate_limit_error", "message": "Rate limit reached"},
            },
        )
    ]


def test_fail_mid_stream_and_nothing_after() -> None:
    translator = StreamTranslator(NAMES, model=MODEL)
    started = translator.feed(chunk({"role": "assistant", "content": "Hel"}))
    assert [n for n, _ in started][:2] == ["message_start", "ping"]
    failed = translator.fail("overloaded_error", "connection reset")
    assert failed == [
        (
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "connection reset"}},
        )
    ]
    assert translator.finished
    assert translator.feed(chunk({"content": "lo"}, "stop")) == []
    assert translator.done() == [] and translator.fail("api_error", "again") == []
    check_grammar(started + failed)


def test_finish_reason_waits_for_the_usage_chunk() -> None:
    translator = StreamTranslator(NAMES, model=MODEL)
    translator.feed(chunk({"content": "ok"}))
    after_finish = translator.feed(chunk({}, "stop"))
    assert "message_delta" not in [n for n, _ in after_finish]
    translator.feed(
        {"id": "chatcmpl-t", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}}
    )
    end = translator.done()
    assert end[-2][1]["usage"] == {"input_tokens": 10, "output_tokens": 2}
    assert end[-1] == ("message_stop", {"type": "message_stop"})


def test_usage_on_the_first_chunk_goes_into_message_start() -> None:
    first = chunk(
        {"role": "assistant"},
        usage={"prompt_tokens": 50, "prompt_tokens_details": {"cached_tokens": 20}},
    )
    events = run([first, chunk({"content": "hi"}, "stop")])
    assert events[0][1]["message"]["usage"] == {
        "input_tokens": 30,
        "cache_read_input_tokens": 20,
        "output_tokens": 0,
    }
    assert final_delta(events)["usage"]["cache_read_input_tokens"] == 20


def test_no_usage_reported_means_no_cache_field() -> None:
    events = run([chunk({"content": "hi"}, "stop")])
    assert events[0][1]["message"]["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert final_delta(events)["usage"] == {"input_tokens": 0, "output_tokens": 0}


def test_finished_without_content_has_one_empty_text_block() -> None:
    events = run([chunk({"role": "assistant", "content": ""}), chunk({}, "stop")])
    check_grammar(events)
    assert accumulate(events)["content"] == [{"type": "text", "text": ""}]


def test_thinking_block_closes_with_an_empty_signature() -> None:
    events = run([chunk({"reasoning": "hmm"}), chunk({"content": "A"}, "stop")])
    names = [n for n, _ in events]
    stop = names.index("content_block_stop")
    assert events[stop - 1][1]["delta"] == {"type": "signature_delta", "signature": ""}
    assert accumulate(events)["content"][0] == {
        "type": "thinking",
        "thinking": "hmm",
        "signature": "",
    }


def test_kinds_alternating_open_new_blocks() -> None:
    events = run(
        [
            chunk({"reasoning_content": "a"}),
            chunk({"content": "b"}),
            chunk({"reasoning_content": "c"}),
            chunk({"content": "d"}, "stop"),
        ]
    )
    check_grammar(events)
    assert [b["type"] for b in accumulate(events)["content"]] == [
        "thinking",
        "text",
        "thinking",
        "text",
    ]


def test_tool_call_without_id_gets_the_same_derived_id_as_the_whole_answer() -> None:
    chunks = [
        chunk(call(0, "", name="Read")),
        chunk(call(0, '{"file_path":"/a"}')),
        chunk({}, "tool_calls"),
    ]
    events = run(chunks)
    [block] = accumulate(events)["content"]
    assert block["id"].startswith("toolu_") and len(block["id"]) == len("toolu_") + 24
    assert block["id"] == run(chunks)[2][1]["content_block"]["id"]  # deterministic
    whole = to_anthropic_message(completion_from_chunks(chunks), NAMES, model=MODEL)
    assert whole["content"][0]["id"] == block["id"]


def test_reused_index_with_a_new_id_is_a_new_call() -> None:
    events = run(
        [
            chunk(call(0, '{"command":"ls"}', id="call_a", name="Bash")),
            chunk(call(0, '{"file_path":"/b"}', id="call_b", name="Read")),
            chunk({}, "tool_calls"),
        ]
    )
    assert [(b["id"], b["input"]) for b in accumulate(events)["content"]] == [
        ("call_a", {"command": "ls"}),
        ("call_b", {"file_path": "/b"}),
    ]


def test_fragments_without_index_follow_their_id_or_the_latest_call() -> None:
    events = run(
        [
            chunk(call(None, '{"command":', id="call_a", name="Bash")),
            chunk(call(None, '"ls"}')),
            chunk(call(None, "{}", id="call_b", name="Read")),
            chunk({}, "tool_calls"),
        ]
    )
    assert [(b["id"], b["input"]) for b in accumulate(events)["content"]] == [
        ("call_a", {"command": "ls"}),
        ("call_b", {}),
    ]


def test_text_after_an_unfinished_tool_call_is_held_until_the_end() -> None:
    events = run(
        [
            chunk(call(0, '{"command":', id="call_a", name="Bash")),
            chunk({"content": "meanwhile"}),
            chunk(call(0, '"ls"}')),
            chunk({"content": " more"}, "tool_calls"),
        ]
    )
    check_grammar(events)
    content = accumulate(events)["content"]
    assert [b["type"] for b in content] == ["tool_use", "text"]
    assert content[0]["input"] == {"command": "ls"}
    assert content[1]["text"] == "meanwhile more"


def test_a_complete_tool_call_closes_as_soon_as_something_else_arrives() -> None:
    translator = StreamTranslator(NAMES, model=MODEL)
    translator.feed(chunk(call(0, '{"command": "ls"}', id="call_a", name="Bash")))
    opened = ["content_block_stop", "content_block_start", "content_block_delta"]
    events = translator.feed(chunk(call(1, "{}", id="call_b", name="Read")))
    assert [n for n, _ in events] == opened
    assert [n for n, _ in translator.feed(chunk({"content": "done"}))] == opened


def test_fragments_for_a_call_already_closed_are_dropped() -> None:
    events = run(
        [
            chunk(call(0, "{}", id="call_a", name="Bash")),
            chunk({"content": "x"}),
            chunk(call(0, "  ")),
            chunk(call(0, '"late"')),
            chunk({}, "tool_calls"),
        ]
    )
    check_grammar(events)
    assert accumulate(events)["content"][0]["input"] == {}


def test_a_long_sequential_call_streams_in_linear_time() -> None:
    body = json.dumps({"file_path": "/a", "content": "x = {}\n" * 20_000})
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    chunks = [chunk(call(0, pieces[0], id="c", name="Bash"))]
    chunks += [chunk(call(0, p)) for p in pieces[1:]] + [chunk({}, "tool_calls")]
    events = run(chunks)
    assert accumulate(events)["content"][0]["input"] == json.loads(body)


def test_blank_arguments_are_not_sent() -> None:
    events = run([chunk(call(0, "  ", id="c", name="Bash")), chunk({}, "tool_calls")])
    assert "content_block_delta" not in [n for n, _ in events]
    assert accumulate(events)["content"][0]["input"] == {}


def test_arguments_given_as_an_object() -> None:
    events = run(
        [
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "c",
                                    "function": {"name": "Bash", "arguments": {"a": 1}},
                                }
                            ]
                        },
                    }
                ]
            },
            chunk({}, "tool_calls"),
        ]
    )
    assert accumulate(events)["content"][0]["input"] == {"a": 1}


def test_tool_calls_under_finish_reason_stop_are_tool_use() -> None:
    events = run([chunk(call(0, "{}", id="c", name="Bash")), chunk({}, "stop")])
    assert final_delta(events)["delta"]["stop_reason"] == "tool_use"


def test_refusal_delta() -> None:
    events = run([chunk({"refusal": "I can't help with that."}), chunk({}, "stop")])
    assert accumulate(events)["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert final_delta(events)["delta"]["stop_reason"] == "refusal"


def test_other_choices_are_ignored() -> None:
    other = {"choices": [{"index": 1, "delta": {"content": "not ours"}, "finish_reason": None}]}
    events = run([other, chunk({"content": "ours"}, "length")])
    assert accumulate(events)["content"] == [{"type": "text", "text": "ours"}]
    assert final_delta(events)["delta"]["stop_reason"] == "max_tokens"


def test_chunk_without_id_gets_a_derived_message_id() -> None:
    events = run([{"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]}])
    message_id = events[0][1]["message"]["id"]
    assert message_id.startswith("msg_") and len(message_id) == 4 + 24


def sse_event(data: str, event: str | None = None, comment: bool = False) -> SSEEvent:
    return SSEEvent(event=event, data=data, raw=data.encode(), comment=comment)


def test_feed_sse_done_comments_and_errors() -> None:
    translator = StreamTranslator(NAMES, model=MODEL)
    assert translator.feed_sse(SSEEvent(None, "", raw=b": ping\n\n", comment=True)) == []
    assert translator.feed_sse(sse_event(json.dumps(chunk({"content": "a"}, "stop"))))
    assert [n for n, _ in translator.feed_sse(sse_event("[DONE]"))][-1] == "message_stop"

    translator = StreamTranslator(NAMES, model=MODEL)
    [(name, data)] = translator.feed_sse(sse_event("{not json"))
    assert name == "error" and "not JSON" in data["error"]["message"]

    translator = StreamTranslator(NAMES, model=MODEL)
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    [(name, data)] = translator.feed_sse(sse_event(json.dumps(body), event="error"))
    assert data["error"] == {"type": "overloaded_error", "message": "Overloaded"}

    translator = StreamTranslator(NAMES, model=MODEL)
    raw = b"error: something broke\n\n"
    [(name, data)] = translator.feed_sse(SSEEvent(None, "", raw=raw, comment=True))
    assert data["error"]["message"] == "something broke"


def test_translate_sse_accepts_text_and_ends_a_stream_without_done() -> None:
    text = "data: " + json.dumps(chunk({"content": "hi"}, "stop")) + "\n\n"
    events = translate_sse(text, NAMES, model=MODEL)
    assert [n for n, _ in events][-1] == "message_stop"


def test_works_with_any_name_map() -> None:
    class Upper:
        def to_anthropic(self, name: str) -> str:
            return name.upper()

    events = run([chunk(call(0, "{}", id="c", name="bash")), chunk({}, "tool_calls")], Upper())
    assert accumulate(events)["content"][0]["name"] == "BASH"


# -- properties ---------------------------------------------------------------------

TOOL_NAMES = ["Read", "Bash", "mcp__ide__getDiagnostics", NAMES.to_openai(LONG_MCP)]
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
json_scalars = st.none() | st.booleans() | st.integers(-5, 10**6) | texts
json_objects = st.dictionaries(
    texts,
    st.recursive(json_scalars, lambda c: st.lists(c, max_size=3), max_leaves=4),
    max_size=4,
)


nonempty = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8)


@st.composite
def split(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(0, len(text)), max_size=6)) | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(cuts)] or [""]


@st.composite
def answers(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A well-formed stream: reasoning, text and tool calls interleaved any way."""
    base: dict[str, Any] = {
        "id": draw(st.sampled_from(["chatcmpl-h", "msg_h"])),
        "object": "chat.completion.chunk",
    }
    lanes: list[list[dict[str, Any]]] = []
    lanes.append([{"reasoning_content": t} for t in draw(st.lists(nonempty, max_size=3))])
    lanes.append([{"content": t} for t in draw(st.lists(nonempty, max_size=3))])
    for index in range(draw(st.integers(0, 3))):
        arguments = draw(st.just("") | json_objects.map(json.dumps))
        fragments = draw(split(arguments))
        head: dict[str, Any] = {
            "index": index,
            "function": {"name": draw(st.sampled_from(TOOL_NAMES))},
        }
        if draw(st.booleans()):
            head["id"] = f"call_{index}"
        head["function"]["arguments"] = fragments[0]
        lane = [{"tool_calls": [head]}]
        lane += [
            {"tool_calls": [{"index": index, "function": {"arguments": f}}]} for f in fragments[1:]
        ]
        lanes.append(lane)
    deltas: list[dict[str, Any]] = []
    started = [False] * len(lanes)
    while any(lanes):
        # tool call k starts after tool call k-1 started, as upstreams number them
        ready = [i for i, lane in enumerate(lanes) if lane and (i < 3 or started[i - 1])]
        pick = draw(st.sampled_from(ready))
        started[pick] = True
        delta = lanes[pick].pop(0)
        if deltas and "tool_calls" in delta and "tool_calls" in deltas[-1] and draw(st.booleans()):
            deltas[-1]["tool_calls"] += delta["tool_calls"]  # several fragments in one chunk
        else:
            deltas.append(delta)
    chunks: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas
    ]
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter", "other"]))
    last: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": finish}
    if finish == "stop" and draw(st.booleans()):
        last["stop_reason"] = "STOP"
    chunks.append({**base, "choices": [last]})
    usage: dict[str, Any] = {}
    if draw(st.booleans()):
        usage["prompt_tokens"] = draw(st.integers(0, 10**5))
        usage["completion_tokens"] = draw(st.integers(0, 10**4))
        if draw(st.booleans()):
            usage["prompt_tokens_details"] = {"cached_tokens": draw(st.integers(0, 10**5))}
    on_last = draw(st.booleans())
    if usage and on_last:
        chunks[-1]["usage"] = usage
    elif usage:
        chunks.append({**base, "choices": [], "usage": usage})
    if draw(st.booleans()):
        chunks[-1]["timings"] = {"cache_n": draw(st.integers(0, 999)), "prompt_n": 5}
    return chunks


def wire_bytes(chunks: list[dict[str, Any]]) -> bytes:
    frames = [f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in chunks]
    return ("".join(frames) + "data: [DONE]\n\n").encode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers(), st.data())
def test_any_well_formed_stream_matches_the_whole_answer(
    chunks: list[dict[str, Any]], data: st.DataObject
) -> None:
    events = run(chunks)
    check_grammar(events)
    assert events[-1][0] == "message_stop"
    whole = to_anthropic_message(completion_from_chunks(chunks), NAMES, model=MODEL)
    assert normalized(accumulate(events)) == normalized(whole)
    wire = wire_bytes(chunks)
    cut = data.draw(st.integers(0, len(wire)))
    assert translate([wire[:cut], wire[cut:]]) == events


KEYS = [
    "choices", "delta", "content", "reasoning_content", "reasoning", "refusal", "tool_calls",
    "index", "id", "function", "name", "arguments", "finish_reason", "usage", "prompt_tokens",
    "completion_tokens", "prompt_tokens_details", "cached_tokens", "timings", "cache_n",
    "prompt_n", "error", "message", "code", "type", "stop_reason",
]  # fmt: skip
anything = st.recursive(
    json_scalars | st.sampled_from(KEYS),
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), c, max_size=4)
    ),
    max_leaves=16,
)
fragments = st.fixed_dictionaries(
    {"index": st.integers(0, 2) | st.none() | anything},
    optional={
        "id": st.sampled_from(["a", "b", ""]) | anything,
        "function": st.fixed_dictionaries(
            {},
            optional={
                "name": st.sampled_from(TOOL_NAMES) | anything,
                "arguments": st.sampled_from(["", " ", "{", '"k"', ":1", "}", "{}", "[", "x"])
                | anything,
            },
        )
        | anything,
    },
)
deltas = st.fixed_dictionaries(
    {},
    optional={
        "content": st.text(max_size=4) | st.none() | anything,
        "reasoning_content": st.text(max_size=4) | anything,
        "reasoning": st.text(max_size=4),
        "refusal": st.sampled_from([None, "no"]),
        "tool_calls": st.lists(fragments, max_size=3) | anything,
    },
)
choices = st.fixed_dictionaries(
    {"index": st.sampled_from([0, 0, 0, 1]) | anything, "delta": deltas | anything},
    optional={
        "finish_reason": st.sampled_from([None, "stop", "length", "tool_calls"]) | anything,
        "stop_reason": anything,
    },
)
chunks_any = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["chatcmpl-x", ""]) | anything,
        "choices": st.lists(choices, max_size=2) | anything,
        "usage": st.dictionaries(st.sampled_from(KEYS), anything, max_size=3) | anything,
        "timings": anything,
        "error": st.sampled_from([None, {}, {"message": "boom", "code": 503}, "down"]) | anything,
    },
)
plausible_chunks = st.fixed_dictionaries(
    {
        "id": st.just("chatcmpl-p"),
        "choices": st.lists(
            st.fixed_dictionaries(
                {
                    "index": st.just(0),
                    "delta": st.fixed_dictionaries(
                        {},
                        optional={
                            "content": texts,
                            "reasoning_content": texts,
                            "tool_calls": st.lists(
                                st.fixed_dictionaries(
                                    {"index": st.integers(0, 2)},
                                    optional={
                                        "id": st.sampled_from(["a", "b"]),
                                        "function": st.fixed_dictionaries(
                                            {"arguments": st.sampled_from(["{", "}", "{}", " "])},
                                            optional={"name": st.sampled_from(TOOL_NAMES)},
                                        ),
                                    },
                                ),
                                max_size=2,
                            ),
                        },
                    ),
                    "finish_reason": st.sampled_from([None, None, None, "stop", "tool_calls"]),
                }
            ),
            min_size=1,
            max_size=1,
        ),
    },
    optional={"usage": st.fixed_dictionaries({"prompt_tokens": st.integers(0, 99)})},
)
steps = st.lists(
    st.one_of(
        *[plausible_chunks] * 8,
        chunks_any,
        st.dictionaries(st.sampled_from(KEYS), anything, max_size=4),
        st.sampled_from(["done", "fail"]),
    ),
    max_size=12,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_any_chunk_sequence_gives_a_valid_stream_and_never_raises(sequence: list[Any]) -> None:
    translator = StreamTranslator(NAMES, model=MODEL)
    events: list[Event] = []
    for step in sequence:
        was_finished = translator.finished
        if step == "done":
            out = translator.done()
        elif step == "fail":
            out = translator.fail("api_error", "transport failed")
        else:
            out = translator.feed(step)
        assert not (was_finished and out), "events after the end"
        events += out
    events += translator.done()
    assert translator.finished
    check_grammar(events)
