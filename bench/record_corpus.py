"""Record a corpus of the real Claude Code client through ``prefixgate serve --record``.

    python bench/record_corpus.py [--client PATH] [--out DIR] [--keep]

(``bash scripts/record-corpus`` runs it with the repository's Python.) It drives the
pinned current client (``node_modules/claude-code-current/bin/claude.exe``) against a
scripted Anthropic-compatible upstream, with prefixgate in between recording every
request the client sends. Everything listens on 127.0.0.1 and stops by itself.

The sessions run in a throw-away git project inside a throw-away ``HOME``
(``<tmp>/home``, with the project at ``<tmp>/home/proj`` and a second one at
``<tmp>/home/other``); the recordings are then rewritten so that ``<tmp>/home`` reads
``/home/dev`` (also in the dashed form Claude Code uses for per-project folders)
and the client's per-user temp folder ``/tmp/claude-<uid>/`` reads
``/tmp/claude-1000/``; nothing else in them changes. Every body is checked to parse
afterwards, and the output to hold no trace of the throw-away folder and no
credential header.

Three files come out (``VERSION`` is what ``claude --version`` says):

``claude-code-VERSION.jsonl``
    ``-p`` sessions: a Read round trip, ``--continue`` on it, a fresh session in the
    same project, a subagent through the Agent tool, a session before and after an
    MCP server is configured, the MCP tool loaded through ToolSearch and called,
    WebFetch (a built-in deferred tool) loaded through ToolSearch, and the same
    question from a subfolder and from a second project.
``claude-code-VERSION-interactive.jsonl``
    The terminal UI under tmux, two sessions of two turns (a Read round trip, then a
    plain question in the default auto mode; a Read round trip, then a subagent in
    manual mode), with their side requests (the session title).
``claude-code-VERSION-remote-host.jsonl``
    A Read round trip with a non-loopback host name as base URL: an ``/etc/hosts``
    alias for ``gateway.prefixgate.test`` pointing at 127.0.0.1 (only when running
    as root; skipped otherwise), so traffic stays on loopback.

The scripted upstream picks each answer from the request (``choose_answer``): the
last prompt the user typed names the script, the number of assistant turns since
then says which step of it comes next.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLIENT = REPO / "node_modules" / "claude-code-current" / "bin" / "claude.exe"
NEUTRAL_HOME = "/home/dev"
NEUTRAL_USER = "dev"
NEUTRAL_UID = 1000
REMOTE_HOST = "gateway.prefixgate.test"
API_KEY = "dummy"
MCP_SERVER = "projfs"
MCP_TOOL = "count_lines"
CLIENT_TIMEOUT_S = 240.0

Block = dict[str, Any]

# -- the scripted answers -----------------------------------------------------------

PROMPT_READ = "Read notes.txt and tell me its first line."
PROMPT_CONTINUE = "How many lines does it have?"
PROMPT_TOOLS = "Which tools can you use here? One line."
PROMPT_AGENT = "Ask a subagent what the first line of notes.txt says."
PROMPT_SUBAGENT = "Report the first line of the project's notes file."
PROMPT_MCP = "Count the lines of notes.txt with the projfs MCP tool."
PROMPT_WEBFETCH = "Load the WebFetch tool, then tell me you are ready."

NOTES = "prefixgate corpus notes\nsecond line\nthird line\n"


@dataclass(frozen=True)
class Step:
    """One scripted assistant turn: a tool call (``tool`` and ``input``) or a text."""

    text: str = ""
    tool: str = ""
    input: Mapping[str, Any] = field(default_factory=dict)


def _tool(name: str, **input_: Any) -> Step:
    return Step(tool=name, input=input_)


# The prompt the user typed -> the assistant turns that answer it, in order.
# "{cwd}" in a tool input is the working directory the request names.
SCRIPTS: dict[str, tuple[Step, ...]] = {
    PROMPT_READ: (
        _tool("Read", file_path="{cwd}/notes.txt"),
        Step(text='The first line of notes.txt is "prefixgate corpus notes".'),
    ),
    PROMPT_CONTINUE: (Step(text="notes.txt has three lines."),),
    PROMPT_TOOLS: (Step(text="Read, Edit, Write, Bash, Agent and the deferred tools."),),
    PROMPT_AGENT: (
        _tool(
            "Agent",
            description="Read the notes file",
            prompt=PROMPT_SUBAGENT,
            subagent_type="general-purpose",
            run_in_background=False,
        ),
        Step(text='The subagent says the first line is "prefixgate corpus notes".'),
    ),
    PROMPT_SUBAGENT: (
        _tool("Read", file_path="{cwd}/notes.txt"),
        Step(text='The first line is "prefixgate corpus notes".'),
    ),
    PROMPT_MCP: (
        _tool("ToolSearch", query=f"select:mcp__{MCP_SERVER}__{MCP_TOOL}", max_results=1),
        _tool(f"mcp__{MCP_SERVER}__{MCP_TOOL}", path="notes.txt"),
        Step(text="notes.txt has 3 lines."),
    ),
    PROMPT_WEBFETCH: (
        _tool("ToolSearch", query="select:WebFetch", max_results=1),
        Step(text="WebFetch is loaded; tell me which page to fetch."),
    ),
}

_CWD = re.compile(r"Primary working directory: ([^\n\"\\]+)")


def _is_reminder(text: str) -> bool:
    return text.lstrip().startswith("<system-reminder>")


def _typed_text(content: Any) -> str | None:
    """The text a user typed in one user message, or None (tool results, reminders)."""
    if isinstance(content, str):
        return None if _is_reminder(content) else content
    if not isinstance(content, list):
        return None
    if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
        return None
    texts = [
        b["text"]
        for b in content
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    ]
    typed = [t for t in texts if not _is_reminder(t)]
    return typed[-1] if typed else None


@dataclass(frozen=True)
class Position:
    """Where a request stands: the last typed prompt and the assistant turns around it."""

    prompt: str
    step: int  # assistant turns since the prompt
    turns: int  # assistant turns in the whole conversation


def position(body: Mapping[str, Any]) -> Position:
    """The last prompt the user typed and how many assistant turns followed it."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return Position("", 0, 0)
    prompt, at = "", -1
    for index, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            typed = _typed_text(message.get("content"))
            if typed is not None:
                prompt, at = typed, index
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    return Position(
        prompt=prompt,
        step=roles[at + 1 :].count("assistant"),
        turns=roles.count("assistant"),
    )


