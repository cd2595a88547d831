"""What prefixgate adds to a request: latency and throughput, direct vs through the gateway.

    python bench/overhead.py [--corpus FILE] [--concurrency 16] [--requests 2000]
                             [--seconds S] [--rounds 3] [--single-requests 200]
                             [--stub-server asyncio|uvicorn] [--no-stages]
                             [--profile-gateway OUT.prof] [--out results.json]

It starts two subprocesses on free loopback ports, a stub upstream
(``bench/stub_upstream.py``, canned SSE answers) and ``python -m prefixgate
serve`` in front of it, then sends the recorded Claude Code bodies of the
corpus (cycled, with their own headers and path) from a lean load generator
(``bench/rawclient.py``: asyncio protocols and httptools, HTTP/1.1 keep-alive,
one connection per request under way; ``--client httpx`` uses one
``httpx.AsyncClient`` instead, which costs ~3 ms of CPU a request and so caps a
2-core machine near 330 requests/s), reading every streamed answer to its end:

1. warm-up, not counted;
2. ``--rounds`` rounds at ``--concurrency``: each round sends ``--requests``
   straight to the stub and the same number through prefixgate, the order
   swapped every round (direct/gateway, gateway/direct, ...) so machine noise
   and drift hit both sides alike;
3. the same at concurrency 1 with a one-connection client (``--single-requests``
   per side and round): the latency one user feels.

Per request it records the time to the first byte of the answer and to its
last byte; per round, requests per second and the CPU time the gateway and
the stub processes spent (from /proc where there is one). "added" is
through-the-gateway minus direct, the median of the per-round differences.
Then, unless ``--no-stages``, it times the steps of the rewrite pipeline
in-process over the corpus bodies, the work the gateway does per request
before it forwards a byte.

Everything runs on 127.0.0.1; the load generator, the stub and the gateway
share the machine's cores, so the numbers are the whole system's, and the
table says how many cores there were and what the load average was. Results
are printed and written as JSON (default ``bench/results/overhead-<time>.json``).
Nothing here asserts a time: the targets are reported, never enforced.

``--profile-gateway OUT.prof`` runs the gateway under cProfile (its latencies
are then inflated by the profiler) and prints where its time went.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import importlib.util
import io
import json
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rawclient import ClientError, RawClient

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_CORPUS = REPO_ROOT / "corpus" / "claude-code-2.1.197.jsonl"
CORPUS_ENV = "PREFIXGATE_CORPUS"
HOST = "127.0.0.1"

MAX_REQUESTS = 100_000  # per side and round
MAX_SECONDS = 600.0  # per side and round
MAX_ROUNDS = 20
STARTUP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
TARGET_ADDED_P50_MS = 1.5
TARGET_RPS = 400.0

# Headers the client's HTTP stack sets itself, and the recorded credentials.
DROPPED_HEADERS = frozenset(
    {"host", "content-length", "connection", "accept-encoding", "x-api-key", "authorization"}
)


# -- the corpus -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Item:
    path: str
    headers: dict[str, str]
    body: bytes


def find_corpus(explicit: str | None) -> Path:
    candidates = [explicit, os.environ.get(CORPUS_ENV), str(DEFAULT_CORPUS)]
    for candidate in candidates:
        if candidate and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser()
    raise SystemExit(f"no corpus found; pass --corpus FILE or set {CORPUS_ENV}")


def load_corpus(path: Path) -> list[Item]:
    """The ``POST /v1/messages`` records of a capture file (JSON lines)."""
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("method", "POST") != "POST" or not str(record.get("path", "")).startswith(
            "/v1/messages"
        ):
            continue
        headers = {
            k: v for k, v in record.get("headers", {}).items() if k.lower() not in DROPPED_HEADERS
        }
        headers["x-api-key"] = "bench-placeholder"
        items.append(Item(str(record["path"]), headers, str(record["body"]).encode("utf-8")))
    if not items:
        raise SystemExit(f"{path}: no POST /v1/messages records")
    return items


# -- subprocesses -----------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the benchmark dies (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """A server subprocess, ready once ``health_url`` answers 200; ``stop()`` ends it."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        health_url: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.health_url = health_url
        self.env = dict(env or {})  # added to (or replacing) the inherited environment
        self.process: subprocess.Popen[bytes] | None = None
        handle, log = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
        os.close(handle)
        self.log_path = Path(log)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFIXGATE_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop it in order
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.health_url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready in time:\n{self.log_tail()}")
                time.sleep(0.1)

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time of the process so far (Linux /proc), else None."""
        if self.process is None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 30) -> str:
        with self.log_path.open(encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(OSError):
            self.log_path.unlink()


@contextlib.contextmanager
def running(server: Server, stop_signal: int = signal.SIGTERM) -> Iterator[Server]:
    try:
        server.start()
        yield server
    finally:
        server.stop(stop_signal)


# -- measuring ----------------------------------------------------------------------


@dataclasses.dataclass
class Round:
    side: str  # "direct" or "gateway"
    concurrency: int
    index: int
    ok: int = 0
    errors: int = 0
    first_error: str | None = None
    wall_s: float = 0.0
    total_ms: list[float] = dataclasses.field(default_factory=list)
    ttfb_ms: list[float] = dataclasses.field(default_factory=list)
    gateway_cpu_s: float | None = None
    stub_cpu_s: float | None = None
    client_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict[str, Any]:
        per = 1000.0 / self.ok if self.ok else None
        return {
            "side": self.side,
            "concurrency": self.concurrency,
            "round": self.index,
            "ok": self.ok,
            "errors": self.errors,
            "first_error": self.first_error,
            "wall_s": round(self.wall_s, 4),
            "rps": round(self.rps, 2),
            "total_ms": percentiles(self.total_ms),
            "ttfb_ms": percentiles(self.ttfb_ms),
            "gateway_cpu_ms_per_request": _per(self.gateway_cpu_s, per),
            "stub_cpu_ms_per_request": _per(self.stub_cpu_s, per),
            "client_cpu_ms_per_request": _per(self.client_cpu_s, per),
        }


def _per(seconds: float | None, per: float | None) -> float | None:
    return None if seconds is None or per is None else round(seconds * per, 4)


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        name: round(quantile(ordered, q), 4)
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
    }


async def one_request(client: Client, base: str, item: Item) -> tuple[float, float]:
    """Send one body, read the whole answer; (ttfb, total) in milliseconds."""
    if isinstance(client, dict):
        ttfb, total, status, tail = await client[base].post(item.path, item.headers, item.body)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {tail.decode(errors='replace')}")
        if b"message_stop" not in tail:
            raise RuntimeError(f"answer did not end with message_stop: {tail!r}")
        return ttfb, total
    start = time.perf_counter()
    first: float | None = None
    tail = b""
    async with client.stream(
        "POST", base + item.path, content=item.body, headers=item.headers
    ) as r:
        async for chunk in r.aiter_raw():
            if first is None:
                first = time.perf_counter()
            tail = (tail + chunk)[-64:]
        end = time.perf_counter()
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {tail.decode(errors='replace')}")
    if b"message_stop" not in tail:
        raise RuntimeError(f"answer did not end with message_stop: {tail!r}")
    return ((first or end) - start) * 1000.0, (end - start) * 1000.0


async def run_round(
    client: Client,
    base: str,
    items: Sequence[Item],
    rnd: Round,
    requests: int,
    seconds: float,
    servers: Sequence[Server],
) -> Round:
    """Send ``requests`` (or for ``seconds``) at ``rnd.concurrency``; fill in ``rnd``."""
    next_index = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests and time.perf_counter() < deadline:
            item = items[next_index % len(items)]
            next_index += 1
            try:
                ttfb, total = await one_request(client, base, item)
            except (httpx.HTTPError, RuntimeError, ClientError, OSError, TimeoutError) as exc:
                rnd.errors += 1
                rnd.first_error = rnd.first_error or f"{type(exc).__name__}: {exc}"
                continue
            rnd.ok += 1
            rnd.ttfb_ms.append(ttfb)
            rnd.total_ms.append(total)

    gateway, stub = servers
    cpu_before = gateway.cpu_seconds(), stub.cpu_seconds()
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(rnd.concurrency)))
    rnd.wall_s = time.perf_counter() - started
    rnd.client_cpu_s = time.process_time() - client_before
    cpu_after = gateway.cpu_seconds(), stub.cpu_seconds()
    if None not in cpu_before and None not in cpu_after:
        rnd.gateway_cpu_s = cpu_after[0] - cpu_before[0]  # type: ignore[operator]
        rnd.stub_cpu_s = cpu_after[1] - cpu_before[1]  # type: ignore[operator]
    return rnd


#: The load generator: ``httpx.AsyncClient``, or one ``RawClient`` per server (by base URL).
Client = httpx.AsyncClient | dict[str, RawClient]


@contextlib.asynccontextmanager
async def _client(kind: str, concurrency: int, bases: Sequence[str]) -> AsyncIterator[Client]:
    """The load generator for one concurrency: ``raw`` (lean, default) or ``httpx``."""
    if kind == "raw":
        raw = {base: RawClient(base, REQUEST_TIMEOUT_S) for base in bases}
        try:
            yield raw
        finally:
            for one in raw.values():
                await one.aclose()
        return
    limits = httpx.Limits(
        max_connections=2 * concurrency, max_keepalive_connections=2 * concurrency
    )
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        yield client


@dataclasses.dataclass
class Plan:
    concurrency: int
    requests: int
    seconds: float
    rounds: int
    warmup: int


async def measure(
    plan: Plan,
    items: Sequence[Item],
    direct: str,
    gateway: str,
    servers: Sequence[Server],
    console: Console,
    client_kind: str = "raw",
) -> list[Round]:
    """Interleaved rounds, direct and through the gateway, at one concurrency."""
    rounds: list[Round] = []
    async with _client(client_kind, plan.concurrency, (direct, gateway)) as client:
        for base in (direct, gateway):  # open the connections, warm both processes
            await run_round(
                client, base, items, Round("warmup", plan.concurrency, -1), plan.warmup, 60, servers
            )
        for index in range(plan.rounds):
            order = [("direct", direct), ("gateway", gateway)]
            for side, base in order if index % 2 == 0 else order[::-1]:
                rnd = await run_round(
                    client,
                    base,
                    items,
                    Round(side, plan.concurrency, index),
                    plan.requests,
                    plan.seconds,
                    servers,
                )
                console.print(
                    f"  c={plan.concurrency:<3} round {index + 1}/{plan.rounds} {side:<8} "
                    f"{rnd.ok:>6} ok {rnd.errors:>4} errors  {rnd.rps:8.1f} rps  "
                    f"p50 {quantile(sorted(rnd.total_ms), 0.5):7.2f} ms"
                )
                if rnd.first_error:
                    console.print(f"    [red]first error[/red]: {rnd.first_error}")
                rounds.append(rnd)
    return rounds


# -- summarising ----------------------------------------------------------------------


def _pool(rounds: Sequence[Round], attr: str) -> list[float]:
    return sorted(v for r in rounds for v in getattr(r, attr))


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def side_summary(rounds: Sequence[Round]) -> dict[str, Any]:
    """Pooled latencies, median rps and CPU per request over one side's rounds."""
    total, ttfb = _pool(rounds, "total_ms"), _pool(rounds, "ttfb_ms")
    ok = sum(r.ok for r in rounds)

    def cpu(attr: str) -> float | None:
        spent = [getattr(r, attr) for r in rounds]
        return None if None in spent or not ok else 1000.0 * sum(spent) / ok

    return {
        "requests": ok,
        "errors": sum(r.errors for r in rounds),
        "rps": statistics.median(r.rps for r in rounds) if rounds else 0.0,
        "p50": quantile(total, 0.5),
        "p90": quantile(total, 0.9),
        "p99": quantile(total, 0.99),
        "ttfb_p50": quantile(ttfb, 0.5),
        "ttfb_p99": quantile(ttfb, 0.99),
        "gateway_cpu_ms": cpu("gateway_cpu_s"),
        "stub_cpu_ms": cpu("stub_cpu_s"),
        "client_cpu_ms": cpu("client_cpu_s"),
    }


