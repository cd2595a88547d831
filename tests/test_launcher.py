"""``prefixgate claude``: the launcher's decisions with fakes, then whole launches
against a fake ``claude`` (a script that writes down its arguments and environment)
and a fake upstream, with the gateway started as the real command starts it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from support.servers import ServerThread, free_port

from prefixgate import cli, launcher
from prefixgate.config import Settings
from prefixgate.launcher import (
    DEMO_RUNTIME_ARGS,
    DUMMY_API_KEY,
    INSTALL_CLAUDE,
    Health,
    LaunchError,
    Sessions,
    State,
    client_env,
    exit_status,
    find_claude,
    gateway_url,
    health_of,
    join,
    leave,
    should_forward,
    state_dir,
)

# --- decisions --------------------------------------------------------------------------


def test_find_claude_prefers_the_named_binary_then_path_then_the_checkout(tmp_path: Path) -> None:
    named = tmp_path / "my-claude"
    named.write_text("")
    checkout = tmp_path / "repo"
    (checkout / "node_modules" / ".bin").mkdir(parents=True)
    (checkout / "node_modules" / ".bin" / "claude").write_text("")
    on_path = {"claude": "/usr/local/bin/claude"}
    env = {"PREFIXGATE_CLAUDE_BIN": str(named)}
    assert find_claude(env, on_path.get, [checkout]) == str(named)
    assert find_claude({}, on_path.get, [checkout]) == "/usr/local/bin/claude"
    assert find_claude({}, {}.get, [checkout]) == str(checkout / "node_modules/.bin/claude")


def test_find_claude_without_one_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(LaunchError) as missing:
        find_claude({}, {}.get, [tmp_path])
    assert "no `claude` on PATH" in str(missing.value)
    assert INSTALL_CLAUDE in str(missing.value)
    assert INSTALL_CLAUDE == "npm install -g @anthropic-ai/claude-code"
    with pytest.raises(LaunchError, match="is not a file"):
        find_claude({"PREFIXGATE_CLAUDE_BIN": str(tmp_path / "gone")}, {}.get, [])


def test_gateway_url_is_reachable_from_this_machine() -> None:
    assert gateway_url(Settings()) == "http://127.0.0.1:8787"
    assert gateway_url(Settings(host="0.0.0.0", port=9000)) == "http://127.0.0.1:9000"
    assert gateway_url(Settings(host="::", port=9000)) == "http://[::1]:9000"
    assert gateway_url(Settings(host="::1", port=9000)) == "http://[::1]:9000"
    assert gateway_url(Settings(host="10.0.0.5", port=9)) == "http://10.0.0.5:9"


def test_client_env_points_claude_at_the_gateway_with_a_dummy_key() -> None:
    env = client_env({"PATH": "/bin", "ANTHROPIC_BASE_URL": "https://elsewhere"}, "http://gw")
    assert env == {
        "PATH": "/bin",
        "ANTHROPIC_BASE_URL": "http://gw",
        "ANTHROPIC_API_KEY": DUMMY_API_KEY,
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


def test_client_env_keeps_what_the_user_set() -> None:
    mine = {
        "ANTHROPIC_API_KEY": "pg-tenant-key",
        "DISABLE_TELEMETRY": "0",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "",
    }
    env = client_env(mine, "http://gw")
    assert env["ANTHROPIC_API_KEY"] == "pg-tenant-key"
    assert env["DISABLE_TELEMETRY"] == "0"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == ""
    token = client_env({"ANTHROPIC_AUTH_TOKEN": "tok"}, "http://gw")
    assert "ANTHROPIC_API_KEY" not in token
    assert token["ANTHROPIC_AUTH_TOKEN"] == "tok"


def test_health_of_tells_prefixgate_from_anything_else() -> None:
    ours = json.dumps({"status": "ok", "version": "1", "upstreams": {}}).encode()
    assert health_of(200, ours) is Health.PREFIXGATE
    assert health_of(200, b'{"status": "ok"}') is Health.PREFIXGATE  # keyed, no key sent
    assert health_of(None, b"") is Health.NONE
    assert health_of(404, b"Not Found") is Health.OTHER
    assert health_of(200, b"<html>ok</html>") is Health.OTHER
    assert health_of(200, b'{"status": "ok", "model": "llama"}') is Health.OTHER
    assert health_of(200, b'["ok"]') is Health.OTHER
    assert health_of(503, ours) is Health.OTHER


def test_join_and_leave_share_one_gateway_and_the_last_one_out_stops_it() -> None:
    alive = {10, 1, 2}.__contains__
    state = join(State(10, (1,)), 2, alive)
    assert state == State(10, (1, 2))
    state, stop = leave(state, 1, alive)
    assert (state, stop) == (State(10, (2,)), None)
    state, stop = leave(state, 2, alive)
    assert (state, stop) == (State(), 10)


def test_launchers_that_died_are_forgotten() -> None:
    alive = {10, 2}.__contains__  # launcher 1 was killed without leaving
    assert join(State(10, (1,)), 2, alive) == State(10, (2,))
    assert leave(State(10, (1, 2)), 2, alive) == (State(), 10)


def test_a_gateway_that_is_gone_is_forgotten_and_a_foreign_one_never_stopped() -> None:
    assert join(State(10, (1,)), 2, {1, 2}.__contains__) == State()
    assert leave(State(), 2, {2}.__contains__) == (State(), None)


def test_state_file_round_trip_and_garbage(tmp_path: Path) -> None:
    sessions = Sessions(tmp_path / "state", 8787)
    assert sessions.read() == State()
    with sessions.locked():
        sessions.write(State(10, (1, 2)))
    assert sessions.read() == State(10, (1, 2))
    assert sessions.path.name == "claude-8787.json"
    sessions.path.write_text("{not json")
    assert sessions.read() == State()
    sessions.write(State())
    assert not sessions.path.exists()
    assert State.from_json('{"gateway": "x", "sessions": [1]}') == State(None, (1,))


def test_signals_typed_in_the_terminal_are_not_passed_on_twice() -> None:
    assert not should_forward(signal.SIGINT, in_foreground=True)
    assert should_forward(signal.SIGINT, in_foreground=False)
    assert should_forward(signal.SIGTERM, in_foreground=True)
    assert should_forward(signal.SIGHUP, in_foreground=False)


def test_exit_status_is_claudes() -> None:
    assert exit_status(0) == 0
    assert exit_status(1) == 1
    assert exit_status(-signal.SIGTERM) == 143
    assert exit_status(-signal.SIGINT) == 130


def test_state_dir_follows_xdg() -> None:
    assert state_dir({"XDG_STATE_HOME": "/s"}) == Path("/s/prefixgate")
    assert state_dir({"HOME": "/h"}) == Path("/h/.local/state/prefixgate")


def test_serve_gateway_biases_only_the_bundled_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Settings, tuple[str, ...]]] = []

    def run(settings: Settings, *, runtime_args: tuple[str, ...] = ()) -> None:
        seen.append((settings, runtime_args))

    monkeypatch.setattr("prefixgate.server.run", run)
    monkeypatch.delenv("PREFIXGATE_CONFIG", raising=False)
    monkeypatch.delenv("PREFIXGATE_UPSTREAM", raising=False)
    launcher.serve_gateway()
    monkeypatch.setenv("PREFIXGATE_UPSTREAM", "http://127.0.0.1:8080")
    launcher.serve_gateway()
    assert seen[0][0].embedded and seen[0][1] == DEMO_RUNTIME_ARGS
    assert not seen[1][0].embedded and seen[1][1] == ()
    assert DEMO_RUNTIME_ARGS == ("--reverse-prompt", "\n", "--logit-bias", "106+5")


# --- the command ------------------------------------------------------------------------


def test_the_command_passes_every_argument_through(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[tuple[str, ...]] = []

    def launch(args: tuple[str, ...], *, err: object = None) -> int:
        got.append(tuple(args))
        return 7

    monkeypatch.setattr(launcher, "launch", launch)
    argv = ["-p", "say hi", "--help", "--max-turns", "1", "--", "-x"]
    result = CliRunner().invoke(cli.main, ["claude", *argv])
    assert result.exit_code == 7
    assert got == [tuple(argv)]


def test_the_command_says_why_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def launch(args: tuple[str, ...], *, err: object = None) -> int:
        raise LaunchError("no `claude` on PATH: install Claude Code with `npm ...`")

    monkeypatch.setattr(launcher, "launch", launch)
    result = CliRunner().invoke(cli.main, ["claude"])
    assert result.exit_code == 1
    assert result.output == "Error: no `claude` on PATH: install Claude Code with `npm ...`\n"


# --- whole launches ---------------------------------------------------------------------

FAKE_CLAUDE = """#!{python}
import json, os, sys, time, pathlib
out = pathlib.Path(os.environ["FAKE_OUT"])
out.write_text(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ)}}))
wait = os.environ.get("FAKE_WAIT")
while wait and not pathlib.Path(wait).exists():
    time.sleep(0.05)
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


