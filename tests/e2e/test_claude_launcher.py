"""``prefixgate claude`` end to end: the real Claude Code binary (``package.json``'s
2.1.197, ``node_modules/.bin/claude``) started by the launcher, which starts the
gateway and the bundled llama-server (Gemma 3 270M) in the background and stops
them when the session ends.

    prefixgate claude ARGS -> claude -> prefixgate (background) -> llama-server (bundled)

The session's ``local_runtime`` is not used: what is tested is the runtime the
launcher starts itself, whose answers end at their first line break
(``launcher.DEMO_RUNTIME_ARGS``; without it the 270M model runs on to Claude
Code's output limit and ``claude -p`` exits 1). Each test starts its own gateway
and runtime (a few seconds) on a free port, with its own home, state directory
and audit log.

Claude Code's own ~20,000-token system prompt takes minutes to prefill on two
busy cores, so the client runs with a small one: ``--bare --system-prompt ...
--tools ""`` (no tools, no MCP, no CLAUDE.md), about 120 prompt tokens. The
interactive session runs in a tmux pane of a tmux server of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support.servers import free_port

from prefixgate.launcher import DUMMY_API_KEY
from prefixgate.store.audit import AuditRecord
from prefixgate.store.sinks import read_audit

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLAUDE = REPO / "node_modules" / ".bin" / "claude"
SMALL_CLIENT = ("--bare", "--system-prompt", "You are a terse assistant.", "--tools", "")
PROMPT = "\u276f"  # the mark of Claude Code's input line
WAIT_S = 600  # a generous bound for a busy machine; nothing asserts how long it took


@dataclass(frozen=True)
class Launch:
    """Where one launch's client and gateway live."""

    root: Path
    port: int

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def project(self) -> Path:
        return self.root / "proj"

    @property
    def audit(self) -> Path:
        return self.root / "audit.db"

    @property
    def state(self) -> Path:
        return self.root / "state" / "prefixgate"

    @property
    def gateway_log(self) -> Path:
        return self.state / f"claude-gateway-{self.port}.log"

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.home),
            "TERM": "xterm-256color",
            "XDG_STATE_HOME": str(self.root / "state"),
            "PREFIXGATE_CLAUDE_BIN": str(CLAUDE),
            "PREFIXGATE_PORT": str(self.port),
            "PREFIXGATE_AUDIT_PATH": str(self.audit),
            "PREFIXGATE_SAVED_PREFIX_BYTES": "0",  # nothing written to the shared cache dir
        }

    def records(self) -> list[AuditRecord]:
        if not self.audit.exists():
            return []
        return [r for r in read_audit(self.audit) if r.route == "/v1/messages"]

    def assert_stopped(self) -> None:
        """The gateway and the runtime it started are gone, and so is the session file."""
        log = self.gateway_log.read_text()
        assert "Finished server process" in log, log[-3000:]
        ready = re.search(r"bundled runtime ready at (http://\S+)", log)
        assert ready, log[-3000:]
        for url in (f"http://127.0.0.1:{self.port}", ready.group(1)):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/healthz", timeout=5)
        assert not (self.state / f"claude-{self.port}.json").exists()


@pytest.fixture
def launch(tmp_path: Path) -> Launch:
    if not CLAUDE.exists():
        pytest.fail(f"Claude Code not found at {CLAUDE}: run `npm install` in the repository root")
    here = Launch(tmp_path, free_port())
    here.home.mkdir()
    here.project.mkdir()
    # What a first interactive start asks once (theme, the custom API key, trusting
    # the folder) answered ahead, as a user's earlier session would have
    config = {
        "hasCompletedOnboarding": True,
        "theme": "dark",
        "customApiKeyResponses": {"approved": [DUMMY_API_KEY[-20:]], "rejected": []},
        "projects": {
            str(here.project): {
                "hasTrustDialogAccepted": True,
                "hasCompletedProjectOnboarding": True,
            }
        },
    }
    (here.home / ".claude.json").write_text(json.dumps(config))
    return here


def wait_until(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f} s"
        time.sleep(0.5)


