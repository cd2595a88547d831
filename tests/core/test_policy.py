"""The four policies: what each does to the block, and that nothing else moves."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixgate.core.attribution import HEADER_NAME, Attribution, detect, parse_header
from prefixgate.core.pipeline import RewriteOptions, rewrite
from prefixgate.core.policy import (
    METADATA_HEADER,
    Policy,
    apply_policy,
    metadata_value,
    normalized_line,
)

PROPERTY = settings(max_examples=200, deadline=None)

LINE = "x-anthropic-billing-header: cc_version=2.1.37.0d9; cc_entrypoint=cli; cch=fa690;"
SUBAGENT_LINE = (
    "x-anthropic-billing-header: cc_version=2.1.197.3ab; cc_entrypoint=sdk-cli; "
    "cc_is_subagent=true; cch=a51f2;"
)
IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."
EPHEMERAL = {"type": "ephemeral"}


def claude_code_body(line: str = LINE) -> dict[str, Any]:
    """A body shaped like Claude Code's, with unknown fields and cache markers."""
    return {
        "model": "claude-opus-4-8",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi", "cache_control": EPHEMERAL}],
            }
        ],
        "system": [
            {"type": "text", "text": line},
            {"type": "text", "text": IDENTITY, "cache_control": EPHEMERAL},
            {
                "type": "text",
                "text": "Main prompt.",
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            },
        ],
        "tools": [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}],
        "metadata": {"user_id": "u"},
        "max_tokens": 100,
        "x_unknown_field": {"nested": [1, 2.5, None, True]},
        "stream": True,
    }


def found_in(body: dict[str, Any]) -> Attribution:
    found = detect(body)
    assert found is not None
    return found


# ------------------------------------------------------------------ Policy.parse


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("strip", Policy.STRIP),
        ("normalize", Policy.NORMALIZE),
        ("preserve_as_metadata", Policy.PRESERVE_AS_METADATA),
        ("preserve-as-metadata", Policy.PRESERVE_AS_METADATA),
        ("Preserve-As-Metadata", Policy.PRESERVE_AS_METADATA),
        ("passthrough", Policy.PASSTHROUGH),
        ("  STRIP\n", Policy.STRIP),
    ],
)
def test_policy_parse_accepts_names(text: str, policy: Policy) -> None:
    assert Policy.parse(text) is policy


@pytest.mark.parametrize("junk", ["", "strp", "remove", "pass through", "strip;", "metadata"])
def test_policy_parse_rejects_junk_listing_the_names(junk: str) -> None:
    with pytest.raises(ValueError) as info:
        Policy.parse(junk)
    message = str(info.value)
    assert repr(junk) in message
    for name in ("strip", "normalize", "preserve_as_metadata", "passthrough"):
        assert name in message


# ------------------------------------------------------------------------ strip


def test_strip_removes_the_first_block_and_nothing_else() -> None:
    body = claude_code_body()
    before = copy.deepcopy(body)
    result = apply_policy(body, found_in(body), Policy.STRIP)
    assert body == before  # input untouched
    assert result.changed is True
    assert result.policy is Policy.STRIP
    assert result.upstream_headers == {}
    expected = copy.deepcopy(before)
    del expected["system"][0]
    assert result.body == expected
    assert list(result.body) == list(before)  # key order
    # cache_control markers kept exactly where they were
    assert result.body["system"][0]["cache_control"] == EPHEMERAL
    assert result.body["system"][1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert result.body["messages"][0]["content"][0]["cache_control"] == EPHEMERAL
    assert result.body["x_unknown_field"] == {"nested": [1, 2.5, None, True]}


def test_strip_keeps_the_rest_of_a_first_block_with_its_keys() -> None:
    body = claude_code_body()
    body["system"][0] = {
        "type": "text",
        "text": LINE + "\n" + IDENTITY,
        "cache_control": EPHEMERAL,
        "citations": None,
    }
    result = apply_policy(body, found_in(body), Policy.STRIP)
    assert result.body["system"][0] == {
        "type": "text",
        "text": IDENTITY,
        "cache_control": EPHEMERAL,
        "citations": None,
    }
    assert list(result.body["system"][0]) == ["type", "text", "cache_control", "citations"]
    assert result.body["system"][1:] == body["system"][1:]


@pytest.mark.parametrize(
    ("system", "after"),
    [
        (LINE + "\n" + IDENTITY + "\nMore.", IDENTITY + "\nMore."),
        (LINE + "\r\n" + IDENTITY, IDENTITY),
        (LINE + IDENTITY, IDENTITY),  # glued
        (LINE, ""),
        (LINE + "\n\n" + IDENTITY, "\n" + IDENTITY),  # only the header's own line break
    ],
)
def test_strip_on_a_string_system(system: str, after: str) -> None:
    body = {"model": "m", "system": system, "messages": [], "max_tokens": 1}
    result = apply_policy(body, found_in(body), Policy.STRIP)
    assert result.body == {"model": "m", "system": after, "messages": [], "max_tokens": 1}


def test_strip_leaves_quoted_headers_in_messages_and_tool_results() -> None:
    body = claude_code_body()
    body["messages"] = [
        {"role": "user", "content": LINE},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Bash"}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t", "content": LINE + "\n"}],
        },
    ]
    body["system"].append({"type": "text", "text": LINE})
    result = apply_policy(body, found_in(body), Policy.STRIP)
    assert result.body["messages"] == body["messages"]
    assert result.body["system"][-1] == {"type": "text", "text": LINE}
    assert len(result.body["system"]) == len(body["system"]) - 1


