"""Load test: many concurrent streaming clients, straight to a stub upstream and through prefixgate.

    python bench/load.py [--clients 200[,20,...]] [--seconds 120] [--requests N]
                         [--timeout 60] [--max-tokens 16] [--warmup N] [--idle-wait 5]
                         [--corpus FILE] [--stub-server asyncio|uvicorn] [--out results.json]
                         [--slow-bodies 64] [--half-open 1000] [--hostile-addresses 8]
                         [--slow-rate 2] [--drip 2] [--server-setting KEY=VALUE ...]

It starts ``bench/stub_upstream.py`` and ``python -m prefixgate serve
--upstream <stub> --audit <tmp>/audit.db`` on free loopback ports (helpers
shared with ``overhead.py``), then, for each client count C:

1. ``direct``: C clients in one event loop (one ``httpx.AsyncClient``, pool
   larger than C) each loop ``POST /v1/messages`` with ``"stream": true`` and
   a recorded Claude Code body (``max_tokens`` set small, the corpus cycled)
   straight to the stub, reading every answer to its end, for ``--seconds``
   or ``--requests``, whichever comes first;
2. ``gateway``: the same through prefixgate, while a thread samples the
   gateway process every 0.2 s (VmRSS, open file descriptors, threads).

With ``--slow-bodies`` and ``--half-open``, hostile clients run alongside the
gateway phase (from a few seconds before it to its end), from loopback
addresses of their own (127.0.0.2 and up, ``--hostile-addresses`` of them):

* slow bodies: each sends a whole request head and then its body a byte at a
  time (``--slow-rate`` bytes a second), never finishing it, and starts again
  when the gateway answers (408 once a body deadline passes) or closes;
* half-open connections: each sends part of a request head and then one more
  header line every ``--drip`` seconds, never finishing it, and opens a new
  connection when the gateway closes it (at its ``header_timeout``).

The normal clients' figures, errors and request ids are what they would be
without them; the hostile requests' own audit rows (a 408 each, or a 499 for
those still arriving when the run ends) are expected too, so "records lost"
counts every request the gateway saw. ``--server-setting`` adds a key to the
gateway's ``[server]`` table (e.g. ``body_timeout=20``, to see the deadline
within a short run).

A request counts as ok when it answered 200 and its stream ended with a
``message_stop`` event; anything else is an error, counted by type
(``http_<status>``, ``no_message_stop``, ``timeout``, or the httpx exception's
name). "added" is gateway minus direct, per percentile, for the time to the
first byte of the answer (TTFB) and to its last byte.

On the gateway it reports peak RSS (sampled, and VmHWM at the end), file
descriptors before the load, at the peak and a few seconds after the load
(client closed, gateway idle), split by kind (client sockets, upstream
sockets, files, ...), and the audit database: once the writer has settled,
the records vs the requests the gateway answered (warm-ups included), and
again after the gateway has stopped. When the gateway answers with an
``x-prefixgate-request-id`` header, every id collected is looked up in the
records' ``request_id``; without the header or the field the check is skipped
and the output says so.

The load generator, the stub and the gateway share the machine's cores; the
output says how many and how busy the three processes kept them. Nothing is
asserted on a time. Exit status 1 when any request failed, any record is
missing, or any collected request id is not in the audit database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import itertools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from overhead import (
    BENCH_DIR,
    CORPUS_ENV,
    HOST,
    Item,
    Server,
    environment,
    find_corpus,
    free_port,
    load_corpus,
    percentiles,
    quantile,
)
from rich.console import Console
from rich.table import Table

REQUEST_ID_HEADER = "x-prefixgate-request-id"
MAX_CLIENTS = 2000
MAX_SECONDS = 600.0
MAX_REQUESTS = 1_000_000  # per phase
SAMPLE_INTERVAL_S = 0.2
TAIL_BYTES = 512
SATURATED = 0.9  # share of the usable cores the three processes kept busy


# -- the bodies ---------------------------------------------------------------------


def with_max_tokens(items: Sequence[Item], max_tokens: int) -> list[Item]:
    """The items with ``max_tokens`` set and ``"stream": true`` (compact JSON, as recorded)."""
    out = []
    for item in items:
        body = json.loads(item.body)
        body["max_tokens"] = max_tokens
        body["stream"] = True
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        out.append(Item(item.path, item.headers, raw))
    return out


# -- one request ----------------------------------------------------------------------


def last_event(tail: bytes) -> str | None:
    """The name of the last SSE event in ``tail`` (its ``event:`` line, else its data type)."""
    text = tail.decode("utf-8", errors="replace").replace("\r\n", "\n")
    blocks = [b for b in text.split("\n\n") if b.strip()]
    if not blocks:
        return None
    name = None
    for line in blocks[-1].split("\n"):
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:") and name is None:
            with contextlib.suppress(ValueError, AttributeError):
                name = json.loads(line[5:]).get("type")
    return name


@dataclasses.dataclass
class Result:
    status: int | None
    error: str | None  # None: ok
    detail: str | None
    ttfb_ms: float
    total_ms: float
    request_id: str | None


async def one_request(client: httpx.AsyncClient, base: str, item: Item, timeout_s: float) -> Result:
    """Send one streaming request and read the answer to its end; never raises httpx errors."""
    start = time.perf_counter()
    first: float | None = None
    tail = b""
    status: int | None = None
    request_id: str | None = None
    error: str | None = None
    detail: str | None = None
    received = 0
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream(
                "POST", base + item.path, content=item.body, headers=item.headers
            ) as response:
                status = response.status_code
                request_id = response.headers.get(REQUEST_ID_HEADER)
                async for chunk in response.aiter_raw():
                    if first is None:
                        first = time.perf_counter()
                    received += len(chunk)
                    tail = (tail + chunk)[-TAIL_BYTES:]
    except TimeoutError:
        error, detail = "timeout", f"no complete answer in {timeout_s:g}s"
    except httpx.HTTPError as exc:
        error = type(exc).__name__
        detail = f"{exc!r}; status {status}, {received} body bytes read before it"
    end = time.perf_counter()
    if error is None:
        if status != 200:
            error, detail = f"http_{status}", tail[-200:].decode("utf-8", errors="replace")
        elif (name := last_event(tail)) != "message_stop":
            error = "no_message_stop"
            detail = f"last event {name!r}: {tail[-120:]!r}"
    ttfb = ((first or end) - start) * 1000.0
    return Result(status, error, detail, ttfb, (end - start) * 1000.0, request_id)


# -- one phase: C clients for D seconds -------------------------------------------------


@dataclasses.dataclass
class Phase:
    side: str  # direct | gateway | warmup-direct | warmup-gateway
    clients: int
    sent: int = 0
    answered: int = 0  # a status line came back
    ok: int = 0
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    statuses: Counter[int] = dataclasses.field(default_factory=Counter)  # of the answered
    first_error: dict[str, str] = dataclasses.field(default_factory=dict)
    ttfb_ms: list[float] = dataclasses.field(default_factory=list)
    total_ms: list[float] = dataclasses.field(default_factory=list)
    request_ids: list[str] = dataclasses.field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: dict[str, float | None] = dataclasses.field(default_factory=dict)
    machine_busy: float | None = None  # share of all cores busy, whoever used them

    def add(self, result: Result) -> None:
        if result.status is not None:
            self.answered += 1
            self.statuses[result.status] += 1
        if result.request_id:
            self.request_ids.append(result.request_id)
        if result.error is None:
            self.ok += 1
            self.ttfb_ms.append(result.ttfb_ms)
            self.total_ms.append(result.total_ms)
        else:
            self.errors[result.error] += 1
            self.first_error.setdefault(result.error, result.detail or "")

    @property
    def rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def cpu_busy(self, cores: int) -> float | None:
        """Share of ``cores`` the gateway, the stub and this process kept busy."""
        spent = self.cpu_s.values()
        if not self.wall_s or not cores or any(v is None for v in spent):
            return None
        return sum(v for v in spent if v is not None) / self.wall_s / cores

    def core_shares(self) -> dict[str, float]:
        """CPU time per process over wall time: 1.0 is one core kept busy."""
        if not self.wall_s:
            return {}
        return {k: v / self.wall_s for k, v in self.cpu_s.items() if v is not None}

    def summary(self, cores: int) -> dict[str, Any]:
        busy = self.cpu_busy(cores)
        return {
            "side": self.side,
            "clients": self.clients,
            "sent": self.sent,
            "answered": self.answered,
            "ok": self.ok,
            "errors": sum(self.errors.values()),
            "errors_by_type": dict(self.errors),
            "answered_by_status": {str(k): v for k, v in sorted(self.statuses.items())},
            "first_error_by_type": self.first_error,
            "wall_s": round(self.wall_s, 3),
            "rps": round(self.rps, 2),
            "ttfb_ms": percentiles(self.ttfb_ms),
            "total_ms": percentiles(self.total_ms),
            "cpu_s": {k: None if v is None else round(v, 3) for k, v in self.cpu_s.items()},
            "cpu_busy_share": None if busy is None else round(busy, 3),
            "cores_used": {k: round(v, 3) for k, v in self.core_shares().items()},
            "machine_busy_share": None
            if self.machine_busy is None
            else round(self.machine_busy, 3),
            "request_ids": len(self.request_ids),
        }


async def run_phase(
    client: httpx.AsyncClient,
    base: str,
    items: Sequence[Item],
    phase: Phase,
    seconds: float,
    max_requests: int,
    timeout_s: float,
    servers: dict[str, Server],
) -> Phase:
    """``phase.clients`` workers, each sending one request after another until time or count."""
    next_index = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal next_index
        while next_index < max_requests and time.perf_counter() < deadline:
            item = items[next_index % len(items)]
            next_index += 1
            phase.sent += 1
            phase.add(await one_request(client, base, item, timeout_s))

    cpu_before = {name: s.cpu_seconds() for name, s in servers.items()}
    machine_before = machine_ticks()
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(phase.clients)))
    phase.wall_s = time.perf_counter() - started
    for name, server in servers.items():
        before, after = cpu_before[name], server.cpu_seconds()
        phase.cpu_s[name] = None if before is None or after is None else after - before
    phase.cpu_s["load generator"] = time.process_time() - client_before
    machine_after = machine_ticks()
    if machine_before and machine_after and machine_after[0] > machine_before[0]:
        total = machine_after[0] - machine_before[0]
        phase.machine_busy = 1.0 - (machine_after[1] - machine_before[1]) / total
    return phase


def machine_ticks() -> tuple[int, int] | None:
    """(all, idle + iowait) CPU ticks of the whole machine so far, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(f) for f in fields[:8]]
    return sum(ticks), ticks[3] + ticks[4]


