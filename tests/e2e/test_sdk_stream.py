"""The official Anthropic SDK streaming through prefixgate to the real llama-server.

    anthropic SDK -> prefixgate (uvicorn) -> recording proxy (uvicorn) -> llama-server

The recording proxy is a few lines of Starlette that forwards every request
unchanged and keeps a copy of what it forwarded, so the tests can prove what
the upstream actually received. Prompts stay at a few hundred tokens: the model
runs on a small CPU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from servers import Gateway, Seen
from support.servers import free_port

pytestmark = pytest.mark.e2e

BLOCK = "x-anthropic-billing-header"
MODEL = "claude-haiku-4-5"
IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."
PROMPT = (
    "You are an interactive CLI tool that helps users with software engineering tasks. "
    "Use the instructions below and the tools available to you to assist the user.\n\n"
    "# Tone and style\n"
    "You should be concise, direct, and to the point. Answer the user's question directly, "
    "without elaboration, explanation, or details. One word answers are best. Avoid "
    "introductions, conclusions, and explanations. Only use emojis if the user explicitly "
    "requests it.\n\n"
    "# Following conventions\n"
    "When making changes to files, first understand the file's code conventions. Mimic code "
    "style, use existing libraries and utilities, and follow existing patterns. Never assume "
    "that a given library is available, even if it is well known. Always follow security best "
    "practices. Never introduce code that exposes or logs secrets and keys.\n\n"
    "# Doing tasks\n"
    "The user will primarily request you perform software engineering tasks. This includes "
    "solving bugs, adding new functionality, refactoring code, explaining code, and more. "
    "Use the available search tools to understand the codebase and the user's query. "
    "Implement the solution using all tools available to you. Verify the solution if "
    "possible with tests. NEVER commit changes unless the user explicitly asks you to."
)
REMINDER = (
    "<system-reminder>\nAs you answer the user's questions, you can use the following "
    "context:\n# claudeMd\nThis project is a small Python package. Run the tests with "
    "pytest and keep functions short.\n</system-reminder>\n"
)


def system(version_suffix: str) -> list[dict[str, Any]]:
    """Claude Code's system prompt shape; the block's suffix differs per session."""
    return [
        {
            "type": "text",
            "text": f"{BLOCK}: cc_version=2.1.197.{version_suffix}; cc_entrypoint=cli;",
        },
        {"type": "text", "text": IDENTITY, "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": PROMPT, "cache_control": {"type": "ephemeral"}},
    ]


def user(text: str, *, reminder: bool = False) -> dict[str, Any]:
    blocks = [{"type": "text", "text": REMINDER}] if reminder else []
    return {"role": "user", "content": [*blocks, {"type": "text", "text": text}]}


def sdk_client(base_url: str) -> anthropic.Anthropic:
    """The official SDK pointed at ``base_url``, with the dummy client key."""
    return anthropic.Anthropic(
        base_url=base_url, api_key="sk-client-dummy", max_retries=0, timeout=300.0
    )


@pytest.fixture
def sdk(gateway: Gateway) -> Iterator[anthropic.Anthropic]:
    with sdk_client(gateway.url) as client:
        yield client


def prompt_tokens(usage: anthropic.types.Usage) -> int:
    return (
        usage.input_tokens
        + (usage.cache_read_input_tokens or 0)
        + (usage.cache_creation_input_tokens or 0)
    )


def stream_turn(
    sdk: anthropic.Anthropic, version_suffix: str, messages: list[dict[str, Any]]
) -> tuple[list[str], anthropic.types.Message]:
    kinds: list[str] = []
    with sdk.messages.stream(
        model=MODEL,
        max_tokens=8,
        system=system(version_suffix),  # type: ignore[arg-type]
        messages=messages,  # type: ignore[arg-type]
        extra_headers={"x-claude-code-session-id": f"session-{version_suffix}"},
    ) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    return kinds, final


def assert_upstream_never_saw_the_block(seen: list[Seen]) -> None:
    assert seen
    for request in seen:
        assert BLOCK.encode() not in request.body
        for name, value in request.headers.items():
            assert BLOCK not in name and BLOCK not in value
        assert "sk-client-dummy" not in " ".join(request.headers.values())


# -- tests ----------------------------------------------------------------------


def test_sdk_stream_through_the_gateway_hits_the_prefix_cache(
    sdk: anthropic.Anthropic, gateway: Gateway
) -> None:
    first_turn = [user("What is 2 + 2? Answer with one number.", reminder=True)]
    kinds, first = stream_turn(sdk, "56c", first_turn)
    assert kinds[0] == "message_start"
    assert "text" in kinds  # the SDK's text events, built from content_block_delta
    assert kinds[-1] == "message_stop"
    assert first.role == "assistant"
    assert first.stop_reason in ("end_turn", "max_tokens")
    assert first.content and first.content[0].type == "text"
    assert 0 < first.usage.output_tokens <= 8
    prompt = prompt_tokens(first.usage)
    assert prompt > 200

    second_turn = [
        *first_turn,
        {"role": "assistant", "content": first.content[0].text or "4"},
        user("And 3 + 3?"),
    ]
    _, second = stream_turn(sdk, "56c", second_turn)
    cached = second.usage.cache_read_input_tokens or 0
    assert cached > 0.8 * prompt, (cached, prompt)

    # A new session of the same agent: only the block differed, and it is gone.
    _, other = stream_turn(sdk, "e9d", first_turn)
    other_cached = other.usage.cache_read_input_tokens or 0
    assert other_cached > 0.8 * prompt, (other_cached, prompt)

    # Control: the same new-session request sent straight to llama-server, block
    # and all, reuses next to nothing: the block is what defeats the cache.
    with anthropic.Anthropic(base_url=gateway.runtime_url, api_key="x", max_retries=0) as direct:
        control = direct.messages.create(
            model=MODEL,
            max_tokens=8,
            system=system("aaa"),  # type: ignore[arg-type]
            messages=first_turn,  # type: ignore[arg-type]
        )
    assert (control.usage.cache_read_input_tokens or 0) < 0.1 * prompt_tokens(control.usage)

    seen = [s for s in gateway.recorder.seen if s.path.startswith("/v1/messages")]
    assert len(seen) == 3
    assert_upstream_never_saw_the_block(seen)
    records = gateway.records()[-3:]
    assert [r.attribution_found for r in records] == [True, True, True]
    assert [r.stream for r in records] == [True, True, True]
    assert [r.error for r in records] == [None, None, None]
    assert records[1].cache_read_input_tokens == cached
    assert records[0].key == records[1].key == records[2].key
    assert records[0].attribution != records[2].attribution


def test_sdk_non_stream_and_count_tokens(sdk: anthropic.Anthropic, gateway: Gateway) -> None:
    before = len(gateway.recorder.seen)
    message = sdk.messages.create(
        model=MODEL,
        max_tokens=4,
        system=system("776"),  # type: ignore[arg-type]
        messages=[user("Say yes.")],  # type: ignore[list-item]
    )
    assert message.type == "message"
    assert message.content and message.content[0].type == "text"
    prompt = prompt_tokens(message.usage)
    assert prompt > 100
    count = sdk.messages.count_tokens(
        model=MODEL,
        system=system("776"),  # type: ignore[arg-type]
        messages=[user("Say yes.")],  # type: ignore[list-item]
    )
    assert 0.9 * prompt <= count.input_tokens <= prompt
    seen = gateway.recorder.seen[before:]
    # the observer may ask llama-server's /tokenize for expected counts in between
    assert [p for s in seen if (p := s.path.split("?")[0]).startswith("/v1/")] == [
        "/v1/messages",
        "/v1/messages/count_tokens",
    ]
    assert b'"max_tokens"' not in seen[1].body
    assert_upstream_never_saw_the_block(seen)


def test_prefixgate_serve_in_a_subprocess(gateway: Gateway) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFIXGATE_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefixgate",
            "serve",
            "--upstream",
            gateway.recorder_url,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "prefixgate serve did not come up in 60 s"
            with contextlib.suppress(httpx.HTTPError):
                health = httpx.get(f"{url}/healthz", timeout=2.0, trust_env=False)
                if health.status_code == 200:
                    break
            time.sleep(0.1)
        assert health.json()["upstreams"] == {"default": gateway.recorder_url}
        before = len(gateway.recorder.seen)
        client = anthropic.Anthropic(base_url=url, api_key="sk-client-dummy", max_retries=0)
        with (
            client,
            client.messages.stream(
                model=MODEL,
                max_tokens=4,
                system=system("3ab"),  # type: ignore[arg-type]
                messages=[user("Say yes.")],  # type: ignore[list-item]
            ) as stream,
        ):
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert final.usage.output_tokens > 0
        assert isinstance(text, str)
        assert_upstream_never_saw_the_block(gateway.recorder.seen[before:])
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output = process.communicate(timeout=30)[0].decode()
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0].decode()
    assert process.returncode == 0, output
    assert "Traceback" not in output