def working_directory(raw: str) -> str:
    """The ``Primary working directory`` a request names, or ``""``."""
    found = _CWD.search(raw)
    return found.group(1).strip() if found else ""


def script_for(prompt: str) -> tuple[str, tuple[Step, ...]] | None:
    """The script whose prompt the typed text holds (the longest such prompt wins)."""
    matches = [key for key in SCRIPTS if key in prompt]
    if not matches:
        return None
    key = max(matches, key=len)
    return key, SCRIPTS[key]


def _fill(value: Any, cwd: str) -> Any:
    if isinstance(value, str):
        return value.replace("{cwd}", cwd)
    if isinstance(value, Mapping):
        return {k: _fill(v, cwd) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, cwd) for v in value]
    return value


def _schema_value(schema: Any) -> Any:
    """A small value matching a JSON schema (structured-output side requests)."""
    if not isinstance(schema, Mapping):
        return "Corpus recording"
    kind = schema.get("type")
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required") or list(props)
        return {name: _schema_value(props.get(name)) for name in required}
    if kind == "array":
        return []
    if kind == "boolean":
        return False
    if kind in ("integer", "number"):
        return 0
    return "Corpus recording"


@dataclass(frozen=True)
class Answer:
    """What the scripted upstream answers: content blocks and a stop reason."""

    content: tuple[Block, ...]
    stop_reason: str
    script: str  # the script's prompt, "" for side requests