@pytest.mark.parametrize("policy", list(Policy))
def test_no_block_means_no_change_under_every_policy(policy: Policy) -> None:
    body = claude_code_body()
    del body["system"][0]
    result = apply_policy(body, None, policy, metadata_header=METADATA_HEADER)
    assert result.changed is False
    assert result.body == body
    assert result.attribution is None
    assert result.upstream_headers == {}


# -------------------------------------------------------------------- normalize


def test_normalize_keeps_only_the_entrypoint_by_default() -> None:
    found = parse_header(SUBAGENT_LINE)
    assert found is not None
    assert normalized_line(found) == "x-anthropic-billing-header: cc_entrypoint=sdk-cli;"


def test_normalize_drops_the_version_suffix_when_the_version_is_kept() -> None:
    found = parse_header(SUBAGENT_LINE)
    assert found is not None
    assert (
        normalized_line(found, ("cc_entrypoint", "cc_version"))
        == "x-anthropic-billing-header: cc_entrypoint=sdk-cli; cc_version=2.1.197;"
    )
    odd = parse_header("x-anthropic-billing-header: cc_version=2.1; cc_entrypoint=cli;")
    assert odd is not None
    assert normalized_line(odd, ("cc_version",)) == "x-anthropic-billing-header: cc_version=2.1;"


def test_normalize_of_a_block_without_kept_fields() -> None:
    found = parse_header('x-anthropic-billing-header: {"cc_is_subagent":true}')
    assert found is not None
    line = normalized_line(found)
    assert line == "x-anthropic-billing-header: normalized=true;"
    assert "subagent" not in line
    # The fixed line is itself a well-formed block, so a second gateway in a
    # chain still recognises it.
    again = parse_header(line)
    assert again is not None and dict(again.fields) == {"normalized": "true"}


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        (LINE + "\n" + IDENTITY, "x-anthropic-billing-header: cc_entrypoint=cli;\n" + IDENTITY),
        (LINE + IDENTITY, "x-anthropic-billing-header: cc_entrypoint=cli;" + IDENTITY),
        (LINE, "x-anthropic-billing-header: cc_entrypoint=cli;"),
    ],
)
def test_normalize_on_a_string_system_keeps_the_separator(system: str, expected: str) -> None:
    body = {"model": "m", "system": system, "messages": [], "max_tokens": 1}
    result = apply_policy(body, found_in(body), Policy.NORMALIZE)
    assert result.body["system"] == expected
    assert result.changed is True


def test_normalize_replaces_only_the_first_block_text() -> None:
    body = claude_code_body()
    result = apply_policy(body, found_in(body), Policy.NORMALIZE)
    expected = copy.deepcopy(body)
    expected["system"][0]["text"] = "x-anthropic-billing-header: cc_entrypoint=cli;"
    assert result.body == expected
    assert result.upstream_headers == {}


def test_normalize_twice_is_a_no_op() -> None:
    body = claude_code_body()
    once = apply_policy(body, found_in(body), Policy.NORMALIZE).body
    twice = apply_policy(once, found_in(once), Policy.NORMALIZE)
    assert twice.changed is False
    assert twice.body == once


@PROPERTY
@given(
    suffix=st.text(alphabet="0123456789abcdef", min_size=3, max_size=3),
    cch=st.none() | st.text(alphabet="0123456789abcdef", min_size=5, max_size=5),
    subagent=st.sampled_from([None, "true", "false"]),
    prev=st.none() | st.text(alphabet="ABCDEFabcdef0123456789", min_size=4, max_size=12),
    trailing=st.booleans(),
)
def test_normalize_is_the_same_line_whatever_the_volatile_fields(
    suffix: str, cch: str | None, subagent: str | None, prev: str | None, trailing: bool
) -> None:
    pairs = [f"cc_version=2.1.197.{suffix}", "cc_entrypoint=sdk-cli"]
    if subagent is not None:
        pairs.append(f"cc_is_subagent={subagent}")
    if cch is not None:
        pairs.append(f"cch={cch}")
    if prev is not None:
        pairs.append(f"cc_prev_req=req_{prev}")
    line = f"{HEADER_NAME}: " + "; ".join(pairs) + (";" if trailing else "")
    found = parse_header(line)
    assert found is not None
    assert normalized_line(found) == "x-anthropic-billing-header: cc_entrypoint=sdk-cli;"
    assert (
        normalized_line(found, ("cc_version", "cc_entrypoint"))
        == "x-anthropic-billing-header: cc_version=2.1.197; cc_entrypoint=sdk-cli;"
    )


