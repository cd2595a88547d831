"""Tests for the SSE decoder: a recorded-looking stream cut every way."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixgate.core.sse import SSEDecoder, SSEEvent, encode_event

# A realistic Anthropic Messages stream: comments, ping, a text block with
# non-ASCII and emoji deltas, a tool_use block with input_json_delta, and the
# closing message_delta / message_stop.
STREAM_EVENTS: list[tuple[str, str]] = [
    (
        "message_start",
        '{"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL",'
        '"type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",'
        '"content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,'
        '"cache_creation_input_tokens":2048,"cache_read_input_tokens":10240,"output_tokens":1}}}',
    ),
    ("ping", '{"type": "ping"}'),
    (
        "content_block_start",
        '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
    ),
    (
        "content_block_delta",
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Grüße, "}}',
    ),
    (
        "content_block_delta",
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"日本語 "}}',
    ),
    (
        "content_block_delta",
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ok 🚀👍🏽"}}',
    ),
    ("content_block_stop", '{"type":"content_block_stop","index":0}'),
    (
        "content_block_start",
        '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
        '"id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}',
    ),
    (
        "content_block_delta",
        '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
        '"partial_json":""}}',
    ),
    (
        "content_block_delta",
        '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
        '"partial_json":"{\\"location\\": \\"San Fra"}}',
    ),
    (
        "content_block_delta",
        '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
        '"partial_json":"ncisco, CA\\"}"}}',
    ),
    ("content_block_stop", '{"type":"content_block_stop","index":1}'),
    (
        "message_delta",
        '{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
        '"usage":{"output_tokens":89}}',
    ),
    ("message_stop", '{"type":"message_stop"}'),
]

COMMENT_AFTER = {1: ": ping\n\n", 6: ": keep-alive 😀\n\n"}


def _stream(newline: str = "\n") -> bytes:
    """The fixture as bytes, with comment blocks and one in-block comment."""
    parts = [": stream opened\n\n"]
    for i, (name, data) in enumerate(STREAM_EVENTS):
        inner = ": in-block comment\n" if i == 3 else ""
        parts.append(f"event: {name}\n{inner}data: {data}\n\n")
        parts.append(COMMENT_AFTER.get(i, ""))
    return "".join(parts).replace("\n", newline).encode()


STREAMS = {nl: _stream(nl) for nl in ("\n", "\r\n", "\r")}
EXPECTED_KINDS = [None] + [
    kind
    for i, (name, _) in enumerate(STREAM_EVENTS)
    for kind in ([name, None] if i in COMMENT_AFTER else [name])
]


def decode_all(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = [ev for chunk in chunks for ev in decoder.decode(chunk)]
    return events + decoder.flush()


def cut(data: bytes, offsets: list[int]) -> list[bytes]:
    bounds = [0, *sorted(offsets), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def raw_of(events: list[SSEEvent]) -> bytes:
    return b"".join(ev.raw for ev in events)


@pytest.fixture(scope="module", params=list(STREAMS), ids=["lf", "crlf", "cr"])
def stream(request: pytest.FixtureRequest) -> bytes:
    return STREAMS[request.param]


# --- the whole stream -------------------------------------------------------


def test_whole_stream_yields_the_recorded_events(stream: bytes) -> None:
    events = decode_all([stream])
    assert [None if ev.comment else ev.event for ev in events] == EXPECTED_KINDS
    real = [ev for ev in events if not ev.comment]
    assert [(ev.event, ev.data) for ev in real] == STREAM_EVENTS
    assert raw_of(events) == stream


def test_parsed_payloads_keep_non_ascii_text() -> None:
    events = [ev for ev in decode_all([STREAMS["\n"]]) if ev.event == "content_block_delta"]
    texts = [ev.json()["delta"].get("text") for ev in events]
    assert texts[:3] == ["Grüße, ", "日本語 ", "ok 🚀👍🏽"]
    partial = "".join(ev.json()["delta"].get("partial_json", "") for ev in events)
    assert json.loads(partial) == {"location": "San Francisco, CA"}


def test_each_event_raw_is_its_own_block() -> None:
    events = decode_all([STREAMS["\r\n"]])
    assert events[0].raw == b": stream opened\r\n\r\n"
    assert events[0] == SSEEvent(event=None, data="", raw=events[0].raw, comment=True)
    ping = events[2]
    assert ping.raw == b'event: ping\r\ndata: {"type": "ping"}\r\n\r\n'
    assert events[3].raw == b": ping\r\n\r\n"
    assert events[3].comment
    in_block = next(ev for ev in events if b"in-block" in ev.raw)
    assert not in_block.comment
    assert in_block.event == "content_block_delta"
    assert in_block.raw.startswith(b"event: content_block_delta\r\n: in-block comment\r\ndata: ")


# --- cut at every offset and at random --------------------------------------


def test_every_single_cut_gives_identical_events(stream: bytes) -> None:
    expected = decode_all([stream])
    for offset in range(len(stream) + 1):
        events = decode_all(cut(stream, [offset]))
        assert events == expected, f"cut at byte {offset}"
        assert raw_of(events) == stream


def test_every_cut_pair_near_line_ends_gives_identical_events(stream: bytes) -> None:
    expected = decode_all([stream])
    ends = [i for i, byte in enumerate(stream) if byte in b"\r\n"][:40]
    for a in ends:
        for b in range(a, min(a + 4, len(stream)) + 1):
            assert decode_all(cut(stream, [a, b])) == expected, f"cuts {a}, {b}"


def test_one_byte_chunks_give_identical_events(stream: bytes) -> None:
    chunks = [stream[i : i + 1] for i in range(len(stream))]
    assert decode_all(chunks) == decode_all([stream])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), newline=st.sampled_from(list(STREAMS)))
def test_random_chunkings_give_identical_events(data: st.DataObject, newline: str) -> None:
    stream = STREAMS[newline]
    offsets = data.draw(st.lists(st.integers(0, len(stream)), max_size=60))
    events = decode_all(cut(stream, offsets))
    assert events == decode_all([stream])
    assert raw_of(events) == stream


# Arbitrary streams built from the tokens that matter to the parser, including
# invalid UTF-8, a split-able emoji, BOM bytes and every line ending.
TOKENS = st.sampled_from(
    [
        *(b"data", b"event", b"id", b"retry", b":", b" ", b"x", b"42", b"\n", b"\r", b"\r\n"),
        *(b"\xef\xbb\xbf", "🚀".encode(), b"\xff", b"\x00", b"\xe6\x97"),
    ]
)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), tokens=st.lists(TOKENS, max_size=60))
def test_arbitrary_streams_are_chunking_independent_and_byte_exact(
    data: st.DataObject, tokens: list[bytes]
) -> None:
    stream = b"".join(tokens)
    offsets = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    whole = decode_all([stream])
    assert raw_of(whole) == stream
    assert decode_all(cut(stream, offsets)) == whole


# --- field parsing ----------------------------------------------------------


def test_multi_line_data_is_joined_with_newlines() -> None:
    (ev,) = decode_all([b"data: one\ndata:two\ndata\ndata:  four\n\n"])
    assert ev.data == "one\ntwo\n\n four"
    assert ev.event is None


def test_field_without_space_and_unknown_fields() -> None:
    (ev,) = decode_all([b"event:delta\nfoo: bar\ndata:x\n\n"])
    assert (ev.event, ev.data, ev.comment) == ("delta", "x", False)


def test_unknown_field_only_block_is_a_comment() -> None:
    (ev,) = decode_all([b"foo: bar\n\n"])
    assert ev.comment
    assert ev.raw == b"foo: bar\n\n"


def test_id_carries_over_and_retry_is_per_event() -> None:
    stream = b"id: 7\nretry: 1500\ndata: a\n\ndata: b\n\nid: bad\x00\nretry: 1.5\ndata: c\n\n"
    a, b, c = decode_all([stream])
    assert (a.id, a.retry) == ("7", 1500)
    assert (b.id, b.retry) == ("7", None)
    assert (c.id, c.retry) == ("7", None)


def test_event_only_block_is_still_an_event() -> None:
    (ev,) = decode_all([b"event: ping\n\n"])
    assert (ev.event, ev.data, ev.comment) == ("ping", "", False)


def test_stray_blank_lines_become_comment_blocks() -> None:
    events = decode_all([b"\n\r\ndata: x\n\n"])
    assert [ev.raw for ev in events] == [b"\n", b"\r\n", b"data: x\n\n"]
    assert [ev.comment for ev in events] == [True, True, False]


def test_bom_is_ignored_for_parsing_but_kept_in_raw() -> None:
    stream = b"\xef\xbb\xbfevent: message_start\ndata: {}\n\n"
    for offset in range(len(stream) + 1):
        (ev,) = decode_all(cut(stream, [offset]))
        assert ev.event == "message_start"
        assert ev.raw == stream


def test_bom_only_stripped_at_stream_start() -> None:
    (_, second) = decode_all([b"data: a\n\n\xef\xbb\xbfevent: x\ndata: b\n\n"])
    assert second.event is None  # the field name is "\ufeffevent", unknown
    assert second.data == "b"


def test_split_inside_multibyte_character() -> None:
    stream = "data: 🚀ü\n\n".encode()
    for offset in range(7, 12):  # every cut inside the emoji and the umlaut
        (ev,) = decode_all(cut(stream, [offset]))
        assert ev.data == "🚀ü"


def test_invalid_utf8_is_replaced_not_raised() -> None:
    (ev,) = decode_all([b"data: \xff\xfe ok\n\n"])
    assert ev.data == "\ufffd\ufffd ok"
    assert ev.raw == b"data: \xff\xfe ok\n\n"


# --- incremental behaviour and flush ----------------------------------------


def test_events_are_returned_as_soon_as_their_block_ends() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b"event: a\ndata: 1\n") == []
    (ev,) = decoder.decode(b"\nevent: b\n")
    assert (ev.event, ev.data) == ("a", "1")
    assert decoder.decode(b"data: 2\n\n")[0].event == "b"
    assert decoder.flush() == []


def test_trailing_cr_waits_for_the_next_byte() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b"data: a\r\r") == []  # the last "\r" may be "\r\n"
    (ev,) = decoder.decode(b"\n")
    assert ev.raw == b"data: a\r\r\n"
    assert decoder.decode(b"data: b\r\r") == []
    (ev,) = decoder.decode(b"d")
    assert (ev.data, ev.raw) == ("b", b"data: b\r\r")
    (ev,) = decoder.flush()
    assert (ev.comment, ev.raw) == (True, b"d")


def test_flush_emits_final_event_without_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b"event: message_stop\ndata: {}") == []
    (ev,) = decoder.flush()
    assert (ev.event, ev.data, ev.raw) == ("message_stop", "{}", b"event: message_stop\ndata: {}")


def test_flush_keeps_trailing_cr_and_comment_bytes() -> None:
    assert decode_all([b"data: a\r"])[0].raw == b"data: a\r"
    (ev,) = decode_all([b": bye"])
    assert ev.comment
    assert ev.raw == b": bye"


def test_flush_on_empty_and_resets_state() -> None:
    decoder = SSEDecoder()
    assert decoder.flush() == []
    decoder.decode(b"id: 1\nevent: x\ndata: a")
    decoder.flush()
    (ev,) = decoder.decode(b"\xef\xbb\xbfdata: b\n\n")
    assert (ev.event, ev.id, ev.data) == (None, None, "b")


def test_empty_chunks_are_harmless() -> None:
    assert decode_all([b"", b"data: a\n", b"", b"\n", b""]) == decode_all([b"data: a\n\n"])


def test_long_line_in_small_chunks() -> None:
    payload = "é" * 100_000
    stream = f"data: {payload}\n\n".encode()
    chunks = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    (ev,) = decode_all(chunks)
    assert ev.data == payload
    assert ev.raw == stream


# --- encoding ---------------------------------------------------------------


def test_encode_mapping_is_compact_json() -> None:
    got = encode_event("ping", {"type": "ping", "n": [1, 2]})
    assert got == b'event: ping\ndata: {"type":"ping","n":[1,2]}\n\n'


def test_encode_keeps_non_ascii_as_utf8() -> None:
    got = encode_event("content_block_delta", {"text": "ü🚀"})
    assert got == 'event: content_block_delta\ndata: {"text":"ü🚀"}\n\n'.encode()


def test_encode_string_without_event_and_with_line_breaks() -> None:
    assert encode_event(None, "a\nb\r\nc") == b"data: a\ndata: b\ndata: c\n\n"
    assert encode_event(None, "") == b"data: \n\n"


def test_encode_escapes_lone_surrogates_in_mappings_only() -> None:
    payload = {"text": "a\ud800ü"}
    wire = encode_event("x", payload)
    assert wire == b'event: x\ndata: {"text":"a\\ud800\\u00fc"}\n\n'
    (ev,) = decode_all([wire])
    assert ev.json() == payload
    with pytest.raises(UnicodeEncodeError):
        encode_event("x", "a\ud800")


def test_encode_rejects_line_break_in_event_name() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_event("a\nb", "x")


@settings(max_examples=200, deadline=None)
@given(
    event=st.none()
    | st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), min_size=1),
    data=st.text(),
)
def test_encode_then_decode_round_trips(event: str | None, data: str) -> None:
    wire = encode_event(event, data)
    (ev,) = decode_all([wire])
    expected_data = data.replace("\r\n", "\n").replace("\r", "\n")
    assert (ev.data, ev.raw, ev.comment) == (expected_data, wire, False)
    assert ev.event == event


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(payload=st.dictionaries(st.text(), JSON_VALUES, max_size=4))
def test_encoded_mappings_decode_to_equal_json(payload: dict[str, object]) -> None:
    wire = encode_event("content_block_delta", payload)
    (ev,) = decode_all([wire])
    assert (ev.event, ev.json(), ev.raw) == ("content_block_delta", payload, wire)


def test_json_parses_data() -> None:
    assert SSEEvent(event="x", data='{"a": [1]}').json() == {"a": [1]}
    with pytest.raises(json.JSONDecodeError):
        SSEEvent(event="x", data="not json").json()


@pytest.mark.parametrize(
    "data", ['{"n": 18446744073709551616}', '{"n": -9223372036854775809}', '{"x": NaN}', "[1.5, 2]"]
)
def test_json_reads_what_the_standard_library_reads(data: str) -> None:
    """orjson first; a big integer (a float to orjson) or NaN reads as json.loads reads it."""
    got = SSEEvent(event=None, data=data).json()
    assert repr(got) == repr(json.loads(data))
