"""The audit record: one per request, with what was found, changed and measured.

Sinks are small and share one protocol: ``record`` must never block the
response path, ``close`` flushes everything recorded so far, ``query`` reads
records back (newest last) for the report, the dashboard and tests.

``MemoryAudit`` keeps the latest records (tests, the process's own view),
``JsonlAudit`` appends one JSON line per request, and ``SqliteAudit`` (in
``store/sqlite.py``, the default for ``serve``) writes rows from a thread of its
own. No prompt or answer text is recorded unless body capture is on
(``request_body`` / ``response_text``), only hashes, fields and counts.

Cache fields, all ``None`` when unknown (unknown is never 0):

``prompt_tokens``           the whole prompt as the upstream counted it
``cached_tokens``           what it reports it served from cache (actual)
``expected_cached_tokens``  what an ideal prefix cache should have served
``expected_source``         ``tokenizer`` (the upstream's own) or ``estimate``
``changed_segment``         first segment that differs from the reference
                            request, e.g. ``system[2]``, ``tools:Bash``
``cause``                   one of ``core.misses.CAUSES`` (``none`` for a hit)
``cause_detail``            a line a person reads: the first differing line,
                            the tool's name, the session that evicted it
``oracle_tokens``           the longest prefix shared with any earlier prompt
                            on the same upstream replica, any tenant (a count
                            only: nothing of the other prompt is recorded)
``runtime_expected_tokens`` what the upstream should have served given what it
                            can hold (its slots and RAM prompt cache, modelled)
``lost_by_runtime``         ``runtime_expected_tokens - cached_tokens`` when
                            more than noise, else 0
``lost_cause``              one of ``core.oracle.LOSS_CAUSES``: why tokens were
                            lost between the oracle and what was served
``restored_tokens``         the tokens of this prompt that a saved-prefix restore,
                            done right before it, put into the runtime's slot
                            (``None`` when no restore preceded it)

``expected_cached_tokens`` is the older, narrower reference: the same session's
previous request and the upstream's last one (``core/misses.py``); the oracle is
never less. ``core/oracle.py`` defines the oracle, runtime and lost fields
precisely.

``replica`` names which server of a replicated upstream answered (``None``
for an upstream with one server).

``request_id`` is the request's own id (a hex string, also sent to the client
as the ``x-prefixgate-request-id`` response header), ``None`` when unknown. A
request may be recorded twice: a provisional record as soon as the answer is
over (without the expected-cached-token fields), then the completed one with
the same ``request_id``. Every sink keeps only the latest record per
``request_id``, in the place of the first: ``MemoryAudit`` replaces it,
``SqliteAudit`` updates its row, and ``JsonlAudit``, whose file is
append-only, writes a second line that readers (``read_jsonl``) take in place
of the first. Records with ``request_id=None`` are always new ones.

``record(rec, on_commit)`` calls ``on_commit()`` (when given) once ``rec`` is
durable: ``MemoryAudit`` once kept, ``JsonlAudit`` once its line is written
and flushed, ``SqliteAudit`` from its writer thread once the transaction
holding it is committed. It is also called, after logging, when the record is
dropped or could not be written, so a waiter never hangs; it may be called
from any thread (``loop.call_soon_threadsafe`` to reach an event loop), and
an exception it raises is logged, never propagated.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("prefixgate")

#: What ``record`` calls once a record is durable (or dropped): no arguments.
OnCommit = Callable[[], None]


@dataclass(frozen=True)
class AuditRecord:
    time: float
    route: str
    tenant: str
    session: str | None
    model: str | None
    upstream: str | None
    policy: str | None
    status: int
    session_source: str | None = None  # header | metadata | key
    agent: str | None = None  # main | sub | side
    kind: str = "message"  # message | probe | count_tokens
    attribution: Mapping[str, Any] | None = None
    attribution_found: bool = False
    key: str | None = None
    segments: Mapping[str, str] = field(default_factory=dict)
    stream: bool = False
    input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    expected_cached_tokens: int | None = None
    expected_source: str | None = None
    changed_segment: str | None = None
    cause: str | None = None
    cause_detail: str | None = None
    ttfb_ms: float | None = None
    total_ms: float | None = None
    error: str | None = None
    request_body: str | None = None
    response_text: str | None = None
    replica: str | None = None  # the replica's URL, when the upstream has several
    request_id: str | None = None  # hex, as in the x-prefixgate-request-id header
    # attribution metadata that came as request headers: {name: {"form", "fields"}}
    attribution_headers: Mapping[str, Any] | None = None
    # tools loaded through ToolSearch that the tool_loads step rewrote:
    # {"mode", "loaded": [names placed where referenced], "moved": [names moved in tools[]]}
    tool_loads: Mapping[str, Any] | None = None
    oracle_tokens: int | None = None
    runtime_expected_tokens: int | None = None
    lost_by_runtime: int | None = None
    lost_cause: str | None = None
    restored_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        """A record from ``to_dict`` output; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def matches(
    rec: AuditRecord,
    *,
    since: float | None = None,
    session: str | None = None,
    tenant: str | None = None,
) -> bool:
    """Whether ``rec`` passes the filters every sink's ``query`` takes."""
    return (
        (since is None or rec.time >= since)
        and (session is None or rec.session == session)
        and (tenant is None or rec.tenant == tenant)
    )


