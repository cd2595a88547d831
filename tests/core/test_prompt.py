"""Prompt views in prompt order: the walk over a request (``core/prompt.py``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from promptbodies import (
    CONTEXT,
    ENVIRONMENT_332,
    EPHEMERAL,
    GIT,
    IDENTITY,
    INSTRUCTIONS,
    LINE,
    MCP,
    MESSAGES,
    OTHER_CCH,
    OTHER_LINE,
    PROPERTY,
    SYSTEM,
    TEXT,
    TOOLS,
    body_of,
    names,
    request,
    request_332,
    run,
    strip_markers,
    system_message,
    tool,
    view,
    with_line,
)

from prefixgate.core import prompt
from prefixgate.core.canonical import digest
from prefixgate.core.pipeline import RewriteOptions, rewrite
from prefixgate.core.policy import Policy
from prefixgate.core.prompt import SECTIONS, prompt_view
from prefixgate.core.promptdiff import first_change
from prefixgate.replay import CaptureRecord, load_capture

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


# -- acceptance: the attribution fingerprint -----------------------------------


@pytest.mark.parametrize("other", [OTHER_LINE, OTHER_CCH], ids=["cc_version", "cch"])
def test_strip_makes_requests_differing_only_in_the_fingerprint_equal(other: str) -> None:
    a, b = run(request()), run(with_line(request(), other))
    assert a.attribution is not None and b.attribution is not None
    assert a.attribution.fields != b.attribution.fields
    assert a.view == b.view
    assert a.key == b.key and a.key.hex == b.key.hex
    assert first_change(a.view, b.view) is None


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


# -- properties ----------------------------------------------------------------


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


def test_a_reminder_after_the_typed_text_is_conversation_not_project_context() -> None:
    # 2.1.332 retries an empty answer by rewriting the first user message: the typed
    # text gains a newline and a "no visible output" reminder follows it
    body = request_332()
    retry = copy.deepcopy(body)
    retry["messages"][0]["content"][2]["text"] = "say hi\n"
    retry["messages"][0]["content"].append(
        {
            "type": "text",
            "text": "<system-reminder>\n[Your previous response had no visible"
            " output.]\n</system-reminder>",
        }
    )
    first, again = run(body), run(retry)
    assert first.view.digest_of("project_context") == again.view.digest_of("project_context")
    assert first.key.hex == again.key.hex
    found = first_change(first.view, again.view)
    assert found is not None and found.section == "messages"


# -- the remembered walk ---------------------------------------------------------


def _pieces(body: dict[str, Any]) -> list[tuple[str, str, str, str, bool]]:
    return [(p.section, p.name, p.digest, p.text, p.head) for p in view(body).pieces]


@pytest.mark.parametrize("make", [request, request_332])
def test_a_remembered_walk_gives_the_view_a_fresh_one_gives(make: Any) -> None:
    body = make()
    prompt._WALKS.memo.clear()
    fresh = _pieces(body)
    assert prompt._WALKS.memo.size > 0
    assert _pieces(copy.deepcopy(body)) == fresh  # read from what the first walk remembered


@pytest.mark.parametrize("value", [1, 1.0, True, -0.0, 0, False])
def test_values_python_calls_equal_are_walked_apart(value: Any) -> None:
    """1 == 1.0 == True in Python, not in JSON: a remembered step never stands in
    for a value that only compares equal."""
    prompt._WALKS.memo.clear()
    seen = {}
    for other in (1, 1.0, True, -0.0, 0, False):  # each remembered, then the one asked
        body = request(tools=[{**tool("Bash"), "input_schema": {"default": other}}])
        seen[repr(other)] = view(body).pieces
    body = request(tools=[{**tool("Bash"), "input_schema": {"default": value}}])
    bash = next(p for p in view(body).pieces if p.name == "tools:Bash")
    assert json.loads(bash.text)["input_schema"]["default"].__repr__() == repr(value)
    assert bash.digest == digest(bash.text)
    assert len({next(p.digest for p in v if p.name == "tools:Bash") for v in seen.values()}) == 6


def test_a_message_is_remembered_with_its_place() -> None:
    """The same message at another index, or after the first answer, is another piece."""
    prompt._WALKS.memo.clear()
    first = view(request(messages=[{"role": "user", "content": "hi"}]))
    moved = view(
        request(
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "hi"},
            ]
        )
    )
    assert [p.name for p in first.pieces if p.section == "messages"] == ["messages[0]"]
    assert [(p.name, p.head) for p in moved.pieces if p.section == "messages"] == [
        ("messages[0]", True),
        ("messages[1]", False),
        ("messages[2]", False),
    ]


def test_values_orjson_cannot_write_are_walked_afresh() -> None:
    body = request(tools=[{**tool("Bash"), "input_schema": {"default": 2**70}}])
    prompt._WALKS.memo.clear()
    bash = next(p for p in view(body).pieces if p.name == "tools:Bash")
    assert json.loads(bash.text)["input_schema"]["default"] == 2**70
    assert prompt._WALKS.memo.size == sum(
        len(k[3]) for k in prompt._WALKS.memo.remembered() if k[0] == "message"
    )  # the messages were remembered, the head was not


def test_the_remembered_walk_stays_within_its_bytes() -> None:
    walks = prompt._Walks(max_bytes=2_000)
    for i in range(50):
        walks.message(0, True, {"role": "user", "content": f"{i:03d}" + "x" * 200})
    assert 0 < walks.memo.size <= 2_000
    assert walks.memo.size == sum(len(k[3]) for k in walks.memo.remembered())
    too_big = {"role": "user", "content": "y" * 5_000}
    assert json.loads(walks.message(0, True, too_big).parts[0][3]) == too_big
    assert walks.memo.size <= 2_000
