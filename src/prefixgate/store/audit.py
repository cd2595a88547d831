"""The audit record: one per request, with what was found, changed and measured.

Sinks are small: ``MemoryAudit`` keeps the latest records (tests, the process's
own view) and ``JsonlAudit`` appends one JSON line per request to a file. No
prompt or answer text is ever written, only hashes, fields and counts.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
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
    attribution: Mapping[str, Any] | None = None
    attribution_found: bool = False
    key: str | None = None
    segments: Mapping[str, str] = field(default_factory=dict)
    stream: bool = False
    input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    output_tokens: int | None = None
    ttfb_ms: float | None = None
    total_ms: float | None = None
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)


class AuditSink(Protocol):
    def record(self, rec: AuditRecord) -> None: ...

    def close(self) -> None: ...


class MemoryAudit:
    """Keeps the most recent records in memory."""

    def __init__(self, limit: int = 1000) -> None:
        self.records: deque[AuditRecord] = deque(maxlen=limit)

    def record(self, rec: AuditRecord) -> None:
        self.records.append(rec)

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
