"""Request size limits: depth, messages and content blocks."""

from __future__ import annotations

import json
import time
from dataclasses import FrozenInstanceError
from typing import Any

import pytest

from prefixgate.core.errors import InvalidRequest
from prefixgate.core.limits import Limits, check_limits, count_blocks, json_depth, json_shape
from prefixgate.core.pipeline import parse_request, rewrite


def request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-opus-4-8",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 64,
    }
    body.update(overrides)
    return body


def nested(levels: int) -> Any:
    """``levels`` nested lists, built without recursion."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# ------------------------------------------------------------------ Limits


def test_defaults_and_frozen() -> None:
    limits = Limits()
    assert (limits.max_json_depth, limits.max_messages, limits.max_blocks) == (64, 10_000, 100_000)
    with pytest.raises(FrozenInstanceError):
        limits.max_messages = 1  # type: ignore[misc]


@pytest.mark.parametrize("field", ["max_json_depth", "max_messages", "max_blocks"])
@pytest.mark.parametrize("value", [0, -1, True, 2.5, "10"])
def test_limits_must_be_positive_integers(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        Limits(**{field: value})


# -------------------------------------------------------------- json_depth


@pytest.mark.parametrize(
    ("value", "depth"),
    [
        (None, 0),
        ("text", 0),
        (3, 0),
        ({}, 1),
        ([], 1),
        ({"a": 1, "b": "x"}, 1),
        ({"a": []}, 2),
        ([1, [2, [3]], {"x": {"y": {}}}], 4),
        ({"a": [[[]]], "b": {"c": 1}}, 4),
    ],
)
def test_json_depth(value: Any, depth: int) -> None:
    assert json_depth(value) == depth


def test_json_depth_needs_no_recursion_and_stops_early() -> None:
    deep = nested(200_000)  # far past Python's recursion limit
    assert json_depth(deep) == 200_000
    assert json_depth(deep, stop_after=64) == 65
    assert json_depth(nested(64), stop_after=64) == 64


@pytest.mark.parametrize(
    ("value", "floats"),
    [
        (1.5, True),
        ({"a": 1, "b": [True, None, "2.5"]}, False),
        ({"temperature": 0.7}, True),
        ([[{"x": [1, 2, {"y": 1e-9}]}]], True),
        ({"a": 2**70}, False),
    ],
)
def test_json_shape_finds_a_float_anywhere_and_measures_as_json_depth(
    value: Any, floats: bool
) -> None:
    assert json_shape(value) == (json_depth(value), floats)


def test_a_body_with_a_float_is_parsed_by_the_standard_library() -> None:
    # 0.1 + 0.2 style digits: the values must be exactly json.loads's
    raw = json.dumps({**request(), "temperature": 0.30000000000000004, "n": 2**70}).encode()
    assert parse_request(raw) == json.loads(raw)
    assert type(parse_request(raw)["n"]) is int


# ------------------------------------------------------------ count_blocks


def test_count_blocks_counts_system_message_blocks_and_tools() -> None:
    body = request(
        system=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        messages=[
            {"role": "user", "content": "plain string: no blocks"},
            {"role": "assistant", "content": [{"type": "text", "text": "x"}] * 3},
            {"role": "user", "content": [{"type": "tool_result", "content": [{}, {}]}]},
        ],
        tools=[{"name": "Bash"}, {"name": "Read"}],
    )
    assert count_blocks(body) == 2 + 3 + 1 + 2
    assert count_blocks(request(system="string system")) == 0


def test_fields_of_the_wrong_type_are_left_to_the_field_checks() -> None:
    check_limits({"messages": "x" * 50, "system": 5, "tools": {"a": 1}}, Limits(max_messages=1))
    check_limits({"messages": [1, None, "s", {"content": 3}]}, Limits(max_blocks=1))


# ------------------------------------------------------------ check_limits


def test_messages_limit() -> None:
    messages = [{"role": "user", "content": "x"}] * 12_000
    with pytest.raises(InvalidRequest) as info:
        check_limits(request(messages=messages), Limits())
    assert info.value.message == (
        "request exceeds the gateway's limit max_messages=10000 (got 12000 messages)"
    )
    assert info.value.status == 400
    assert info.value.to_body()["error"]["type"] == "invalid_request_error"
    check_limits(request(messages=messages[:10_000]), Limits())


def test_blocks_limit_adds_up_system_messages_and_tools() -> None:
    body = request(
        system=[{"type": "text", "text": "s"}] * 2,
        messages=[{"role": "user", "content": [{"type": "text", "text": "m"}] * 2}] * 2,
        tools=[{"name": "t"}] * 2,
    )
    check_limits(body, Limits(max_blocks=8))
    with pytest.raises(InvalidRequest) as info:
        check_limits(body, Limits(max_blocks=7))
    assert info.value.message == (
        "request exceeds the gateway's limit max_blocks=7 (got 8 content blocks)"
    )


def test_blocks_limit_default() -> None:
    body = request(
        messages=[{"role": "user", "content": [{"type": "text", "text": "x"}] * 50_001}] * 2
    )
    with pytest.raises(InvalidRequest, match=r"max_blocks=100000 \(got 100002 content blocks\)"):
        check_limits(body, Limits())


def test_depth_limit() -> None:
    # the request object is level 1, messages 2, a message 3, its content 4
    body = request(messages=[{"role": "user", "content": [{"type": "x", "v": nested(6)}]}])
    assert json_depth(body) == 11
    check_limits(body, Limits(max_json_depth=11))
    with pytest.raises(InvalidRequest) as info:
        check_limits(body, Limits(max_json_depth=10))
    assert info.value.message == (
        "request exceeds the gateway's limit max_json_depth=10 (got more than 10 levels of nesting)"
    )


# ----------------------------------------------------------- parse_request


def test_parse_request_applies_the_limits() -> None:
    raw = encode(request(messages=[{"role": "user", "content": "x"}] * 3))
    assert parse_request(raw)["messages"][2]["content"] == "x"
    with pytest.raises(InvalidRequest, match=r"max_messages=2 \(got 3 messages\)"):
        parse_request(raw, limits=Limits(max_messages=2))


@pytest.mark.parametrize("levels", [65, 500, 5_000, 100_000])
def test_parse_request_rejects_deep_json_with_the_depth_error(levels: int) -> None:
    raw = b'{"model":"m","max_tokens":1,"messages":[],"x":' + b"[" * levels + b"]" * levels + b"}"
    with pytest.raises(InvalidRequest) as info:
        parse_request(raw)
    assert info.value.message.startswith("request exceeds the gateway's limit max_json_depth=64 (")
    # the whole pipeline too; and an unterminated deep body is still a clean 400
    with pytest.raises(InvalidRequest):
        rewrite(raw)
    with pytest.raises(InvalidRequest):
        parse_request(b"[" * levels)


def test_parse_request_turns_the_parsers_recursion_error_into_the_depth_error() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(b'{"a":' * 200_000)
    assert info.value.message == (
        "request exceeds the gateway's limit max_json_depth=64 (nesting too deep to parse)"
    )


def test_depth_at_the_limit_parses() -> None:
    # request (1) > x (2..64): 63 nested lists under the top-level object
    raw = b'{"model":"m","max_tokens":1,"messages":[],"x":' + b"[" * 63 + b"]" * 63 + b"}"
    assert json_depth(parse_request(raw)) == 64


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1" + b"0" * 400 + b".0"])
def test_numbers_beyond_a_double_are_rejected(number: bytes) -> None:
    # Python reads them as infinity, which JSON cannot carry: the canonical
    # encoder would raise on it further down the pipeline.
    raw = b'{"model":"m","max_tokens":1,"messages":[],"temperature":' + number + b"}"
    with pytest.raises(InvalidRequest, match=r"not valid JSON: number .* is out of range"):
        parse_request(raw)


def test_ordinary_floats_still_parse() -> None:
    raw = b'{"model":"m","max_tokens":1,"messages":[],"t":0.7,"u":-1.5e-3,"v":1e308}'
    assert parse_request(raw)["t"] == 0.7


# ----------------------------------------------------- real requests, cost


def test_every_recorded_request_is_well_within_the_limits(all_records: list[Any]) -> None:
    limits = Limits()
    for record in all_records:
        body = parse_request(record.raw)
        assert json_depth(body) <= limits.max_json_depth // 4, record.label
        assert len(body["messages"]) <= limits.max_messages // 100, record.label
        assert count_blocks(body) <= limits.max_blocks // 1000, record.label


def test_checking_a_2mb_request_costs_well_under_parsing_it(all_records: list[Any]) -> None:
    record = max(all_records, key=lambda r: len(r.raw))
    body = record.body
    turns = body["messages"]
    body["messages"] = turns * (2_000_000 // len(encode(turns)) + 1)
    raw = encode(body)
    assert len(raw) >= 2_000_000
    parsed = json.loads(raw)
    parse = check = float("inf")
    for _ in range(10):  # interleaved, so both see the same load on the machine
        start = time.perf_counter()
        json.loads(raw)
        middle = time.perf_counter()
        check_limits(parsed, Limits())
        parse, check = min(parse, middle - start), min(check, time.perf_counter() - middle)
    # typically a fifth of the parse; twice would mean a walk gone quadratic
    assert check < 2 * parse, f"check_limits {check * 1e3:.1f} ms, json.loads {parse * 1e3:.1f} ms"