def added_summary(rounds: Sequence[Round]) -> dict[str, float]:
    """Gateway minus direct, the median over rounds of the per-round difference."""
    pairs = [
        (d, g)
        for d in rounds
        for g in rounds
        if d.side == "direct" and g.side == "gateway" and d.index == g.index
    ]

    def diff(attr: str, q: float) -> float:
        return statistics.median(
            quantile(sorted(getattr(g, attr)), q) - quantile(sorted(getattr(d, attr)), q)
            for d, g in pairs
        )

    return {
        "p50": diff("total_ms", 0.5),
        "p90": diff("total_ms", 0.9),
        "p99": diff("total_ms", 0.99),
        "ttfb_p50": diff("ttfb_ms", 0.5),
        "ttfb_p99": diff("ttfb_ms", 0.99),
        "rps_ratio": statistics.median(g.rps / d.rps for d, g in pairs if d.rps),
    }


def summarize(rounds: Sequence[Round]) -> dict[str, Any]:
    return {
        "direct": side_summary([r for r in rounds if r.side == "direct"]),
        "gateway": side_summary([r for r in rounds if r.side == "gateway"]),
        "added": added_summary(rounds),
    }


def _ms(value: float | None, signed: bool = False) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def overhead_table(results: dict[int, dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("run", "conc", "requests", "rps", "p50", "p90", "p99", "TTFB p50", "TTFB p99"):
        table.add_column(name, justify="left" if name == "run" else "right")
    table.add_column("gateway CPU ms/req", justify="right")
    for concurrency, summary in results.items():
        for side, label in (("direct", "direct to stub"), ("gateway", "via prefixgate")):
            s = summary[side]
            table.add_row(
                label,
                str(concurrency),
                f"{s['requests']}" + (f" ({s['errors']} err)" if s["errors"] else ""),
                f"{s['rps']:.0f}",
                _ms(s["p50"]),
                _ms(s["p90"]),
                _ms(s["p99"]),
                _ms(s["ttfb_p50"]),
                _ms(s["ttfb_p99"]),
                _ms(s["gateway_cpu_ms"]) if side == "gateway" else "",
            )
        a = summary["added"]
        table.add_row(
            "[bold]ADDED[/bold]",
            str(concurrency),
            "",
            f"x{a['rps_ratio']:.2f}",
            f"[bold]{_ms(a['p50'], True)}[/bold]",
            _ms(a["p90"], True),
            f"[bold]{_ms(a['p99'], True)}[/bold]",
            _ms(a["ttfb_p50"], True),
            _ms(a["ttfb_p99"], True),
            "",
            end_section=True,
        )
    return table


def rounds_table(rounds: Sequence[Round]) -> Table:
    table = Table(title="Per round (ms, CPU ms per request)", title_justify="left")
    for name in ("conc", "round", "side", "ok", "rps", "p50", "p99", "gw CPU", "stub CPU"):
        table.add_column(name, justify="right")
    table.add_column("client CPU", justify="right")
    for r in rounds:
        s = r.summary()
        table.add_row(
            str(r.concurrency),
            str(r.index + 1),
            r.side,
            str(r.ok),
            f"{r.rps:.0f}",
            _ms(s["total_ms"]["p50"]),
            _ms(s["total_ms"]["p99"]),
            _ms(s["gateway_cpu_ms_per_request"]) if r.side == "gateway" else "",
            _ms(s["stub_cpu_ms_per_request"]),
            _ms(s["client_cpu_ms_per_request"]),
        )
    return table


def targets_table(results: dict[int, dict[str, Any]], single: int | None, loaded: int) -> Table:
    table = Table(title="Targets (reported, not enforced)", title_justify="left")
    for name in ("target", "measured", "met"):
        table.add_column(name, justify="left" if name == "target" else "right")

    def row(name: str, value: float | None, ok: bool | None, fmt: str) -> None:
        met = "-" if ok is None else ("yes" if ok else "[red]no[/red]")
        table.add_row(name, "-" if value is None else fmt.format(value), met)

    if single is not None and single in results:
        added = results[single]["added"]["p50"]
        row(
            f"added p50 < {TARGET_ADDED_P50_MS:g} ms (c={single})",
            added,
            added < TARGET_ADDED_P50_MS,
            "{:+.2f} ms",
        )
    if loaded in results:
        added = results[loaded]["added"]["p50"]
        row(
            f"added p50 < {TARGET_ADDED_P50_MS:g} ms (c={loaded})",
            added,
            added < TARGET_ADDED_P50_MS,
            "{:+.2f} ms",
        )
        rps = results[loaded]["gateway"]["rps"]
        row(
            f">= {TARGET_RPS:g} rps through the gateway (c={loaded})",
            rps,
            rps >= TARGET_RPS,
            "{:.0f}",
        )
        cpu = results[loaded]["gateway"]["gateway_cpu_ms"]
        if cpu:
            row("gateway CPU per request (one process, one core)", cpu, None, "{:.2f} ms")
            row(
                "  => ceiling if the gateway had a core to itself", 1000.0 / cpu, None, "{:.0f} rps"
            )
    return table


# -- the rewrite pipeline, step by step -------------------------------------------------


def _best_ms_per_call(fns: Sequence[Callable[[], object]], calls: int, repeat: int) -> list[float]:
    """Per function, the best of ``repeat`` runs of ``calls`` calls, in ms per call.

    The functions take turns within each repeat, so a noisy moment on a shared
    machine costs every function one run rather than one function all of them.
    """
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return [b * 1000.0 / calls for b in best]


def pipeline_stages(items: Sequence[Item], repeat: int) -> list[tuple[str, float, str]]:
    """(step, ms per request averaged over the corpus, note) for the rewrite pipeline."""
    import hashlib

    from prefixgate.core import canonical, pipeline, prompt
    from prefixgate.core.attribution import detect
    from prefixgate.core.cachekey import build_key
    from prefixgate.core.knowntools import KNOWN_TOOLS
    from prefixgate.core.policy import Policy, apply_policy

    def segment(body: dict[str, Any], found: Any, result: Any) -> prompt.PromptView:
        return prompt.prompt_view(*pipeline.prompt_parts(body, found, result.policy))

    bodies = [item.body for item in items]
    state: list[dict[str, Any]] = []
    for raw in bodies:
        body = pipeline.parse_request(raw)
        found = detect(body)
        result = apply_policy(body, found, Policy.STRIP)
        segs = segment(body, found, result)
        stripped = result.body
        system = stripped.get("system")
        blocks = [system] if isinstance(system, str) else list(system or [])
        pieces = [*blocks, *(stripped.get("tools") or [])]
        pieces += list(stripped.get("messages") or [])
        clean = [prompt.without_cache_control(p) for p in pieces]
        tools = [prompt.without_cache_control(t) for t in stripped.get("tools") or []]
        messages = [prompt.without_cache_control(m) for m in stripped.get("messages") or []]
        state.append(
            {"raw": raw, "body": body, "found": found, "result": result, "segs": segs}
            | {"pieces": pieces, "clean": clean, "clean_tools": tools}
            | {"clean_messages": messages}
        )

    def over_corpus(step: Callable[[dict[str, Any]], object]) -> Callable[[], object]:
        return lambda: [step(s) for s in state]

    def canonical_all(s: dict[str, Any]) -> object:
        return [canonical.canonical_json(p) for p in s["clean"]]

    def top_level_strip(s: dict[str, Any]) -> object:
        return [
            {k: v for k, v in p.items() if k != "cache_control"} if isinstance(p, dict) else p
            for p in s["pieces"]
        ]

    def ascii_canonical(s: dict[str, Any]) -> object:
        return [json.dumps(p, sort_keys=True, separators=(",", ":")).encode() for p in s["clean"]]

    def parse_afresh(s: dict[str, Any]) -> object:
        KNOWN_TOOLS.clear()  # the first request with these tools
        return pipeline.parse_request(s["raw"])

    def walk_afresh(s: dict[str, Any]) -> object:
        prompt._WALKS.memo.clear()  # a prompt none of whose steps was seen
        canonical._text_digests.clear()
        return segment(s["body"], s["found"], s["result"])

    def key(s: dict[str, Any]) -> object:
        return build_key(s["segs"], provider="anthropic", model="m", tenant="t", policy="strip")

    part = "part of a fresh walk"
    steps: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
        ("rewrite(raw), the whole pipeline", lambda s: pipeline.rewrite(s["raw"]), "total"),
        (
            "  parse_request (orjson + checks)",
            lambda s: pipeline.parse_request(s["raw"]),
            "tools array sent before: not parsed",
        ),
        ("    the same, tools not known", parse_afresh, "a new tool set"),
        ("  detect attribution", lambda s: detect(s["body"]), ""),
        ("  apply_policy strip", lambda s: apply_policy(s["body"], s["found"], Policy.STRIP), ""),
        (
            "  splice_system (re-encode + find)",
            lambda s: pipeline.splice_system(s["raw"], s["body"], s["result"].body),
            "",
        ),
        (
            "  prompt_view (one walk + digests)",
            lambda s: segment(s["body"], s["found"], s["result"]),
            "steps seen before: remembered",
        ),
        ("    the same, nothing remembered", walk_afresh, "a prompt never seen"),
        (
            "    without_cache_control deep copies",
            lambda s: [prompt.without_cache_control(p) for p in s["pieces"]],
            part,
        ),
        ("    canonical_json (sort_keys, UTF-8)", canonical_all, part),
        (
            "    canonical_json + sha256, all pieces",
            lambda s: [canonical.digest(p) for p in s["clean"]],
            part,
        ),
        (
            "      of which the tools",
            lambda s: [canonical.digest(p) for p in s["clean_tools"]],
            "most of the bytes",
        ),
        (
            "      of which the messages",
            lambda s: [canonical.digest(p) for p in s["clean_messages"]],
            "in no key or audit summary",
        ),
        ("  build_key", key, ""),
        (
            "parse_request again, outside rewrite",
            lambda s: pipeline.parse_request(s["raw"]),
            "Proxy._rewrite parses first",
        ),
        ("alternative: canonical, ensure_ascii=True", ascii_canonical, "stdlib, escapes non-ASCII"),
        ("alternative: strip cache_control top level", top_level_strip, "vs the deep copies"),
        ("for scale: sha256(raw body)", lambda s: hashlib.sha256(s["raw"]).digest(), "reference"),
    ]
    timings = _best_ms_per_call([over_corpus(step) for _, step, _ in steps], 5, repeat)
    per_body = [ms / len(state) for ms in timings]
    return [(name, ms, note) for (name, _, note), ms in zip(steps, per_body, strict=True)]


def stages_table(stages: Sequence[tuple[str, float, str]]) -> Table:
    total = stages[0][1]
    table = Table(
        title="Rewrite pipeline in-process, per request (mean over the corpus, best of runs)",
        title_justify="left",
    )
    table.add_column("step")
    table.add_column("ms", justify="right")
    table.add_column("% of rewrite", justify="right")
    table.add_column("note")
    for name, ms, note in stages:
        table.add_row(name, f"{ms:.3f}", f"{100 * ms / total:.0f}%", note)
    return table


def profile_report(path: Path, limit: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


# -- the run --------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "httpx": httpx.__version__,
        "uvicorn_http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "uvicorn_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
    }


def gateway_code(rev: str | None, tmp: Path) -> tuple[dict[str, str], str]:
    """The gateway's extra environment and a label for where its code comes from.

    With ``rev``, that revision's ``src/`` is exported under ``tmp`` and put
    first on the gateway's ``PYTHONPATH``; the working tree is left alone.
    """
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if rev is None:
        return {}, f"working tree (HEAD {head or '?'})"
    found = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", "--short", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        raise SystemExit(f"--gateway-rev {rev}: not a revision of this repository")
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", found.stdout.strip(), "src"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp / "rev", filter="data")
    paths = [str(tmp / "rev" / "src"), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}, f"{rev} ({found.stdout.strip()})"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Latency and throughput prefixgate adds, direct vs through the gateway."
    )
    parser.add_argument("--corpus", default=None, help=f"capture file (else ${CORPUS_ENV})")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000, help="per side and round")
    parser.add_argument("--seconds", type=float, default=120.0, help="cap per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--single-requests", type=int, default=200, help="per side and round at c=1; 0 skips"
    )
    parser.add_argument("--warmup", type=int, default=None, help="default 4x concurrency")
    parser.add_argument("--stub-server", choices=("asyncio", "uvicorn"), default="asyncio")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="load generator: raw (asyncio + httptools, ~0.3 ms CPU a request) or one "
        "httpx.AsyncClient (~3 ms: it caps a 2-core machine near 330 requests/s)",
    )
    parser.add_argument("--no-stages", action="store_true", help="skip the pipeline step timings")
    parser.add_argument("--stage-repeat", type=int, default=7)
    parser.add_argument("--profile-gateway", type=Path, default=None, metavar="OUT.prof")
    parser.add_argument(
        "--gateway-rev",
        default=None,
        metavar="REV",
        help="run the gateway from this committed revision's src/ (exported to a temporary "
        "folder) instead of the working tree",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 256:
        parser.error("--concurrency must be between 1 and 256")
    if not 1 <= args.requests <= MAX_REQUESTS:
        parser.error(f"--requests must be between 1 and {MAX_REQUESTS}")
    if not 0 <= args.single_requests <= MAX_REQUESTS:
        parser.error(f"--single-requests must be between 0 and {MAX_REQUESTS}")
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS:g}]")
    if not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be between 1 and {MAX_ROUNDS}")
    if not 1 <= args.stage_repeat <= 100:
        parser.error("--stage-repeat must be between 1 and 100")
    return args


