"""The shipped recordings of the current Claude Code client (corpus/claude-code-2.1.332*).

What the tests elsewhere rely on: every body parses, the attribution block leads the
system prompt, the 2.1.332 layout (``messages[1]`` a system message with the
environment, deferred tools) is there, the ToolSearch loads and the subagents are
where corpus/README.md says, and nothing of the machine that recorded them is left.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from corpusfiles import (
    CURRENT_FILES,
    CURRENT_INTERACTIVE,
    CURRENT_PLAIN,
    CURRENT_REMOTE_HOST,
    CURRENT_VERSION,
    CorpusRecord,
)

Records = dict[str, list[CorpusRecord]]

BLOCK = re.compile(
    r"^x-anthropic-billing-header: cc_version=(?P<version>[0-9.]+)\.[0-9a-f]{3}; "
    r"cc_entrypoint=(?P<entrypoint>[a-z-]+);(?P<rest>.*)$"
)


def text_of(content: Any) -> str:
    """A message's text: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict))


def is_subagent(body: dict[str, Any]) -> bool:
    return "cc_is_subagent=true;" in body["system"][0]["text"]


def is_main(body: dict[str, Any]) -> bool:
    return bool(body.get("tools")) and not is_subagent(body)


def session(record: CorpusRecord) -> str:
    return record.headers["x-claude-code-session-id"]


def tool_names(body: dict[str, Any]) -> list[str]:
    return [t["name"] for t in body.get("tools", [])]


def loads(body: dict[str, Any]) -> list[str]:
    """Tools the last user message says ToolSearch loaded (its ``tool_reference`` items)."""
    last = body["messages"][-1]
    if last["role"] != "user" or isinstance(last["content"], str):
        return []
    return [
        item["tool_name"]
        for block in last["content"]
        if block.get("type") == "tool_result" and isinstance(block.get("content"), list)
        for item in block["content"]
        if item.get("type") == "tool_reference"
    ]


def all_current(current_records: Records) -> list[CorpusRecord]:
    return [r for name in CURRENT_FILES for r in current_records[name]]


def test_every_body_parses_as_a_messages_request(current_records: Records) -> None:
    for record in all_current(current_records):
        assert record.method == "POST" and record.path == "/v1/messages?beta=true", record.label
        body = record.body
        assert isinstance(body, dict), record.label
        assert body["model"] and body["messages"], record.label


def test_the_block_leads_the_system_prompt_of_every_request(current_records: Records) -> None:
    for name in CURRENT_FILES:
        for record in current_records[name]:
            first = record.body["system"][0]["text"]
            found = BLOCK.match(first)
            assert found, f"{record.label}: {first[:80]!r}"
            assert found["version"] == CURRENT_VERSION
            # -p runs say sdk-cli, the terminal UI cli
            assert found["entrypoint"] == ("cli" if name == CURRENT_INTERACTIVE else "sdk-cli")
            # toward a custom base URL, loopback or not: no per-request fields
            assert found["rest"] in ("", " cc_is_subagent=true;"), record.label


def test_main_requests_carry_the_environment_as_a_system_message(
    current_records: Records,
) -> None:
    for record in all_current(current_records):
        body = record.body
        if not is_main(body):
            continue
        second = body["messages"][1]
        assert second["role"] == "system", record.label
        text = text_of(second["content"])
        assert text.startswith("# Environment\n"), record.label
        assert "Primary working directory: /home/dev/" in text
        assert "The following deferred tools are now available via ToolSearch" in text
        # a list of one text block on a conversation's first request, a string after it
        if len(body["messages"]) == 2:
            assert isinstance(second["content"], list) and len(second["content"]) == 1
        else:
            assert isinstance(second["content"], str), record.label


def test_git_status_is_in_the_first_user_message(current_plain_records: list[CorpusRecord]) -> None:
    for record in current_plain_records:
        first = record.body["messages"][0]
        assert first["role"] == "user"
        assert "# gitStatus" in text_of(first["content"]), record.label
        assert "gitStatus" not in json.dumps(record.body["system"]), record.label