def test_normalize_gives_one_line_per_entrypoint_over_the_corpus(
    corpus_records: dict[str, list[Any]],
) -> None:
    expected_entrypoint = {
        "claude-code-2.1.197.jsonl": "sdk-cli",
        "claude-code-2.1.197-cch-per-request.jsonl": "sdk-cli",
        "claude-code-2.1.197-interactive.jsonl": "cli",
    }
    for name, records in corpus_records.items():
        originals = set()
        lines = set()
        for record in records:
            out = rewrite(record.raw, RewriteOptions(policy=Policy.NORMALIZE))
            assert out.changed, record.label
            forwarded = json.loads(out.body)
            originals.add(record.body["system"][0]["text"])
            lines.add(forwarded["system"][0]["text"])
            # everything but that one text is as sent
            expected = record.body
            expected["system"][0]["text"] = forwarded["system"][0]["text"]
            assert forwarded == expected, record.label
            # and the bytes too: only the old line's bytes are replaced
            old = json.dumps(record.body["system"][0]["text"]).encode()
            new = json.dumps(forwarded["system"][0]["text"]).encode()
            assert record.raw.count(old) == 1
            assert out.body == record.raw.replace(old, new), record.label
        assert lines == {f"x-anthropic-billing-header: cc_entrypoint={expected_entrypoint[name]};"}
        assert len(originals) > 1, name  # the corpus really had several blocks


def test_normalize_collapses_plain_and_cch_files_to_the_same_body(
    plain_records: list[Any], cch_records: list[Any]
) -> None:
    for plain, cch in zip(plain_records, cch_records, strict=True):
        assert plain.body != cch.body
        a = rewrite(plain.raw, RewriteOptions(policy=Policy.NORMALIZE))
        b = rewrite(cch.raw, RewriteOptions(policy=Policy.NORMALIZE))
        # The cch file is spaced like Python's json.dumps, so compare values.
        assert json.loads(a.body) == json.loads(b.body), plain.label


# --------------------------------------------------------- preserve_as_metadata


def test_preserve_as_metadata_removes_the_block_and_sends_a_header_when_asked() -> None:
    body = claude_code_body(SUBAGENT_LINE)
    stripped = apply_policy(body, found_in(body), Policy.STRIP).body
    result = apply_policy(
        body, found_in(body), Policy.PRESERVE_AS_METADATA, metadata_header=METADATA_HEADER
    )
    assert result.body == stripped
    assert result.changed is True
    assert result.policy is Policy.PRESERVE_AS_METADATA
    assert dict(result.upstream_headers) == {
        "x-prefixgate-attribution": "cc_version=2.1.197.3ab; cc_entrypoint=sdk-cli; "
        "cc_is_subagent=true; cch=a51f2;"
    }
    assert result.attribution is not None
    assert dict(result.attribution.fields)["cch"] == "a51f2"


def test_preserve_as_metadata_sends_no_header_unless_configured() -> None:
    body = claude_code_body()
    result = apply_policy(body, found_in(body), Policy.PRESERVE_AS_METADATA)
    assert result.upstream_headers == {}
    assert result.body["system"][0]["text"] == IDENTITY
    custom = apply_policy(
        body, found_in(body), Policy.PRESERVE_AS_METADATA, metadata_header="x-attr"
    )
    assert dict(custom.upstream_headers) == {
        "x-attr": "cc_version=2.1.37.0d9; cc_entrypoint=cli; cch=fa690;"
    }


def test_metadata_value_of_the_json_form() -> None:
    found = parse_header('x-anthropic-billing-header: {"cc_is_subagent":true,"n":2}')
    assert found is not None
    assert metadata_value(found) == "cc_is_subagent=true; n=2;"


def test_metadata_value_drops_line_breaks_smuggled_in_json_keys() -> None:
    found = parse_header(
        'x-anthropic-billing-header: {"a\\r\\nInjected: 1":"x","b":"y\\nz","c\\u2028":"\\u0085"}'
    )
    assert found is not None
    value = metadata_value(found)
    assert "\r" not in value and "\n" not in value
    assert value == "aInjected: 1=x; b=yz; c=;"


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=4,
)


@settings(PROPERTY, max_examples=100)
@given(payload=st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4))
def test_metadata_value_never_holds_control_characters(payload: dict[str, Any]) -> None:
    line = f"{HEADER_NAME}: " + json.dumps(payload)
    found = parse_header(line)
    assert found is not None
    assert dict(found.fields) == payload
    value = metadata_value(found)
    assert not re.search(r"[\x00-\x1f\x7f\x85\u2028\u2029]", value), value


# ------------------------------------------------------------------ passthrough


def test_passthrough_leaves_the_body_alone() -> None:
    body = claude_code_body()
    found = found_in(body)
    result = apply_policy(body, found, Policy.PASSTHROUGH, metadata_header=METADATA_HEADER)
    assert result.changed is False
    assert result.body == body
    assert result.attribution == found
    assert result.upstream_headers == {}


def test_passthrough_forwards_the_very_same_bytes(all_records: list[Any]) -> None:
    for record in all_records:
        out = rewrite(record.raw, RewriteOptions(policy=Policy.PASSTHROUGH))
        assert out.body is record.raw, record.label
        assert out.changed is False
        assert out.attribution is not None
