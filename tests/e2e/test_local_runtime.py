"""End-to-end tests of the embedded runtime against the real bundled llama-server.

Prompts stay at a few hundred tokens: the model runs on a small CPU.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefixgate.runtime.local import LocalRuntime, default_spec

pytestmark = pytest.mark.e2e

SYSTEM = (
    "You are a careful coding assistant working in a small Python project. "
    "Answer briefly, prefer reading files before changing them, and explain each change "
    "in one sentence. Never run destructive shell commands without asking first."
)

TOOLS: list[dict[str, Any]] = [
    {
        "name": "Read",
        "description": "Read a text file from the local filesystem and return its contents "
        "with line numbers. Use an absolute path. Optionally read only a range of lines.",
        "input_schema": {
            "type": "object",
            "properties": {
                "file_path": {"type": "string", "description": "Absolute path of the file"},
                "offset": {"type": "integer", "description": "First line to read"},
                "limit": {"type": "integer", "description": "How many lines to read"},
            },
            "required": ["file_path"],
        },
    },
    {
        "name": "Bash",
        "description": "Run a shell command in the project directory and return its "
        "standard output and standard error. Commands time out after two minutes.",
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command to run"},
                "timeout": {"type": "integer", "description": "Timeout in milliseconds"},
            },
            "required": ["command"],
        },
    },
]


@pytest.fixture(scope="module")
def client(local_base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_base_url, timeout=120.0, trust_env=False) as http:
        yield http


def messages(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/messages", json={"model": "local", "max_tokens": 1, **body})
    assert response.status_code == 200, response.text
    usage: dict[str, Any] = response.json()["usage"]
    return usage


def prompt_tokens(usage: dict[str, Any]) -> int:
    """Whole prompt: llama.cpp reports the uncached part as input_tokens."""
    return int(usage["input_tokens"]) + int(usage.get("cache_read_input_tokens", 0))


def test_tools_are_rendered_into_the_prompt(client: httpx.Client) -> None:
    body: dict[str, Any] = {
        "system": SYSTEM,
        "messages": [{"role": "user", "content": "Which Python files are in this project?"}],
    }
    without_tools = prompt_tokens(messages(client, body))
    with_tools = prompt_tokens(messages(client, {**body, "tools": TOOLS}))
    print(f"prompt tokens: {without_tools} without tools, {with_tools} with 2 tools")
    assert with_tools >= without_tools + 150

    rendered = client.post(
        "/apply-template",
        json={
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "hello"},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": tool["name"],
                        "description": tool["description"],
                        "parameters": tool["input_schema"],
                    },
                }
                for tool in TOOLS
            ],
        },
    ).json()["prompt"]
    assert rendered.index(SYSTEM) < rendered.index('"name": "Read"') < rendered.index("hello")
    assert '"file_path": {"type": "string"' in rendered


def test_mid_conversation_system_message_stays_in_place(client: httpx.Client) -> None:
    response = client.post(
        "/apply-template",
        json={
            "messages": [
                {"role": "user", "content": "FIRST_USER_TEXT"},
                {"role": "system", "content": "MID_SYSTEM_TEXT"},
                {"role": "assistant", "content": "ASSISTANT_TEXT"},
                {"role": "user", "content": [{"type": "text", "text": "LAST_USER_TEXT"}]},
            ]
        },
    )
    assert response.status_code == 200, response.text
    prompt: str = response.json()["prompt"]
    print(prompt)
    first = prompt.index("FIRST_USER_TEXT")
    middle = prompt.index("MID_SYSTEM_TEXT")
    assistant = prompt.index("ASSISTANT_TEXT")
    last = prompt.index("LAST_USER_TEXT")
    assert first < middle < assistant < last
    assert prompt.startswith("<start_of_turn>user\nFIRST_USER_TEXT<end_of_turn>\n")
    assert prompt.endswith("<start_of_turn>model\n")


def test_tool_calls_and_results_are_rendered(client: httpx.Client) -> None:
    response = client.post(
        "/apply-template",
        json={
            "messages": [
                {"role": "user", "content": "Show me setup.py"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "Read",
                                "arguments": '{"file_path": "/p/setup.py"}',
                            },
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "TOOL_RESULT_TEXT"},
            ]
        },
    )
    assert response.status_code == 200, response.text
    prompt: str = response.json()["prompt"]
    assert '<tool_call>\n{"name": "Read", "arguments": {"file_path": "/p/setup.py"}}' in prompt
    assert "<tool_response>\nTOOL_RESULT_TEXT\n</tool_response>" in prompt
    assert prompt.index("</tool_call>") < prompt.index("TOOL_RESULT_TEXT")


def test_identical_prefix_reuses_the_cache(client: httpx.Client) -> None:
    # A head no other test sends, so request A starts (nearly) cold.
    system = f"Session {uuid.uuid4().hex}.\n{SYSTEM}"
    turn_a: list[dict[str, Any]] = [
        {"role": "user", "content": "Read the README and tell me what the project does."},
    ]
    first = messages(client, {"system": system, "tools": TOOLS, "messages": turn_a})
    turn_b = [
        *turn_a,
        {"role": "assistant", "content": "It is a gateway."},
        {"role": "user", "content": "And how do I run its tests?"},
    ]
    second = messages(client, {"system": system, "tools": TOOLS, "messages": turn_b})
    print(f"first: {first}; second: {second}")
    assert first["cache_read_input_tokens"] < 0.5 * prompt_tokens(first)
    assert second["cache_read_input_tokens"] > 0.8 * prompt_tokens(first)
    assert prompt_tokens(second) > prompt_tokens(first)


def test_mid_conversation_system_message_keeps_the_head_cached(client: httpx.Client) -> None:
    turn_a: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "List the TODO comments."}]},
    ]
    first = messages(client, {"system": SYSTEM, "tools": TOOLS, "messages": turn_a})
    turn_b = [
        *turn_a,
        {"role": "system", "content": "The user switched to plan mode."},
        {"role": "assistant", "content": "There are none."},
        {"role": "user", "content": "Check the tests folder too."},
    ]
    second = messages(client, {"system": SYSTEM, "tools": TOOLS, "messages": turn_b})
    print(f"first: {first}; second: {second}")
    assert second["cache_read_input_tokens"] > 0.8 * prompt_tokens(first)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() if Path("/proc").is_dir() else True


def test_restart_gives_a_cold_cache_and_stop_leaves_no_process(tmp_path: Path) -> None:
    spec = default_spec(ctx_size=4096)
    runtime = LocalRuntime(spec, log_path=tmp_path / "server.log")
    body: dict[str, Any] = {
        "system": SYSTEM,
        "messages": [{"role": "user", "content": "Say hello."}],
    }
    try:
        runtime.start()
        port, pid = runtime.port, runtime.pid
        assert pid is not None
        with httpx.Client(base_url=runtime.base_url, timeout=120.0, trust_env=False) as http:
            messages(http, body)
            warm = messages(http, body)
        assert warm["cache_read_input_tokens"] > 0
        runtime.restart()
        assert runtime.port == port and runtime.pid != pid
        with httpx.Client(base_url=runtime.base_url, timeout=120.0, trust_env=False) as http:
            cold = messages(http, body)
        assert cold["cache_read_input_tokens"] == 0
        second_pid = runtime.pid
    finally:
        runtime.stop()
    assert second_pid is not None
    assert not _process_exists(pid)
    assert not _process_exists(second_pid)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False)
    runtime.stop()
