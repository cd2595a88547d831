"""Prompt views in prompt order, and the first place two prompts part."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixgate.core.canonical import digest
from prefixgate.core.pipeline import Rewrite, RewriteOptions, rewrite
from prefixgate.core.policy import Policy
from prefixgate.core.prompt import (
    CAUSE_OF_SECTION,
    SECTIONS,
    Change,
    PromptView,
    common_pieces,
    cut_named,
    first_change,
    prompt_view,
)
from prefixgate.replay import CaptureRecord, load_capture

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EPHEMERAL = {"type": "ephemeral"}
LINE = "x-anthropic-billing-header: cc_version=2.1.197.3ab; cc_entrypoint=cli; cch=fa690;"
IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."
INSTRUCTIONS = (
    "You are an interactive agent.\n"
    "# Environment\n"
    " - You are powered by the model named Opus 4.8.\n"
    " - Primary working directory: /home/dev/proj"
)
CONTEXT = "<system-reminder>\n# claudeMd\nIndent with tabs.\n</system-reminder>\n"
MCP = "mcp__projfs__list_dir"


def tool(name: str, description: str = "does things", **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "input_schema": {"type": "object", "properties": schema},
    }


def request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-opus-4-8",
        "max_tokens": 64,
        "system": [
            {"type": "text", "text": LINE},
            {"type": "text", "text": IDENTITY},
            {"type": "text", "text": INSTRUCTIONS, "cache_control": EPHEMERAL},
        ],
        "tools": [tool("Bash"), tool("Read"), tool(MCP)],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": CONTEXT},
                    {"type": "text", "text": "hello"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "list files", "cache_control": EPHEMERAL}],
            },
        ],
    }
    body.update(overrides)
    return body


def with_line(body: dict[str, Any], line: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["system"][0]["text"] = line
    return out


def run(body: dict[str, Any], policy: Policy = Policy.STRIP) -> Rewrite:
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return rewrite(raw, RewriteOptions(policy=policy))


def view(body: dict[str, Any], policy: Policy = Policy.STRIP) -> PromptView:
    return run(body, policy).view


def change(before: dict[str, Any], after: dict[str, Any], policy: Policy = Policy.STRIP) -> Change:
    found = first_change(view(before, policy), view(after, policy))
    assert found is not None, "expected a change"
    return found


def names(v: PromptView) -> list[str]:
    return [p.name for p in v.pieces]


def find_tool(body: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(t for t in body["tools"] if t["name"] == name)
    return found


# -- the view ------------------------------------------------------------------


def test_pieces_in_prompt_order() -> None:
    v = view(request())
    assert v.model == "claude-opus-4-8"
    assert names(v) == [
        "system[0]",
        "system[1]",
        "environment",  # cut out of the block it sits in (the 2.1.197 layout)
        "tools:Bash",
        "tools:Read",
        f"mcp_tools:{MCP}",
        "project_context",
        "messages[0]",
        "messages[1]",
        "messages[2]",
    ]
    assert {p.section for p in v.pieces} <= set(SECTIONS)
    assert v.names("tools") == ["tools:Bash", "tools:Read"]
    assert v.names("mcp_tools") == [f"mcp_tools:{MCP}"]
    assert v.names("attribution") == []


def test_each_piece_holds_its_text_and_the_digest_of_it() -> None:
    v = view(request())
    by_name = {p.name: p for p in v.pieces}
    assert by_name["system[0]"].text == IDENTITY
    # cache_control left out; the environment is a piece of its own
    assert by_name["system[1]"].text + by_name["environment"].text == INSTRUCTIONS
    assert by_name["environment"].text.startswith("# Environment\n")
    assert by_name["project_context"].text == CONTEXT
    assert json.loads(by_name["tools:Bash"].text) == tool("Bash")
    assert json.loads(by_name["messages[0]"].text) == {"role": "user", "content": "hello"}
    for piece in v.pieces:
        assert piece.digest == digest(piece.text)


@pytest.mark.parametrize(
    ("policy", "attribution"),
    [
        (Policy.STRIP, None),
        (Policy.PRESERVE_AS_METADATA, None),
        (Policy.PASSTHROUGH, LINE),
        (Policy.NORMALIZE, "x-anthropic-billing-header: cc_entrypoint=cli;"),
    ],
)
def test_the_attribution_piece_is_what_the_upstream_still_sees(
    policy: Policy, attribution: str | None
) -> None:
    v = view(request(), policy)
    pieces = [p for p in v.pieces if p.section == "attribution"]
    if attribution is None:
        assert pieces == []
    else:
        assert [(p.name, p.text) for p in pieces] == [("attribution", attribution)]
        assert v.pieces[0] is pieces[0]
    # the block never leaks into the system pieces
    assert all(
        "x-anthropic-billing-header" not in p.text for p in v.pieces if p.section != "attribution"
    )


def test_system_as_a_string_is_one_piece() -> None:
    v = prompt_view(request(system="be brief\nand kind"), None)
    assert [(p.name, p.text) for p in v.pieces if p.section == "system"] == [
        ("system[0]", "be brief\nand kind")
    ]
    assert prompt_view(request(system=""), None).names("system") == []
    assert prompt_view(request(system=None), None).names("system") == []


def test_a_system_block_with_more_than_text_is_its_json() -> None:
    block = {"type": "text", "text": "cited", "citations": [{"x": 1}], "cache_control": EPHEMERAL}
    v = prompt_view(request(system=[block]), None)
    assert json.loads(v.pieces[0].text) == {
        "type": "text",
        "text": "cited",
        "citations": [{"x": 1}],
    }


def test_no_tools_and_no_context() -> None:
    body = request(tools=None, messages=[{"role": "user", "content": "hi"}])
    v = prompt_view(body, None)
    assert names(v) == ["system[0]", "system[1]", "system[2]", "environment", "messages[0]"]


def test_a_tool_without_a_name_is_named_question_mark() -> None:
    v = prompt_view(request(tools=[{"description": "anonymous"}]), None)
    assert v.names("tools") == ["tools:?"]


def test_project_context_only_from_the_head_of_the_first_user_message() -> None:
    reminder = {"type": "text", "text": CONTEXT}
    later = request(
        messages=[
            {"role": "user", "content": "hello"},
            {"role": "user", "content": [reminder, {"type": "text", "text": "again"}]},
        ]
    )
    assert prompt_view(later, None).names("project_context") == []
    from_assistant = request(messages=[{"role": "assistant", "content": [reminder]}])
    assert prompt_view(from_assistant, None).names("project_context") == []
    two = request(
        messages=[{"role": "user", "content": [reminder, {"type": "text", "text": "  " + CONTEXT}]}]
    )
    context = [p for p in prompt_view(two, None).pieces if p.section == "project_context"]
    assert [(p.name, p.text) for p in context] == [
        ("project_context", CONTEXT),
        ("project_context#2", "  " + CONTEXT),
    ]


def test_cache_control_markers_are_not_prompt_text() -> None:
    bare = request()
    marked = copy.deepcopy(bare)
    marked["system"][1]["cache_control"] = EPHEMERAL
    marked["tools"][0]["cache_control"] = EPHEMERAL
    marked["messages"][0]["content"][1]["cache_control"] = EPHEMERAL
    marked["messages"][2]["content"][0].pop("cache_control")
    assert view(marked) == view(bare)


def test_one_text_block_equals_string_content() -> None:
    flat = request(messages=[{"role": "user", "content": "hello"}])
    block = request(messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    marked = request(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "hello", "cache_control": EPHEMERAL}],
            }
        ]
    )
    assert view(flat) == view(block) == view(marked)
    two_blocks = request(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}],
            }
        ]
    )
    assert view(two_blocks) != view(flat)


def test_tool_result_markers_are_ignored_but_its_text_counts() -> None:
    def with_result(text: str, marker: bool) -> dict[str, Any]:
        block: dict[str, Any] = {"type": "text", "text": text}
        if marker:
            block["cache_control"] = EPHEMERAL
        result = {"type": "tool_result", "tool_use_id": "t1", "content": [block]}
        return request(messages=[{"role": "user", "content": [result]}])

    assert view(with_result("ok", True)) == view(with_result("ok", False))
    assert view(with_result("ok", False)) != view(with_result("no", False))


# -- common_pieces -------------------------------------------------------------


def test_common_pieces() -> None:
    before = view(request())
    assert common_pieces(None, before) == 0
    assert common_pieces(before, before) == len(before.pieces)
    edited = request()
    edited["messages"][1]["content"] = "bye"
    assert common_pieces(before, view(edited)) == names(before).index("messages[1]")
    assert common_pieces(before, view(request(model="other"))) == 0


# -- acceptance: the attribution fingerprint -----------------------------------

OTHER_LINE = "x-anthropic-billing-header: cc_version=2.1.197.776; cc_entrypoint=cli; cch=fa690;"
OTHER_CCH = "x-anthropic-billing-header: cc_version=2.1.197.3ab; cc_entrypoint=cli; cch=0b1c2;"


@pytest.mark.parametrize("other", [OTHER_LINE, OTHER_CCH], ids=["cc_version", "cch"])
def test_strip_makes_requests_differing_only_in_the_fingerprint_equal(other: str) -> None:
    a, b = run(request()), run(with_line(request(), other))
    assert a.attribution is not None and b.attribution is not None
    assert a.attribution.fields != b.attribution.fields
    assert a.view == b.view
    assert a.key == b.key and a.key.hex == b.key.hex
    assert first_change(a.view, b.view) is None


@pytest.mark.parametrize(
    ("other", "detail"),
    [
        (OTHER_LINE, "cc_version 2.1.197.3ab -> 2.1.197.776"),
        (OTHER_CCH, "cch fa690 -> 0b1c2"),
        (LINE + " cc_is_subagent=true;", "cc_is_subagent - -> true"),
        ('x-anthropic-billing-header: {"cc_version":"2.1.197.3ab"}', "cch fa690 -> -"),
    ],
    ids=["cc_version", "cch", "field-added", "json-form"],
)
def test_passthrough_names_the_attribution_field_that_changed(other: str, detail: str) -> None:
    found = change(request(), with_line(request(), other), Policy.PASSTHROUGH)
    assert (found.segment, found.section, found.cause) == (
        "attribution",
        "attribution",
        "attribution_changed",
    )
    assert detail in found.detail


def test_passthrough_with_the_same_fingerprint_is_no_change() -> None:
    before = view(request(), Policy.PASSTHROUGH)
    after = copy.deepcopy(request())
    after["messages"].append({"role": "assistant", "content": "done"})
    assert first_change(before, view(after, Policy.PASSTHROUGH)) is None


def test_preserve_as_metadata_keeps_both_fingerprints_out_of_the_prompt() -> None:
    a = run(request(), Policy.PRESERVE_AS_METADATA)
    b = run(with_line(request(), OTHER_CCH), Policy.PRESERVE_AS_METADATA)
    assert a.view == b.view
    assert a.view.names("attribution") == []
    assert first_change(a.view, b.view) is None
    assert a.attribution is not None and b.attribution is not None
    assert a.attribution.fields["cch"] == "fa690"
    assert b.attribution.fields["cch"] == "0b1c2"


def test_normalize_makes_conversation_fingerprints_equal() -> None:
    a = view(request(), Policy.NORMALIZE)
    b = view(with_line(request(), OTHER_LINE.replace("fa690", "12345")), Policy.NORMALIZE)
    assert a == b
    assert a.names("attribution") == ["attribution"]


def test_corpus_requests_differing_only_in_the_fingerprint(cch_records: list[Any]) -> None:
    body = cch_records[0].body
    other = copy.deepcopy(body)
    line = other["system"][0]["text"]
    assert "cch=" in line and "cc_version=" in line
    fields = dict(pair.split("=", 1) for pair in line.split(": ", 1)[1].rstrip(";").split("; "))
    other["system"][0]["text"] = line.replace(fields["cch"], "00000").replace(
        fields["cc_version"], "2.1.197.fff"
    )
    a, b = run(body), run(other)
    assert a.view == b.view and a.key == b.key
    assert first_change(a.view, b.view) is None
    found = first_change(view(body, Policy.PASSTHROUGH), view(other, Policy.PASSTHROUGH))
    assert found is not None and found.cause == "attribution_changed"
    assert f"cch {fields['cch']} -> 00000" in found.detail
    assert f"cc_version {fields['cc_version']} -> 2.1.197.fff" in found.detail


# -- acceptance: no attribution block ------------------------------------------


@pytest.mark.parametrize("policy", list(Policy))
def test_a_request_without_a_block_is_forwarded_byte_identical(
    plain_records: list[Any], policy: Policy
) -> None:
    body = plain_records[1].body
    assert body["system"][0]["text"].startswith("x-anthropic-billing-header")
    del body["system"][0]  # what CLAUDE_CODE_ATTRIBUTION_HEADER=0 sends
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    rw = rewrite(raw, RewriteOptions(policy=policy))
    assert rw.body == raw
    assert rw.changed is False
    assert rw.attribution is None
    assert rw.view.names("attribution") == []
    assert rw.view == run(plain_records[1].body).view  # same prompt as the stripped one


# -- acceptance: tools ---------------------------------------------------------


def test_a_changed_tool_description(plain_records: list[Any]) -> None:
    before = plain_records[0].body
    after = copy.deepcopy(before)
    find_tool(after, "Bash")["description"] += " Mind the quotes."
    a, b = run(before), run(after)
    assert a.key.hex != b.key.hex
    assert a.key.tool_schema_hash != b.key.tool_schema_hash
    found = first_change(a.view, b.view)
    assert found == Change("tools:Bash", "tools", "tools_changed", "Bash: description changed")


def test_a_changed_input_schema(plain_records: list[Any]) -> None:
    before = plain_records[0].body
    after = copy.deepcopy(before)
    find_tool(after, "Read")["input_schema"]["properties"]["encoding"] = {"type": "string"}
    assert run(before).key.hex != run(after).key.hex
    found = change(before, after)
    assert (found.segment, found.cause) == ("tools:Read", "tools_changed")
    assert found.detail == "Read: input_schema changed"


def test_several_changed_fields_are_all_named() -> None:
    after = request()
    after["tools"][1] = tool("Read", "reads files", path={"type": "string"})
    found = change(request(), after)
    assert found.detail == "Read: description, input_schema changed"


def test_a_changed_mcp_tool(plain_records: list[Any]) -> None:
    before = plain_records[8].body
    after = copy.deepcopy(before)
    find_tool(after, "mcp__projfs__read_text")["description"] = "Read a file."
    a, b = run(before), run(after)
    assert a.key.hex != b.key.hex
    assert a.key.mcp_descriptor_hash != b.key.mcp_descriptor_hash
    assert a.key.tool_schema_hash == b.key.tool_schema_hash
    found = first_change(a.view, b.view)
    assert found == Change(
        "mcp_tools:mcp__projfs__read_text",
        "mcp_tools",
        "mcp_tools_changed",
        "mcp__projfs__read_text: description changed",
    )


def test_a_removed_tool_is_named(plain_records: list[Any]) -> None:
    before = plain_records[0].body
    after = copy.deepcopy(before)
    after["tools"] = [t for t in after["tools"] if t["name"] != "Write"]
    assert run(before).key.hex != run(after).key.hex
    found = change(before, after)
    assert (found.segment, found.cause, found.detail) == (
        "tools:Write",
        "tools_changed",
        "removed Write",
    )


def test_an_added_tool_is_named() -> None:
    after = request()
    after["tools"].insert(2, tool("Write"))
    found = change(request(), after)
    assert (found.segment, found.section, found.cause) == ("tools:Write", "tools", "tools_changed")
    assert found.detail == "added Write"


def test_added_and_removed_tools_together() -> None:
    after = request(tools=[tool("Bash"), tool("Grep"), tool(MCP)])
    assert change(request(), after).detail == "added Grep; removed Read"


def test_added_mcp_tools() -> None:
    after = request(tools=[*request()["tools"], tool("mcp__git__log"), tool("mcp__git__diff")])
    found = change(request(), after)
    assert (found.segment, found.cause) == ("mcp_tools:mcp__git__log", "mcp_tools_changed")
    assert found.detail == "added mcp__git__log, mcp__git__diff"


def test_reordered_tools() -> None:
    after = request(tools=[tool("Read"), tool("Bash"), tool(MCP)])
    found = change(request(), after)
    assert (found.segment, found.cause) == ("tools:Bash", "tools_changed")
    assert found.detail == "tools reordered: Bash is now Read"


# -- acceptance: system prompt, model, project context, messages ---------------


def test_the_corpus_model_line_change(plain_records: list[Any]) -> None:
    before, after = plain_records[1].body, plain_records[2].body
    found = first_change(view(before), view(after))
    assert found is not None
    # the model line sits in the environment section of the corpus' system[2]
    assert (found.segment, found.section, found.cause) == (
        "environment",
        "environment",
        "environment_changed",
    )
    old_lines = before["system"][2]["text"].splitlines()
    new_lines = after["system"][2]["text"].splitlines()
    line = next(n for n, (a, b) in enumerate(zip(old_lines, new_lines, strict=False), 1) if a != b)
    assert "You are powered by the model named" in new_lines[line - 1]
    assert found.detail.startswith("the model line differs: ")
    assert json.dumps(new_lines[line - 1].strip()) in found.detail
    assert "(was " in found.detail


def test_the_first_differing_line_is_named() -> None:
    after = request()
    after["system"][2]["text"] = INSTRUCTIONS.replace("Opus 4.8", "Sonnet 5")
    found = change(request(), after)
    assert found == Change(
        "environment",
        "environment",
        "environment_changed",
        'the model line differs: "- You are powered by the model named Sonnet 5." '
        '(was "- You are powered by the model named Opus 4.8.")',
    )
    rule = request()
    rule["system"][2]["text"] = "You are an interactive agent.\nBe terse.\n" + INSTRUCTIONS[30:]
    assert change(request(), rule) == Change(
        "system[1]", "system", "system_prompt_changed", 'system[1] line 2 added: "Be terse."'
    )


def test_added_removed_and_whitespace_lines() -> None:
    more = request()
    more["system"][1]["text"] = IDENTITY + "\nNew rule."
    assert change(request(), more).detail == 'system[0] line 2 added: "New rule."'
    assert change(more, request()).detail == 'system[0] line 2 removed: "New rule."'
    trailing = request()
    trailing["system"][1]["text"] = IDENTITY + "\n"
    assert change(request(), trailing).detail == "system[0] whitespace changed"


def test_a_long_line_is_shortened() -> None:
    before, after = request(), request()
    before["system"][1]["text"] = "x" * 300
    after["system"][1]["text"] = "y" * 300
    detail = change(before, after).detail
    assert detail == f'system[0] line 1: "{"y" * 97}..." (was "{"x" * 97}...")'


def test_an_added_system_block() -> None:
    after = request()
    after["system"].append({"type": "text", "text": "Extra block."})
    found = change(request(), after)
    assert (found.segment, found.cause) == ("system[2]", "system_prompt_changed")


def test_model_changed() -> None:
    found = change(request(), request(model="claude-sonnet-5"))
    assert found == Change("model", "model", "model_changed", "claude-opus-4-8 -> claude-sonnet-5")


def test_project_context_changed() -> None:
    after = request()
    after["messages"][0]["content"][0]["text"] = CONTEXT.replace("tabs", "spaces")
    found = change(request(), after)
    assert (found.segment, found.section, found.cause) == (
        "project_context",
        "project_context",
        "project_context_changed",
    )
    assert found.detail == (
        'project_context line 3: "Indent with spaces." (was "Indent with tabs.")'
    )


def test_the_corpus_project_context(plain_records: list[Any]) -> None:
    before = plain_records[0].body
    after = copy.deepcopy(before)
    reminder = after["messages"][0]["content"][0]
    assert reminder["text"].startswith("<system-reminder>")
    reminder["text"] = reminder["text"].replace("Indent with tabs", "Indent with spaces")
    assert reminder["text"] != before["messages"][0]["content"][0]["text"]
    found = change(before, after)
    assert found.cause == "project_context_changed"
    assert "Indent with spaces" in found.detail
    assert run(before).key.project_context_hash != run(after).key.project_context_hash


def test_an_edited_earlier_message() -> None:
    after = request()
    after["messages"][1]["content"] = "hello there"
    after["messages"].append({"role": "user", "content": "more"})
    found = change(request(), after)
    assert found == Change(
        "messages[1]",
        "messages",
        "messages_rewritten",
        "messages[1] (assistant) differs from the earlier request's",
    )


def test_a_shorter_conversation() -> None:
    after = request()
    del after["messages"][1:]
    found = change(request(), after)
    assert found == Change(
        "messages[1]",
        "messages",
        "messages_rewritten",
        "conversation is shorter than before (3 -> 1 messages)",
    )


def test_the_corpus_conversation(plain_records: list[Any]) -> None:
    first, second = view(plain_records[0].body), view(plain_records[1].body)
    # the second turn appends and moves the cache_control markers: no change
    assert len(second.names("messages")) > len(first.names("messages"))
    assert first_change(first, second) is None
    shorter = first_change(second, first)
    assert shorter is not None and shorter.cause == "messages_rewritten"
    assert shorter.detail == "conversation is shorter than before (4 -> 2 messages)"
    edited = copy.deepcopy(plain_records[1].body)
    edited["messages"][2]["content"] = "a different answer"
    rewritten = first_change(second, view(edited))
    assert rewritten is not None
    assert (rewritten.segment, rewritten.cause) == ("messages[2]", "messages_rewritten")
    # messages[1] is the role "system" message before the first answer: part of the system prompt
    skills = copy.deepcopy(plain_records[1].body)
    skills["messages"][1]["content"] += "\n- another-skill: does more"
    found = first_change(second, view(skills))
    assert found is not None
    assert (found.segment, found.cause) == ("messages[1]", "system_prompt_changed")
    assert "another-skill" in found.detail


def test_every_section_has_a_cause() -> None:
    assert set(CAUSE_OF_SECTION) == set(SECTIONS)


# -- properties ----------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
BLOCK = st.fixed_dictionaries(
    {"type": st.just("text"), "text": TEXT}, optional={"cache_control": st.just(EPHEMERAL)}
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant"]),
        "content": st.one_of(TEXT, st.lists(BLOCK, min_size=1, max_size=3)),
    }
)
MESSAGES = st.lists(MESSAGE, max_size=4)
TOOLS = st.lists(
    st.builds(tool, st.sampled_from(["Bash", "Read", "Write", MCP, "mcp__git__log"]), TEXT),
    max_size=4,
    unique_by=lambda t: t["name"],
)
SYSTEM = st.one_of(TEXT, st.lists(BLOCK, max_size=3))


def body_of(system: Any, tools: list[dict[str, Any]], messages: list[Any]) -> dict[str, Any]:
    return {"model": "m", "system": system, "tools": tools, "messages": messages}


def strip_markers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_markers(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [strip_markers(v) for v in value]
    return value


@PROPERTY
@given(SYSTEM, TOOLS, MESSAGES)
def test_a_prompt_never_changes_against_itself(
    system: Any, tools: list[dict[str, Any]], messages: list[Any]
) -> None:
    v = prompt_view(body_of(system, tools, messages), None)
    assert first_change(v, v) is None
    assert common_pieces(v, v) == len(v.pieces)


@PROPERTY
@given(SYSTEM, TOOLS, MESSAGES, st.lists(MESSAGE, min_size=1, max_size=3))
def test_appending_messages_is_never_a_change(
    system: Any, tools: list[dict[str, Any]], messages: list[Any], more: list[Any]
) -> None:
    before = prompt_view(body_of(system, tools, messages), None)
    after = prompt_view(body_of(system, tools, messages + more), None)
    assert first_change(before, after) is None
    assert common_pieces(before, after) == len(before.pieces)


@PROPERTY
@given(SYSTEM, TOOLS, st.lists(MESSAGE, min_size=2, max_size=5), st.data())
def test_dropping_messages_is_always_rewritten(
    system: Any, tools: list[dict[str, Any]], messages: list[Any], data: st.DataObject
) -> None:
    keep = data.draw(st.integers(min_value=1, max_value=len(messages) - 1))
    before = prompt_view(body_of(system, tools, messages), None)
    after = prompt_view(body_of(system, tools, messages[:keep]), None)
    found = first_change(before, after)
    assert found is not None and found.cause == "messages_rewritten"


@PROPERTY
@given(SYSTEM, TOOLS, MESSAGES)
def test_cache_control_markers_never_change_a_view(
    system: Any, tools: list[dict[str, Any]], messages: list[Any]
) -> None:
    marked = body_of(system, tools, messages)
    assert prompt_view(marked, None) == prompt_view(strip_markers(marked), None)


@PROPERTY
@given(TEXT, st.sampled_from(["user", "assistant"]))
def test_one_text_block_always_equals_string_content(text: str, role: str) -> None:
    flat = prompt_view(body_of(None, [], [{"role": role, "content": text}]), None)
    block = prompt_view(
        body_of(None, [], [{"role": role, "content": [{"type": "text", "text": text}]}]), None
    )
    assert flat == block


# -- the 2.1.332 layout ----------------------------------------------------------

ENVIRONMENT_332 = (
    "# Environment\n"
    "You have been invoked in the following environment: \n"
    " - Primary working directory: /home/dev/proj\n"
    " - Is a git repository: true\n"
    " - Platform: linux\n"
    "\n"
    "You are powered by the model named Opus 5.5. The exact model ID is claude-opus-5-5.\n"
    "\n"
)
DEFERRED_INTRO = (
    "The following deferred tools are now available via ToolSearch. Their schemas are NOT "
    'loaded. Use ToolSearch with query "select:<name>[,<name>...]" to load them:\n'
)
AGENTS = "Available agent types for the Agent tool:\n- Explore: searches.\n\n"
GIT = (
    "<system-reminder>\nAs you answer the user's questions, you can use the following context:\n"
    "# gitStatus\nCurrent branch: master\n\nStatus:\n(clean)\n</system-reminder>"
)
COMMITS = "<system-reminder>\nEnd git commit messages with: Co-Authored-By: x\n</system-reminder>\n"


def system_message(
    cwd: str = "/home/dev/proj",
    deferred: tuple[str, ...] = ("CronCreate", "WebFetch"),
    date: str = "2026-12-06",
    as_list: bool = True,
) -> dict[str, Any]:
    text = (
        ENVIRONMENT_332.replace("/home/dev/proj", cwd)
        + DEFERRED_INTRO
        + "".join(f"{name}\n" for name in deferred)
        + "\n"
        + AGENTS
        + f"Today's date is {date}."
    )
    content: Any = [{"type": "text", "text": text, "cache_control": EPHEMERAL}] if as_list else text
    return {"role": "system", "content": content}


def request_332(
    prompt: str = "say hi", turns: int = 0, *, loaded: tuple[dict[str, Any], ...] = (), **kw: Any
) -> dict[str, Any]:
    """A body in the 2.1.332 layout: context and git status in messages[0], the
    environment, deferred tools and date in the role "system" message at messages[1]."""
    git = kw.pop("git", GIT)
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": git},
                {"type": "text", "text": COMMITS},
                {"type": "text", "text": prompt},
            ],
        },
        system_message(**kw),
    ]
    for n in range(turns):
        messages.append({"role": "assistant", "content": [{"type": "text", "text": f"a{n}"}]})
        messages.append({"role": "user", "content": f"q{n}"})
    placeholder = {**tool("DeferredToolPlaceholder"), "defer_loading": True}
    return {
        "model": "claude-opus-5-5",
        "max_tokens": 64,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.0b8;"},
            {"type": "text", "text": IDENTITY, "cache_control": EPHEMERAL},
            {"type": "text", "text": "You are an agent.", "cache_control": EPHEMERAL},
        ],
        "tools": [tool("Bash"), tool("ToolSearch"), *loaded, placeholder, tool("Write")],
        "messages": messages,
    }


def test_the_332_layout_in_render_order() -> None:
    v = view(request_332(turns=1))
    assert [(p.section, p.name) for p in v.pieces] == [
        ("system", "system[0]"),
        ("system", "system[1]"),
        ("tools", "tools:Bash"),
        ("tools", "tools:ToolSearch"),
        ("tools", "tools:DeferredToolPlaceholder"),  # defer_loading, but no loaded tool
        ("tools", "tools:Write"),
        ("project_context", "project_context"),  # the reminder's opening line
        ("git_status", "git_status"),
        ("project_context", "project_context#2"),
        ("messages", "messages[0]"),
        ("environment", "environment"),
        ("deferred_tools", "deferred_tools"),
        ("system", "messages[1]"),  # agent types: the system prompt before the first answer
        ("date", "date"),
        ("messages", "messages[2]"),
        ("messages", "messages[3]"),
    ]
    assert v.deferred_names == ["CronCreate", "WebFetch"]
    by_name = {p.name: p for p in v.pieces}
    assert by_name["date"].text == "Today's date is 2026-12-06."
    assert by_name["environment"].text == ENVIRONMENT_332
    assert by_name["project_context"].text + by_name["git_status"].text == GIT
    assert by_name["git_status"].text.startswith("# gitStatus\n")
    assert by_name["messages[0]"].text == '{"content":"say hi","role":"user"}'
    assert [p.head for p in v.pieces].count(False) == 2  # the turns after the first answer
    assert v.current_turn() == by_name["messages[3]"]
    assert v.message_count == 4


def test_the_pieces_of_a_text_join_back_to_it() -> None:
    text = system_message(as_list=False)["content"]
    v = prompt_view(request_332(), None)
    first, last = v.names("environment")[0], "date"
    names = [p.name for p in v.pieces]
    joined = "".join(p.text for p in v.pieces[names.index(first) : names.index(last) + 1])
    assert joined == text


def test_the_system_message_as_a_list_or_a_string_is_the_same_prompt() -> None:
    first, later = view(request_332(as_list=True)), view(request_332(as_list=False))
    assert first == later
    assert first_change(first, view(request_332(turns=1, as_list=False))) is None


def test_a_tool_loaded_through_toolsearch() -> None:
    webfetch = {**tool("WebFetch"), "defer_loading": True}
    mcp = {**tool("mcp__projfs__read_note"), "defer_loading": True}
    before = request_332(turns=1)
    after = request_332(turns=2, loaded=(webfetch, mcp))
    v = view(after)
    assert v.tool_names("tool_loaded") == ["WebFetch", "mcp__projfs__read_note"]
    assert v.tool_names("tools") == ["Bash", "ToolSearch", "DeferredToolPlaceholder", "Write"]
    found = change(before, after)
    assert (found.segment, found.section, found.cause) == (
        "tool_loaded:WebFetch",
        "tool_loaded",
        "tool_loaded",
    )
    assert found.detail == (
        "ToolSearch loaded WebFetch, mcp__projfs__read_note: its definition now sits in tools[]"
    )
    # seen from another session, a tool the other conversation loaded is its own business
    other = first_change(view(after), view(request_332("other")), across_sessions=True)
    assert other is not None and other.section == "messages"


@pytest.mark.parametrize(
    ("kw", "section", "detail"),
    [
        (
            {"cwd": "/home/dev/other"},
            "environment",
            "the working directory differs: /home/dev/proj -> /home/dev/other",
        ),
        (
            {"date": "2026-12-07"},
            "date",
            "a new day: 2026-12-06 -> 2026-12-07 (expected once a day)",
        ),
        (
            {"deferred": ("CronCreate", "WebFetch", "mcp__projfs__read_note", "mcp__projfs__ls")},
            "deferred_tools",
            "an MCP server was added: mcp__projfs__read_note, mcp__projfs__ls",
        ),
        (
            {"deferred": ("CronCreate",)},
            "deferred_tools",
            "deferred tools removed: WebFetch",
        ),
        (
            {"git": GIT.replace("(clean)", "M app.py")},
            "git_status",
            'the git status differs: line 5: "M app.py" (was "(clean)")',
        ),
    ],
)
def test_each_new_piece_names_what_changed(kw: dict[str, Any], section: str, detail: str) -> None:
    before, after = request_332(turns=1), request_332(turns=1, **kw)
    found = change(before, after)
    assert (found.section, found.cause, found.detail) == (
        section,
        CAUSE_OF_SECTION[section],
        detail,
    )
    # a new conversation (another first prompt) still names the piece
    other = first_change(view(before), view(request_332("other", **kw)), across_sessions=True)
    assert other is not None and other.section == section


def test_across_sessions_an_added_mcp_server_says_so() -> None:
    names = ("CronCreate", "WebFetch", "mcp__projfs__read_note", "mcp__projfs__ls")
    found = first_change(
        view(request_332()), view(request_332("other", deferred=names)), across_sessions=True
    )
    assert found is not None
    assert found.detail == (
        "an MCP server was added between these sessions: mcp__projfs__read_note, mcp__projfs__ls"
    )


def test_the_model_line_in_the_environment() -> None:
    after = request_332()
    text = after["messages"][1]["content"][0]["text"]
    after["messages"][1]["content"][0]["text"] = text.replace("Opus 5.5", "Opus 5.6")
    found = change(request_332(), after)
    assert found.cause == "environment_changed"
    assert found.detail.startswith('the model line differs: "You are powered by the model named')


def test_the_2_1_197_date_sits_in_the_project_context() -> None:
    context = "<system-reminder>\n# claudeMd\nTabs.\n# currentDate\nToday's date is 2026-11-21.\n"
    body = request(messages=[{"role": "user", "content": [{"type": "text", "text": context}]}])
    v = prompt_view(body, None)
    assert [(p.section, p.text) for p in v.pieces if p.section in ("project_context", "date")] == [
        ("project_context", "<system-reminder>\n# claudeMd\nTabs.\n"),
        ("date", "# currentDate\nToday's date is 2026-11-21.\n"),
    ]
    later = copy.deepcopy(body)
    later["messages"][0]["content"][0]["text"] = context.replace("21", "22")
    found = first_change(v, prompt_view(later, None))
    assert found is not None and found.cause == "date_changed"
    assert found.detail == "a new day: 2026-11-21 -> 2026-11-22 (expected once a day)"


def test_a_claude_md_beside_the_git_status_stays_project_context() -> None:
    context = GIT.replace("# gitStatus", "# claudeMd\nUse tabs.\n# gitStatus")
    v = prompt_view(request_332(git=context), None)
    by_name = {p.name: p for p in v.pieces}
    assert "Use tabs." in by_name["project_context"].text
    assert "Use tabs." not in by_name["git_status"].text
    edited = prompt_view(request_332(git=context.replace("tabs", "spaces")), None)
    found = first_change(v, edited)
    assert found is not None and found.cause == "project_context_changed"


def test_cut_named_gives_the_text_back() -> None:
    text = "intro\n" + ENVIRONMENT_332 + "# Other\nrest\ngitStatus: clean\n"
    parts = cut_named(text)
    assert "".join(part for _, part in parts) == text
    assert [kind for kind, _ in parts] == [None, "environment", None, "git_status"]
    assert cut_named("") == [(None, "")]


# -- the recorded 2.1.332 corpus --------------------------------------------------

CURRENT = "claude-code-2.1.332.jsonl"


@pytest.fixture(scope="module")
def current(corpus_directory: Path) -> list[CaptureRecord]:
    return load_capture(corpus_directory / CURRENT)


def test_every_current_request_has_the_new_pieces(current: list[CaptureRecord]) -> None:
    for record in current:
        v = view(json.loads(record.body))
        sections = {p.section for p in v.pieces if p.head}
        if record.agent == "main":
            assert {"environment", "deferred_tools", "date", "git_status"} <= sections
            assert "Primary working directory: /home/dev/" in v.section("environment")[-1].text
        assert "mcp_tools" not in sections  # 2.1.332 lists MCP tools as deferred


def test_current_turns_of_a_conversation_only_append(current: list[CaptureRecord]) -> None:
    views = [view(json.loads(r.body)) for r in current]
    for i in range(1, len(current)):
        same = (current[i].session, current[i].agent) == (
            current[i - 1].session,
            current[i - 1].agent,
        )
        if same and views[i].tool_names("tool_loaded") == views[i - 1].tool_names("tool_loaded"):
            assert first_change(views[i - 1], views[i]) is None, i


def test_a_loaded_definition_carried_inline_is_counted_where_it_was_loaded() -> None:
    webfetch = {**tool("WebFetch"), "defer_loading": True}
    body = request_332(turns=1, loaded=(webfetch,))
    functions = (
        '<functions>\n<function>{"description": "does things", "name": "WebFetch", '
        '"parameters": {}}</function>\n</functions>'
    )
    result = {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [{"type": "text", "text": functions}],
    }
    body["messages"].append({"role": "user", "content": [result]})
    v = prompt_view(body, None)
    assert v.tool_names("tool_loaded") == []  # the tool-load policy inline put it there
    assert first_change(prompt_view(request_332(turns=1), None), v) is None


def test_another_sessions_load_that_reordered_the_tools_is_its_own_business() -> None:
    loaded = {**tool("mcp__projfs__read_note"), "defer_loading": True}
    other = request_332(turns=1, loaded=(loaded,))
    bash, search, _, placeholder, write = other["tools"]
    other["tools"] = [bash, search, write, placeholder, loaded]  # as 2.1.332 sends it
    found = first_change(view(other), view(request_332("mine")), across_sessions=True)
    assert found is not None and found.section == "messages"  # a new conversation: no change
    within = first_change(view(request_332(turns=1)), view(other))
    assert within is not None and within.cause == "tool_loaded"
