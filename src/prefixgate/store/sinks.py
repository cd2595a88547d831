"""Which audit sink a path names: one rule for writing (``serve``) and reading (``report``).

``memory`` (or ``none``, or no path at all) keeps records in the gateway's own
memory only; a path ending in ``.jsonl`` is a ``JsonlAudit`` file; anything
else (``.db``, ``.sqlite``, no suffix) is a ``SqliteAudit`` database.

``open_audit`` opens the sink ``serve`` writes to (the dashboard and ``/report``
read through that same sink); ``read_audit`` reads an existing file back for
``prefixgate report``, whichever of the two file formats it is, with the
filters of ``AuditSink.query``. Both raise ``AuditLogError`` with a message a
person can act on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefixgate.store.audit import (
    AuditRecord,
    AuditSink,
    JsonlAudit,
    MemoryAudit,
    matches,
    read_jsonl,
)
from prefixgate.store.files import private_file
from prefixgate.store.sqlite import AuditDBError, SqliteAudit, read_records

#: Audit paths that mean "keep records in memory only" (compared in lower case).
IN_MEMORY = ("memory", "none")

SinkKind = Literal["memory", "jsonl", "sqlite"]


class AuditLogError(Exception):
    """An audit log that cannot be opened or read; the message says which and why."""


def sink_kind(path: str | Path | None) -> SinkKind:
    """``memory``, ``jsonl`` or ``sqlite``: what kind of sink ``path`` names."""
    if path is None or str(path) == "" or str(path).lower() in IN_MEMORY:
        return "memory"
    return "jsonl" if str(path).endswith(".jsonl") else "sqlite"


def open_audit(path: str | Path | None, *, capture_bodies: bool = False) -> AuditSink:
    """The sink for ``path``; the file and its missing folders are created owner-only.

    ``capture_bodies`` is the SQLite sink's (the others keep what they are given).
    """
    kind = sink_kind(path)
    if path is None or kind == "memory":
        return MemoryAudit()
    try:
        private_file(path)  # mode 0600, its new folders 0700 (store/files.py)
        if kind == "jsonl":
            return JsonlAudit(path)
        return SqliteAudit(path, capture_bodies=capture_bodies)
    except OSError as exc:
        raise AuditLogError(f"cannot open the audit log {path}: {exc.strerror}") from exc
    except AuditDBError as exc:
        raise AuditLogError(f"cannot open the audit log {path}: {exc}") from exc


def read_audit(
    path: str | Path,
    *,
    since: float | None = None,
    session: str | None = None,
    tenant: str | None = None,
    limit: int | None = None,
) -> list[AuditRecord]:
    """Records of an existing audit log (SQLite or JSON lines), oldest first, read-only.

    Filters as ``AuditSink.query``; with ``limit``, the newest ``limit``
    matching records (still oldest first). A record written twice (same
    ``request_id``) is read once, as its latest version, in the place of the first.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 (0 or None: no limit), got {limit}")
    kind = sink_kind(path)
    if kind == "memory":
        raise AuditLogError(
            f"the audit log {str(path)!r} is kept in the gateway's memory only, so "
            "nothing is left to read: serve with --audit FILE.db or FILE.jsonl"
        )
    file = Path(path).expanduser()
    if not file.exists():
        raise AuditLogError(f"{path}: no such audit log")
    if not file.is_file():
        raise AuditLogError(f"{path}: not a file")
    if kind == "sqlite":
        try:
            return read_records(file, since=since, session=session, tenant=tenant, limit=limit)
        except AuditDBError as exc:
            raise AuditLogError(str(exc)) from exc
    found = [
        r for r in _jsonl_records(file) if matches(r, since=since, session=session, tenant=tenant)
    ]
    return found[-limit:] if limit else found


def _jsonl_records(path: Path) -> list[AuditRecord]:
    """Every record of a ``JsonlAudit`` file; ``AuditLogError`` when none can be read."""
    try:
        records = read_jsonl(path)
        if records or not path.read_bytes().strip():
            return records
    except OSError as exc:
        raise AuditLogError(f"{path}: cannot read the audit log: {exc.strerror}") from exc
    raise AuditLogError(f"{path}: not a JSON-lines audit log (no line is an audit record)")


__all__ = ["IN_MEMORY", "AuditLogError", "open_audit", "read_audit", "sink_kind"]
