"""``prefixgate demo``: the same Claude Code requests, direct and through prefixgate.

It starts the embedded local runtime, replays a slice of a recorded session
file straight to it, restarts it (an empty cache), replays the same slice
through a prefixgate subprocess in front of it, and prints both runs side by
side. The process helpers here are shared with the benchmark script.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from prefixgate import report
from prefixgate.config import CORPUS_ENV, env_path
from prefixgate.replay import (
    CaptureRecord,
    Column,
    ReplayResult,
    load_capture,
    render_report,
    replay,
    view_of,
)
from prefixgate.store.audit import AuditRecord
from prefixgate.store.sqlite import read_records

__all__ = [
    "CORPUS_ENV",
    "DEFAULT_CORPUS",
    "ManagedProcess",
    "default_slice",
    "find_corpus",
    "free_port",
    "gateway_command",
    "replay_with_progress",
    "run_demo",
]

# The current client's -p sessions (corpus/README.md); 2.1.197 with --corpus.
DEFAULT_CORPUS = Path("corpus", "claude-code-2.1.332.jsonl")
REQUEST_TIMEOUT_S = 900.0


# -- finding and slicing the corpus -----------------------------------------


def find_corpus(
    explicit: Path | None = None,
    *,
    environ: dict[str, str] | None = None,
    roots: Sequence[Path] | None = None,
) -> Path | None:
    """The recorded session file to replay: ``explicit``, else ``$PREFIXGATE_CORPUS``,
    else ``corpus/claude-code-2.1.332.jsonl`` in the source
    checkout or the working directory. ``None`` if none of them exists."""
    if explicit is not None:
        return explicit if explicit.is_file() else None
    configured = env_path(CORPUS_ENV, environ)
    if configured is not None:
        return configured if configured.is_file() else None
    bases = roots if roots is not None else (Path(__file__).resolve().parents[2], Path.cwd())
    found = (b / DEFAULT_CORPUS for b in bases if (b / DEFAULT_CORPUS).is_file())
    return next((p.resolve() for p in found), None)


def _head(record: CaptureRecord, *, attribution_removed: bool) -> tuple[tuple[str, str], ...]:
    """The pieces before the conversation (``core/prompt.py``), by name and digest."""
    view = view_of(record.body, attribution_removed)
    return tuple((p.name, p.digest) for p in view.pieces if p.head and p.section != "messages")


def default_slice(records: Sequence[CaptureRecord]) -> list[CaptureRecord]:
    """The first session's opening two main-agent turns, then the first
    main-agent request of a later session whose system prompt and tools differ
    from the first one's only by the attribution block (the case prefixgate
    exists for)."""
    if not records:
        return []
    main = [r for r in records if r.agent == "main"] or list(records)
    first = main[0]
    opening = [r for r in main if r.session == first.session][:2]
    bare = _head(first, attribution_removed=True)
    full = _head(first, attribution_removed=False)
    openers: dict[str, CaptureRecord] = {}
    for record in main:
        openers.setdefault(record.session, record)
    for record in openers.values():
        if record.session == first.session:
            continue
        same_prompt = _head(record, attribution_removed=True) == bare
        if same_prompt and _head(record, attribution_removed=False) != full:
            return [*opening, record]
    return opening


# -- processes ----------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def gateway_command(upstream: str, port: int, *extra: str) -> list[str]:
    """The command line that serves prefixgate on ``port`` in front of ``upstream``."""
    return [
        sys.executable,
        "-m",
        "prefixgate",
        "serve",
        "--upstream",
        upstream,
        "--port",
        str(port),
        *extra,
    ]


class ManagedProcess:
    """A server subprocess that is ready once ``health_url`` answers 200.

    Output goes to a temporary log file whose last lines are shown if it
    fails to start; ``stop()`` removes it unless ``keep_log``. A context
    manager; ``stop()`` terminates it (kills it after a grace period).
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        health_url: str,
        *,
        startup_timeout: float = 60.0,
        env: dict[str, str] | None = None,
        keep_log: bool = False,
    ) -> None:
        self.name = name
        self.keep_log = keep_log
        self.command = list(command)
        self.health_url = health_url
        self.startup_timeout = startup_timeout
        self.env = env
        self.log_path: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Launch the command and wait until it is healthy; a no-op if it runs."""
        if self._process is not None and self._process.poll() is None:
            return
        self.stop()
        handle, name = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # its own process group, stopped as a whole
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise RuntimeError(f"{self.name} exited with code {code}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.health_url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} not ready after {self.startup_timeout:.0f} s:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.25)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return ""
        with self.log_path.open(encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))

    def stop(self) -> None:
        """Terminate the process group (servers may fork workers); kill it after 10 s."""
        process, self._process = self._process, None
        if process is not None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
            _signal_group(process, signal.SIGKILL)  # workers left behind by the leader
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.log_path is not None and not self.keep_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


# -- replaying with progress --------------------------------------------------


def replay_with_progress(
    console: Console,
    label: str,
    records: Sequence[CaptureRecord],
    base_url: str,
    *,
    max_tokens: int = 1,
) -> list[ReplayResult]:
    """Replay ``records`` to ``base_url`` while showing which request runs and for how long."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=len(records))
        position = {"n": 0}

        def on_start(record: CaptureRecord) -> None:
            position["n"] += 1
            progress.update(
                task,
                description=f"{label}: request {record.index} ({position['n']}/{len(records)},"
                f" {record.agent}, session {record.session[:8]})",
            )

        def on_result(result: ReplayResult) -> None:
            progress.advance(task)
            console.print(f"  {label} {_result_line(result)}")

        return asyncio.run(_replay(records, base_url, on_start, on_result, max_tokens))


