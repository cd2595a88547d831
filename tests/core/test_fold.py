"""Tests for folding Anthropic stream events and messages into a summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixgate.core.fold import MessageSummary, StreamFold, Usage, summarize_message
from prefixgate.core.sse import SSEDecoder, encode_event

Event = tuple[str, dict[str, Any]]


def fold(events: list[Event]) -> MessageSummary:
    folder = StreamFold()
    for name, payload in events:
        folder.feed(name, payload)
    return folder.result()


def start(usage: object = None, **message: object) -> Event:
    body: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "stop_reason": None,
    }
    body.update(message)
    if usage is not None:
        body["usage"] = usage
    return "message_start", {"type": "message_start", "message": body}


def text_block(*deltas: str, index: int = 0) -> list[Event]:
    events: list[Event] = [
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            },
        )
    ]
    for text in deltas:
        delta = {"type": "text_delta", "text": text}
        events.append(
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )
    events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


def delta(stop_reason: str | None = "end_turn", usage: object = None) -> Event:
    payload: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
    }
    if usage is not None:
        payload["usage"] = usage
    return "message_delta", payload


STOP: Event = ("message_stop", {"type": "message_stop"})
PING: Event = ("ping", {"type": "ping"})


# --- Usage -----------------------------------------------------------------


def test_usage_defaults_to_unknown_not_zero() -> None:
    usage = Usage()
    assert usage == Usage(None, None, None, None)
    assert usage.prompt_tokens is None


@pytest.mark.parametrize(
    ("usage", "prompt"),
    [
        (Usage(input_tokens=10), 10),
        (Usage(input_tokens=10, cache_read_input_tokens=90), 100),
        (Usage(10, 5, cache_read_input_tokens=90, cache_creation_input_tokens=900), 1000),
        (Usage(input_tokens=0, cache_read_input_tokens=7), 7),
        (Usage(cache_read_input_tokens=90, cache_creation_input_tokens=5), None),
    ],
)
def test_prompt_tokens(usage: Usage, prompt: int | None) -> None:
    assert usage.prompt_tokens == prompt


def test_usage_from_payload_keeps_only_usable_counts() -> None:
    payload = {
        "input_tokens": True,
        "output_tokens": -3,
        "cache_read_input_tokens": 12.0,
        "cache_creation_input_tokens": "5",
        "server_tool_use": {"web_search_requests": 1},
    }
    assert Usage.from_payload(payload) == Usage(cache_read_input_tokens=12)
    assert Usage.from_payload({"input_tokens": 1.5, "output_tokens": float("nan")}) == Usage()
    assert Usage.from_payload("not a mapping") == Usage()
    assert Usage.from_payload(None) == Usage()


def test_usage_from_payload_drops_counts_no_upstream_makes() -> None:
    """Found by fuzz/fuzz_app.py: 400-digit counts overflowed the miss estimate (a 500
    and no audit row); they are unknown, as any other unusable count."""
    huge = {"input_tokens": 10**400, "output_tokens": 1e308, "cache_read_input_tokens": 2**53}
    assert Usage.from_payload(huge) == Usage()
    assert Usage.from_payload({"input_tokens": 2**53 - 1}) == Usage(input_tokens=2**53 - 1)


def test_usage_merge_later_non_null_wins() -> None:
    first = Usage(input_tokens=10, output_tokens=1, cache_read_input_tokens=5)
    merged = first.merged({"output_tokens": 20, "cache_read_input_tokens": None, "input_tokens": 9})
    assert merged == Usage(input_tokens=9, output_tokens=20, cache_read_input_tokens=5)


# --- streams ---------------------------------------------------------------


RECORDED = (
    "event: message_start\r\n"
    'data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL",'
    '"type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],'
    '"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,'
    '"cache_creation_input_tokens":2048,"cache_read_input_tokens":10240,"output_tokens":1}}}'
    "\r\n\r\n"
    ": ping\r\n\r\n"
    'event: ping\r\ndata: {"type": "ping"}\r\n\r\n'
    "event: content_block_start\r\n"
    'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'
    "\r\n\r\n"
    "event: content_block_delta\r\n"
    'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
    '"text":"Grüße, 日本語 🚀"}}\r\n\r\n'
    'event: content_block_stop\r\ndata: {"type":"content_block_stop","index":0}\r\n\r\n'
    "event: content_block_start\r\n"
    'data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
    '"id":"toolu_01","name":"get_weather","input":{}}}\r\n\r\n'
    "event: content_block_delta\r\n"
    'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
    '"partial_json":"{\\"city\\": \\"Paris\\"}"}}\r\n\r\n'
    'event: content_block_stop\r\ndata: {"type":"content_block_stop","index":1}\r\n\r\n'
    "event: message_delta\r\n"
    'data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
    '"usage":{"output_tokens":89}}\r\n\r\n'
    'event: message_stop\r\ndata: {"type":"message_stop"}\r\n\r\n'
).encode()


@pytest.mark.parametrize("size", [1, 3, 64, len(RECORDED)])
def test_recorded_anthropic_stream_decoded_and_folded(size: int) -> None:
    decoder = SSEDecoder()
    folder = StreamFold()
    chunks = [RECORDED[i : i + size] for i in range(0, len(RECORDED), size)]
    for ev in [ev for chunk in chunks for ev in decoder.decode(chunk)] + decoder.flush():
        if not ev.comment:
            folder.feed(ev.event, ev.json())
    assert folder.result() == MessageSummary(
        id="msg_01XFDUDYJgAACzvnptvVoYEL",
        model="claude-sonnet-4-5-20250929",
        stop_reason="tool_use",
        usage=Usage(
            input_tokens=12,
            output_tokens=89,
            cache_read_input_tokens=10240,
            cache_creation_input_tokens=2048,
        ),
        error=None,
        text="Grüße, 日本語 🚀",
    )
    assert folder.result().usage.prompt_tokens == 12 + 10240 + 2048


def test_llama_cpp_shaped_usage() -> None:
    events = [
        start({"input_tokens": 8, "cache_read_input_tokens": 1500, "output_tokens": 0}),
        *text_block("Hello", " world"),
        delta("end_turn", {"output_tokens": 3}),
        STOP,
    ]
    summary = fold(events)
    assert summary.usage == Usage(
        input_tokens=8,
        output_tokens=3,
        cache_read_input_tokens=1500,
        cache_creation_input_tokens=None,
    )
    assert summary.usage.prompt_tokens == 1508
    assert (summary.text, summary.stop_reason, summary.id) == ("Hello world", "end_turn", "msg_1")


def test_anthropic_shaped_usage_delta_overrides_every_field() -> None:
    start_usage = {
        "input_tokens": 4,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
        "service_tier": "standard",
    }
    delta_usage = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 120,
        "cache_read_input_tokens": 30000,
        "output_tokens": 42,
    }
    summary = fold([start(start_usage), PING, *text_block("ok"), delta("end_turn", delta_usage)])
    assert summary.usage == Usage(5, 42, 30000, 120)
    assert summary.usage.prompt_tokens == 30125


def test_delta_with_only_output_tokens_keeps_start_cache_fields() -> None:
    summary = fold(
        [
            start({"input_tokens": 4, "cache_read_input_tokens": 9}),
            delta(usage={"output_tokens": 2}),
        ]
    )
    assert summary.usage == Usage(4, 2, 9, None)


def test_missing_usage_everywhere_stays_unknown() -> None:
    summary = fold([start(), *text_block("hi"), delta("max_tokens"), STOP])
    assert summary.usage == Usage()
    assert summary.usage.prompt_tokens is None
    assert summary.stop_reason == "max_tokens"


def test_null_stop_reason_in_delta_does_not_erase() -> None:
    summary = fold([start(), delta("end_turn"), delta(None)])
    assert summary.stop_reason == "end_turn"


def test_error_event_mid_stream() -> None:
    error = {"type": "overloaded_error", "message": "Overloaded"}
    events = [
        start({"input_tokens": 3}),
        *text_block("partial")[:2],
        ("error", {"type": "error", "error": error}),
    ]
    summary = fold(events)
    assert summary.error == error
    assert (summary.text, summary.stop_reason) == ("partial", None)
    assert summary.usage.input_tokens == 3


def test_error_event_without_error_object_keeps_payload() -> None:
    summary = fold([("error", {"type": "error", "message": "boom"})])
    assert summary.error == {"type": "error", "message": "boom"}


def test_no_error_by_default_and_empty_fold() -> None:
    assert StreamFold().result() == MessageSummary(None, None, None, Usage(), None, "")


def test_event_type_from_payload_when_sse_name_missing() -> None:
    _, payload = start({"input_tokens": 2})
    summary = fold([(None, payload), *text_block("x")])  # type: ignore[list-item]
    assert (summary.id, summary.usage.input_tokens, summary.text) == ("msg_1", 2, "x")


def test_sse_name_used_when_payload_has_no_type() -> None:
    folder = StreamFold()
    folder.feed("message_delta", {"delta": {"stop_reason": "stop_sequence"}})
    folder.feed("content_block_delta", {"delta": {"type": "text_delta", "text": "t"}})
    assert (folder.result().stop_reason, folder.result().text) == ("stop_sequence", "t")


def test_non_text_deltas_and_tool_blocks_add_no_text() -> None:
    events: list[Event] = [
        start(),
        (
            "content_block_start",
            {"type": "content_block_start", "content_block": {"type": "tool_use", "text": "no"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "input_json_delta", "text": "no"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "no"}},
        ),
        *text_block("yes"),
    ]
    assert fold(events).text == "yes"


def test_text_in_block_start_and_message_start_content_counts() -> None:
    content = [{"type": "text", "text": "A"}, {"type": "tool_use", "id": "t"}]
    events: list[Event] = [
        start(content=content),
        (
            "content_block_start",
            {"type": "content_block_start", "content_block": {"type": "text", "text": "B"}},
        ),
    ]
    assert fold(events).text == "AB"


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "message_start"},
        {"type": "message_start", "message": "nope"},
        {"type": "message_start", "message": {"id": 5, "model": ["m"], "usage": [1, 2]}},
        {"type": "message_start", "message": {"content": "text", "stop_reason": 3}},
        {"type": "content_block_start", "content_block": None},
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": 7}},
        {"type": "content_block_delta", "delta": "text"},
        {"type": "message_delta", "delta": None, "usage": "lots"},
        {"type": "message_delta", "usage": {"output_tokens": "12"}},
        {"type": 42},
        {"type": "something_new", "x": 1},
        {},
    ],
)
def test_odd_payloads_are_ignored(payload: dict[str, Any]) -> None:
    folder = StreamFold()
    folder.feed("message_start", payload)
    assert folder.result() == MessageSummary()


def test_non_mapping_payload_is_ignored() -> None:
    folder = StreamFold()
    for odd in (None, [1, 2], "message_start", 3):
        folder.feed("message_start", odd)  # type: ignore[arg-type]
    assert folder.result() == MessageSummary()


FIELDS = st.sampled_from(
    [
        *("type", "text", "usage", "delta", "message", "stop_reason", "content", "id", "model"),
        *(
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ),
    ]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(FIELDS | st.text(max_size=4), inner | st.just("text_delta"), max_size=3)
    ),
    max_leaves=12,
)
KINDS = st.sampled_from(
    [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    ]
)
KEYS = st.sampled_from(["type", "message", "usage", "delta", "content_block", "error", "x"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.none() | KINDS, st.dictionaries(KEYS, JSON | KINDS, max_size=4)), max_size=8
    )
)
def test_fold_never_raises_on_arbitrary_events(events: list[tuple[str | None, Any]]) -> None:
    folder = StreamFold()
    for name, payload in events:
        folder.feed(name, payload)
    summary = folder.result()
    assert isinstance(summary.text, str)
    for count in (summary.usage.input_tokens, summary.usage.output_tokens):
        assert count is None or (type(count) is int and count >= 0)


# --- non-streamed responses -------------------------------------------------


def test_summarize_message() -> None:
    message = {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": "Hi! "},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            {"type": "text", "text": "Çà va 🙂"},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 2095,
            "output_tokens": 503,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 1800,
        },
    }
    assert summarize_message(message) == MessageSummary(
        id="msg_013Zva2CMHLNnXjNJJKqJ2EF",
        model="claude-sonnet-4-5-20250929",
        stop_reason="tool_use",
        usage=Usage(2095, 503, 0, 1800),
        error=None,
        text="Hi! Çà va 🙂",
    )


def test_summarize_llama_cpp_message_without_cache_creation() -> None:
    message = {
        "id": "chatcmpl-abc",
        "model": "gemma",
        "content": [{"type": "text", "text": "4"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "cache_read_input_tokens": 20, "output_tokens": 1},
    }
    summary = summarize_message(message)
    assert summary.usage == Usage(3, 1, 20, None)
    assert summary.usage.prompt_tokens == 23


def test_summarize_error_body() -> None:
    body = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: too big"},
    }
    assert summarize_message(body) == MessageSummary(
        error={"type": "invalid_request_error", "message": "max_tokens: too big"}
    )


@pytest.mark.parametrize("odd", [{}, {"content": None, "usage": 3}, [], "x", None])
def test_summarize_odd_input(odd: Mapping[str, Any]) -> None:
    assert summarize_message(odd) == MessageSummary()


def test_encoded_events_fold_like_payloads() -> None:
    events = [start({"input_tokens": 1}), *text_block("é"), delta("end_turn", {"output_tokens": 2})]
    wire = b"".join(encode_event(name, payload) for name, payload in events)
    decoder = SSEDecoder()
    folder = StreamFold()
    for ev in decoder.decode(wire) + decoder.flush():
        folder.feed(ev.event, ev.json())
    assert folder.result() == fold(events)
    assert folder.result().text == "é"


def test_an_event_nested_past_the_parsers_depth_is_skipped() -> None:
    """Found by fuzz/fuzz_app.py: a RecursionError escaped the fold mid-stream."""
    from prefixgate.core.sse import SSEDecoder

    fold = StreamFold()
    deep = b"event: message_delta\ndata: " + b'{"a": [' * 50_000 + b"\n\n"
    fold.feed_events(SSEDecoder().decode(deep))
    assert fold.result().error is None