@pytest.fixture
def fake_claude(tmp_path: Path) -> Path:
    path = tmp_path / "claude"
    path.write_text(FAKE_CLAUDE.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def upstream() -> Iterator[ServerThread]:
    """Something that answers HTTP, standing in for a runtime (the launcher's probe
    only asks whether it is there)."""

    async def anything(request: Request) -> Response:
        return JSONResponse({"ok": True})

    with ServerThread(Starlette(routes=[Route("/{p:path}", anything)])) as server:
        yield server


@pytest.fixture
def launch_env(
    tmp_path: Path, fake_claude: Path, upstream: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The environment of a launch: the fake claude, a free port, a fake upstream,
    a state directory and an audit log of the test's own."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "PREFIXGATE_CLAUDE_BIN": str(fake_claude),
        "PREFIXGATE_PORT": str(free_port()),
        "PREFIXGATE_UPSTREAM": upstream.url,
        "PREFIXGATE_AUDIT_PATH": "memory",
        "FAKE_OUT": str(tmp_path / "seen.json"),
    }
    for name in ("PREFIXGATE_CONFIG", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _prefixgate(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "prefixgate", "claude", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _listening(port: str) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except httpx.ConnectError:
        return False
    return True


def _wait_for(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_launch_starts_the_gateway_runs_claude_and_stops_it(launch_env: dict[str, str]) -> None:
    launch_env["FAKE_EXIT"] = "3"
    done = _prefixgate(launch_env, "-p", "say hi", "--max-turns", "1")
    _, err = done.communicate(timeout=120)
    assert done.returncode == 3, err
    seen = json.loads(Path(launch_env["FAKE_OUT"]).read_text())
    port = launch_env["PREFIXGATE_PORT"]
    assert seen["argv"] == ["-p", "say hi", "--max-turns", "1"]
    assert seen["env"]["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
    assert seen["env"]["ANTHROPIC_API_KEY"] == DUMMY_API_KEY
    assert seen["env"]["DISABLE_TELEMETRY"] == "1"
    assert "starting the gateway on" in err
    assert not _listening(port)
    assert not (Path(launch_env["XDG_STATE_HOME"]) / "prefixgate" / f"claude-{port}.json").exists()


def test_two_launches_share_one_gateway_and_the_last_one_out_stops_it(
    launch_env: dict[str, str], tmp_path: Path
) -> None:
    port = launch_env["PREFIXGATE_PORT"]
    first_env = {
        **launch_env,
        "FAKE_OUT": str(tmp_path / "1.json"),
        "FAKE_WAIT": str(tmp_path / "go1"),
    }
    second_env = {
        **launch_env,
        "FAKE_OUT": str(tmp_path / "2.json"),
        "FAKE_WAIT": str(tmp_path / "go2"),
    }
    first = _prefixgate(first_env)
    _wait_for(tmp_path / "1.json", first)
    second = _prefixgate(second_env)
    _wait_for(tmp_path / "2.json", second)
    state = json.loads(
        (Path(launch_env["XDG_STATE_HOME"]) / "prefixgate" / f"claude-{port}.json").read_text()
    )
    assert state["sessions"] == [first.pid, second.pid]
    (tmp_path / "go1").touch()
    _, first_err = first.communicate(timeout=60)
    assert first.returncode == 0, first_err
    assert _listening(port)  # the second session still uses it
    (tmp_path / "go2").touch()
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "starting the gateway" not in err  # it joined the first one's
    assert not _listening(port)


def test_sigterm_reaches_claude_and_its_status_comes_back(
    launch_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**launch_env, "FAKE_WAIT": str(tmp_path / "never")}
    running = _prefixgate(env)
    _wait_for(Path(env["FAKE_OUT"]), running)
    running.send_signal(signal.SIGTERM)
    running.communicate(timeout=120)
    assert running.returncode == 128 + signal.SIGTERM
    assert not _listening(env["PREFIXGATE_PORT"])


def test_a_gateway_someone_else_runs_is_used_and_left_running(
    launch_env: dict[str, str], upstream: ServerThread
) -> None:
    from prefixgate.app.gateway import create_app
    from prefixgate.store.audit import MemoryAudit

    app = create_app(Settings().with_upstream(upstream.url), audit=MemoryAudit())
    with ServerThread(app) as theirs:
        env = {**launch_env, "PREFIXGATE_PORT": str(theirs.port)}
        done = _prefixgate(env)
        _, err = done.communicate(timeout=60)
        assert done.returncode == 0, err
        assert "starting" not in err
        assert httpx.get(f"{theirs.url}/healthz").json()["status"] == "ok"


def test_a_port_taken_by_something_else_is_one_clear_error(launch_env: dict[str, str]) -> None:
    async def other(request: Request) -> Response:
        return PlainTextResponse("Not Found", status_code=404)

    with ServerThread(Starlette(routes=[Route("/{p:path}", other)])) as taken:
        done = _prefixgate({**launch_env, "PREFIXGATE_PORT": str(taken.port)})
        _, err = done.communicate(timeout=60)
    assert done.returncode == 1
    assert err == (
        f"Error: port {taken.port} is taken by something that is not prefixgate: "
        "stop it or choose another port (PREFIXGATE_PORT)\n"
    )
    assert not Path(launch_env["FAKE_OUT"]).exists()


def test_an_unreachable_upstream_is_one_clear_error(launch_env: dict[str, str]) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    done = _prefixgate({**launch_env, "PREFIXGATE_UPSTREAM": gone})
    _, err = done.communicate(timeout=60)
    assert done.returncode == 1
    assert err.startswith(f"Error: the upstream {gone} is unreachable (ConnectError)")
    assert err.count("\n") == 1
    assert not Path(launch_env["FAKE_OUT"]).exists()
    assert not _listening(launch_env["PREFIXGATE_PORT"])


def test_no_claude_says_how_to_install_it(
    launch_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFIXGATE_CLAUDE_BIN")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(launcher, "_REPO", tmp_path)
    with pytest.raises(LaunchError, match="npm install -g @anthropic-ai/claude-code"):
        launcher.launch([])


def test_a_claude_that_cannot_run_is_one_clear_error_and_the_gateway_stops(
    launch_env: dict[str, str], tmp_path: Path
) -> None:
    broken = tmp_path / "not-executable"
    broken.write_text("")
    done = _prefixgate({**launch_env, "PREFIXGATE_CLAUDE_BIN": str(broken)})
    _, err = done.communicate(timeout=120)
    assert done.returncode == 1
    assert err.splitlines()[-1] == f"Error: cannot run {broken}: Permission denied"
    assert not _listening(launch_env["PREFIXGATE_PORT"])