async def _replay(
    records: Sequence[CaptureRecord],
    base_url: str,
    on_start: Callable[[CaptureRecord], None],
    on_result: Callable[[ReplayResult], None],
    max_tokens: int,
) -> list[ReplayResult]:
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0)
    # A new connection per request: llama-server sometimes drops a kept-alive
    # connection reused right after a streamed answer, failing the next request.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        return await replay(
            records,
            base_url,
            client=client,
            on_start=on_start,
            on_result=on_result,
            max_tokens=max_tokens,
        )


def _result_line(result: ReplayResult) -> str:
    if result.error is not None:
        return f"#{result.index}: [red]failed[/red] ({result.error})"
    cached = "n/a" if result.cached_tokens is None else f"{result.cached_tokens:,}"
    prompt = "n/a" if result.prompt_tokens is None else f"{result.prompt_tokens:,}"
    return f"#{result.index}: {cached} of {prompt} prompt tokens cached, {result.seconds:.1f} s"


# -- the demo -------------------------------------------------------------------


def run_demo(*, all_requests: bool = False, corpus: Path | None = None, console: Console) -> int:
    """Replay a corpus slice direct and through prefixgate; print both. Returns
    the exit status: 0 done, 1 a server failed, 2 nothing to run, 130 interrupted."""
    path = find_corpus(corpus)
    if path is None:
        console.print(_missing_corpus(corpus))
        return 2
    records = load_capture(path)
    chosen = records if all_requests else default_slice(records)
    console.print(
        f"Replaying {len(chosen)} of {len(records)} recorded requests from {path.name}"
        f" (requests {', '.join(str(r.index) for r in chosen)}), max_tokens 1."
    )
    if not all_requests and len(chosen) == 3:
        first, _, later = chosen
        console.print(
            f"Requests {first.index} and {chosen[1].index} open session {first.session[:8]};"
            f" request {later.index} opens session {later.session[:8]} with the same system"
            " prompt and tools, only its attribution block differs."
        )
    gateway_records: list[AuditRecord] = []
    try:
        columns = _run_columns(console, chosen, gateway_records)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted; servers stopped.[/yellow]")
        return 130
    except (RuntimeError, OSError) as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    if columns is None:
        return 2
    console.print(render_report(chosen, columns))
    if gateway_records:
        console.print("\nWhat prefixgate recorded about the same requests (`prefixgate report`):")
        console.print(report.render_report(report.build_report(gateway_records)))
    return 0


def _missing_corpus(explicit: Path | None) -> str:
    if explicit is not None:
        return f"[red]No such corpus file: {explicit}[/red]"
    return (
        "[red]No recorded requests found.[/red] Pass one with [bold]--corpus FILE[/bold]"
        f" or set {CORPUS_ENV}; by default the demo looks for {DEFAULT_CORPUS}"
        " next to the source checkout or the working directory."
    )


def _run_columns(
    console: Console, records: Sequence[CaptureRecord], audit_out: list[AuditRecord]
) -> list[Column] | None:
    """Both runs; the gateway's audit records are appended to ``audit_out``."""
    from prefixgate.runtime.local import LocalRuntime, RuntimeMissing, default_spec

    try:
        spec = default_spec()
    except RuntimeMissing as exc:
        console.print(f"[red]{exc}[/red]")
        return None
    runtime = LocalRuntime(spec)
    audit_dir = tempfile.TemporaryDirectory(prefix="prefixgate-demo-")
    audit_db = str(Path(audit_dir.name) / "audit.db")
    try:
        with console.status("Starting the local runtime (llama-server)..."):
            runtime.start()
        direct = replay_with_progress(console, "direct", records, runtime.base_url)
        with console.status("Restarting the runtime (empty cache), starting prefixgate..."):
            runtime.restart()
            port = free_port()
            gateway = ManagedProcess(
                "prefixgate",
                gateway_command(runtime.base_url, port, "--policy", "strip", "--audit", audit_db),
                f"http://127.0.0.1:{port}/healthz",
            )
            gateway.start()
        with gateway:
            url = f"http://127.0.0.1:{port}"
            through = replay_with_progress(console, "prefixgate", records, url)
        audit_out.extend(read_records(audit_db))  # the gateway has stopped: all written
    finally:
        runtime.stop()
        audit_dir.cleanup()
    return [
        Column("direct", direct),
        Column("prefixgate", through, attribution_removed=True),
    ]
