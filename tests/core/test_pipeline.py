"""The rewrite pipeline: request checks, byte-exact splicing, and the whole run."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixgate.core.attribution import HEADER_NAME
from prefixgate.core.canonical import digest
from prefixgate.core.errors import InvalidRequest
from prefixgate.core.pipeline import (
    RewriteOptions,
    parse_request,
    rewrite,
    splice_system,
)
from prefixgate.core.policy import METADATA_HEADER, Policy

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LINE = "x-anthropic-billing-header: cc_version=2.1.37.0d9; cc_entrypoint=cli; cch=fa690;"
IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."

Encoder = Callable[[Any], bytes]
STYLES: dict[str, Encoder] = {
    "js": lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode(),
    "python": lambda v: json.dumps(v, ensure_ascii=False).encode(),
    "js-ascii": lambda v: json.dumps(v, separators=(",", ":")).encode(),
    "python-ascii": lambda v: json.dumps(v).encode(),
}


def request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-opus-4-8",
        "messages": [{"role": "user", "content": "hi"}],
        "system": [
            {"type": "text", "text": LINE},
            {"type": "text", "text": IDENTITY, "cache_control": {"type": "ephemeral"}},
        ],
        "max_tokens": 64,
    }
    body.update(overrides)
    return body


def encode(body: Any) -> bytes:
    return STYLES["js"](body)


# ------------------------------------------------------------- parse_request


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"model=x", "not valid JSON"),
        (b'{"model": "m"', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"model": "m", "messages": [], "max_tokens": 1, "temperature": NaN}', "not valid JSON"),
        (b'{"model": "m", "messages": [], "max_tokens": Infinity}', "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'[{"model": "m"}]', "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
    ],
)
def test_parse_request_rejects_bodies_that_are_not_json_objects(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(raw)
    assert message in info.value.message
    assert info.value.status == 400
    assert info.value.to_body()["error"]["type"] == "invalid_request_error"


def _without(key: str) -> dict[str, Any]:
    body = request()
    del body[key]
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_without("model"), "model"),
        (request(model=""), "model"),
        (request(model=None), "model"),
        (request(model=7), "model"),
        (_without("messages"), "messages"),
        (request(messages={"role": "user", "content": "hi"}), "messages"),
        (request(messages="hi"), "messages"),
        (request(messages=[{"content": "hi"}]), "messages.0"),
        (
            request(messages=[{"role": "user", "content": "a"}, {"role": 1, "content": "b"}]),
            "messages.1",
        ),
        (request(messages=["hi"]), "messages.0"),
        (request(messages=[{"role": "user"}]), "messages.0.content"),
        (request(messages=[{"role": "user", "content": None}]), "messages.0.content"),
        (request(messages=[{"role": "user", "content": 3}]), "messages.0.content"),
        (request(messages=[{"role": "user", "content": {"type": "text"}}]), "messages.0.content"),
        (_without("max_tokens"), "max_tokens"),
        (request(max_tokens=0), "max_tokens"),
        (request(max_tokens=-5), "max_tokens"),
        (request(max_tokens=True), "max_tokens"),
        (request(max_tokens=False), "max_tokens"),
        (request(max_tokens="64"), "max_tokens"),
        (request(max_tokens=64.0), "max_tokens"),
        (request(stream="true"), "stream"),
        (request(stream=1), "stream"),
        (request(stream=None), "stream"),
        (request(system={"type": "text", "text": "x"}), "system"),
        (request(system=5), "system"),
        (request(tools={"name": "Bash"}), "tools"),
    ],
)
def test_parse_request_names_the_bad_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(encode(body))
    assert info.value.message.startswith(field + ":"), info.value.message


def test_max_tokens_may_be_missing_when_not_required() -> None:
    body = _without("max_tokens")
    assert parse_request(encode(body), require_max_tokens=False) == body
    with pytest.raises(InvalidRequest, match="max_tokens"):
        parse_request(encode(body))
    # ...but a present value must still be sane
    with pytest.raises(InvalidRequest, match="max_tokens: must be at least 1"):
        parse_request(encode(request(max_tokens=0)), require_max_tokens=False)


def test_parse_request_accepts_a_minimal_and_a_full_request() -> None:
    minimal = {"model": "m", "messages": [], "max_tokens": 1}
    assert parse_request(encode(minimal)) == minimal
    full = request(stream=False, tools=[], system="plain", metadata={"user_id": "u"})
    full["messages"] = [
        {"role": "user", "content": [{"type": "text", "text": "a"}]},
        {"role": "system", "content": "mid-conversation system message"},
    ]
    assert parse_request(encode(full)) == full


# -------------------------------------------------------------- splice_system


def strip_first_block(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "system": body["system"][1:]}


@pytest.mark.parametrize("style", list(STYLES))
def test_splice_system_keeps_every_other_byte(style: str) -> None:
    enc = STYLES[style]
    old = request(
        messages=[{"role": "user", "content": 'caf\u00e9 \u2603 \U0001f600 "q" \\ </>'}],
        metadata={"user_id": "\u00fc"},
        temperature=0.5,
        stream=True,
    )
    new = strip_first_block(old)
    raw = enc(old)
    assert splice_system(raw, old, new) == enc(new)


def test_splice_system_with_a_string_system() -> None:
    old = request(system=LINE + "\n" + IDENTITY)
    new = {**old, "system": IDENTITY}
    for enc in STYLES.values():
        assert splice_system(enc(old), old, new) == enc(new)


def test_splice_system_falls_back_for_pretty_printed_json() -> None:
    old = request(metadata={"user_id": "u"}, stream=False, zeta=[1, {"b": 2, "a": 1}])
    new = strip_first_block(old)
    raw = json.dumps(old, indent=2).encode()
    out = splice_system(raw, old, new)
    assert json.loads(out) == new
    assert list(json.loads(out)) == list(old)  # key order kept
    assert list(json.loads(out)["zeta"][1]) == ["b", "a"]


def test_splice_system_falls_back_when_the_system_value_occurs_twice() -> None:
    old = request()
    old["metadata"] = {"system": old["system"]}  # same key and value nested elsewhere
    new = strip_first_block(old)
    out = splice_system(encode(old), old, new)
    parsed = json.loads(out)
    assert parsed == new
    assert parsed["metadata"]["system"] == old["system"]


def test_splice_system_ignores_the_system_text_quoted_inside_a_string() -> None:
    old = request()
    quoted = encode({"system": old["system"]}).decode()
    old["messages"] = [{"role": "user", "content": quoted}]
    new = strip_first_block(old)
    out = splice_system(encode(old), old, new)
    assert out == encode(new)
    assert json.loads(out)["messages"][0]["content"] == quoted


# ------------------------------------------------------------------- rewrite


def test_rewrite_without_a_block_returns_the_same_bytes() -> None:
    raw = encode(request(system=[{"type": "text", "text": IDENTITY}]))
    for policy in Policy:
        out = rewrite(raw, RewriteOptions(policy=policy))
        assert out.body is raw
        assert out.changed is False
        assert out.attribution is None
        assert out.segments.attribution is None


def test_rewrite_strip() -> None:
    body = request(stream=True)
    raw = encode(body)
    out = rewrite(raw)
    assert out.policy is Policy.STRIP
    assert out.changed is True
    assert out.body == encode(strip_first_block(body))
    assert out.parsed == strip_first_block(body)
    assert out.model == "claude-opus-4-8"
    assert out.stream is True
    assert out.attribution is not None and out.attribution.header == LINE
    assert out.segments.attribution is None
    assert out.upstream_headers == {}
    assert rewrite(encode(request())).stream is False
    assert rewrite(encode(request(stream=False))).stream is False


def test_rewrite_preserve_as_metadata_header() -> None:
    raw = encode(request())
    out = rewrite(
        raw,
        RewriteOptions(policy=Policy.PRESERVE_AS_METADATA, metadata_header=METADATA_HEADER),
    )
    assert out.body == encode(strip_first_block(request()))
    assert dict(out.upstream_headers) == {
        METADATA_HEADER: "cc_version=2.1.37.0d9; cc_entrypoint=cli; cch=fa690;"
    }
    bare = rewrite(raw, RewriteOptions(policy=Policy.PRESERVE_AS_METADATA))
    assert bare.upstream_headers == {}
    assert bare.body == out.body


def test_rewrite_segments_the_block_apart_under_every_policy() -> None:
    raw = encode(request())
    outs = {p: rewrite(raw, RewriteOptions(policy=p)) for p in Policy}
    assert outs[Policy.STRIP].segments.attribution is None
    assert outs[Policy.PRESERVE_AS_METADATA].segments.attribution is None
    assert outs[Policy.PASSTHROUGH].segments.attribution == digest(LINE)
    assert outs[Policy.NORMALIZE].segments.attribution == digest(
        "x-anthropic-billing-header: cc_entrypoint=cli;"
    )
    systems = {out.segments.system for out in outs.values()}
    assert len(systems) == 1  # the block never enters the system hash
    assert {out.key.policy for out in outs.values()} == {p.value for p in Policy}
    assert len({out.key.hex for out in outs.values()}) == 4


def test_rewrite_options_reach_the_key() -> None:
    raw = encode(request())
    out = rewrite(raw, RewriteOptions(provider="local:llama", tenant="team-a"))
    assert out.key.provider == "local:llama"
    assert out.key.tenant == "team-a"
    assert out.key.model == "claude-opus-4-8"
    assert out.key.policy == "strip"
    assert out.key.hex != rewrite(raw).key.hex


def test_rewrite_count_tokens_style_request() -> None:
    body = request()
    del body["max_tokens"]
    out = rewrite(encode(body), RewriteOptions(require_max_tokens=False))
    assert out.parsed == strip_first_block(body)
    with pytest.raises(InvalidRequest, match="max_tokens"):
        rewrite(encode(body))


def test_rewrite_keys_and_forwards_a_lone_surrogate_in_a_message() -> None:
    # JavaScript strings may hold half of a surrogate pair (a cut emoji);
    # JSON.stringify writes it as an escape. The gateway must not crash on it.
    raw = encode(request()).replace(b'"content":"hi"', b'"content":"cut \\ud83d"')
    out = rewrite(raw)
    assert out.parsed["messages"][0]["content"] == "cut \ud83d"
    assert b'"content":"cut \\ud83d"' in out.body
    assert out.key == rewrite(encode(request())).key


def test_rewrite_with_a_lone_surrogate_in_the_system_prompt() -> None:
    raw = encode(request()).replace(IDENTITY.encode(), IDENTITY.encode() + b" \\ud83d")
    try:
        out = rewrite(raw)
    except InvalidRequest:
        return  # a clean 400 is acceptable too
    assert json.loads(out.body)["system"] == [
        {"type": "text", "text": IDENTITY + " \ud83d", "cache_control": {"type": "ephemeral"}}
    ]


# --------------------------------------------------------------------- corpus

_SYSTEM_OPEN = re.compile(rb'"system":\s*\[')


def without_first_system_element(raw: bytes) -> tuple[bytes, bytes]:
    """``raw`` with the first element of ``system`` (and its separator) cut out.

    Found by scanning the bytes, independently of how the gateway encodes.
    Returns the expected bytes and the element that was cut.
    """
    opening = _SYSTEM_OPEN.search(raw)
    assert opening is not None
    start = opening.end()
    end = raw.index(b"}", start) + 1  # the block holds no braces
    after = re.compile(rb",\s*").match(raw, end)
    assert after is not None
    return raw[:start] + raw[after.end() :], raw[start:end]


def test_strip_forwards_the_corpus_bytes_minus_only_the_block(all_records: list[Any]) -> None:
    assert len(all_records) == 42
    for record in all_records:
        out = rewrite(record.raw)
        assert out.attribution is not None, record.label
        expected, element = without_first_system_element(record.raw)
        assert json.loads(element) == {"type": "text", "text": out.attribution.header}
        assert element.count(HEADER_NAME.encode()) == 1
        assert out.body == expected, record.label


def test_strip_output_of_the_corpus_parses_to_the_request_minus_the_block(
    all_records: list[Any],
) -> None:
    for record in all_records:
        body = record.body
        out = rewrite(record.raw)
        assert out.changed is True
        assert json.loads(out.body) == strip_first_block(body), record.label
        assert list(json.loads(out.body)) == list(body)
        system = json.loads(out.body)["system"]
        assert not any(HEADER_NAME in block["text"] for block in system), record.label


def test_corpus_request_shapes(all_records: list[Any]) -> None:
    for record in all_records:
        assert record.method == "POST"
        assert record.path.startswith("/v1/messages")
        out = rewrite(record.raw)
        assert out.model == "claude-opus-4-8"
        assert out.stream is True
        assert out.attribution is not None
        assert out.attribution.location == "block"
        assert out.attribution.whole_block is True


# ----------------------------------------------------------------- properties

HEX = "0123456789abcdef"
TEXT = st.text(max_size=24)
QUOTED = st.sampled_from(
    [
        LINE,
        LINE + "\n" + IDENTITY,
        f"{HEADER_NAME}: cc_version=2.1.88.e09; cc_entrypoint=sdk-cli; cch=00000;",
        f'{HEADER_NAME}: {{"cc_is_subagent":true}}',
        f"see {LINE}",
    ]
)
MESSAGE_TEXT = TEXT | QUOTED | st.builds(str.__add__, QUOTED, TEXT)
CACHE = st.sampled_from([None, {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}])
JSON_LEAF = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | TEXT
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=5,
)


@st.composite
def text_blocks(draw: st.DrawFn, text: st.SearchStrategy[str] = MESSAGE_TEXT) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": draw(text)}
    cache = draw(CACHE)
    if cache is not None:
        block["cache_control"] = cache
    return block


CONTENT_BLOCK = st.one_of(
    text_blocks(),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_use"),
            "id": TEXT,
            "name": TEXT,
            "input": st.dictionaries(TEXT, JSON_VALUE, max_size=3),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_result"),
            "tool_use_id": TEXT,
            "content": MESSAGE_TEXT | st.lists(text_blocks(), max_size=2),
        }
    ),
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system"]),
        "content": MESSAGE_TEXT | st.lists(CONTENT_BLOCK, min_size=1, max_size=3),
    }
)
TOOL = st.fixed_dictionaries(
    {
        "name": TEXT | st.builds("mcp__{}__{}".format, TEXT, TEXT),
        "description": MESSAGE_TEXT,
        "input_schema": st.fixed_dictionaries(
            {
                "type": st.just("object"),
                "properties": st.dictionaries(
                    TEXT, st.fixed_dictionaries({"type": st.just("string")}), max_size=3
                ),
            }
        ),
    }
)


@st.composite
def headers(draw: st.DrawFn) -> tuple[str, bool]:
    """An attribution header and whether it may be glued to the next text."""
    if draw(st.integers(0, 5)) == 0:
        return f"{HEADER_NAME}: " + json.dumps({"cc_is_subagent": draw(st.booleans())}), False
    minor = draw(st.integers(0, 400))
    version = f"2.1.{minor}." + draw(st.text(alphabet=HEX, min_size=3, max_size=3))
    pairs = [
        f"cc_version={version}",
        "cc_entrypoint="
        + draw(st.sampled_from(["cli", "sdk-cli", "claude-vscode", "claude-desktop-3p"])),
    ]
    if draw(st.booleans()):
        pairs.append("cc_is_subagent=" + draw(st.sampled_from(["true", "false"])))
    if draw(st.booleans()):
        pairs.append("cch=" + draw(st.text(alphabet=HEX, min_size=5, max_size=5)))
    if draw(st.booleans()):
        pairs.append("cc_future_field=" + draw(st.text(alphabet=HEX + "-_", max_size=8)))
    trailing = draw(st.booleans())
    return f"{HEADER_NAME}: " + "; ".join(pairs) + (";" if trailing else ""), trailing


@st.composite
def systems_with_block(draw: st.DrawFn) -> tuple[Any, Any]:
    """(system with the block at its head, the same system without the block)."""
    header, can_glue = draw(headers())
    rest_blocks = draw(st.lists(text_blocks(TEXT | QUOTED), max_size=3))
    rest_text = draw(MESSAGE_TEXT)
    forms = ["block", "block_more", "string_nl", "string_only"]
    if can_glue:
        forms.append("string_glued")
    form = draw(st.sampled_from(forms))
    if form == "block":
        return [{"type": "text", "text": header}, *rest_blocks], rest_blocks
    if form == "block_more":
        first = draw(text_blocks(st.just(rest_text)))
        with_block = [{**first, "text": header + "\n" + rest_text}, *rest_blocks]
        # A block left empty is dropped (an empty text block is not valid).
        return with_block, [first, *rest_blocks] if rest_text else rest_blocks
    if form == "string_nl":
        return header + "\n" + rest_text, rest_text
    if form == "string_only":
        return header, ""
    return header + "You are" + rest_text, "You are" + rest_text


@st.composite
def requests_with_block(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """(a request with a block, the same request without it), keys in random order."""
    system, stripped = draw(systems_with_block())
    fields: dict[str, Any] = {
        "model": draw(st.text(min_size=1, max_size=12)),
        "messages": draw(st.lists(MESSAGE, max_size=4)),
        "system": system,
        "max_tokens": draw(st.integers(1, 200_000)),
    }
    if draw(st.booleans()):
        fields["tools"] = draw(st.lists(TOOL, max_size=3))
    if draw(st.booleans()):
        fields["metadata"] = {"user_id": draw(TEXT)}
    if draw(st.booleans()):
        fields["stream"] = draw(st.booleans())
    for key, value in draw(
        st.dictionaries(st.text(min_size=1, max_size=6), JSON_VALUE, max_size=2)
    ).items():
        fields.setdefault("x_" + key, value)
    order = draw(st.permutations(list(fields)))
    body = {key: fields[key] for key in order}
    return body, {**body, "system": stripped}


@PROPERTY
@given(pair=requests_with_block(), style=st.sampled_from(list(STYLES)))
def test_strip_changes_nothing_but_the_block_and_passthrough_nothing_at_all(
    pair: tuple[dict[str, Any], dict[str, Any]], style: str
) -> None:
    body, expected = pair
    enc = STYLES[style]
    raw = enc(body)
    out = rewrite(raw)
    assert out.attribution is not None
    assert out.changed is True
    parsed = json.loads(out.body)
    assert parsed == expected
    assert list(parsed) == list(body)
    assert out.body == enc(expected)  # byte-exact: only the block's bytes are gone
    # and passthrough forwards the client's own bytes object
    kept = rewrite(raw, RewriteOptions(policy=Policy.PASSTHROUGH))
    assert kept.body is raw
    assert kept.parsed == body
    assert kept.key == replace(out.key, policy="passthrough")


# -- parsing: the fast parser gives what json.loads gives ------------------------


def _typed(value: Any) -> Any:
    """``value`` with every scalar's type beside it (1 and 1.0 and True compare equal)."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 2)
    | st.integers(min_value=-(2**63) - 2, max_value=-(2**63) + 2)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