# -- the gateway process from /proc -----------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads of ``pid``; empty when it is gone."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _tcp_sockets() -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state in hex) for the TCP sockets of this namespace."""
    table: dict[int, tuple[int, int, str]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            local, remote = parts[1].rsplit(":", 1)[1], parts[2].rsplit(":", 1)[1]
            table[int(parts[9])] = (int(local, 16), int(remote, 16), parts[3])
    return table


def fd_kinds(pid: int, own_port: int, upstream_port: int) -> dict[str, int]:
    """The open descriptors of ``pid`` by kind: listen, client, upstream, file, pipe, ..."""
    kinds: Counter[str] = Counter()
    tcp = _tcp_sockets()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return {}
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found = tcp.get(int(target[8:-1]))
            if found is None:
                kinds["other socket"] += 1
            elif found[0] == own_port and found[2] == "0A":
                kinds["listen"] += 1
            elif found[0] == own_port:
                kinds["client"] += 1
            elif found[1] == upstream_port:
                kinds["upstream"] += 1
            else:
                kinds["other tcp"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("anon_inode:"):
            kinds["anon"] += 1
        elif target.startswith("/dev/"):
            kinds["dev"] += 1
        else:
            kinds["file"] += 1
    return dict(sorted(kinds.items()))


class Sampler(threading.Thread):
    """Samples VmRSS, the fd count and the thread count of a process every 0.2 s."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL_S) -> None:
        super().__init__(name="load-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int | None, int | None, int | None]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._halt.is_set():
            status = proc_status(self.pid)
            fds = fd_count(self.pid)
            self.samples.append(
                (time.monotonic() - start, status.get("VmRSS"), fds, status.get("Threads"))
            )
            self._halt.wait(self.interval)

    def finish(self) -> dict[str, Any]:
        self._halt.set()
        self.join(timeout=5)
        rss = [s[1] for s in self.samples if s[1] is not None]
        fds = [s[2] for s in self.samples if s[2] is not None]
        threads = [s[3] for s in self.samples if s[3] is not None]
        gaps = [b[0] - a[0] for a, b in zip(self.samples, self.samples[1:], strict=False)]
        return {
            "samples": len(self.samples),
            "max_gap_s": round(max(gaps), 3) if gaps else None,
            "rss_peak_kb": max(rss) if rss else None,
            "rss_first_kb": rss[0] if rss else None,
            "rss_last_kb": rss[-1] if rss else None,
            "fds_peak": max(fds) if fds else None,
            "threads_peak": max(threads) if threads else None,
        }


def snapshot(server: Server, own_port: int, upstream_port: int) -> dict[str, Any]:
    pid = server.process.pid if server.process else -1
    status = proc_status(pid)
    return {
        "rss_kb": status.get("VmRSS"),
        "hwm_kb": status.get("VmHWM"),
        "threads": status.get("Threads"),
        "fds": fd_count(pid),
        "fd_kinds": fd_kinds(pid, own_port, upstream_port),
    }


def fd_limit(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    except (OSError, ValueError):
        pass
    return None


# -- the audit database -------------------------------------------------------------------


def count_records(path: Path) -> int | None:
    """Committed records in the audit database, or None when it cannot be read yet."""
    from prefixgate.store import sqlite

    try:
        connect = getattr(sqlite, "connect_readonly", None)
        if connect is None:
            return len(sqlite.read_records(path))
        with connect(path) as conn:
            return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
    except (sqlite.AuditDBError, OSError):
        return None
    except Exception:  # e.g. sqlite3.OperationalError while the file is being created
        return None


async def settle_records(path: Path, expected: int, timeout_s: float) -> tuple[int | None, float]:
    """Poll the record count until it reaches ``expected`` and stays, or stops moving."""
    started = time.monotonic()
    history: list[int | None] = []
    while True:
        count = count_records(path)
        history.append(count)
        waited = time.monotonic() - started
        steady = count is not None and len(history) >= 3 and history[-3] == count
        stuck = len(history) >= 10 and history[-10] == count
        if steady and (count >= expected or stuck):  # type: ignore[operator]
            return count, waited
        if waited > timeout_s:
            return count, waited
        await asyncio.sleep(0.5)


def check_records(path: Path, answered: int, ids: Sequence[str]) -> dict[str, Any]:
    """Records by kind and status, and whether every collected request id is among them."""
    from prefixgate.store.sqlite import AuditDBError, read_records

    try:
        records = read_records(path)
    except AuditDBError as exc:
        return {"records": None, "read_error": str(exc)}
    out: dict[str, Any] = {
        "records": len(records),
        "by_kind": dict(Counter(r.kind for r in records)),
        "by_status": {str(k): v for k, v in Counter(r.status for r in records).items()},
        "with_error": sum(1 for r in records if r.error),
    }
    unique = set(ids)
    id_check: dict[str, Any] = {"header": REQUEST_ID_HEADER, "collected": len(ids)}
    id_check["duplicates"] = len(ids) - len(unique)
    if not ids:
        id_check["status"] = "skipped: the gateway sent no request id header"
    elif records and not hasattr(records[0], "request_id"):
        id_check["status"] = "skipped: the audit records have no request_id field"
    else:
        stored = {getattr(r, "request_id", None) for r in records}
        missing = sorted(unique - stored)
        id_check.update(
            status="checked",
            missing=len(missing),
            missing_sample=missing[:10],
            records_without_id=sum(1 for r in records if not getattr(r, "request_id", None)),
        )
    out["request_ids"] = id_check
    return out


# -- hostile clients alongside: slow bodies and half-open heads -----------------------------


@dataclasses.dataclass
class Attack:
    """Slow-body clients and half-open connections against ``port``, from ``addresses``."""

    port: int
    slow_bodies: int
    half_open: int
    addresses: list[str]
    slow_rate: float  # body bytes a second, per slow client
    drip_s: float  # seconds between header lines, per half-open connection
    body: bytes = b""
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    # slow bodies
    slow_heads: int = 0  # requests whose whole head went out
    slow_answers: Counter[int] = dataclasses.field(default_factory=Counter)
    slow_ids: list[str] = dataclasses.field(default_factory=list)
    slow_answer_s: list[float] = dataclasses.field(default_factory=list)  # head to answer
    slow_dropped: int = 0  # closed by the gateway with no answer
    slow_hung_up: int = 0  # still arriving when the run ended (we hung up)
    # half-open connections
    half_opened: int = 0
    half_closed: int = 0  # closed by the gateway
    half_held_s: list[float] = dataclasses.field(default_factory=list)
    half_still_open: int = 0  # when the run ended
    peak_open: int = 0
    # either kind
    refused: Counter[int] = dataclasses.field(default_factory=Counter)  # answered at connect
    connect_errors: Counter[str] = dataclasses.field(default_factory=Counter)
    open_now: int = 0
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.slow_bodies or self.half_open)

    def start(self) -> None:
        for i in range(self.half_open):
            self.tasks.append(asyncio.create_task(self._half_open(i)))
        for i in range(self.slow_bodies):
            self.tasks.append(asyncio.create_task(self._slow_body(i)))

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    @property
    def records_expected(self) -> int:
        """Audit rows the hostile requests make: one per answer with a request id
        (408, or a 429 from a tenant's limit), one per body we hung up on (499)."""
        return len(self.slow_ids) + self.slow_hung_up

    async def _connect(self, i: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        address = self.addresses[i % len(self.addresses)]
        try:
            reader, writer = await asyncio.open_connection(HOST, self.port, local_addr=(address, 0))
        except OSError as exc:
            self.connect_errors[type(exc).__name__] += 1
            await asyncio.sleep(0.5)
            return None
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)
        return reader, writer

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        self.open_now -= 1
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def _wait(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        seconds: float,
        pieces: Iterator[bytes],
    ) -> bytes | None:
        """What the gateway sent (b"" when it closed), or None when the run ends;
        the next of ``pieces`` is sent after each ``seconds`` of silence."""
        while not self.stop.is_set():
            try:
                return await asyncio.wait_for(reader.read(65536), timeout=seconds)
            except TimeoutError:
                try:
                    writer.write(next(pieces, b""))
                    await writer.drain()
                except OSError:  # reset: closed by the gateway
                    return b""
            except OSError:
                return b""
        return None

    async def _half_open(self, i: int) -> None:
        head = f"POST /v1/messages HTTP/1.1\r\nhost: {HOST}:{self.port}\r\n".encode()
        await asyncio.sleep(i * 0.002)  # a ramp, not one burst of SYNs
        while not self.stop.is_set():
            conn = await self._connect(i)
            if conn is None:
                continue
            reader, writer = conn
            opened = time.monotonic()
            self.half_opened += 1
            lines = (f"x-drip-{n}: 1\r\n".encode() for n in itertools.count())
            try:
                writer.write(head)
                await writer.drain()
                data = await self._wait(reader, writer, self.drip_s, lines)
            except OSError:
                data = b""
            if data is None:
                self.half_still_open += 1
            elif data:
                self.refused[status_of(data)] += 1
            else:
                self.half_closed += 1
                self.half_held_s.append(time.monotonic() - opened)
            await self._close(writer)

    async def _slow_body(self, i: int) -> None:
        body = self.body
        head = (
            f"POST /v1/messages HTTP/1.1\r\nhost: {HOST}:{self.port}\r\n"
            "content-type: application/json\r\nanthropic-version: 2023-06-01\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        await asyncio.sleep(i * 0.01)
        while not self.stop.is_set():
            conn = await self._connect(1000 + i)
            if conn is None:
                continue
            reader, writer = conn
            # a byte at a time, never whole: the last byte is kept back
            trickle = (body[k : k + 1] for k in range(len(body) - 1))
            try:
                writer.write(head)
                await writer.drain()
                began = time.monotonic()
                self.slow_heads += 1
                data = await self._wait(reader, writer, 1.0 / self.slow_rate, trickle)
                if data:
                    with contextlib.suppress(OSError, TimeoutError):
                        async with asyncio.timeout(10):
                            while more := await reader.read(65536):
                                data += more
            except OSError:
                data = b""
            if data is None:
                self.slow_hung_up += 1
            elif not data:
                self.slow_dropped += 1
            elif (request_id := header_of(data, REQUEST_ID_HEADER)) is None:
                self.slow_heads -= 1  # refused at connect, before its head was read
                self.refused[status_of(data)] += 1
            else:
                self.slow_answers[status_of(data)] += 1
                self.slow_ids.append(request_id)
                self.slow_answer_s.append(time.monotonic() - began)
            await self._close(writer)

    def summary(self) -> dict[str, Any]:
        return {
            "slow_bodies": self.slow_bodies,
            "half_open": self.half_open,
            "addresses": self.addresses,
            "slow_rate_bytes_per_s": self.slow_rate,
            "drip_s": self.drip_s,
            "peak_open": self.peak_open,
            "slow_heads": self.slow_heads,
            "slow_answers_by_status": {str(k): v for k, v in sorted(self.slow_answers.items())},
            "slow_answer_s": percentiles(self.slow_answer_s),
            "slow_dropped": self.slow_dropped,
            "slow_hung_up": self.slow_hung_up,
            "half_opened": self.half_opened,
            "half_closed_by_gateway": self.half_closed,
            "half_held_s": percentiles(self.half_held_s),
            "half_still_open_at_end": self.half_still_open,
            "refused_at_connect_by_status": {str(k): v for k, v in sorted(self.refused.items())},
            "connect_errors": dict(self.connect_errors),
            "records_expected": self.records_expected,
        }


def status_of(answer: bytes) -> int:
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def header_of(answer: bytes, name: str) -> str | None:
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def attack_table(attack: dict[str, Any]) -> Table:
    table = Table(title="Hostile clients alongside the gateway phase", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")

    def pct(d: dict[str, Any], key: str) -> str:
        return _f(d.get(key), "{:.1f}")

    held, answer = attack["half_held_s"], attack["slow_answer_s"]
    rows = [
        ("client addresses", f"{len(attack['addresses'])} ({attack['addresses'][0]} ...)"),
        ("hostile connections open at once, peak", str(attack["peak_open"])),
        (
            f"half-open connections ({attack['half_open']}, a header line every "
            f"{attack['drip_s']:g} s): opened",
            str(attack["half_opened"]),
        ),
        ("  closed by the gateway", str(attack["half_closed_by_gateway"])),
        ("  held before being closed, s (p50 / p99)", f"{pct(held, 'p50')} / {pct(held, 'p99')}"),
        ("  still open when the run ended", str(attack["half_still_open_at_end"])),
        (
            f"slow bodies ({attack['slow_bodies']}, {attack['slow_rate_bytes_per_s']:g} "
            "bytes/s): requests",
            str(attack["slow_heads"]),
        ),
        ("  answered, by status", json.dumps(attack["slow_answers_by_status"])),
        ("  head to answer, s (p50 / p99)", f"{pct(answer, 'p50')} / {pct(answer, 'p99')}"),
        ("  closed with no answer", str(attack["slow_dropped"])),
        ("  still arriving when the run ended", str(attack["slow_hung_up"])),
        ("refused at connect, by status", json.dumps(attack["refused_at_connect_by_status"])),
        ("connect errors", json.dumps(attack["connect_errors"])),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


# -- the run ------------------------------------------------------------------------------


@dataclasses.dataclass
class Sweep:
    clients: int
    direct: Phase
    gateway: Phase
    warmups: list[Phase]
    gateway_proc: dict[str, Any]
    attack: Attack | None = None


async def sweep_one(
    args: argparse.Namespace,
    clients: int,
    items: Sequence[Item],
    urls: dict[str, str],
    servers: dict[str, Server],
    ports: tuple[int, int],
    console: Console,
) -> Sweep:
    gw_port, stub_port = ports
    gateway = servers["gateway"]
    assert gateway.process is not None
    cores = environment()["usable_cpus"]
    limits = httpx.Limits(max_connections=2 * clients, max_keepalive_connections=2 * clients)
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    warmup = args.warmup if args.warmup is not None else clients
    phases: dict[str, Phase] = {}
    warmups: list[Phase] = []
    proc: dict[str, Any] = {}
    attack: Attack | None = None
    for side in ("direct", "gateway"):
        base = urls[side]
        if side == "gateway":
            proc["before"] = snapshot(gateway, gw_port, stub_port)
            sampler = Sampler(gateway.process.pid)
            sampler.start()
        async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
            # One request per client first, so the connections are open and both processes warm.
            warm = Phase(f"warmup-{side}", min(clients, max(warmup, 1)))
            await run_phase(client, base, items, warm, 60.0, warmup, args.timeout, servers)
            warmups.append(warm)
            if side == "gateway" and (args.slow_bodies or args.half_open):
                attack = Attack(
                    port=gw_port,
                    slow_bodies=args.slow_bodies,
                    half_open=args.half_open,
                    addresses=[f"127.0.0.{2 + i}" for i in range(args.hostile_addresses)],
                    slow_rate=args.slow_rate,
                    drip_s=args.drip,
                    body=items[0].body,
                )
                attack.start()
                await asyncio.sleep(args.attack_ramp)  # the hostile connections open first
                console.print(
                    f"  c={clients:<4} hostile clients: {attack.open_now} connections open "
                    f"({args.half_open} half-open, {args.slow_bodies} slow bodies)"
                )
            phase = Phase(side, clients)
            await run_phase(
                client, base, items, phase, args.seconds, args.requests, args.timeout, servers
            )
            phases[side] = phase
            if attack is not None:
                await attack.finish()
            if side == "gateway":
                proc["end_of_load"] = snapshot(gateway, gw_port, stub_port)
        busy = phase.cpu_busy(cores)
        errors = sum(phase.errors.values())
        console.print(
            f"  c={clients:<4} {side:<8} {phase.ok:>7} ok {errors:>5} errors "
            f"{phase.rps:8.1f} rps  TTFB p50 {quantile(sorted(phase.ttfb_ms), 0.5):8.2f} ms  "
            f"total p50 {quantile(sorted(phase.total_ms), 0.5):8.2f} ms  "
            f"CPU busy {'-' if busy is None else f'{100 * busy:.0f}%'} of {cores} cores "
            f"(machine: {_pct(phase.machine_busy)})"
        )
        for kind, count in phase.errors.items():
            console.print(f"    [red]{kind}[/red] x{count}: {phase.first_error[kind][:300]}")
        if side == "gateway":
            await asyncio.sleep(args.idle_wait)  # client closed: let the gateway go idle
            proc["during"] = sampler.finish()
            proc["after_idle"] = snapshot(gateway, gw_port, stub_port)
            proc["idle_wait_s"] = args.idle_wait
    return Sweep(clients, phases["direct"], phases["gateway"], warmups, proc, attack)


def added(direct: Phase, gateway: Phase) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr, label in (("ttfb_ms", "ttfb"), ("total_ms", "total")):
        d, g = sorted(getattr(direct, attr)), sorted(getattr(gateway, attr))
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            dv, gv = quantile(d, q), quantile(g, q)
            out[f"{label}_{name}_ms"] = round(gv - dv, 3) if d and g else None
            out[f"{label}_{name}_ratio"] = round(gv / dv, 3) if d and g and dv else None
    out["rps_ratio"] = round(gateway.rps / direct.rps, 3) if direct.rps else None
    return out


def _f(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None or value != value else fmt.format(value)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"


def _mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f}"


def _kinds(kinds: dict[str, int]) -> str:
    return " ".join(f"{k} {v}" for k, v in kinds.items())


def latency_table(sweeps: Sequence[Sweep], cores: int) -> Table:
    table = Table(
        title="Direct vs through prefixgate, streaming (ms; ADDED = gateway - direct)",
        title_justify="left",
    )
    for name in ("run", "clients", "ok", "errors", "rps", "TTFB p50", "TTFB p99"):
        table.add_column(name, justify="left" if name == "run" else "right")
    for name in ("total p50", "total p99", "cores: gw/stub/gen", "all 3", "machine"):
        table.add_column(name, justify="right")
    for s in sweeps:
        for label, p in (("direct to stub", s.direct), ("via prefixgate", s.gateway)):
            ttfb, total = sorted(p.ttfb_ms), sorted(p.total_ms)
            busy = p.cpu_busy(cores)
            errors = sum(p.errors.values())
            table.add_row(
                label,
                str(s.clients),
                str(p.ok),
                f"[red]{errors}[/red]" if errors else "0",
                f"{p.rps:.0f}",
                _f(quantile(ttfb, 0.5)),
                _f(quantile(ttfb, 0.99)),
                _f(quantile(total, 0.5)),
                _f(quantile(total, 0.99)),
                "/".join(
                    _f(p.core_shares().get(k), "{:.2f}")
                    for k in ("gateway", "stub", "load generator")
                ),
                "-" if busy is None else f"{100 * busy:.0f}% of {cores}",
                _f(None if p.machine_busy is None else 100 * p.machine_busy, "{:.0f}%"),
            )
        a = added(s.direct, s.gateway)
        table.add_row(
            "[bold]ADDED[/bold]",
            str(s.clients),
            "",
            "",
            _f(a["rps_ratio"], "x{:.2f}"),
            f"[bold]{_f(a['ttfb_p50_ms'], '{:+.2f}')}[/bold] (x{_f(a['ttfb_p50_ratio'])})",
            f"{_f(a['ttfb_p99_ms'], '{:+.2f}')} (x{_f(a['ttfb_p99_ratio'])})",
            f"[bold]{_f(a['total_p50_ms'], '{:+.2f}')}[/bold] (x{_f(a['total_p50_ratio'])})",
            f"{_f(a['total_p99_ms'], '{:+.2f}')} (x{_f(a['total_p99_ratio'])})",
            "",
            "",
            "",
            end_section=True,
        )
    return table


def gateway_table(sweeps: Sequence[Sweep], audit: dict[str, Any]) -> Table:
    table = Table(title="The gateway process", title_justify="left")
    table.add_column("measure")
    for s in sweeps:
        table.add_column(f"c={s.clients}", justify="right")

    def row(name: str, cell: Any) -> None:
        table.add_row(name, *(cell(s) for s in sweeps))

    def proc(s: Sweep, *keys: str) -> Any:
        value: Any = s.gateway_proc
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    row("RSS before (MiB)", lambda s: _mib(proc(s, "before", "rss_kb")))
    row("RSS peak, sampled every 0.2 s (MiB)", lambda s: _mib(proc(s, "during", "rss_peak_kb")))
    row("VmHWM at the end of the load (MiB)", lambda s: _mib(proc(s, "end_of_load", "hwm_kb")))
    row("RSS after, idle (MiB)", lambda s: _mib(proc(s, "after_idle", "rss_kb")))
    row("fds before", lambda s: str(proc(s, "before", "fds")))
    row("fds peak (sampled)", lambda s: str(proc(s, "during", "fds_peak")))
    row("fds at the end of the load", lambda s: str(proc(s, "end_of_load", "fds")))
    row(
        "fds after, idle",
        lambda s: f"{proc(s, 'after_idle', 'fds')} ({proc(s, 'idle_wait_s'):g} s after)",
    )
    row("  before, by kind", lambda s: _kinds(proc(s, "before", "fd_kinds") or {}))
    row("  end of load, by kind", lambda s: _kinds(proc(s, "end_of_load", "fd_kinds") or {}))
    row("  after, by kind", lambda s: _kinds(proc(s, "after_idle", "fd_kinds") or {}))
    row(
        "threads before / peak / after",
        lambda s: (
            f"{proc(s, 'before', 'threads')} / {proc(s, 'during', 'threads_peak')} / "
            f"{proc(s, 'after_idle', 'threads')}"
        ),
    )
    row(
        "samples (largest gap, s)",
        lambda s: f"{proc(s, 'during', 'samples')} ({_f(proc(s, 'during', 'max_gap_s'))})",
    )
    table.add_section()
    ids = audit.get("request_ids", {})
    hostile = audit.get("hostile_records_expected", 0)
    table.add_row(
        "gateway answered (all runs, warm-ups included)",
        str(audit["answered"]) + (f" ({hostile} of them hostile requests)" if hostile else ""),
    )
    table.add_row(
        "audit records, settled while running",
        f"{audit['settled']} (after {audit['settle_s']:.1f} s)",
    )
    table.add_row("audit records after the gateway stopped", str(audit["after_stop"]))
    lost = audit["lost"]
    by = ", ".join(f"HTTP {k}: {v}" for k, v in audit.get("lost_by_status", {}).items())
    table.add_row("records lost", f"[red]{lost}[/red] ({by})" if lost else "0")
    status = ids.get("status", "-")
    if status == "checked":
        missing = ids["missing"]
        status = f"{ids['collected']} ids, {missing} missing" + (
            f", {ids['duplicates']} duplicates" if ids["duplicates"] else ""
        )
    table.add_row(f"{REQUEST_ID_HEADER} in the audit DB", status)
    return table


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(BENCH_DIR.parent), *args], capture_output=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.decode("utf-8", errors="replace").strip()


def gateway_source(rev: str | None, tmp: Path) -> dict[str, Any]:
    """Where the gateway's code comes from; with ``rev``, export that revision's ``src/``.

    The exported tree goes first on ``PYTHONPATH`` (the gateway subprocess inherits
    it) and on ``sys.path`` (the audit reader here), so a committed revision can be
    measured while the working tree is being edited.
    """
    if rev is None:
        dirty = _git("status", "--porcelain", "--", "src")
        return {
            "rev": "working tree",
            "commit": _git("rev-parse", "HEAD"),
            "src_files_changed": None if dirty is None else len(dirty.splitlines()),
        }
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    if commit is None:
        raise SystemExit(f"--gateway-rev {rev}: not a revision of this repository")
    archive = subprocess.run(
        ["git", "-C", str(BENCH_DIR.parent), "archive", "--format=tar", commit, "src"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp / "rev", filter="data")
    src = str(tmp / "rev" / "src")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    sys.path.insert(0, src)
    return {"rev": rev, "commit": commit, "src_files_changed": 0}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Many concurrent streaming clients, direct to a stub and through prefixgate."
    )
    parser.add_argument("--corpus", default=None, help=f"capture file (else ${CORPUS_ENV})")
    parser.add_argument(
        "--clients", default="200", help="concurrent clients; a comma list sweeps (20,200)"
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="per phase (side and C)")
    parser.add_argument(
        "--requests", type=int, default=MAX_REQUESTS, help="per phase, if reached before time"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    parser.add_argument("--max-tokens", type=int, default=16, help="set in every body")
    parser.add_argument("--warmup", type=int, default=None, help="per phase (default C)")
    parser.add_argument(
        "--idle-wait", type=float, default=5.0, help="seconds idle before the fds are counted"
    )
    parser.add_argument(
        "--settle-timeout", type=float, default=60.0, help="wait for the audit writer"
    )
    parser.add_argument("--stub-server", choices=("asyncio", "uvicorn"), default="asyncio")
    parser.add_argument(
        "--gateway-rev",
        default=None,
        metavar="REV",
        help="run the gateway from this git revision's src/ (default: the installed code)",
    )
    parser.add_argument(
        "--slow-bodies", type=int, default=0, help="hostile clients sending bodies a byte at a time"
    )
    parser.add_argument(
        "--half-open", type=int, default=0, help="hostile connections holding half-sent heads"
    )
    parser.add_argument(
        "--hostile-addresses",
        type=int,
        default=8,
        help="loopback addresses the hostile clients come from (127.0.0.2 and up)",
    )
    parser.add_argument(
        "--slow-rate", type=float, default=2.0, help="body bytes a second per slow client"
    )
    parser.add_argument(
        "--drip", type=float, default=2.0, help="seconds between header lines, half-open"
    )
    parser.add_argument(
        "--attack-ramp", type=float, default=5.0, help="seconds the hostile clients start first"
    )
    parser.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a key for the gateway's [server] table (repeatable), e.g. body_timeout=20",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        args.clients = [int(c) for c in str(args.clients).split(",") if c.strip()]
    except ValueError:
        parser.error("--clients takes integers, comma separated")
    if not args.clients or not all(1 <= c <= MAX_CLIENTS for c in args.clients):
        parser.error(f"--clients must be between 1 and {MAX_CLIENTS}")
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS:g}]")
    if not 1 <= args.requests <= MAX_REQUESTS:
        parser.error(f"--requests must be between 1 and {MAX_REQUESTS}")
    if not 0 < args.timeout <= 600:
        parser.error("--timeout must be in (0, 600]")
    if not 1 <= args.max_tokens <= 64_000:
        parser.error("--max-tokens must be between 1 and 64000")
    if args.warmup is not None and not 0 <= args.warmup <= 10_000:
        parser.error("--warmup must be between 0 and 10000")
    if not 0 <= args.idle_wait <= 120 or not 0 < args.settle_timeout <= 600:
        parser.error("--idle-wait must be in [0, 120], --settle-timeout in (0, 600]")
    if not 0 <= args.slow_bodies <= MAX_CLIENTS or not 0 <= args.half_open <= 20_000:
        parser.error(f"--slow-bodies must be in [0, {MAX_CLIENTS}], --half-open in [0, 20000]")
    if not 1 <= args.hostile_addresses <= 250:
        parser.error("--hostile-addresses must be between 1 and 250")
    if not 0 < args.slow_rate <= 1000 or not 0 < args.drip <= 60:
        parser.error("--slow-rate must be in (0, 1000], --drip in (0, 60]")
    if not 0 <= args.attack_ramp <= 60:
        parser.error("--attack-ramp must be in [0, 60]")
    for setting in args.server_setting:
        key, eq, _ = setting.partition("=")
        if not eq or not key.replace("_", "").isalnum():
            parser.error(f"--server-setting takes KEY=VALUE, got {setting!r}")
    return args


def toml_value(text: str) -> str:
    """``text`` as a TOML value: a number or boolean as is, else a quoted string."""
    if text in ("true", "false"):
        return text
    try:
        float(text)
    except ValueError:
        return json.dumps(text)
    return text


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's soft fd limit (after the servers started: they keep their own)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def run_all(
    args: argparse.Namespace,
    items: Sequence[Item],
    urls: dict[str, str],
    servers: dict[str, Server],
    ports: tuple[int, int],
    audit_path: Path,
    console: Console,
) -> tuple[list[Sweep], dict[str, Any]]:
    sweeps = []
    for clients in args.clients:
        sweeps.append(await sweep_one(args, clients, items, urls, servers, ports, console))
    gateway_phases = [p for s in sweeps for p in (s.gateway, *s.warmups) if "gateway" in p.side]
    answered = sum(p.answered for p in gateway_phases)
    by_status: Counter[int] = Counter()
    for p in gateway_phases:
        by_status.update(p.statuses)
    ids = [i for p in gateway_phases for i in p.request_ids]
    # the hostile requests' own rows (408, 429; 499 for a body we hung up on)
    attacks = [s.attack for s in sweeps if s.attack is not None]
    hostile = sum(a.records_expected for a in attacks)
    for a in attacks:
        by_status.update(a.slow_answers)
        by_status[499] += a.slow_hung_up
        ids += a.slow_ids
    by_status = +by_status  # no zero counts
    answered += hostile
    settled, settle_s = await settle_records(audit_path, answered, args.settle_timeout)
    audit: dict[str, Any] = {"answered": answered, "settled": settled, "settle_s": settle_s}
    audit["hostile_records_expected"] = hostile
    audit["answered_by_status"] = {str(k): v for k, v in sorted(by_status.items())}
    audit |= check_records(audit_path, answered, ids)
    return sweeps, audit


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # wide enough for the tables in a log file
    corpus = find_corpus(args.corpus)
    items = with_max_tokens(load_corpus(corpus), args.max_tokens)
    env_before = environment()
    cores = env_before["usable_cpus"]
    stub_port, gw_port = free_port(), free_port()
    urls = {"direct": f"http://{HOST}:{stub_port}", "gateway": f"http://{HOST}:{gw_port}"}
    tmp = Path(tempfile.mkdtemp(prefix="prefixgate-load-"))
    audit_path = tmp / "audit.db"
    source = gateway_source(args.gateway_rev, tmp)
    stub_cmd = [sys.executable, str(BENCH_DIR / "stub_upstream.py"), "--host", HOST]
    stub_cmd += ["--port", str(stub_port), "--server", args.stub_server]
    gateway_cmd = [sys.executable, "-m", "prefixgate", "serve", "--upstream", urls["direct"]]
    gateway_cmd += ["--host", HOST, "--port", str(gw_port), "--audit", str(audit_path)]
    gateway_cmd += ["--log-level", "warning"]
    # The load is one tenant's: lift its concurrency limit (default 64) above the
    # client count (the slow bodies are that tenant's requests too), or the run
    # measures 429s instead of the gateway; and the normal clients all come from
    # one address: lift its connection cap (default 256) above their pool.
    config = tmp / "prefixgate.toml"
    server = {
        "max_concurrent": str(max(args.clients) + args.slow_bodies + 16),
        "max_connections_per_client": str(max(256, 2 * max(args.clients) + 16)),
    }
    for setting in args.server_setting:
        key, _, value = setting.partition("=")
        server[key.strip()] = toml_value(value.strip())
    table = "".join(f"{key} = {value}\n" for key, value in server.items())
    config.write_text(f"[server]\n{table}", encoding="utf-8")
    gateway_cmd += ["--config", str(config)]
    console.print(
        f"[bold]prefixgate load[/bold]: clients {','.join(map(str, args.clients))}, "
        f"{args.seconds:g} s or {args.requests} requests per phase, "
        f"{len(items)} bodies from {corpus.name} (max_tokens {args.max_tokens}, streaming), "
        f"audit: SQLite; gateway code: {source['rev']} "
        + (
            f"; alongside the gateway phase: {args.half_open} half-open connections and "
            f"{args.slow_bodies} slow bodies from {args.hostile_addresses} addresses"
            if args.half_open or args.slow_bodies
            else ""
        )
        + (f"; \\[server] {', '.join(args.server_setting)}" if args.server_setting else "")
        + f" ({(source['commit'] or '?')[:10]}"
        + (
            f", {source['src_files_changed']} files under src/ changed"
            if source["src_files_changed"]
            else ""
        )
        + f")\n{cores} usable CPU cores shared by the load generator (one event loop), "
        f"the stub and the gateway; load average before: "
        + " ".join(f"{x:.2f}" for x in env_before["loadavg"] or ())
    )
    stub = Server("stub", stub_cmd, f"{urls['direct']}/healthz")
    gateway = Server("prefixgate", gateway_cmd, f"{urls['gateway']}/healthz")
    servers = {"gateway": gateway, "stub": stub}
    started = time.time()
    stub_seen: dict[str, Any] | None = None
    gateway_log = ""
    try:
        stub.start()
        gateway.start()
        assert gateway.process is not None
        gateway_fd_limit = fd_limit(gateway.process.pid)
        raise_fd_limit(4 * max(args.clients) + 256 + 2 * (args.half_open + args.slow_bodies))
        sweeps, audit = asyncio.run(
            run_all(args, items, urls, servers, (gw_port, stub_port), audit_path, console)
        )
        audit["vmhwm_kb_final"] = proc_status(gateway.process.pid).get("VmHWM")
        with httpx.Client(trust_env=False) as client:
            stub_seen = client.get(f"{urls['direct']}/stats").json()
        gateway_log = gateway.log_tail(40)
        gateway.stop()  # SIGTERM: the gateway drains its audit queue on the way out
        audit["after_stop"] = count_records(audit_path)
    finally:
        gateway.stop()
        stub.stop()
    env_after = environment()
    final = audit["after_stop"] if audit["after_stop"] is not None else audit["settled"]
    audit["lost"] = max(0, audit["answered"] - (final or 0))
    audit["extra"] = max(0, (final or 0) - audit["answered"])
    stored = audit.get("by_status") or {}
    audit["lost_by_status"] = {
        k: v - stored.get(k, 0)
        for k, v in audit["answered_by_status"].items()
        if v > stored.get(k, 0)
    }

    console.print()
    console.print(latency_table(sweeps, cores))
    console.print(gateway_table(sweeps, audit))
    for s in sweeps:
        if s.attack is not None:
            console.print(attack_table(s.attack.summary()))
    busiest = max(
        max(p.cpu_busy(cores) or 0.0, p.machine_busy or 0.0)
        for s in sweeps
        for p in (s.direct, s.gateway)
    )
    console.print(
        f"{cores} usable cores; load average before "
        f"{' '.join(f'{x:.2f}' for x in env_before['loadavg'] or ())}, after "
        f"{' '.join(f'{x:.2f}' for x in env_after['loadavg'] or ())}; gateway fd limit "
        f"{gateway_fd_limit}; the stub saw {stub_seen['requests'] if stub_seen else '-'} requests"
    )
    if busiest >= SATURATED:
        console.print(
            f"[yellow]{100 * busiest:.0f}% of the {cores} cores were busy (this run's three "
            "processes, or they and others on the machine): "
            "the CPU is saturated, so the latencies mostly measure waiting for a core "
            "(the load generator's included), not the gateway's own work; rps and the "
            "gateway's CPU per request are the figures to compare[/yellow]"
        )
    for s in sweeps:
        for p in (s.direct, s.gateway):
            hot = [k for k, v in p.core_shares().items() if v >= SATURATED]
            if hot:
                console.print(
                    f"[yellow]c={s.clients} {p.side}: {', '.join(hot)} kept one core "
                    f"{'each ' if len(hot) > 1 else ''}busy (>= {100 * SATURATED:.0f}%): "
                    "one event loop each, so that process was the bottleneck and the "
                    "latencies include its queue[/yellow]"
                )
        cpu = s.gateway.cpu_s.get("gateway")
        if cpu and s.gateway.ok:
            console.print(
                f"c={s.clients}: gateway CPU {1000 * cpu / s.gateway.ok:.2f} ms per request "
                f"(ceiling ~{s.gateway.ok / cpu:.0f} rps on one core of its own)"
            )
    errors = sum(sum(p.errors.values()) for s in sweeps for p in (s.direct, s.gateway, *s.warmups))
    ids = audit.get("request_ids", {})
    missing_ids = ids.get("missing", 0) or 0
    if audit["lost"] or missing_ids or errors:
        console.print(
            f"[red]{errors} errors, {audit['lost']} records lost, {missing_ids} request ids "
            "missing from the audit DB[/red]; the gateway's log tail:"
        )
        console.print(collapse_log(gateway_log), markup=False, highlight=False)

    out = args.out or BENCH_DIR / "results" / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "started": started,
        "corpus": corpus.name,
        "bodies": len(items),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": {"before": env_before, "after": env_after},
        "gateway_fd_limit": gateway_fd_limit,
        "gateway_source": source,
        "runs": [
            {
                "clients": s.clients,
                "direct": s.direct.summary(cores),
                "gateway": s.gateway.summary(cores),
                "added": added(s.direct, s.gateway),
                "warmups": [w.summary(cores) for w in s.warmups],
                "gateway_process": s.gateway_proc,
                "hostile": None if s.attack is None else s.attack.summary(),
            }
            for s in sweeps
        ],
        "audit": audit,
        "stub": stub_seen,
        "errors": errors,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    console.print(f"results written to {out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if errors or audit["lost"] or missing_ids else 0


def collapse_log(text: str) -> str:
    """Log lines without their timestamps, repeats counted."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        head = line.split(" ", 2)
        key = head[2] if len(head) == 3 and head[0][:2].isdigit() else line
        counts[key] += 1
    return "\n".join(f"{n} x {line}" if n > 1 else line for line, n in counts.items())


def _interrupt(signum: int, frame: object) -> None:
    signal.raise_signal(signal.SIGINT)  # asyncio.run turns SIGINT into a clean cancel


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers on SIGTERM as on Ctrl-C
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
