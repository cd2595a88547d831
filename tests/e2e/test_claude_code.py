"""The real Claude Code binary (``claude -p``) through prefixgate to the real llama-server.

    claude -p -> prefixgate (strip) -> Recorder -> llama-server (Gemma 3 270M)

A 270M model rambles until ``max_tokens``, and Claude Code treats an answer cut
at its output limit as an error. This module's runtime therefore biases the
model's end-of-turn token (``<end_of_turn>``, id 106 in Gemma 3) so every answer
ends at once. (A server-side grammar does not help: with tools in the request
llama.cpp replaces it by its tool-call grammar.) The prompt processing under
test is untouched; only the answer is cut short.

Two print-mode sessions in the same project: each run is a new conversation, so
Claude Code gives each its own ``cc_version`` suffix. The first run pays for the
whole ~20,000-token prompt; the second must find everything up to its first
message in the runtime's cache, which only happens because the block is gone.

The test runs twice: prefixgate speaking Anthropic to llama-server's
``/v1/messages``, and speaking OpenAI to its ``/v1/chat/completions`` (every
request and answer translated); Claude Code must not see the difference.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Gateway, gateway_in_front_of

from prefixgate.core.attribution import HEADER_NAME
from prefixgate.runtime.local import LocalRuntime, default_spec
from prefixgate.store.audit import AuditRecord

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
END_OF_TURN_AT_ONCE = "106+100"


UPSTREAM_PATHS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}


@pytest.fixture(scope="module", params=["anthropic", "openai"])
def claude_gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A runtime of its own (answers end at once), behind recorder and prefixgate."""
    spec = default_spec(extra_args=("--logit-bias", END_OF_TURN_AT_ONCE))
    log_path = tmp_path_factory.mktemp("claude-runtime") / "llama-server.log"
    runtime = LocalRuntime(spec, log_path=log_path, startup_timeout=300.0)
    with runtime, gateway_in_front_of(runtime.base_url, request.param) as gw:
        yield gw


def claude_binary() -> Path:
    """The Claude Code binary installed by ``npm install`` (scripts/test does it)."""
    path = Path(os.environ.get("PREFIXGATE_CLAUDE_BIN", REPO / "node_modules/.bin/claude"))
    if not path.exists():
        pytest.fail(f"Claude Code not found at {path}: run `npm install` in the repository root")
    return path


def run_claude(gateway: Gateway, project: Path, home: Path, prompt: str) -> str:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": gateway.url,
        "ANTHROPIC_API_KEY": "sk-e2e-dummy",
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "32",
    }
    done = subprocess.run(
        [str(claude_binary()), "-p", prompt, "--allowedTools", "Read"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"claude exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def main_requests(records: list[AuditRecord]) -> list[AuditRecord]:
    return [r for r in records if r.route == "/v1/messages"]


def test_claude_code_print_mode_through_prefixgate(claude_gateway: Gateway, tmp_path: Path) -> None:
    gateway = claude_gateway
    project, home = tmp_path / "proj", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    (project / "CLAUDE.md").write_text("# Inventory service\n\nIndent with tabs.\n")
    seen_before, audit_before = len(gateway.recorder.seen), len(gateway.records())

    run_claude(gateway, project, home, "Which indentation does this project use?")
    first = main_requests(gateway.records()[audit_before:])
    run_claude(gateway, project, home, "How are the tests of this project run?")
    second = main_requests(gateway.records()[audit_before + len(first) :])

    # Claude Code sent its block; prefixgate found and stripped it every time.
    assert first and second
    for rec in first + second:
        assert rec.status == 200, rec.error
        assert rec.attribution_found and rec.policy == "strip"
        assert rec.attribution is not None and "cc_version" in rec.attribution
    versions = {r.attribution["cc_version"] for r in (first[0], second[0]) if r.attribution}
    assert len(versions) == 2, "each print-mode run is its own conversation"

    # The upstream never saw it.
    forwarded = gateway.recorder.seen[seen_before:]
    paths = {r.path.split("?")[0] for r in forwarded} - {"/tokenize"}
    assert paths == {UPSTREAM_PATHS[gateway.kind]}
    for request in forwarded:
        assert HEADER_NAME.encode() not in request.body
        assert "sk-e2e-dummy" not in " ".join(request.headers.values())

    # Both sessions share one stable prefix key ...
    assert first[0].key == second[0].key
    # ... and the second session's opening request reused the first one's prefix.
    opening = second[0]
    assert opening.cache_read_input_tokens is not None and opening.input_tokens is not None
    prompt = opening.cache_read_input_tokens + opening.input_tokens
    assert prompt > 5000, "a Claude Code request carries its whole system prompt and tools"
    assert opening.cache_read_input_tokens > 0.8 * prompt, (
        f"second session reused {opening.cache_read_input_tokens} of {prompt} prompt tokens"
    )
    # What prefixgate recorded: Claude Code's own sessions, and no miss to explain.
    assert {r.session_source for r in first + second} == {"header"}
    assert first[0].session != second[0].session
    assert opening.expected_source == "tokenizer"
    assert opening.expected_cached_tokens is not None
    assert opening.expected_cached_tokens > 0.8 * prompt
    assert opening.cause == "none", opening.cause_detail