def _stdlib(raw: bytes) -> Any:
    return json.loads(raw, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise ValueError(name)


@given(value=_VALUES, ensure_ascii=st.booleans(), indent=st.sampled_from([None, 1]))
@PROPERTY
def test_parse_request_reads_values_as_json_loads_does(
    value: Any, ensure_ascii: bool, indent: int | None
) -> None:
    body = {"model": "m", "max_tokens": 1, "messages": [], "x": value}
    raw = json.dumps(body, ensure_ascii=ensure_ascii, indent=indent).encode(
        "utf-8", "surrogatepass"
    )
    assert _typed(parse_request(raw)) == _typed(_stdlib(raw))


@pytest.mark.parametrize(
    "text",
    [
        '"x": 18446744073709551616',
        '"x": -9223372036854775809',
        '"x": 123456789012345678901234567890',
        '"x": 0.1',
        '"x": 1e5',
        '"x": "\\ud83d"',
        '"x": [[[[1.5]]]]',
    ],
)
def test_parse_request_keeps_big_integers_floats_and_lone_surrogates(text: str) -> None:
    raw = ('{"model": "m", "max_tokens": 1, "messages": [], ' + text + "}").encode()
    assert _typed(parse_request(raw)) == _typed(_stdlib(raw))


def test_parse_request_reads_surrogate_bytes_and_utf16_as_json_loads_does() -> None:
    body = '{"model": "m", "max_tokens": 1, "messages": [], "x": "\ud800"}'
    raw = body.encode("utf-8", "surrogatepass")  # not UTF-8: orjson refuses it
    assert parse_request(raw)["x"] == "\ud800"
    assert parse_request(body.replace("\ud800", "é").encode("utf-16"))["x"] == "é"