def choose_answer(body: Mapping[str, Any], raw: str = "") -> Answer:
    """The scripted answer to one request body (``raw``: the body's text, for the cwd).

    A request whose last typed prompt is one of ``SCRIPTS`` gets the step that
    follows the assistant turns already made; past the end, or for anything else, a
    short text. A structured-output side request (``output_config.format``) gets a
    JSON object matching its schema.
    """
    output = body.get("output_config")
    fmt = output.get("format") if isinstance(output, Mapping) else None
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        text = json.dumps(_schema_value(fmt.get("schema")))
        return Answer(({"type": "text", "text": text},), "end_turn", "")
    where = position(body)
    found = script_for(where.prompt) if body.get("tools") else None
    if found is None:
        return Answer(({"type": "text", "text": "OK."},), "end_turn", "")
    key, steps = found
    step = steps[min(where.step, len(steps) - 1)]
    if not step.tool:
        return Answer(({"type": "text", "text": step.text},), "end_turn", key)
    block = {
        "type": "tool_use",
        "id": f"toolu_corpus_{where.turns + 1:03d}",
        "name": step.tool,
        "input": _fill(dict(step.input), working_directory(raw or json.dumps(body))),
    }
    return Answer((block,), "tool_use", key)


# -- the scripted upstream ----------------------------------------------------------


def _message(body: Mapping[str, Any], answer: Answer, msg_id: str) -> dict[str, Any]:
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "scripted"),
        "content": list(answer.content),
        "stop_reason": answer.stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 100, "output_tokens": 10},
    }


