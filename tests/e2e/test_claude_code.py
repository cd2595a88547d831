"""The real Claude Code binaries through prefixgate to the real llama-server.

    claude -p -> prefixgate (strip) -> Recorder -> Scripter -> llama-server (Gemma 3 270M)

Two clients, the versions ``package.json`` pins: ``2.1.197`` and the current
release (``claude-code-current``, 2.1.332 now), whose request layouts differ
(a ``role: "system"`` environment message, deferred tools, ToolSearch).
``PREFIXGATE_CLAUDE_BIN`` and ``PREFIXGATE_CLAUDE_CURRENT_BIN`` point at other
installs of each.

A 270M model rambles until ``max_tokens``, and Claude Code treats an answer cut
at its output limit as an error. This module's runtime therefore biases the
model's end-of-turn token (``<end_of_turn>``, id 106 in Gemma 3) so every answer
ends at once. (A server-side grammar does not help: with tools in the request
llama.cpp replaces it by its tool-call grammar.) Nor does it call tools when
asked: the turns where a test wants a call are scripted (``scripted.Scripter``):
llama-server still processes every prompt, and the answer is replaced by the
call. The Recorder keeps what prefixgate sent upstream.

The whole module runs twice: prefixgate speaking Anthropic to llama-server's
``/v1/messages``, and speaking OpenAI to its ``/v1/chat/completions`` (every
request and answer translated); Claude Code must not see the difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scripted import (
    MCP_PROPERTY_DESCRIPTION,
    MCP_SERVER,
    MCP_TOOL,
    MCP_TOOL_DESCRIPTION,
    Call,
    Say,
    Scripter,
    write_mcp_config,
)
from servers import Gateway, Seen, ServerThread, gateway_in_front_of

from prefixgate.core.attribution import HEADER_NAME
from prefixgate.runtime.local import LocalRuntime, default_spec
from prefixgate.store.audit import AuditRecord

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
END_OF_TURN_AT_ONCE = "106+100"
UPSTREAM_PATHS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}


@dataclass(frozen=True)
class Client:
    """One pinned Claude Code version: its package.json entry, binary and override."""

    label: str
    package: str  # the key in package.json's devDependencies
    binary: str  # relative to the repository root
    env: str  # environment variable naming another binary

    @property
    def version(self) -> str:
        """The pinned version (``2.1.197``; an alias ``npm:...@2.1.332`` gives ``2.1.332``)."""
        manifest = json.loads((REPO / "package.json").read_text(encoding="utf-8"))
        spec: str = manifest["devDependencies"][self.package]
        return spec.rsplit("@", 1)[-1]

    @property
    def path(self) -> Path:
        path = Path(os.environ.get(self.env) or REPO / self.binary)
        if not path.exists():
            pytest.fail(
                f"Claude Code {self.label} not found at {path}: run `npm install` in the "
                f"repository root (or set {self.env})"
            )
        return path

    @property
    def has_tool_search(self) -> bool:
        return tuple(int(p) for p in self.version.split(".")) >= (2, 1, 300)


CLIENTS = [
    Client("2.1.197", "@anthropic-ai/claude-code", "node_modules/.bin/claude",
           "PREFIXGATE_CLAUDE_BIN"),
    Client("current", "claude-code-current", "node_modules/claude-code-current/bin/claude.exe",
           "PREFIXGATE_CLAUDE_CURRENT_BIN"),
]  # fmt: skip


@dataclass(frozen=True)
class Setup:
    gateway: Gateway
    scripter: Scripter

    @property
    def kind(self) -> str:
        return self.gateway.kind


@pytest.fixture(scope="module", params=CLIENTS, ids=lambda c: c.label)
def client(request: pytest.FixtureRequest) -> Client:
    """Module-scoped, and first in every test's arguments, so the tests of one version
    run together, one kind after the other, in one project (``workspace``)."""
    found: Client = request.param
    return found


@pytest.fixture(scope="module")
def claude_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """A runtime of this module's own (answers end at once), for both kinds. The two
    kinds render a prompt differently, so each version's prompt is computed once per
    kind: four cold prompts in the module."""
    spec = default_spec(extra_args=("--logit-bias", END_OF_TURN_AT_ONCE))
    log_path = tmp_path_factory.mktemp("claude-runtime") / "llama-server.log"
    with LocalRuntime(spec, log_path=log_path, startup_timeout=300.0) as runtime:
        yield runtime


@pytest.fixture(scope="module", params=["anthropic", "openai"])
def claude_gateway(request: pytest.FixtureRequest, claude_runtime: LocalRuntime) -> Iterator[Setup]:
    """The module's runtime behind scripter, recorder and prefixgate (of each kind)."""
    scripter = Scripter(claude_runtime.base_url)
    with (
        ServerThread(scripter.app) as scripted,
        gateway_in_front_of(scripted.url, request.param) as gw,
    ):
        yield Setup(gw, scripter)


