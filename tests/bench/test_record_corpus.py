"""The pure parts of bench/record_corpus.py: the scripted answers and the anonymiser,
and the scripted upstream answering over real HTTP."""

from __future__ import annotations

import json
import urllib.request
from types import ModuleType
from typing import Any

import pytest
from support.benchscripts import load_script


@pytest.fixture(scope="module")
def rc() -> ModuleType:
    return load_script("record_corpus")


ENV = "# Environment\nYou have been invoked in the following environment: \n"


def request(*turns: dict[str, Any], cwd: str = "/home/dev/proj", **extra: Any) -> dict[str, Any]:
    """A 2.1.332-shaped body: reminders and a typed prompt, the environment, then ``turns``."""
    first, *rest = turns
    env = {"role": "system", "content": f"{ENV} - Primary working directory: {cwd}\n - Shell: bash"}
    return {
        "model": "claude-opus-5-5",
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.abc;"}],
        "tools": [{"name": "Read", "input_schema": {"type": "object"}}],
        "messages": [first, env, *rest],
        **extra,
    }


def user(text: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": "<system-reminder>\ncontext\n</system-reminder>"},
            {"type": "text", "text": text},
        ],
    }


def tool_turn(tool_id: str) -> list[dict[str, Any]]:
    return [
        {"role": "assistant", "content": [{"type": "tool_use", "id": tool_id, "name": "Read"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id}]},
    ]


def test_the_read_script_calls_read_in_the_working_directory_then_answers(
    rc: ModuleType,
) -> None:
    body = request(user(rc.PROMPT_READ))
    first = rc.choose_answer(body, json.dumps(body))
    assert first.stop_reason == "tool_use" and first.script == rc.PROMPT_READ
    (block,) = first.content
    assert block["name"] == "Read"
    assert block["input"] == {"file_path": "/home/dev/proj/notes.txt"}
    assert block["id"] == "toolu_corpus_001"
    then = rc.choose_answer(request(user(rc.PROMPT_READ), *tool_turn("t1")))
    assert then.stop_reason == "end_turn" and then.content[0]["type"] == "text"


def test_a_continued_conversation_follows_the_last_typed_prompt(rc: ModuleType) -> None:
    answered = {"role": "assistant", "content": [{"type": "text", "text": "done"}]}
    body = request(
        user(rc.PROMPT_MCP), *tool_turn("t1"), answered, user(rc.PROMPT_MCP), *tool_turn("t2")
    )
    where = rc.position(body)
    assert (where.prompt, where.step, where.turns) == (rc.PROMPT_MCP, 1, 3)
    answer = rc.choose_answer(body)
    assert answer.content[0]["name"] == "mcp__projfs__count_lines"
    assert answer.content[0]["id"] == "toolu_corpus_004"  # unique in the conversation


def test_toolsearch_loads_by_name(rc: ModuleType) -> None:
    answer = rc.choose_answer(request(user(rc.PROMPT_WEBFETCH)))
    assert answer.content[0]["name"] == "ToolSearch"
    assert answer.content[0]["input"]["query"] == "select:WebFetch"


def test_reminders_and_tool_results_are_not_prompts(rc: ModuleType) -> None:
    notice = {"role": "user", "content": "<system-reminder>\nA background task finished"}
    body = request(user(rc.PROMPT_AGENT), *tool_turn("t1"), notice)
    assert rc.position(body).prompt == rc.PROMPT_AGENT
    # past the script's last step: its last text again
    assert rc.choose_answer(body).stop_reason == "end_turn"


def test_side_requests_get_plain_or_structured_answers(rc: ModuleType) -> None:
    no_tools = request(user(rc.PROMPT_READ))
    del no_tools["tools"]
    assert rc.choose_answer(no_tools).content[0]["text"] == "OK."
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["title"],
    }
    titled = request(
        user("<session>x</session>"),
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    answer = rc.choose_answer(titled)
    assert json.loads(answer.content[0]["text"]) == {"title": "Corpus recording"}


def test_unknown_prompts_get_a_text(rc: ModuleType) -> None:
    answer = rc.choose_answer(request(user("something else")))
    assert answer.stop_reason == "end_turn" and answer.script == ""


def test_the_anonymiser_replaces_inside_the_body_string_and_keeps_it_json(
    rc: ModuleType,
) -> None:
    home = "/tmp/prefixgate-corpus-a_b1/home"
    pairs = rc.replacements(home, 0)
    assert [len(old) for old, _ in pairs] == sorted((len(old) for old, _ in pairs), reverse=True)
    body = json.dumps(
        {
            "cwd": f"{home}/proj",
            "memory": f"{home}/.claude/projects/{rc.dashed(home + '/proj')}/memory/",
            "task": "/tmp/claude-0/x",
            "quoted": f'say "{home}"',
        },
        ensure_ascii=False,
    )
    line = json.dumps(
        {"method": "POST", "path": "/v1/messages", "headers": {"h": home}, "body": body, "t": 1.0}
    )
    out = json.loads(rc.anonymise_line(line, pairs))
    assert out["headers"] == {"h": "/home/dev"}
    assert json.loads(out["body"]) == {
        "cwd": "/home/dev/proj",
        "memory": "/home/dev/.claude/projects/-home-dev-proj/memory/",
        "task": "/tmp/claude-1000/x",
        "quoted": 'say "/home/dev"',
    }


def test_the_anonymiser_refuses_to_break_a_body(rc: ModuleType) -> None:
    line = json.dumps({"method": "POST", "path": "/", "headers": {}, "body": '{"a": "X"}'})
    with pytest.raises(ValueError):
        rc.anonymise_line(line, [("X", 'a"b')])


def test_the_scripted_upstream_answers_json_and_sse(rc: ModuleType) -> None:
    with rc.ScriptedUpstream() as upstream:
        base = f"http://127.0.0.1:{upstream.port}"

        def post(path: str, body: dict[str, Any]) -> tuple[str, bytes]:
            req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.headers["content-type"], resp.read()

        ctype, raw = post("/v1/messages", request(user(rc.PROMPT_READ)))
        assert ctype == "application/json"
        assert json.loads(raw)["content"][0]["name"] == "Read"
        ctype, raw = post("/v1/messages", request(user(rc.PROMPT_READ), stream=True))
        assert ctype == "text/event-stream"
        events = [
            json.loads(line[len("data: ") :])
            for line in raw.decode().splitlines()
            if line.startswith("data: ")
        ]
        assert events[0]["type"] == "message_start"
        assert events[-1]["type"] == "message_stop"
        partial = "".join(
            e["delta"].get("partial_json", "") for e in events if e["type"] == "content_block_delta"
        )
        assert json.loads(partial) == {"file_path": "/home/dev/proj/notes.txt"}
        _, raw = post("/v1/messages/count_tokens", request(user("hi")))
        assert json.loads(raw)["input_tokens"] > 0
        assert upstream.finished(rc.PROMPT_READ) == 0