@pytest.mark.parametrize(
    ("loaded", "where"), [("mcp__projfs__count_lines", "end"), ("WebFetch", "middle")]
)
def test_a_toolsearch_load_adds_the_definition_to_the_next_tools(
    current_plain_records: list[CorpusRecord], loaded: str, where: str
) -> None:
    at = [i for i, r in enumerate(current_plain_records) if loaded in loads(r.body)]
    assert len(at) == 1, f"one request holds the ToolSearch result loading {loaded}"
    index = at[0]
    after, before = current_plain_records[index].body, current_plain_records[index - 1].body
    assert session(current_plain_records[index]) == session(current_plain_records[index - 1])
    # the assistant asked for it by name
    call = after["messages"][-2]["content"][0]
    assert call["type"] == "tool_use" and call["name"] == "ToolSearch"
    assert call["input"]["query"] == f"select:{loaded}"
    # the result: a tool_reference, then a text block
    result = after["messages"][-1]["content"]
    assert result[0]["content"] == [{"type": "tool_reference", "tool_name": loaded}]
    assert result[1]["type"] == "text" and result[1]["text"] == "Tool loaded."
    # the loaded tool was listed as deferred, not defined, before; defined after
    assert loaded not in tool_names(before)
    assert loaded in text_of(before["messages"][1]["content"]).splitlines()
    names = tool_names(after)
    definition = after["tools"][names.index(loaded)]
    assert definition.get("defer_loading") is True
    assert definition["input_schema"]["type"] == "object"
    if where == "end":  # an MCP tool: appended after DeferredToolPlaceholder
        assert names[-1] == loaded and names[-2] == "DeferredToolPlaceholder"
    else:  # a built-in: in alphabetical place among the built-ins, mid-list
        assert 0 < names.index(loaded) < len(names) - 2
        assert names[names.index(loaded) - 1] < loaded < names[names.index(loaded) + 1]


def test_the_loaded_mcp_tool_is_then_called(current_plain_records: list[CorpusRecord]) -> None:
    calls = [
        block
        for r in current_plain_records
        for m in r.body["messages"]
        if m["role"] == "assistant" and isinstance(m["content"], list)
        for block in m["content"]
        if block.get("type") == "tool_use" and block["name"] == "mcp__projfs__count_lines"
    ]
    assert calls and calls[0]["input"] == {"path": "notes.txt"}


def test_mcp_tools_are_deferred_not_defined(current_plain_records: list[CorpusRecord]) -> None:
    with_mcp = [
        r
        for r in current_plain_records
        if "mcp__projfs__list_files" in text_of(r.body["messages"][1]["content"])
        and is_main(r.body)
    ]
    assert len(with_mcp) == 4  # the session after the server is added, and the load's three
    for record in with_mcp:
        assert "mcp__projfs__list_files" not in tool_names(record.body)


@pytest.mark.parametrize("name", [CURRENT_PLAIN, CURRENT_INTERACTIVE])
def test_a_subagent_runs(current_records: Records, name: str) -> None:
    subs = [r for r in current_records[name] if is_subagent(r.body)]
    assert len(subs) == 2, name  # a Read round trip
    for record in subs:
        body = record.body
        assert body["system"][2]["text"].startswith("You are an agent for Claude Code")
        assert body["messages"][1]["role"] == "system"
        assert "Report the first line" in text_of(body["messages"][0]["content"])
    assert session(subs[0]) == session(subs[1])


def test_sessions_of_one_project_share_the_prompt_head(
    current_plain_records: list[CorpusRecord],
) -> None:
    # the first requests of the two fresh sessions in the project (corpus/README.md)
    first, second = current_plain_records[0].body, current_plain_records[3].body
    assert session(current_plain_records[0]) != session(current_plain_records[3])
    assert first["system"][1:] == second["system"][1:]
    assert first["tools"] == second["tools"]
    assert first["messages"][1] == second["messages"][1]


def test_the_terminal_ui_sends_title_requests_and_safeguards(current_records: Records) -> None:
    records = current_records[CURRENT_INTERACTIVE]
    titles = [r.body for r in records if not r.body.get("tools")]
    assert len(titles) == 2  # one per session
    for body in titles:
        assert body["output_config"]["format"]["type"] == "json_schema"
        assert "Write the title" in text_of(body["messages"][0]["content"])
    auto = [r.body for r in records if "safeguards" in r.body]
    assert auto, "the auto-mode session's main requests carry safeguards"
    assert all(b["safeguards"][0]["classifier_context"]["home_dir"] == "/home/dev" for b in auto)


def test_the_remote_host_recording_used_a_non_loopback_name(current_records: Records) -> None:
    records = current_records[CURRENT_REMOTE_HOST]
    assert all(r.headers["host"].startswith("gateway.prefixgate.test:") for r in records)
    assert [len(r.body["messages"]) for r in records] == [2, 4]  # a Read round trip


def test_nothing_of_the_recording_machine_is_left(current_records: Records) -> None:
    for record in all_current(current_records):
        headers = {k.lower(): v for k, v in record.headers.items()}
        assert not {"x-api-key", "authorization", "cookie"} & set(headers), record.label
        assert "dummy" not in json.dumps(headers), record.label
        text = record.raw.decode("utf-8")
        for leftover in ("prefixgate-corpus-", "/root", "/claude-0/", "-tmp-"):
            assert leftover not in text, f"{record.label}: {leftover}"
        for path in re.findall(r"/home/[A-Za-z0-9_.-]+", text):
            assert path == "/home/dev", f"{record.label}: {path}"