def sse_events(body: Mapping[str, Any], answer: Answer, msg_id: str) -> bytes:
    """The answer as an Anthropic SSE stream."""
    head = _message(body, answer, msg_id)
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    **head,
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": 100, "output_tokens": 1},
                },
            },
        )
    ]
    for index, block in enumerate(answer.content):
        if block["type"] == "tool_use":
            start = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        events += [
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            ),
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": index}),
        ]
    events += [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": answer.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 10},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events).encode()


@dataclass
class Served:
    """What the scripted upstream has answered so far (for waiting on the client)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    count: int = 0
    last_t: float = 0.0
    finished: list[str] = field(default_factory=list)  # scripts that reached a text

    def note(self, answer: Answer | None) -> int:
        with self.lock:
            self.count += 1
            self.last_t = time.monotonic()
            if answer is not None and answer.script and answer.stop_reason == "end_turn":
                self.finished.append(answer.script)
            return self.count


class ScriptedUpstream:
    """An Anthropic-compatible server on 127.0.0.1 that answers from ``choose_answer``."""

    def __init__(self) -> None:
        self.served = Served()
        served = self.served

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, ctype: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                served.note(None)
                self._send(200, "application/json", b'{"data": [], "has_more": false}')

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length).decode("utf-8", "replace")
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                if not isinstance(body, dict):
                    body = {}
                if "count_tokens" in self.path:
                    served.note(None)
                    payload = json.dumps({"input_tokens": max(1, len(raw) // 4)}).encode()
                    self._send(200, "application/json", payload)
                    return
                answer = choose_answer(body, raw)
                n = served.note(answer)
                msg_id = f"msg_corpus_{n:04d}"
                if body.get("stream"):
                    self._send(200, "text/event-stream", sse_events(body, answer, msg_id))
                else:
                    payload = json.dumps(_message(body, answer, msg_id)).encode()
                    self._send(200, "application/json", payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_quiet(self, quiet_s: float, limit_s: float) -> None:
        """Wait until no request has arrived for ``quiet_s`` (at most ``limit_s``)."""
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            with self.served.lock:
                last = self.served.last_t
            if last and time.monotonic() - last >= quiet_s:
                return
            time.sleep(0.2)

    def finished(self, script: str) -> int:
        """How many times ``script`` has reached its final text so far."""
        with self.served.lock:
            return self.served.finished.count(script)

    def wait_finished(self, script: str, times: int, limit_s: float) -> bool:
        """Wait until ``script`` has reached its final text ``times`` times in all."""
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            with self.served.lock:
                if self.served.finished.count(script) >= times:
                    return True
            time.sleep(0.2)
        return False


# -- the MCP server (stdio, JSON-RPC, no dependencies) ------------------------------

MCP_SOURCE = '''"""A tiny MCP server over stdio: one JSON-RPC message per line."""
import json
import sys
from pathlib import Path

TOOLS = [
    {
        "name": "count_lines",
        "description": "Count the lines of a text file in the project.",
        "inputSchema": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "File path"}},
            "required": ["path"],
        },
    },
    {
        "name": "list_files",
        "description": "List the files of the project, one per line.",
        "inputSchema": {"type": "object", "properties": {}},
    },
]


def call(name, args):
    if name == "count_lines":
        text = Path(args.get("path", "")).read_text()
        return f"{len(text.splitlines())} lines"
    if name == "list_files":
        return "\\n".join(sorted(p.name for p in Path(".").iterdir() if p.is_file()))
    raise ValueError(f"unknown tool {name}")


def answer(msg):
    method = msg.get("method")
    if method == "initialize":
        version = msg.get("params", {}).get("protocolVersion", "2025-06-18")
        return {
            "protocolVersion": version,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "projfs", "version": "1.0.0"},
        }
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        params = msg.get("params", {})
        try:
            text = call(params.get("name"), params.get("arguments") or {})
            return {"content": [{"type": "text", "text": text}], "isError": False}
        except Exception as exc:
            return {"content": [{"type": "text", "text": str(exc)}], "isError": True}
    if method == "ping":
        return {}
    return None


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    msg = json.loads(line)
    if "id" not in msg:
        continue
    result = answer(msg)
    if result is None:
        reply = {"jsonrpc": "2.0", "id": msg["id"],
                 "error": {"code": -32601, "message": "method not found"}}
    else:
        reply = {"jsonrpc": "2.0", "id": msg["id"], "result": result}
    sys.stdout.write(json.dumps(reply) + "\\n")
    sys.stdout.flush()
'''


# -- anonymising ----------------------------------------------------------------------


def dashed(path: str) -> str:
    """A path the way Claude Code names per-project folders (every other char a dash)."""
    return re.sub(r"[^A-Za-z0-9]", "-", path)


def replacements(
    home: str, uid: int, neutral_home: str = NEUTRAL_HOME, neutral_uid: int = NEUTRAL_UID
) -> list[tuple[str, str]]:
    """What to replace in a recording: the throw-away HOME (plain and dashed) and the
    user id in the client's per-user temp folder (``/tmp/claude-<uid>/``)."""
    pairs = [
        (home, neutral_home),
        (dashed(home), dashed(neutral_home)),
        (f"/claude-{uid}/", f"/claude-{neutral_uid}/"),
    ]
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def anonymise_text(text: str, pairs: Sequence[tuple[str, str]]) -> str:
    """``text`` with every pair's first string replaced by its second, longest first."""
    for old, new in sorted(pairs, key=lambda pair: len(pair[0]), reverse=True):
        text = text.replace(old, new)
    return text


def anonymise_line(line: str, pairs: Sequence[tuple[str, str]]) -> str:
    """One capture line with ``pairs`` replaced inside the body string and header values.

    The body stays byte-for-byte what the client sent apart from the replaced
    paths; it must still parse as JSON afterwards.
    """
    row = json.loads(line)
    body = anonymise_text(row["body"], pairs)
    json.loads(body)  # raises when a replacement broke the body
    row["body"] = body
    row["headers"] = {k: anonymise_text(v, pairs) for k, v in row["headers"].items()}
    return json.dumps(row, ensure_ascii=False)


# -- driving the client -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def gateway(python: str, upstream: str, record: Path, log: Path, *hosts: str) -> Iterator[int]:
    """``prefixgate serve --record`` in front of ``upstream``; yields its port. ``hosts``:
    names beyond loopback the client will use (a keyless gateway refuses others)."""
    port = free_port()
    cmd = [
        python, "-m", "prefixgate", "serve",
        "--upstream", upstream, "--port", str(port), "--record", str(record),
        "--audit", "memory", "--policy", "passthrough", "--log-level", "warning",
        *(f"--allowed-host={host}" for host in hosts),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFIXGATE_")}
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        end = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"prefixgate serve exited ({proc.returncode}); see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > end:
                    raise SystemExit("prefixgate serve did not come up in 60 s") from None
                time.sleep(0.3)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Layout:
    """The throw-away HOME and the projects in it."""

    root: Path
    python: str
    version: str  # the client's, for its onboarding record

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def proj(self) -> Path:
        return self.home / "proj"

    @property
    def other(self) -> Path:
        return self.home / "other"

    @property
    def mcp_config(self) -> Path:
        return self.home / "mcp" / "mcp.json"

    def create(self) -> None:
        self.home.mkdir(parents=True)
        files = {
            self.proj: {
                "README.md": "# demo\n\nA small project for recording Claude Code requests.\n",
                "notes.txt": NOTES,
                "src/app.py": 'def main() -> None:\n    print("hello")\n',
            },
            self.other: {
                "README.md": "# other\n\nA second project.\n",
                "main.py": 'print("other")\n',
            },
        }
        for project, contents in files.items():
            for name, text in contents.items():
                path = project / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            git_env = {
                **os.environ,
                "GIT_AUTHOR_NAME": "Dev",
                "GIT_AUTHOR_EMAIL": "dev@example.com",
                "GIT_COMMITTER_NAME": "Dev",
                "GIT_COMMITTER_EMAIL": "dev@example.com",
                "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
                "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
                "HOME": str(self.home),
            }
            for args in (
                ["init", "-q", "-b", "main"],
                ["add", "."],
                ["commit", "-q", "-m", "init"],
            ):
                subprocess.run(["git", *args], cwd=project, env=git_env, check=True)
        server = self.home / "mcp" / "projfs.py"
        server.parent.mkdir(parents=True)
        server.write_text(MCP_SOURCE)
        config = {"mcpServers": {MCP_SERVER: {"command": self.python, "args": [str(server)]}}}
        self.mcp_config.write_text(json.dumps(config, indent=2) + "\n")
        trusted = [self.proj, self.proj / "src", self.other]
        settings = {
            "hasCompletedOnboarding": True,
            "lastOnboardingVersion": self.version,
            "numStartups": 1,
            "theme": "dark",
            "customApiKeyResponses": {"approved": [API_KEY[-20:]], "rejected": []},
            "projects": {
                str(p): {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True}
                for p in trusted
            },
        }
        (self.home / ".claude.json").write_text(json.dumps(settings, indent=2) + "\n")


def client_env(layout: Layout, base_url: str, side_requests: bool = False) -> dict[str, str]:
    """A clean environment for the client: nothing of the caller's beyond PATH.

    ``side_requests``: leave out ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC``, which
    also stops the terminal UI's side requests to the model (session titles), and
    turn off what it covers one by one instead (telemetry, error reports, updates).
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(layout.home),
        "USER": NEUTRAL_USER,
        "LOGNAME": NEUTRAL_USER,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": API_KEY,
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    if side_requests:
        del env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"]
        env |= {"DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1"}
    return env


ALLOWED_TOOLS = f"Read,Agent,ToolSearch,WebFetch,mcp__{MCP_SERVER}"


def run_print(
    client: Path,
    layout: Layout,
    base_url: str,
    prompt: str,
    cwd: Path,
    log: Path,
    extra: Sequence[str] = (),
) -> None:
    """One ``claude -p`` run; fails when the client fails."""
    cmd = [str(client), "-p", prompt, "--allowedTools", ALLOWED_TOOLS, *extra]
    print(f"  claude -p {prompt!r} {' '.join(extra)} (in {cwd.relative_to(layout.home)})")
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        done = subprocess.run(
            cmd,
            cwd=cwd,
            env=client_env(layout, base_url),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=CLIENT_TIMEOUT_S,
        )
    if done.returncode != 0:
        raise SystemExit(f"claude -p {prompt!r} failed ({done.returncode}); see {log}")


def record_print_sessions(
    client: Path, layout: Layout, upstream: ScriptedUpstream, record: Path, log: Path
) -> bool:
    """The ``-p`` sessions (see the module docstring)."""
    mcp = ["--mcp-config", str(layout.mcp_config)]
    with gateway(layout.python, f"http://127.0.0.1:{upstream.port}", record, log) as port:
        url = f"http://127.0.0.1:{port}"
        run_print(client, layout, url, PROMPT_READ, layout.proj, log)
        run_print(client, layout, url, PROMPT_CONTINUE, layout.proj, log, ["--continue"])
        run_print(client, layout, url, PROMPT_TOOLS, layout.proj, log)
        run_print(client, layout, url, PROMPT_AGENT, layout.proj, log)
        run_print(client, layout, url, PROMPT_TOOLS, layout.proj, log, mcp)
        run_print(client, layout, url, PROMPT_MCP, layout.proj, log, mcp)
        run_print(client, layout, url, PROMPT_WEBFETCH, layout.proj, log)
        run_print(client, layout, url, PROMPT_TOOLS, layout.proj / "src", log)
        run_print(client, layout, url, PROMPT_TOOLS, layout.other, log)
        upstream.wait_quiet(2.0, 20.0)
    return True


def record_remote_host(
    client: Path, layout: Layout, upstream: ScriptedUpstream, record: Path, log: Path
) -> bool:
    """The Read round trip with ``http://gateway.prefixgate.test:PORT`` as base URL."""
    if os.geteuid() != 0:
        print(f"  not root: cannot alias {REMOTE_HOST} in /etc/hosts, skipped")
        return False
    with (
        hosts_alias(REMOTE_HOST),
        gateway(
            layout.python, f"http://127.0.0.1:{upstream.port}", record, log, REMOTE_HOST
        ) as port,
    ):
        run_print(client, layout, f"http://{REMOTE_HOST}:{port}", PROMPT_READ, layout.proj, log)
        upstream.wait_quiet(2.0, 20.0)
    return True


@contextlib.contextmanager
def hosts_alias(name: str) -> Iterator[None]:
    """``127.0.0.1 name`` in /etc/hosts for the duration; only that line is removed after."""
    hosts = Path("/etc/hosts")
    line = f"127.0.0.1 {name}  # prefixgate record-corpus\n"
    before = hosts.read_text()
    hosts.write_text(before + ("" if before.endswith("\n") or not before else "\n") + line)
    try:
        yield
    finally:
        hosts.write_text(hosts.read_text().replace(line, "", 1))


# What the terminal UI shows once it takes input: its prompt character, or the hint
# older versions print under it.
PROMPT_MARKERS = ("\u276f", "? for shortcuts")


class Tmux:
    """A private tmux server (its own socket) holding one session."""

    def __init__(self, socket_name: str) -> None:
        self.socket = socket_name

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "rec")

    def type(self, text: str) -> None:
        self("send-keys", "-t", "rec", "-l", text)
        time.sleep(1.0)
        self("send-keys", "-t", "rec", "Enter")

    def wait_for(self, markers: Sequence[str], limit_s: float) -> str:
        """Wait until the screen shows one of ``markers``."""
        end = time.monotonic() + limit_s
        screen = ""
        while time.monotonic() < end:
            screen = self.screen()
            if any(marker in screen for marker in markers):
                return screen
            time.sleep(0.5)
        raise SystemExit(f"the terminal UI never showed {markers!r}; last screen:\n{screen}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def interactive_session(
    tmux: Tmux,
    upstream: ScriptedUpstream,
    command: str,
    cwd: Path,
    prompts: Sequence[str],
    log: Path,
) -> None:
    """One terminal UI session under tmux: type each prompt, wait for its answer, /exit."""
    try:
        tmux("new-session", "-d", "-s", "rec", "-x", "160", "-y", "50", "-c", str(cwd), command)
        time.sleep(3.0)
        tmux.wait_for(PROMPT_MARKERS, 60)
        for prompt in prompts:
            print(f"  terminal UI: {prompt!r}")
            before = upstream.finished(prompt)
            tmux.type(prompt)
            if not upstream.wait_finished(prompt, before + 1, 120):
                raise SystemExit(f"turn {prompt!r} never finished; screen:\n{tmux.screen()}")
            # the side requests (the session title) arrive after the answer
            upstream.wait_quiet(5.0, 60.0)
        with log.open("a") as out:
            out.write("\n--- terminal UI, last screen ---\n" + tmux.screen())
        tmux.type("/exit")
        time.sleep(3.0)
    finally:
        tmux.kill()


def record_interactive(
    client: Path, layout: Layout, upstream: ScriptedUpstream, record: Path, log: Path
) -> bool:
    """The terminal UI under tmux: two sessions of two turns each.

    The first runs in the default permission mode (auto): a Read round trip, then a
    plain question. The second runs with ``--permission-mode manual``: the Read
    round trip, then a subagent. Auto mode asks a server-side safety check before a
    subagent runs, which a custom base URL does not pass through (the UI then
    interrupts the turn), so the subagent runs in manual mode.
    """
    if shutil.which("tmux") is None:
        raise SystemExit("tmux is needed to record the terminal UI")
    tmux = Tmux(f"prefixgate-corpus-{os.getpid()}")
    with gateway(layout.python, f"http://127.0.0.1:{upstream.port}", record, log) as port:
        env = client_env(layout, f"http://127.0.0.1:{port}", side_requests=True)
        base = ["exec", "env", "-i", *(f"{k}={shlex.quote(v)}" for k, v in env.items()),
                shlex.quote(str(client)), "--allowedTools", ALLOWED_TOOLS]  # fmt: skip
        sessions: list[tuple[list[str], tuple[str, ...]]] = [
            (base, (PROMPT_READ, PROMPT_CONTINUE)),
            ([*base, "--permission-mode", "manual"], (PROMPT_READ, PROMPT_AGENT)),
        ]
        for command, prompts in sessions:
            interactive_session(tmux, upstream, " ".join(command), layout.proj, prompts, log)
    return True


# -- main -----------------------------------------------------------------------------


def client_version(client: Path) -> str:
    out = subprocess.run([str(client), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def finish(raw: Path, out: Path, pairs: Sequence[tuple[str, str]], forbidden: Sequence[str]) -> int:
    """Anonymise ``raw`` into ``out``; fail when a forbidden string or a credential is left."""
    lines = [anonymise_line(line, pairs) for line in raw.read_text().splitlines() if line]
    text = "\n".join(lines) + "\n"
    for needle in forbidden:
        if needle and needle in text:
            raise SystemExit(f"{out.name}: {needle!r} is still in the recording")
    for line in lines:
        headers = {k.lower() for k in json.loads(line)["headers"]}
        if headers & {"x-api-key", "authorization"}:
            raise SystemExit(f"{out.name}: a credential header was recorded")
    out.write_text(text)
    return len(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", type=Path, default=DEFAULT_CLIENT)
    parser.add_argument("--out", type=Path, default=REPO / "corpus")
    parser.add_argument(
        "--only", choices=["print", "interactive", "remote-host"], action="append",
        help="record only these files (repeatable; default all three)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the throw-away folder")
    args = parser.parse_args(argv)
    client: Path = args.client.resolve()
    if not client.is_file():
        parser.error(f"no client at {client} (run npm install in the repository)")
    version = client_version(client)
    only = set(args.only or ["print", "interactive", "remote-host"])
    root = Path(tempfile.mkdtemp(prefix="prefixgate-corpus-")).resolve()
    layout = Layout(root=root, python=sys.executable, version=version)
    layout.create()
    log = root / "record.log"
    print(f"recording Claude Code {version} ({client}) in {root}")
    pairs = replacements(str(layout.home), os.getuid())
    forbidden = [str(root), dashed(str(root))]
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [
        ("print", f"claude-code-{version}.jsonl", record_print_sessions),
        ("interactive", f"claude-code-{version}-interactive.jsonl", record_interactive),
        ("remote-host", f"claude-code-{version}-remote-host.jsonl", record_remote_host),
    ]
    try:
        with ScriptedUpstream() as upstream:
            for name, filename, record in runs:
                if name not in only:
                    continue
                print(f"{name}:")
                raw = root / f"{name}.raw.jsonl"
                if record(client, layout, upstream, raw, log) is False:
                    continue
                count = finish(raw, args.out / filename, pairs, forbidden)
                print(f"  {count} requests -> {args.out / filename}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
