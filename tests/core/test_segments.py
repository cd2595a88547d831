"""Segmenting a request in prompt order, and hashing each segment."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from prefixgate.core.canonical import canonical_json, chain, digest
from prefixgate.core.prompt import prompt_view
from prefixgate.core.segments import Segments, split, without_cache_control

EPHEMERAL = {"type": "ephemeral"}
REMINDER = "<system-reminder>\nContents of CLAUDE.md: use tabs.\n</system-reminder>\n"


def body(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "m",
        "system": [
            {"type": "text", "text": "identity", "cache_control": EPHEMERAL},
            {"type": "text", "text": "main prompt"},
        ],
        "tools": [
            {"name": "Bash", "description": "run", "input_schema": {"type": "object"}},
            {"name": "mcp__projfs__list_dir", "description": "ls", "input_schema": {}},
            {"name": "Read", "description": "read", "input_schema": {"type": "object"}},
            {"name": "mcp__projfs__read_text", "description": "cat", "input_schema": {}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": REMINDER},
                    {"type": "text", "text": "question", "cache_control": EPHEMERAL},
                ],
            },
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": "next"},
        ],
        "max_tokens": 10,
    }
    out.update(overrides)
    return out


def test_canonical_json_and_digest() -> None:
    assert canonical_json({"b": 1, "a": ["\u00e9", None]}) == '{"a":["é",null],"b":1}'.encode()
    assert digest({"b": 1, "a": 2}) == digest({"a": 2, "b": 1})
    assert digest({"a": 2, "b": 1}) == hashlib.sha256(b'{"a":2,"b":1}').hexdigest()
    assert digest("x") != digest(["x"])
    assert chain(["a", "b"]) == hashlib.sha256(b"a\nb").hexdigest()
    assert chain(["a", "b"]) != chain(["b", "a"])
    assert chain([]) == hashlib.sha256(b"").hexdigest()


def test_digests_never_fail_on_odd_text() -> None:
    # non-ASCII tool names and lone surrogates (cut emoji from JavaScript clients)
    tools = [{"name": "caf\u00e9\ud83d", "description": "x"}]
    seg = split({"tools": tools, "messages": [{"role": "user", "content": "\udc00"}]}, None)
    assert seg.tools[0][0] == "caf\u00e9\ud83d"
    assert len(seg.tools_hash) == 64
    assert len(seg.messages[0]) == 64


def test_without_cache_control_removes_markers_where_the_api_puts_them() -> None:
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "hi", "cache_control": EPHEMERAL},
            {
                "type": "tool_result",
                "tool_use_id": "t1",
                "cache_control": EPHEMERAL,
                "content": [{"type": "text", "text": "out", "cache_control": EPHEMERAL}],
            },
        ],
    }
    before = json.dumps(message)
    assert without_cache_control(message) == {
        "role": "user",
        "content": [
            {"type": "text", "text": "hi"},
            {
                "type": "tool_result",
                "tool_use_id": "t1",
                "content": [{"type": "text", "text": "out"}],
            },
        ],
    }
    assert json.dumps(message) == before  # the input is not mutated


def test_a_schema_property_named_cache_control_still_counts() -> None:
    tool = {
        "name": "Configure",
        "cache_control": EPHEMERAL,
        "input_schema": {"type": "object", "properties": {"cache_control": {"type": "string"}}},
    }
    cleaned = without_cache_control(tool)
    assert "cache_control" not in cleaned
    assert cleaned["input_schema"]["properties"] == {"cache_control": {"type": "string"}}


def test_split_in_prompt_order() -> None:
    b = body()
    seg = split(b, None)
    assert seg.view == prompt_view(b, None)  # a view over the one prompt model
    assert seg.attribution is None
    assert seg.system_blocks == (digest("identity"), digest("main prompt"))
    assert [name for name, _ in seg.tools] == ["Bash", "Read"]
    assert [name for name, _ in seg.mcp_tools] == [
        "mcp__projfs__list_dir",
        "mcp__projfs__read_text",
    ]
    assert seg.tools[0][1] == digest(canonical_json(b["tools"][0]).decode())
    assert seg.mcp_tools[1][1] == digest(canonical_json(b["tools"][3]).decode())
    assert seg.project_context == chain([digest(REMINDER)])
    first_without_context = {"role": "user", "content": "question"}  # one text block: a string
    assert seg.messages == (
        digest(canonical_json(first_without_context).decode()),
        digest(canonical_json({"role": "assistant", "content": "answer"}).decode()),
        digest(canonical_json({"role": "user", "content": "next"}).decode()),
    )
    assert seg.system == chain(list(seg.system_blocks))
    assert seg.tools_hash == chain([f"Bash:{seg.tools[0][1]}", f"Read:{seg.tools[1][1]}"])
    assert seg.conversation == chain(list(seg.messages[:2]))
    assert seg.current_turn == seg.messages[2]
    assert seg.summary() == {
        "system": seg.system,
        "tools": seg.tools_hash,
        "mcp_tools": seg.mcp_tools_hash,
        "deferred_tools": chain([]),
        "project_context": seg.project_context,
        "environment": chain([]),
    }


def test_attribution_text_gets_a_segment_of_its_own() -> None:
    plain = split(body(), None)
    kept = split(body(), "x-anthropic-billing-header: cc_entrypoint=cli;")
    assert kept.attribution == digest("x-anthropic-billing-header: cc_entrypoint=cli;")
    assert kept.system == plain.system
    assert kept.summary() == plain.summary()


def test_string_system_hashes_like_one_text_block() -> None:
    as_string = split(body(system="the prompt"), None)
    as_block = split(body(system=[{"type": "text", "text": "the prompt"}]), None)
    assert as_string.system == as_block.system
    assert split(body(system=""), None).system_blocks == ()
    assert split(body(system=[]), None).system == split({"messages": []}, None).system


def test_cache_control_never_changes_a_digest() -> None:
    b = body()
    moved = json.loads(json.dumps(without_cache_control(b)))
    moved["system"][1]["cache_control"] = EPHEMERAL
    moved["tools"][-1]["cache_control"] = EPHEMERAL
    moved["messages"][2] = {
        "role": "user",
        "content": [{"type": "text", "text": "next", "cache_control": EPHEMERAL}],
    }
    a, c = split(b, None), split(moved, None)
    assert a.summary() == c.summary()
    assert a.messages[:2] == c.messages[:2]


def test_project_context_only_from_the_first_user_message() -> None:
    none = chain([])
    no_context = body(messages=[{"role": "user", "content": [{"type": "text", "text": "q"}]}])
    assert split(no_context, None).project_context == none
    string_first = body(messages=[{"role": "user", "content": REMINDER}])
    assert split(string_first, None).project_context == none
    assistant_first = body(
        messages=[{"role": "assistant", "content": [{"type": "text", "text": REMINDER}]}]
    )
    assert split(assistant_first, None).project_context == none
    later = body()
    later["messages"][2] = {"role": "user", "content": [{"type": "text", "text": REMINDER + "x"}]}
    assert split(later, None).project_context == chain([digest(REMINDER)])
    indented = body()
    indented["messages"][0]["content"][0]["text"] = "\n  " + REMINDER
    assert split(indented, None).project_context == chain([digest("\n  " + REMINDER)])
    two = body()
    two["messages"][0]["content"].insert(1, {"type": "text", "text": "<system-reminder>b"})
    assert split(two, None).project_context == chain(
        [digest(REMINDER), digest("<system-reminder>b")]
    )


def test_odd_shapes_do_not_crash() -> None:
    seg = split({"system": None, "tools": "nope", "messages": "nope"}, None)
    assert seg.system_blocks == ()
    assert seg.tools == () and seg.mcp_tools == ()
    assert seg.messages == ()
    assert seg.current_turn == chain([])
    assert seg.conversation == chain([])
    unnamed = split({"tools": [{"description": "x"}, "str"], "messages": []}, None)
    assert [name for name, _ in unnamed.tools] == ["?", "?"]


def test_segments_is_frozen_and_comparable() -> None:
    a = split(body(), None)
    b = split(body(), None)
    assert a == b
    assert isinstance(a, Segments)
    assert hash(a) == hash(b)
