"""The first place two prompts part, and the words that name it (``core/promptdiff.py``)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from promptbodies import (
    CONTEXT,
    GIT,
    IDENTITY,
    INSTRUCTIONS,
    LINE,
    MCP,
    MESSAGE,
    MESSAGES,
    OTHER_CCH,
    OTHER_LINE,
    PROPERTY,
    SYSTEM,
    TOOLS,
    body_of,
    change,
    find_tool,
    names,
    request,
    request_332,
    run,
    tool,
    view,
    with_line,
)

from prefixgate.core.policy import Policy
from prefixgate.core.prompt import SECTIONS, prompt_view
from prefixgate.core.promptdiff import CAUSE_OF_SECTION, Change, common_pieces, first_change

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


# -- the 2.1.332 layout ----------------------------------------------------------


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


def test_another_sessions_load_that_reordered_the_tools_is_its_own_business() -> None:
    loaded = {**tool("mcp__projfs__read_note"), "defer_loading": True}
    other = request_332(turns=1, loaded=(loaded,))
    bash, search, _, placeholder, write = other["tools"]
    other["tools"] = [bash, search, write, placeholder, loaded]  # as 2.1.332 sends it
    found = first_change(view(other), view(request_332("mine")), across_sessions=True)
    assert found is not None and found.section == "messages"  # a new conversation: no change
    within = first_change(view(request_332(turns=1)), view(other))
    assert within is not None and within.cause == "tool_loaded"
