"""``prefixgate claude [ARGS...]``: Claude Code through the gateway in one command.

It finds the gateway on the configured port (``GET /healthz`` answering as
prefixgate) or starts one in the background (``serve`` with the same settings:
the configured upstream, else the bundled runtime), waits until it is healthy,
then runs ``claude`` with ``ANTHROPIC_BASE_URL`` pointing at it, the arguments
passed through and the terminal left alone. A gateway it started stops when the
last session it launched exits: every launcher that uses it is listed in a
small file in the state directory (``claude-<port>.json``, changed under the
lock of ``claude-<port>.lock``), and the last one out stops it.

With the bundled runtime the gateway starts llama-server so that an answer ends at
its first line break, with Gemma 3's end-of-turn token biased (``DEMO_RUNTIME_ARGS``):
the 270M demo model otherwise runs on to the output limit, which Claude Code
reports as an error (exit status 1). No other upstream is touched.

The decisions (which binary, which environment, what a health answer means,
who stops the gateway, which signals to pass on) are plain functions tested
offline (tests/test_launcher.py); ``launch`` does the processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

from prefixgate.config import Settings, environment, load_settings

__all__ = [
    "CLAUDE_BIN_ENV",
    "DEMO_RUNTIME_ARGS",
    "DUMMY_API_KEY",
    "INSTALL_CLAUDE",
    "Health",
    "LaunchError",
    "Sessions",
    "client_env",
    "exit_status",
    "find_claude",
    "gateway_url",
    "health_of",
    "join",
    "launch",
    "leave",
    "serve_gateway",
    "should_forward",
    "state_dir",
]

#: The bundled runtime's answers end at their first line break (llama-server's
#: ``--reverse-prompt``, its stop string for requests that send none, as Claude Code
#: does) and Gemma 3's ``<end_of_turn>`` (token 106) is made likelier by 5 logits: the
#: 270M demo model answers in one line instead of running on to Claude Code's output
#: limit. Measured: 6 to 21 tokens an answer, stop reason ``end_turn``.
DEMO_RUNTIME_ARGS: tuple[str, ...] = ("--reverse-prompt", "\n", "--logit-bias", "106+5")
DUMMY_API_KEY = "sk-prefixgate-local"
INSTALL_CLAUDE = "npm install -g @anthropic-ai/claude-code"
CLAUDE_BIN_ENV = "PREFIXGATE_CLAUDE_BIN"  # a claude binary to run instead of PATH's
#: set for the client unless already set
QUIET_CLIENT_ENV = {"DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
HEALTH_TIMEOUT_S = 600.0  # a first start assembles the bundled model
PROBE_TIMEOUT_S = 3.0  # an upstream: is anything there
HEALTH_PROBE_TIMEOUT_S = 15.0  # the gateway's /healthz, which a busy gateway may answer late
STOP_TIMEOUT_S = 60.0  # the gateway's shutdown grace (30 s) and the runtime's stop
_REPO = Path(__file__).resolve().parents[2]  # a source checkout's root


class LaunchError(Exception):
    """A reason ``prefixgate claude`` cannot run, in one line."""


# --- decisions --------------------------------------------------------------------------


def find_claude(
    environ: Mapping[str, str],
    which: Callable[[str], str | None] = shutil.which,
    checkouts: Sequence[Path] | None = None,
) -> str:
    """The ``claude`` to run: ``$PREFIXGATE_CLAUDE_BIN``, else PATH's, else a source
    checkout's ``node_modules/.bin/claude`` (where ``npm install`` puts the pinned one)."""
    named = environ.get(CLAUDE_BIN_ENV, "").strip()
    if named:
        if not Path(named).is_file():
            raise LaunchError(f"{CLAUDE_BIN_ENV}={named} is not a file")
        return named
    found = which("claude")
    if found:
        return found
    for root in (_REPO,) if checkouts is None else checkouts:
        local = root / "node_modules" / ".bin" / "claude"
        if local.is_file():
            return str(local)
    raise LaunchError(f"no `claude` on PATH: install Claude Code with `{INSTALL_CLAUDE}`")


def gateway_url(settings: Settings) -> str:
    """Where a client on this machine reaches the gateway ``settings`` describe."""
    host = settings.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def client_env(environ: Mapping[str, str], url: str) -> dict[str, str]:
    """Claude Code's environment: ``environ`` with the gateway as its base URL, a dummy
    API key where no key or token is set, and telemetry and nonessential traffic off
    unless the user set them."""
    env = dict(environ)
    env["ANTHROPIC_BASE_URL"] = url
    if not env.get("ANTHROPIC_API_KEY") and not env.get("ANTHROPIC_AUTH_TOKEN"):
        env["ANTHROPIC_API_KEY"] = DUMMY_API_KEY
    for name, value in QUIET_CLIENT_ENV.items():
        env.setdefault(name, value)
    return env


