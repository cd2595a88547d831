"""A tool loaded through ToolSearch does not cost the conversation (real llama-server).

    httpx -> prefixgate (tool_loads inline | as_sent) -> Recorder -> llama-server

Claude Code 2.1.332 recorded loading WebFetch through ToolSearch: the request
after the load has WebFetch inserted in the middle of ``tools[]`` and a
``tool_reference`` in the ToolSearch result. Through prefixgate (``inline``, the
default for a local upstream) the runtime must find the previous request's whole
prompt in its cache; forwarded as sent it cannot, because the bundled template
renders the tools ahead of the conversation.

The two requests are sent shrunk (``prefixgate.corpusmix.shrink_body``: long
texts cut to their head and tail, tool schemas to their property names and
types), about a fifth of their tokens: the same tools in the same order,
WebFetch still inserted mid-list, the same ``tool_reference`` in the same
ToolSearch result, so the cache behaves the same at a fraction of the cold
prompts' cost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import Gateway, gateway_in_front_of

from prefixgate.core.toolload import ToolLoads
from prefixgate.corpusmix import shrink_body
from prefixgate.runtime.local import LocalRuntime

pytestmark = pytest.mark.e2e

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "claude-code-2.1.332.jsonl"


def load_pair(tool: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the request before ``tool`` was loaded, the request after), same session."""
    last: dict[str, dict[str, Any]] = {}
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "count_tokens" in record["path"]:
            continue
        body = json.loads(record["body"])
        if not body.get("tools"):
            continue
        session = record["headers"].get("x-claude-code-session-id", "-")
        session += " sub" if "cc_is_subagent" in json.dumps(body.get("system")) else " main"
        reference = {"type": "tool_reference", "tool_name": tool}
        if json.dumps(reference, separators=(",", ":")) in record["body"] and session in last:
            return last[session], body
        last[session] = body
    raise AssertionError(f"{CORPUS.name} records no ToolSearch load of {tool}")


def probe(body: dict[str, Any]) -> bytes:
    return json.dumps({**body, "max_tokens": 1, "stream": False}, ensure_ascii=False).encode()


@pytest.fixture(scope="module")
def as_sent_gateway(local_runtime: LocalRuntime) -> Iterator[Gateway]:
    """prefixgate with ``tool_loads = "as_sent"`` in front of a recorder and the runtime."""
    with gateway_in_front_of(local_runtime.base_url, tool_loads=ToolLoads.AS_SENT) as gw:
        yield gw


def send(url: str, body: bytes) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/v1/messages",
        content=body,
        headers={"content-type": "application/json", "x-api-key": "dummy"},
        timeout=600.0,
    )
    assert response.status_code == 200, response.text
    usage: dict[str, Any] = response.json()["usage"]
    return usage


def prompt(usage: dict[str, Any]) -> int:
    return int(usage["input_tokens"]) + int(usage.get("cache_read_input_tokens") or 0)


def test_request_after_a_load_reuses_the_previous_prompt(
    gateway: Gateway, as_sent_gateway: Gateway
) -> None:
    """Inline: the request after the load finds the previous request's whole prompt
    in the runtime's cache (the tools it had first, WebFetch appended, its
    definition where the reference stood); as sent, the load moves the head of
    the prompt and less is reused."""
    before, after = (shrink_body(body) for body in load_pair("WebFetch"))
    names = [t["name"] for t in after["tools"]]
    assert names.index("WebFetch") < len(names) - 2  # inserted mid-list by the client

    first = send(gateway.url, probe(before))
    second = send(gateway.url, probe(after))
    reused = int(second["cache_read_input_tokens"])
    assert reused >= 0.95 * prompt(first), (reused, prompt(first))

    # what the runtime received: the previous tools[] first, WebFetch appended,
    # its definition where the reference stood
    messages = [s for s in gateway.recorder.seen if s.path.startswith("/v1/messages")]
    received = [json.loads(s.body) for s in messages[-2:]]
    old_tools, new_tools = received[0]["tools"], received[1]["tools"]
    assert new_tools[: len(old_tools)] == old_tools
    assert [t["name"] for t in new_tools[len(old_tools) :]] == ["WebFetch"]
    result_text = json.dumps(received[1]["messages"][-1])
    assert '"tool_reference"' not in result_text
    assert '<function>{\\"description\\": ' in result_text and '\\"name\\": \\"WebFetch\\"' in (
        result_text
    )

    # the same two requests forwarded as sent: the load moves the head of the prompt
    send(as_sent_gateway.url, probe(before))
    plain = send(as_sent_gateway.url, probe(after))
    assert int(plain["cache_read_input_tokens"]) < reused