def test_print_mode_answers_exits_0_and_stops_the_gateway(launch: Launch) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "prefixgate", "claude", "-p", "say hi", "--max-turns", "1",
         *SMALL_CLIENT],
        cwd=launch.project,
        env=launch.env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-3000:]}"
    assert "starting the gateway and the bundled runtime" in done.stderr
    records = launch.records()
    assert records, "no /v1/messages record in the gateway's audit log"
    assert all(r.status == 200 for r in records), [(r.status, r.error) for r in records]
    assert all(r.attribution_found for r in records)  # Claude Code's block, found and stripped
    answered = records[-1]
    assert answered.output_tokens is not None and answered.output_tokens > 0
    assert answered.error is None
    launch.assert_stopped()


class Pane:
    """A tmux pane on a tmux server of its own."""

    def __init__(self, socket: str, command: str) -> None:
        self.tmux = shutil.which("tmux")
        if self.tmux is None:
            pytest.fail("tmux is not installed (apt-get install tmux)")
        self.socket = socket
        self._run("new-session", "-d", "-s", "main", "-x", "120", "-y", "40", command)

    def _run(self, *args: str) -> str:
        assert self.tmux is not None
        done = subprocess.run(
            [self.tmux, "-L", self.socket, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def screen(self) -> str:
        return self._run("capture-pane", "-p", "-t", "main")

    def type(self, text: str) -> None:
        self._run("send-keys", "-t", "main", "-l", text)
        time.sleep(0.5)
        self._run("send-keys", "-t", "main", "Enter")

    def wait_for(self, what: str, pattern: str) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.screen(), re.MULTILINE)
            if match:
                found.append(match)
            return match is not None

        try:
            wait_until(what, seen)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the pane shows:\n{self.screen()}") from None
        return found[0]

    def keys(self, *keys: str) -> None:
        for key in keys:
            self._run("send-keys", "-t", "main", key)
            time.sleep(0.5)

    def close(self) -> None:
        subprocess.run([self.tmux or "tmux", "-L", self.socket, "kill-server"], check=False)


@pytest.fixture
def pane_factory(launch: Launch) -> Iterator[Callable[[str], Pane]]:
    panes: list[Pane] = []

    def make(command: str) -> Pane:
        pane = Pane(f"prefixgate-e2e-{os.getpid()}-{launch.port}", command)
        panes.append(pane)
        return pane

    yield make
    for pane in panes:
        pane.close()


@pytest.mark.parametrize("leave", ["/exit", "ctrl-d twice"])
def test_interactive_session_under_tmux_answers_and_stops_the_gateway(
    leave: str, launch: Launch, pane_factory: Callable[[str], Pane]
) -> None:
    exited = launch.root / "exited"
    script = launch.root / "session.sh"
    exports = " ".join(f"{k}={json.dumps(v)}" for k, v in launch.env.items())
    script.write_text(
        f"cd {json.dumps(str(launch.project))}\n"
        f"export {exports}\n"
        f"{json.dumps(sys.executable)} -m prefixgate claude "
        "--bare --system-prompt 'You are a terse assistant.' --tools ''\n"
        f"echo $? > {json.dumps(str(exited))}\n"
        "sleep 600\n"  # keep the pane, and what it shows, for the assertions
    )
    pane = pane_factory(f"bash {script}")
    pane.wait_for("Claude Code's prompt", rf"^{PROMPT}\s*$")
    pane.wait_for("the shortcuts line", r"\? for shortcuts")
    pane.type("say hi")
    pane.wait_for("the message echoed", rf"^{PROMPT} say hi")
    wait_until("the answer's audit record", lambda: len(launch.records()) >= 1)
    answer = pane.wait_for("an answer", r"^[●⏺] ?(.*)$")
    records = launch.records()
    assert records[-1].status == 200, records[-1].error
    assert records[-1].output_tokens is not None and records[-1].output_tokens > 0
    assert "Error" not in answer.group(0), pane.screen()
    pane.wait_for("the prompt back", rf"^{PROMPT}\s*$")
    if leave == "/exit":
        pane.type("/exit")
    else:
        pane.keys("C-d", "C-d")
    wait_until("claude and the launcher exited", exited.exists)
    assert exited.read_text().strip() == "0", pane.screen()
    launch.assert_stopped()