class Health(Enum):
    """What answers on the gateway's port."""

    NONE = "none"  # nothing listening
    PREFIXGATE = "prefixgate"
    OTHER = "other"  # something else holds the port


def health_of(status: int | None, body: bytes) -> Health:
    """Read a ``GET /healthz`` answer (``status`` None: no connection). prefixgate
    answers ``{"status": "ok", "version": ..., "upstreams": ...}``, or only
    ``{"status": "ok"}`` to a request without a tenant's key."""
    if status is None:
        return Health.NONE
    if status != 200:
        return Health.OTHER
    try:
        data = json.loads(body)
    except ValueError:
        return Health.OTHER
    if not isinstance(data, dict) or data.get("status") != "ok":
        return Health.OTHER
    if set(data) == {"status"} or ("version" in data and "upstreams" in data):
        return Health.PREFIXGATE
    return Health.OTHER


def upstream_urls(settings: Settings) -> list[str]:
    """Every configured upstream URL (replicas included); none for the bundled runtime."""
    return [url for up in settings.upstreams.values() for url in up.urls]


@dataclass(frozen=True)
class State:
    """The launchers sharing a gateway one of them started: its pid and theirs."""

    gateway: int | None = None
    sessions: tuple[int, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        return json.dumps({"gateway": self.gateway, "sessions": list(self.sessions)})

    @classmethod
    def from_json(cls, text: str) -> State:
        try:
            data = json.loads(text)
            gateway = data.get("gateway")
            sessions = tuple(int(p) for p in data.get("sessions", ()))
        except (ValueError, TypeError, AttributeError):
            return cls()  # unreadable: as if nobody had written it
        return cls(int(gateway) if isinstance(gateway, int) else None, sessions)


def join(state: State, me: int, alive: Callable[[int], bool]) -> State:
    """``state`` with the launchers that are gone forgotten and ``me`` added; a
    gateway that is gone is forgotten too (the caller starts another)."""
    gateway = state.gateway if state.gateway is not None and alive(state.gateway) else None
    if gateway is None:
        return State(None, ())
    kept = tuple(p for p in state.sessions if p != me and alive(p))
    return State(gateway, (*kept, me))


def leave(state: State, me: int, alive: Callable[[int], bool]) -> tuple[State, int | None]:
    """``state`` without ``me`` (and launchers that are gone), and the gateway to stop:
    its pid when nobody is left, else None."""
    kept = tuple(p for p in state.sessions if p != me and alive(p))
    if kept or state.gateway is None:
        return replace(state, sessions=kept), None
    return State(), state.gateway


def should_forward(signum: int, in_foreground: bool) -> bool:
    """Pass ``signum`` on to claude? A Ctrl-C typed in the terminal reaches the whole
    foreground process group, claude included: passing it on too would make it two
    (and two Ctrl-C end Claude Code). A SIGINT sent to the launcher alone, and any
    SIGTERM or SIGHUP, are passed on."""
    if signum == signal.SIGINT:
        return not in_foreground
    return True


def exit_status(returncode: int) -> int:
    """The launcher's exit status for claude's (killed by a signal: 128 + its number)."""
    return 128 - returncode if returncode < 0 else returncode


def state_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/prefixgate`` (``~/.local/state/prefixgate`` when unset),
    where the audit log lives by default."""
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME") or "~") / ".local/state")
    return Path(base).expanduser() / "prefixgate"


# --- processes --------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) is not alive
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"
    return True


class Sessions:
    """``claude-<port>.json`` in the state directory, read and written under an
    exclusive lock on ``claude-<port>.lock``."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.path = directory / f"claude-{port}.json"
        self.lock_path = directory / f"claude-{port}.lock"
        self.log_path = directory / f"claude-gateway-{port}.log"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> State:
        try:
            return State.from_json(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return State()

    def write(self, state: State) -> None:
        if state.gateway is None:
            self.path.unlink(missing_ok=True)
            return
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(state.to_json(), encoding="utf-8")
        scratch.replace(self.path)


def probe_health(url: str, environ: Mapping[str, str]) -> Health:
    key = environ.get("ANTHROPIC_API_KEY") or environ.get("ANTHROPIC_AUTH_TOKEN")
    headers = {"x-api-key": key} if key else {}
    try:
        answer = httpx.get(
            f"{url}/healthz", headers=headers, timeout=HEALTH_PROBE_TIMEOUT_S, trust_env=False
        )
    except httpx.TransportError:
        return Health.NONE if _refused(url) else Health.OTHER
    return health_of(answer.status_code, answer.content)


def _refused(url: str) -> bool:
    """True when nothing accepts a connection at ``url`` (a listener that does not speak
    HTTP, or too slowly, is something else)."""
    try:
        httpx.get(url, timeout=HEALTH_PROBE_TIMEOUT_S, trust_env=False)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def check_upstreams(settings: Settings) -> None:
    """Raise LaunchError naming the first configured upstream nothing answers at (any
    HTTP answer counts: the probe asks only whether it is there)."""
    for url in upstream_urls(settings):
        try:
            httpx.get(url, timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise LaunchError(
                f"the upstream {url} is unreachable ({type(exc).__name__}): start it, "
                "or configure another with PREFIXGATE_CONFIG / PREFIXGATE_UPSTREAM"
            ) from None


def start_gateway(sessions: Sessions) -> subprocess.Popen[bytes]:
    """``serve_gateway`` in a session of its own (the terminal's Ctrl-C and hang-up do
    not reach it), writing to ``claude-gateway-<port>.log``."""
    sessions.directory.mkdir(parents=True, exist_ok=True)
    with sessions.log_path.open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from prefixgate.launcher import serve_gateway; serve_gateway()",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_healthy(
    url: str, process: subprocess.Popen[bytes], sessions: Sessions, environ: Mapping[str, str]
) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while True:
        health = probe_health(url, environ)
        if health is Health.PREFIXGATE:
            return
        if process.poll() is not None:
            raise LaunchError(
                f"the gateway exited ({process.returncode}) before it was healthy: "
                f"{_last_line(sessions.log_path)} (log: {sessions.log_path})"
            )
        if time.monotonic() > deadline:
            _stop(process.pid, process)
            raise LaunchError(
                f"the gateway was not healthy after {HEALTH_TIMEOUT_S:.0f} s "
                f"(log: {sessions.log_path})"
            )
        time.sleep(0.25)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "no output"


def _stop(pid: int, child: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the gateway and wait until it is gone (SIGKILL after STOP_TIMEOUT_S)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if child is not None:
        try:
            child.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while pid_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.1)


def _in_foreground() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


def run_client(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run claude on the inherited terminal, passing signals on; its exit status."""
    try:
        process = subprocess.Popen(list(argv), env=dict(env))
    except OSError as exc:
        raise LaunchError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None

    def forward(signum: int, frame: FrameType | None) -> None:
        if should_forward(signum, _in_foreground()) and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        while True:
            try:
                return exit_status(process.wait())
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def launch(args: Sequence[str], *, err: IO[str] | None = None) -> int:
    """``prefixgate claude ARGS``: claude's exit status. LaunchError says why not."""
    environ = environment()
    settings = load_settings()
    claude = find_claude(environ)
    url = gateway_url(settings)
    sessions = Sessions(state_dir(environ), settings.port)
    me = os.getpid()
    child: subprocess.Popen[bytes] | None = None
    with sessions.locked():
        state = join(sessions.read(), me, pid_alive)
        health = probe_health(url, environ)
        if health is Health.OTHER:
            raise LaunchError(
                f"port {settings.port} is taken by something that is not prefixgate: "
                "stop it or choose another port (PREFIXGATE_PORT)"
            )
        if health is Health.NONE:
            if state.gateway is not None:  # one of ours that no longer answers
                _stop(state.gateway, None)
            check_upstreams(settings)
            what = "the gateway" if settings.upstreams else "the gateway and the bundled runtime"
            _say(err, f"starting {what} on {url} (log: {sessions.log_path})")
            child = start_gateway(sessions)
            try:
                wait_healthy(url, child, sessions, environ)
            except BaseException:
                _stop(child.pid, child)
                raise
            state = State(child.pid, (me,))
        elif state.gateway is not None:
            check_upstreams(settings)
        sessions.write(state)
    try:
        return run_client([claude, *args], client_env(environ, url))
    finally:
        with sessions.locked():
            left, stop = leave(sessions.read(), me, pid_alive)
            sessions.write(left)
            if stop is not None:
                _stop(stop, child if child is not None and child.pid == stop else None)


def _say(err: IO[str] | None, line: str) -> None:
    if err is not None:
        print(f"prefixgate: {line}", file=err, flush=True)


def serve_gateway() -> None:
    """The background gateway ``launch`` starts: ``serve`` with the settings it reads
    (the same environment and config file), the bundled runtime with its end-of-turn
    bias."""
    from prefixgate.server import run

    settings = load_settings()
    run(settings, runtime_args=DEMO_RUNTIME_ARGS if settings.embedded else ())