def notify(on_commit: OnCommit | None) -> None:
    """Call ``on_commit`` if given; an exception it raises is logged, not raised."""
    if on_commit is None:
        return
    try:
        on_commit()
    except Exception:
        log.exception("audit on_commit callback failed")


class AuditSink(Protocol):
    def record(self, rec: AuditRecord, on_commit: OnCommit | None = None) -> None:
        """Keep ``rec`` (replacing an earlier one with its ``request_id``), then ``on_commit()``."""
        ...

    def query(
        self,
        *,
        since: float | None = None,
        session: str | None = None,
        tenant: str | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]: ...

    def close(self) -> None: ...


class MemoryAudit:
    """Keeps the most recent records in memory, the latest one per ``request_id``."""

    def __init__(self, limit: int = 1000) -> None:
        self.records: deque[AuditRecord] = deque(maxlen=limit)
        self._lock = threading.Lock()
        # request_id -> the number of records appended before it (its sequence
        # number); its index in ``records`` is that less the ones gone from the left.
        self._seq: dict[str, int] = {}
        self._appended = 0

    def record(self, rec: AuditRecord, on_commit: OnCommit | None = None) -> None:
        self._keep(rec)
        notify(on_commit)

    def _keep(self, rec: AuditRecord) -> None:
        with self._lock:
            records = self.records
            gone = self._appended - len(records)  # left the deque from its left end
            rid = rec.request_id
            if rid is not None:
                seq = self._seq.get(rid)
                if seq is not None:
                    index = seq - gone
                    if 0 <= index < len(records) and records[index].request_id == rid:
                        records[index] = rec
                        return
                    del self._seq[rid]  # evicted, or the deque was changed by hand
            if records and len(records) == records.maxlen:  # the append evicts one
                evicted = records[0].request_id
                if evicted is not None and self._seq.get(evicted) == gone:
                    del self._seq[evicted]
            records.append(rec)
            if rid is not None:
                self._seq[rid] = self._appended
            self._appended += 1
            if records.maxlen is not None and len(self._seq) > 2 * records.maxlen:
                self._reindex()

    def _reindex(self) -> None:
        """Rebuild the request_id index from the deque (after it was changed by hand)."""
        gone = self._appended - len(self.records)
        self._seq = {
            r.request_id: gone + i for i, r in enumerate(self.records) if r.request_id is not None
        }

    def query(
        self,
        *,
        since: float | None = None,
        session: str | None = None,
        tenant: str | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        with self._lock:
            kept = list(self.records)
        found = [r for r in kept if matches(r, since=since, session=session, tenant=tenant)]
        return found[-limit:] if limit else found

    def close(self) -> None:
        pass


class JsonlAudit(MemoryAudit):
    """Appends each record as one JSON line to ``path`` (and keeps it in memory).

    The file is append-only: a record given again with the same ``request_id``
    (the completed one after the provisional one) is a second line, and readers
    keep the last line per ``request_id`` in the place of the first, as
    ``read_jsonl`` does. ``on_commit`` is called once the line is written and
    flushed. A write error, or a record after ``close``, is logged, not raised.
    """

    def __init__(self, path: str | Path, limit: int = 1000) -> None:
        super().__init__(limit)
        self.path = Path(path)
        self._file_lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8", buffering=1)

    def record(self, rec: AuditRecord, on_commit: OnCommit | None = None) -> None:
        self._keep(rec)
        try:
            line = rec.to_json() + "\n"
            with self._file_lock:
                if self._file.closed:
                    log.warning("audit record after close not written to %s", self.path)
                else:
                    self._file.write(line)
                    self._file.flush()
        except Exception:
            log.exception("audit record could not be written to %s", self.path)
        notify(on_commit)

    def close(self) -> None:
        with self._file_lock:
            self._file.close()


def read_jsonl(path: str | Path) -> list[AuditRecord]:
    """The records of a ``JsonlAudit`` file, oldest first, the last line per ``request_id``.

    A record given twice (same ``request_id``) is read as its last line, in
    the place of its first. Blank lines are skipped, and so are lines that are
    not a JSON object (a line cut short by a killed process), with a warning.
    """
    found: list[AuditRecord] = []
    where: dict[str, int] = {}
    for rec in _jsonl_lines(Path(path)):
        rid = rec.request_id
        if rid is not None and rid in where:
            found[where[rid]] = rec
            continue
        if rid is not None:
            where[rid] = len(found)
        found.append(rec)
    return found


def _jsonl_lines(path: Path) -> Iterator[AuditRecord]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                data = None
            try:
                if not isinstance(data, dict):
                    raise TypeError("not a JSON object")
                rec = AuditRecord.from_dict(data)
            except TypeError:
                log.warning("%s:%d: not an audit record; line skipped", path, number)
                continue
            yield rec
