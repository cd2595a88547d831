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

``replica`` names which server of a replicated upstream answered (``None``
for an upstream with one server).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol


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


class AuditSink(Protocol):
    def record(self, rec: AuditRecord) -> None: ...

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
    """Keeps the most recent records in memory."""

    def __init__(self, limit: int = 1000) -> None:
        self.records: deque[AuditRecord] = deque(maxlen=limit)

    def record(self, rec: AuditRecord) -> None:
        self.records.append(rec)

    def query(
        self,
        *,
        since: float | None = None,
        session: str | None = None,
        tenant: str | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        found = [r for r in self.records if matches(r, since=since, session=session, tenant=tenant)]
        return found[-limit:] if limit else found

    def close(self) -> None:
        pass


class JsonlAudit(MemoryAudit):
    """Appends each record as one JSON line to ``path`` (and keeps it in memory)."""

    def __init__(self, path: str | Path, limit: int = 1000) -> None:
        super().__init__(limit)
        self._lock = threading.Lock()
        self._file = Path(path).open("a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def record(self, rec: AuditRecord) -> None:
        super().record(rec)
        with self._lock:
            self._file.write(rec.to_json() + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()
