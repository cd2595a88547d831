"""Detection and parsing of the attribution block (every documented form)."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixgate.core.attribution import HEADER_NAME, detect, parse_header, render_fields

PROPERTY = settings(max_examples=200, deadline=None)

# The example lines of the design notes, verbatim, with the fields each must give.
DOCUMENTED_EXAMPLES: list[tuple[str, dict[str, str]]] = [
    (
        "x-anthropic-billing-header: cc_version=2.1.37.0d9; cc_entrypoint=cli; cch=fa690;",
        {"cc_version": "2.1.37.0d9", "cc_entrypoint": "cli", "cch": "fa690"},
    ),
    (
        "x-anthropic-billing-header: cc_version=2.1.84.c8e; cc_entrypoint=cli; cch=da09b;",
        {"cc_version": "2.1.84.c8e", "cc_entrypoint": "cli", "cch": "da09b"},
    ),
    (
        "x-anthropic-billing-header: cc_version=2.1.88.e09; cc_entrypoint=sdk-cli; cch=00000;",
        {"cc_version": "2.1.88.e09", "cc_entrypoint": "sdk-cli", "cch": "00000"},
    ),
    (
        "x-anthropic-billing-header: cc_version=2.1.209.89f; cc_entrypoint=claude-desktop-3p;",
        {"cc_version": "2.1.209.89f", "cc_entrypoint": "claude-desktop-3p"},
    ),
    (
        "x-anthropic-billing-header: cc_version=2.1.197.3ab; cc_entrypoint=sdk-cli; "
        "cc_is_subagent=true;",
        {"cc_version": "2.1.197.3ab", "cc_entrypoint": "sdk-cli", "cc_is_subagent": "true"},
    ),
    (
        "x-anthropic-billing-header: cc_version=2.1.292.652; cc_entrypoint=sdk-cli; "
        "cch=9a0fb; cc_prev_req=req_01Ab; cc_prompt_id=e386dc70-846b-4269-a234-d7b90826119a; "
        "cc_turn_origin=sdk; cc_prompt_index=0; cc_turn_index=2;",
        {
            "cc_version": "2.1.292.652",
            "cc_entrypoint": "sdk-cli",
            "cch": "9a0fb",
            "cc_prev_req": "req_01Ab",
            "cc_prompt_id": "e386dc70-846b-4269-a234-d7b90826119a",
            "cc_turn_origin": "sdk",
            "cc_prompt_index": "0",
            "cc_turn_index": "2",
        },
    ),
]

CLI_LINE = DOCUMENTED_EXAMPLES[0][0]
IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."


def blocks_body(*texts: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 8,
        "system": [{"type": "text", "text": t} for t in texts],
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


def string_body(system: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 8, "system": system, "messages": []}


# ---------------------------------------------------------------- detected forms


@pytest.mark.parametrize(("line", "fields"), DOCUMENTED_EXAMPLES)
def test_every_documented_example_is_detected_as_first_block(
    line: str, fields: dict[str, str]
) -> None:
    found = detect(blocks_body(line, IDENTITY))
    assert found is not None
    assert dict(found.fields) == fields
    assert list(found.fields) == list(fields)  # order as sent
    assert found.header == line
    assert found.removed == line
    assert found.form == "kv"
    assert found.location == "block"
    assert found.whole_block is True
    assert found.glued is False
    assert found.separator == ""


@pytest.mark.parametrize(("line", "fields"), DOCUMENTED_EXAMPLES)
def test_every_documented_example_is_detected_as_first_line_of_a_string(
    line: str, fields: dict[str, str]
) -> None:
    found = detect(string_body(f"{line}\n{IDENTITY}\nMore prompt."))
    assert found is not None
    assert dict(found.fields) == fields
    assert found.header == line
    assert found.removed == line + "\n"
    assert found.separator == "\n"
    assert found.location == "string"
    assert found.whole_block is False
    assert found.glued is False


def test_string_system_glued_to_the_next_text() -> None:
    system = CLI_LINE + IDENTITY
    assert system.startswith("x-anthropic-billing-header: cc_version=2.1.37.0d9;")
    assert "cch=fa690;You are Claude Code" in system
    found = detect(string_body(system))
    assert found is not None
    assert found.glued is True
    assert found.header == CLI_LINE
    assert found.removed == CLI_LINE
    assert system[len(found.removed) :] == IDENTITY
    assert dict(found.fields) == DOCUMENTED_EXAMPLES[0][1]


def test_first_block_with_more_text_after_the_header_line() -> None:
    text = CLI_LINE + "\n" + IDENTITY
    found = detect(blocks_body(text))
    assert found is not None
    assert found.removed == CLI_LINE + "\n"
    assert found.whole_block is False
    assert found.location == "block"


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_every_line_break_ends_the_header(ending: str) -> None:
    found = parse_header(CLI_LINE + ending + "rest")
    assert found is not None
    assert found.header == CLI_LINE
    assert found.removed == CLI_LINE + ending


def test_trailing_blanks_before_the_line_break_belong_to_the_removed_text() -> None:
    found = parse_header(CLI_LINE + " \t\nrest")
    assert found is not None
    assert found.header == CLI_LINE
    assert found.removed == CLI_LINE + " \t\n"


@pytest.mark.parametrize(
    ("line", "fields"),
    [
        (
            "x-anthropic-billing-header: cc_version=2.1.15.abc; cc_entrypoint=cli; cch=00000",
            {"cc_version": "2.1.15.abc", "cc_entrypoint": "cli", "cch": "00000"},
        ),
        (
            "x-anthropic-billing-header: cc_version=2.1.20.d01; cc_entrypoint=sdk-cli",
            {"cc_version": "2.1.20.d01", "cc_entrypoint": "sdk-cli"},
        ),
    ],
)
def test_without_trailing_semicolon_as_in_2_1_15_to_2_1_20(
    line: str, fields: dict[str, str]
) -> None:
    for body, removed in (
        (blocks_body(line, IDENTITY), line),
        (string_body(line + "\n" + IDENTITY), line + "\n"),
        (string_body(line), line),
    ):
        found = detect(body)
        assert found is not None, body
        assert dict(found.fields) == fields
        assert found.header == line
        assert found.removed == removed


def test_without_trailing_semicolon_cannot_be_glued() -> None:
    # Without the final ";" there is no way to tell where the value ends.
    line = "x-anthropic-billing-header: cc_version=2.1.15.abc; cc_entrypoint=cli"
    assert detect(string_body(line + IDENTITY)) is None


def test_json_payload_form() -> None:
    line = 'x-anthropic-billing-header: {"cc_is_subagent":true}'
    for body, removed, location in (
        (blocks_body(line, IDENTITY), line, "block"),
        (string_body(line + "\n" + IDENTITY), line + "\n", "string"),
    ):
        found = detect(body)
        assert found is not None
        assert found.form == "json"
        assert dict(found.fields) == {"cc_is_subagent": True}
        assert found.fields["cc_is_subagent"] is True
        assert found.is_subagent is True
        assert found.entrypoint is None
        assert found.header == line
        assert found.removed == removed
        assert found.location == location


def test_json_payload_with_several_value_types() -> None:
    line = (
        'x-anthropic-billing-header: {"cc_version":"2.1.300.1a2","cc_entrypoint":"cli",'
        '"cc_is_subagent":false,"cc_turn_index":3,"extra":{"a":[1,2]}}'
    )
    found = parse_header(line)
    assert found is not None
    assert dict(found.fields) == {
        "cc_version": "2.1.300.1a2",
        "cc_entrypoint": "cli",
        "cc_is_subagent": False,
        "cc_turn_index": 3,
        "extra": {"a": [1, 2]},
    }
    assert found.is_subagent is False
    assert found.entrypoint == "cli"


def test_unknown_new_fields_are_parsed_too() -> None:
    line = (
        "x-anthropic-billing-header: cc_version=2.1.400.fff; cc_entrypoint=claude-vscode; "
        "cc_new_thing=abc-123; cc.dotted=x; cc_empty=;"
    )
    found = detect(blocks_body(line, IDENTITY))
    assert found is not None
    assert dict(found.fields) == {
        "cc_version": "2.1.400.fff",
        "cc_entrypoint": "claude-vscode",
        "cc_new_thing": "abc-123",
        "cc.dotted": "x",
        "cc_empty": "",
    }
    assert found.removed == line


def test_subagent_and_entrypoint_properties() -> None:
    found = parse_header(DOCUMENTED_EXAMPLES[4][0])
    assert found is not None
    assert found.is_subagent is True
    assert found.entrypoint == "sdk-cli"
    plain = parse_header(CLI_LINE)
    assert plain is not None
    assert plain.is_subagent is False
    assert plain.entrypoint == "cli"
    falsy = parse_header("x-anthropic-billing-header: cc_is_subagent=false;")
    assert falsy is not None
    assert falsy.is_subagent is False


def test_render_fields() -> None:
    assert render_fields({"a": "1", "b": "x"}) == "a=1; b=x;"
    assert render_fields({"sub": True, "n": 3, "o": {"k": [1]}}) == 'sub=true; n=3; o={"k":[1]};'
    assert render_fields({}) == ""


# ------------------------------------------------------------------ not detected


def test_header_in_a_user_message_is_not_detected() -> None:
    body = {
        "model": "m",
        "max_tokens": 8,
        "system": [{"type": "text", "text": IDENTITY}],
        "messages": [
            {"role": "user", "content": CLI_LINE},
            {"role": "user", "content": [{"type": "text", "text": CLI_LINE + "\n" + IDENTITY}]},
        ],
    }
    assert detect(body) is None


def test_header_in_a_tool_result_is_not_detected() -> None:
    body = {
        "model": "m",
        "max_tokens": 8,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": CLI_LINE}],
            }
        ],
    }
    assert detect(body) is None


def test_header_later_in_the_system_prompt_is_not_detected() -> None:
    assert detect(blocks_body(IDENTITY, CLI_LINE)) is None
    assert detect(string_body(IDENTITY + "\n" + CLI_LINE + "\n")) is None
    assert detect(string_body("\n" + CLI_LINE)) is None
    # Only the first block is looked at, even when it is empty.
    assert detect(blocks_body("", CLI_LINE)) is None


@pytest.mark.parametrize(
    "text",
    [
        # Bedrock's refusal quotes the name: not a header.
        "x-anthropic-billing-header is a reserved keyword and may not be used in the system prompt",
        # missing colon
        "x-anthropic-billing-header cc_version=2.1.37.0d9; cc_entrypoint=cli;",
        # prose after the pairs on the same line, without ";"
        "x-anthropic-billing-header: cc_version=2.1.37.0d9 is what the client sends",
        "x-anthropic-billing-header: cc_version=2.1.37.0d9; cc_entrypoint=cli and more",
        # prose after a ";" and a space: glued text never starts with a blank
        "x-anthropic-billing-header: cc_version=1; and more prose",
        # leading blanks
        " x-anthropic-billing-header: cc_version=2.1.37.0d9; cc_entrypoint=cli;",
        "\tx-anthropic-billing-header: cc_version=2.1.37.0d9; cc_entrypoint=cli;",
        # other header names
        "x-anthropic-billing-headers: cc_version=2.1.37.0d9; cc_entrypoint=cli;",
        "x-anthropic-billing: cc_version=2.1.37.0d9; cc_entrypoint=cli;",
        "x-anthropic-beta: cc_version=2.1.37.0d9; cc_entrypoint=cli;",
        "anthropic-billing-header: cc_version=2.1.37.0d9; cc_entrypoint=cli;",
        "my-x-anthropic-billing-header: cc_version=2.1.37.0d9;",
        # no pairs at all
        "x-anthropic-billing-header:",
        "x-anthropic-billing-header: ",
        "x-anthropic-billing-header: hello world",
        "x-anthropic-billing-header: ;",
        "x-anthropic-billing-header: =abc;",
        # JSON that is not an object, or not JSON, or followed by text
        "x-anthropic-billing-header: [1, 2]",
        'x-anthropic-billing-header: "cc_is_subagent"',
        "x-anthropic-billing-header: {cc_is_subagent: true}",
        'x-anthropic-billing-header: {"cc_is_subagent":true',
        'x-anthropic-billing-header: {"cc_is_subagent":true} and then prose',
        'x-anthropic-billing-header: {"cc_is_subagent":true}You are Claude Code',
    ],
)
def test_lookalike_first_blocks_are_not_detected(text: str) -> None:
    assert parse_header(text) is None
    assert detect(blocks_body(text, IDENTITY)) is None
    assert detect(string_body(text)) is None
    assert detect(string_body(text + "\n" + IDENTITY)) is None


@pytest.mark.parametrize(
    "first",
    [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}},
        {"type": "document", "text": CLI_LINE},
        {"text": CLI_LINE},  # no type
        {"type": "text", "text": None},
        {"type": "text", "text": [CLI_LINE]},
        CLI_LINE,  # a bare string instead of a block
        None,
    ],
)
def test_non_text_first_block_is_not_detected(first: Any) -> None:
    body = {
        "model": "m",
        "max_tokens": 8,
        "system": [first, {"type": "text", "text": CLI_LINE}],
        "messages": [],
    }
    assert detect(body) is None


@pytest.mark.parametrize("system", ["", [], None, 0, {"type": "text", "text": CLI_LINE}])
def test_empty_or_odd_system_is_not_detected(system: Any) -> None:
    assert detect(string_body(system)) is None


def test_no_system_is_not_detected() -> None:
    assert detect({"model": "m", "messages": [{"role": "user", "content": CLI_LINE}]}) is None


# -------------------------------------------------------------------- properties

KEY_START = string.ascii_letters + "_"
KEY = st.builds(
    str.__add__,
    st.sampled_from(KEY_START),
    st.text(alphabet=string.ascii_letters + string.digits + "_.-", max_size=12),
)
VALUE = st.text(alphabet=string.ascii_letters + string.digits + "_.:/+=-", max_size=16)
FIELDS = st.dictionaries(KEY, VALUE, min_size=1, max_size=8)
VERSION = st.builds(
    "{}.{}.{}.{}".format,
    st.integers(0, 9),
    st.integers(0, 99),
    st.integers(0, 999),
    st.text(alphabet="0123456789abcdef", min_size=3, max_size=3),
)
CCH = st.text(alphabet="0123456789abcdef", min_size=5, max_size=5)


@PROPERTY
@given(fields=FIELDS, trailing=st.booleans(), spaces=st.sampled_from([" ", "  ", "\t", ""]))
def test_any_well_formed_kv_header_parses_to_its_fields(
    fields: dict[str, str], trailing: bool, spaces: str
) -> None:
    line = f"{HEADER_NAME}: " + spaces.join(f"{k}={v};" for k, v in fields.items())
    if not trailing:
        line = line[:-1]
    found = parse_header(line)
    assert found is not None
    assert dict(found.fields) == fields
    assert found.removed == line
    found = parse_header(line + "\nnext line")
    assert found is not None
    assert found.removed == line + "\n"
    assert dict(found.fields) == fields


@PROPERTY
@given(
    version=VERSION,
    entry=st.sampled_from(["cli", "sdk-cli", "claude-vscode", "claude-code-github-action"]),
    cch=CCH,
    rest=st.text(max_size=60),
)
def test_glued_string_system_leaves_exactly_the_following_text(
    version: str, entry: str, cch: str, rest: str
) -> None:
    line = f"{HEADER_NAME}: cc_version={version}; cc_entrypoint={entry}; cch={cch};"
    system = line + "You are" + rest
    found = detect(string_body(system))
    assert found is not None
    assert found.removed == line
    assert system[len(found.removed) :] == "You are" + rest
    assert dict(found.fields) == {"cc_version": version, "cc_entrypoint": entry, "cch": cch}


@PROPERTY
@given(prefix=st.text(min_size=1, max_size=30), line=st.sampled_from(DOCUMENTED_EXAMPLES))
def test_header_not_at_offset_zero_is_never_detected(
    prefix: str, line: tuple[str, dict[str, str]]
) -> None:
    text = prefix + line[0]
    assert detect(string_body(text)) is None
    assert detect(blocks_body(text)) is None


@PROPERTY
@given(tail=st.text(max_size=80))
def test_a_detected_header_always_ends_at_a_line_break_the_end_or_after_a_semicolon(
    tail: str,
) -> None:
    text = f"{HEADER_NAME}: {tail}"
    found = parse_header(text)
    if found is None:
        return
    assert text.startswith(found.removed)
    assert found.removed.startswith(found.header)
    rest = text[len(found.removed) :]
    assert ("\n" not in found.header and "\r" not in found.header) or found.form == "json"
    if found.glued:
        assert found.header.endswith(";")
        assert rest
    else:
        assert rest == "" or found.removed.endswith(("\n", "\r"))


EDGE_SYSTEMS = {
    "empty string": "",
    "empty list": [],
    "null": None,
    "image first": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
    ],
    "upper case": "X-ANTHROPIC-BILLING-HEADER: CC_VERSION=2.1.332.3AB; CCH=0A1B2;\nYou are.",
    "after a BOM": "\ufeffx-anthropic-billing-header: cc_version=2.1.332.3ab; cch=0a1b2;\nYou.",
    "BOM in a block": [
        {"type": "text", "text": "\ufeffx-anthropic-billing-header: cc_version=2.1.332.3ab;"}
    ],
}


@pytest.mark.parametrize("name", list(EDGE_SYSTEMS))
def test_odd_systems_hold_no_block_and_are_forwarded_untouched_under_every_policy(
    name: str,
) -> None:
    """Issue: hostile clients, edge cases: never a traceback, never a half strip."""
    from prefixgate.core.pipeline import RewriteOptions, rewrite
    from prefixgate.core.policy import Policy

    body = {"model": "m", "max_tokens": 5, "system": EDGE_SYSTEMS[name],
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    raw = json.dumps(body).encode()
    assert detect(body) is None
    for policy in Policy:
        done = rewrite(raw, RewriteOptions(policy=policy))
        assert done.attribution is None and not done.changed
        assert done.body == raw