async def run_all(
    args: argparse.Namespace,
    items: Sequence[Item],
    direct: str,
    gateway: str,
    servers: Sequence[Server],
    console: Console,
) -> tuple[dict[int, dict[str, Any]], list[Round]]:
    plans = [
        Plan(
            args.concurrency,
            args.requests,
            args.seconds,
            args.rounds,
            args.warmup if args.warmup is not None else 4 * args.concurrency,
        )
    ]
    if args.single_requests and args.concurrency != 1:
        plans.append(Plan(1, args.single_requests, args.seconds, args.rounds, 20))
    results: dict[int, dict[str, Any]] = {}
    rounds: list[Round] = []
    for plan in plans:
        plan_rounds = await measure(plan, items, direct, gateway, servers, console, args.client)
        results[plan.concurrency] = summarize(plan_rounds)
        rounds += plan_rounds
    return results, rounds


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # wide enough for the tables in a log file
    corpus = find_corpus(args.corpus)
    items = load_corpus(corpus)
    env_before = environment()
    stub_port, gateway_port = free_port(), free_port()
    direct, gateway = f"http://{HOST}:{stub_port}", f"http://{HOST}:{gateway_port}"
    stub_cmd = [sys.executable, str(BENCH_DIR / "stub_upstream.py"), "--host", HOST]
    stub_cmd += ["--port", str(stub_port), "--server", args.stub_server]
    profiler = ["-m", "cProfile", "-o", str(args.profile_gateway)] if args.profile_gateway else []
    tmp = Path(tempfile.mkdtemp(prefix="prefixgate-overhead-"))
    gateway_env, code = gateway_code(args.gateway_rev, tmp)
    gateway_cmd = [sys.executable, *profiler, "-m", "prefixgate", "serve", "--upstream", direct]
    gateway_cmd += ["--host", HOST, "--port", str(gateway_port), "--log-level", "warning"]
    gateway_cmd += ["--audit", str(tmp / "audit.db")]  # SQLite, so the audit writer works
    # Under cProfile the gateway must stop through its own SIGINT handling to write the profile.
    gateway_stop = signal.SIGINT if args.profile_gateway else signal.SIGTERM

    sizes = sorted(len(i.body) for i in items)
    console.print(
        f"[bold]prefixgate overhead[/bold]: {len(items)} bodies from {corpus.name} "
        f"({sizes[0] // 1000}-{sizes[-1] // 1000} KB, "
        f"median {quantile(sizes, 0.5) / 1000:.0f} KB), "
        f"stub: {args.stub_server}, gateway: uvicorn ({env_before['uvicorn_http']}, "
        f"{env_before['uvicorn_loop']}), audit: SQLite, metrics on; gateway code: {code}\n"
        f"{env_before['usable_cpus']} usable CPU cores shared by the load generator, the stub and "
        f"the gateway; load average before: "
        + " ".join(f"{x:.2f}" for x in env_before["loadavg"] or ())
    )
    if args.profile_gateway:
        console.print("[yellow]gateway runs under cProfile: its latencies are inflated[/yellow]")
    stub = Server("stub", stub_cmd, f"{direct}/healthz")
    gw = Server("prefixgate", gateway_cmd, f"{gateway}/healthz", gateway_env)
    started = time.time()
    try:
        with running(stub), running(gw, gateway_stop):
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                results, rounds = runner.run(
                    run_all(args, items, direct, gateway, (gw, stub), console)
                )
            with httpx.Client(trust_env=False) as client:
                stub_stats = client.get(f"{direct}/stats").json()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    env_after = environment()

    console.print()
    single = 1 if 1 in results and args.concurrency != 1 else None
    console.print(
        overhead_table(
            results, "Direct vs through prefixgate (latency in ms, full streamed answer)"
        )
    )
    console.print(targets_table(results, single, args.concurrency))
    console.print(rounds_table(rounds))
    console.print(
        f"load average before {' '.join(f'{x:.2f}' for x in env_before['loadavg'] or ())}, "
        f"after {' '.join(f'{x:.2f}' for x in env_after['loadavg'] or ())}; "
        f"the stub saw {stub_stats['requests']} requests, {stub_stats['body_bytes'] / 1e6:.0f} MB"
    )

    stages = None
    if not args.no_stages:
        try:
            stages = pipeline_stages(items, args.stage_repeat)
        except (ImportError, AttributeError, TypeError, KeyError) as exc:
            console.print(f"pipeline step timings skipped (the pipeline changed?): {exc!r}")
        else:
            console.print(stages_table(stages))
            live = results[args.concurrency]["gateway"]["gateway_cpu_ms"]
            if live:
                console.print(
                    f"rewrite() takes {stages[0][1]:.2f} ms per request in-process; the gateway "
                    f"process spent {live:.2f} ms of CPU per request at c={args.concurrency} "
                    f"(rewrite {100 * stages[0][1] / live:.0f}%; the rest: routing, any second "
                    f"parse, HTTP in and out through uvicorn, Starlette and httpx, the SSE relay)"
                )
    if args.profile_gateway:
        console.print(profile_report(args.profile_gateway), markup=False, highlight=False)

    out = args.out or BENCH_DIR / "results" / f"overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "started": started,
        "corpus": corpus.name,
        "gateway_code": code,
        "bodies": len(items),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": {"before": env_before, "after": env_after},
        "targets": {"added_p50_ms": TARGET_ADDED_P50_MS, "rps": TARGET_RPS},
        "results": {str(c): s for c, s in results.items()},
        "rounds": [r.summary() for r in rounds],
        "stub": stub_stats,
        "stages_ms": None if stages is None else [{"step": n, "ms": m} for n, m, _ in stages],
    }
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    console.print(f"results written to {out}")
    errors = sum(r.errors for r in rounds)
    return 1 if errors else 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for the load generator where installed (less client CPU), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _interrupt(signum: int, frame: object) -> None:
    signal.raise_signal(signal.SIGINT)  # asyncio.run turns SIGINT into a clean cancel


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers on SIGTERM as on Ctrl-C
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