def run_claude(
    client: Client,
    gateway: Gateway,
    project: Path,
    home: Path,
    prompt: str,
    extra: Sequence[str] = (),
    allowed: str = "Read",
) -> str:
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
        [str(client.path), "-p", prompt, "--allowedTools", allowed, *extra],
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


@pytest.fixture(scope="module")
def workspace(client: Client, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One project (and home) per client version, shared by the module's tests.

    Claude Code writes the project's path into its system prompt, about 500
    tokens in: a project of each test's own would make every test's opening
    prompt (~20,000 tokens) cold in the runtime's cache. In one project only the
    first request of each version and kind pays for the whole prompt."""
    base = tmp_path_factory.mktemp(f"claude-{client.label}")
    project, home = base / "proj", base / "home"
    project.mkdir()
    home.mkdir()
    (project / "CLAUDE.md").write_text("# Inventory service\n\nIndent with tabs.\n")
    (project / "notes.txt").write_text("inventory notes\nsecond line\nthird line\n")
    return project, home


def assert_block_gone(setup: Setup, forwarded: list[Seen]) -> None:
    """The upstream never saw the block or the client's key, on the kind's own path."""
    paths = {r.path.split("?")[0] for r in forwarded} - {"/tokenize"}
    assert paths == {UPSTREAM_PATHS[setup.kind]}
    for request in forwarded:
        assert HEADER_NAME.encode() not in request.body
        assert HEADER_NAME not in request.headers
        assert "sk-e2e-dummy" not in " ".join(request.headers.values())


def test_claude_code_print_mode_through_prefixgate(
    client: Client, claude_gateway: Setup, workspace: tuple[Path, Path]
) -> None:
    """Two print-mode sessions in one project share the prompt ahead of their first message.

    Each run is a new conversation, so Claude Code gives each its own
    ``cc_version`` suffix. The first run pays for the whole ~20,000-token prompt;
    the second must find everything up to its first message in the runtime's
    cache, which only happens because the block is gone.
    """
    gateway = claude_gateway.gateway
    project, home = workspace
    asked = ("Which indentation does this project use?", "How are the tests of this project run?")
    claude_gateway.scripter.scripts = {asked[0]: [Say("Tabs.")], asked[1]: [Say("With pytest.")]}
    seen_before, audit_before = len(gateway.recorder.seen), len(gateway.records())

    run_claude(client, gateway, project, home, asked[0])
    first = main_requests(gateway.records()[audit_before:])
    run_claude(client, gateway, project, home, asked[1])
    second = main_requests(gateway.records()[audit_before + len(first) :])

    # Claude Code sent its block; prefixgate found and stripped it every time.
    assert first and second
    for rec in first + second:
        assert rec.status == 200, rec.error
        assert rec.attribution_found and rec.policy == "strip"
        assert rec.attribution is not None
        assert str(rec.attribution["cc_version"]).startswith(client.version + ".")
    versions = {r.attribution["cc_version"] for r in (first[0], second[0]) if r.attribution}
    assert len(versions) == 2, "each print-mode run is its own conversation"

    assert_block_gone(claude_gateway, gateway.recorder.seen[seen_before:])

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


# -- tool round trips -------------------------------------------------------------------


def bodies(forwarded: list[Seen], marker: str) -> list[dict[str, Any]]:
    """The forwarded requests of the conversation whose prompt holds ``marker``."""
    out = []
    for seen in forwarded:
        if seen.method == "POST" and marker.encode() in seen.body:
            body = json.loads(seen.body)
            if body.get("tools"):
                out.append(body)
    return out


def tool_results(body: dict[str, Any], kind: str) -> dict[str, str]:
    """``{tool call id: the result's text}`` in a forwarded request of either kind."""
    out: dict[str, str] = {}
    for message in body["messages"]:
        if kind == "openai":
            if message.get("role") == "tool":
                out[message["tool_call_id"]] = json.dumps(message["content"])
            continue
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if block.get("type") == "tool_result":
                out[block["tool_use_id"]] = json.dumps(block.get("content"))
    return out


def tool_definition(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The definition of ``name`` in a forwarded request's ``tools`` (either kind)."""
    for tool in body.get("tools", []):
        function = tool.get("function", tool)
        if function.get("name") == name:
            schema = function.get("parameters", function.get("input_schema"))
            return {"description": function.get("description"), "schema": schema}
    return None


def test_a_tool_round_trip(
    client: Client, claude_gateway: Setup, workspace: tuple[Path, Path]
) -> None:
    """The model calls Read, the client runs it, the next request carries its result."""
    setup, gateway = claude_gateway, claude_gateway.gateway
    project, home = workspace
    marker = f"[e2e-read-{client.label}-{setup.kind}]"
    read = Call("Read", {"file_path": str(project / "notes.txt")})
    setup.scripter.scripts = {marker: [read, Say("It says: inventory notes.")]}
    seen_before, answered_before = len(gateway.recorder.seen), len(setup.scripter.answered)
    audit_before = len(gateway.records())

    run_claude(client, gateway, project, home, f"{marker} What is the first line of notes.txt?")

    (call,) = setup.scripter.calls(answered_before)
    assert (call.name, call.step) == ("Read", 0)
    forwarded = gateway.recorder.seen[seen_before:]
    assert_block_gone(setup, forwarded)
    sent = bodies(forwarded, marker)
    after = [b for b in sent if call.call_id in tool_results(b, setup.kind)]
    assert after, "no request after the call carried its tool_result"
    assert "inventory notes" in tool_results(after[0], setup.kind)[call.call_id]
    records = main_requests(gateway.records()[audit_before:])
    assert records and all(r.status == 200 for r in records)
    versions = {str(r.attribution["cc_version"]) for r in records if r.attribution}
    assert {v.rsplit(".", 1)[0] for v in versions} == {client.version}


def test_an_mcp_tool_loaded_through_tool_search_and_called(
    client: Client, claude_gateway: Setup, workspace: tuple[Path, Path], tmp_path: Path
) -> None:
    """An MCP tool called by the model and run by the client through its MCP server.

    Where the version has ToolSearch (2.1.332), the MCP tool is deferred (only
    its name is listed): the scripted answer calls ToolSearch with ``select:``,
    the client adds the definition to ``tools`` and answers with a
    ``tool_reference``; the scripted answer then calls the tool (scripted only if
    the upstream was offered it) and the client runs it: the next request
    carries its result. Before ToolSearch (2.1.197) the tool is in ``tools``
    from the start and is called at once.
    """
    setup, gateway = claude_gateway, claude_gateway.gateway
    project, home = workspace
    config = write_mcp_config(tmp_path / "mcp", sys.executable)
    tool = f"mcp__{MCP_SERVER}__{MCP_TOOL}"
    marker = f"[e2e-mcp-{client.label}-{setup.kind}]"
    search = Call("ToolSearch", {"query": f"select:{tool}", "max_results": 1})
    call = Call(tool, {"path": "notes.txt"})
    done = Say("3 lines.")
    setup.scripter.scripts = {
        marker: [search, call, done] if client.has_tool_search else [call, done]
    }
    seen_before, answered_before = len(gateway.recorder.seen), len(setup.scripter.answered)

    run_claude(
        client, gateway, project, home, f"{marker} Count the lines of notes.txt with the MCP tool.",
        extra=("--mcp-config", str(config)), allowed=f"Read,ToolSearch,mcp__{MCP_SERVER}",
    )  # fmt: skip

    calls = setup.scripter.calls(answered_before)
    forwarded = gateway.recorder.seen[seen_before:]
    assert_block_gone(setup, forwarded)
    sent = bodies(forwarded, marker)
    if not client.has_tool_search:
        (used,) = calls
        assert used.name == tool and tool_definition(sent[0], tool) is not None
        assert_ran(sent, used.call_id, setup.kind)
        return
    assert [c.name for c in calls] == ["ToolSearch", tool], (
        "the loaded tool was not offered to the upstream after ToolSearch"
    )
    found, used = calls
    # Before the load: the tool is deferred, not among the upstream's tools.
    assert tool_definition(sent[0], tool) is None
    assert f"{MCP_SERVER}__{MCP_TOOL}" in json.dumps(sent[0]), "listed as a deferred tool"
    # After it: the upstream has the tool's full schema ...
    loaded = next(b for b in sent if found.call_id in tool_results(b, setup.kind))
    definition = tool_definition(loaded, tool)
    assert definition is not None and definition["description"] == MCP_TOOL_DESCRIPTION
    assert definition["schema"]["properties"]["path"]["description"] == MCP_PROPERTY_DESCRIPTION
    # ... and where the tool_reference stood, the definition (the tool-load policy
    # `inline`, default for local upstreams) rather than a reference it drops.
    result = tool_results(loaded, setup.kind)[found.call_id]
    assert "tool_reference" not in result
    assert MCP_TOOL_DESCRIPTION in result and MCP_PROPERTY_DESCRIPTION in result
    # The client ran the loaded tool: the next request carries its result.
    assert_ran(sent, used.call_id, setup.kind)


def assert_ran(sent: list[dict[str, Any]], call_id: str, kind: str) -> None:
    """A request after the MCP call carries the result the MCP server gave."""
    ran = [b for b in sent if call_id in tool_results(b, kind)]
    assert ran, "no request after the MCP call carried its tool_result"
    assert "3 lines counted" in tool_results(ran[0], kind)[call_id]
