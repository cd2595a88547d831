"""``SqliteAudit``: the audit sink that writes one SQLite row per request.

Design:

* ``record`` only puts the record on a ``queue.Queue``; one daemon writer
  thread owns the write connection, takes whatever is queued (up to
  ``BATCH_MAX``), inserts it and commits once per batch. Nothing on the
  response path waits for the disk, and a write error is logged on the
  ``prefixgate`` logger, never raised into the caller.
* ``record(rec, on_commit)``: the writer calls ``on_commit()`` right after the
  transaction holding ``rec`` is committed, so a caller that waits for it knows
  the row outlives the process (committed WAL frames survive a ``kill -9``;
  with ``synchronous=NORMAL`` the last transactions may still be lost to a
  power cut or an OS crash). A record that is dropped (after ``close``, on a
  full queue) or fails to insert is logged and its ``on_commit`` called all the
  same (the caller's thread for a drop), so no waiter hangs; an exception from
  ``on_commit`` is logged and never stops the writer.
* A record whose ``request_id`` is already in the table (the completed record
  after the provisional one) updates that row in place (an upsert on the unique
  ``request_id`` index), keeping its ``id`` and so its position.
* ``flush`` puts a marker on the queue and waits for the writer to commit the
  batch that holds it; ``close`` stops accepting, drains, commits, joins the
  thread and closes the connection. Records given before ``close`` are kept.
* ``query`` (and the module function ``read_records``, for the CLI report)
  reads through a short-lived read-only connection of its own, so it is safe
  from any thread and from another process while a gateway writes (WAL).
* The schema is versioned: ``PRAGMA user_version`` holds the version and
  ``MIGRATIONS`` lists the SQL that takes the database from one version to the
  next, applied forward on open, one transaction each. A database newer than
  this code is refused (``SchemaTooNewError``), never used as is.

Columns mirror ``AuditRecord`` field for field: scalars as INTEGER/REAL/TEXT,
``attribution``, ``attribution_headers``, ``tool_loads`` and ``segments`` as JSON
text, ``stream`` and ``attribution_found`` as 0/1, plus ``id INTEGER PRIMARY KEY`` (the order
records were first written in). ``request_body`` and ``response_text`` are stored
(as anything but NULL) only with ``capture_bodies=True``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import orjson

from prefixgate.store.audit import AuditRecord, OnCommit, notify

log = logging.getLogger("prefixgate")

#: ``PRAGMA application_id`` of a prefixgate audit database (ASCII ``PGAU``).
APPLICATION_ID: Final = 0x50474155

#: Largest number of records the writer inserts in one transaction.
BATCH_MAX: Final = 500

#: Records waiting for the writer beyond this many are dropped (and logged)
#: rather than held in memory without bound while the disk is stuck.
QUEUE_MAX: Final = 100_000

#: How long a connection waits on another one's write lock, in seconds.
BUSY_TIMEOUT_S: Final = 5.0

_V1: Final = (
    f"PRAGMA application_id = {APPLICATION_ID}",
    """
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        route TEXT NOT NULL,
        tenant TEXT NOT NULL,
        session TEXT,
        model TEXT,
        upstream TEXT,
        policy TEXT,
        status INTEGER NOT NULL,
        session_source TEXT,
        agent TEXT,
        kind TEXT NOT NULL DEFAULT 'message',
        attribution TEXT,
        attribution_found INTEGER NOT NULL DEFAULT 0,
        "key" TEXT,
        segments TEXT NOT NULL DEFAULT '{}',
        stream INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER,
        cache_read_input_tokens INTEGER,
        cache_creation_input_tokens INTEGER,
        output_tokens INTEGER,
        prompt_tokens INTEGER,
        cached_tokens INTEGER,
        expected_cached_tokens INTEGER,
        expected_source TEXT,
        changed_segment TEXT,
        cause TEXT,
        cause_detail TEXT,
        ttfb_ms REAL,
        total_ms REAL,
        error TEXT,
        request_body TEXT,
        response_text TEXT
    )
    """,
    "CREATE INDEX requests_tenant_time ON requests (tenant, time)",
    "CREATE INDEX requests_session ON requests (session)",
    "CREATE INDEX requests_time ON requests (time)",
)

#: ``(version, statements)`` in order, starting at 1 with no gaps: the
#: statements take a database at ``version - 1`` to ``version``. Append, never
#: edit a shipped entry; a new ``AuditRecord`` field needs a migration that
#: adds its column.
_V2: Final = ("ALTER TABLE requests ADD COLUMN replica TEXT",)
# NULLs are distinct in a unique index: rows without a request_id never conflict.
_V3: Final = (
    "ALTER TABLE requests ADD COLUMN request_id TEXT",
    "CREATE UNIQUE INDEX requests_request_id ON requests (request_id)",
)

_V4: Final = ("ALTER TABLE requests ADD COLUMN attribution_headers TEXT",)

_V5: Final = ("ALTER TABLE requests ADD COLUMN tool_loads TEXT",)

# The oracle, the runtime model's expectation and what the runtime lost (core/oracle.py).
_V6: Final = (
    "ALTER TABLE requests ADD COLUMN oracle_tokens INTEGER",
    "ALTER TABLE requests ADD COLUMN runtime_expected_tokens INTEGER",
    "ALTER TABLE requests ADD COLUMN lost_by_runtime INTEGER",
    "ALTER TABLE requests ADD COLUMN lost_cause TEXT",
)

# The tokens a saved-prefix restore put in the runtime's slot for this request.
_V7: Final = ("ALTER TABLE requests ADD COLUMN restored_tokens INTEGER",)

MIGRATIONS: list[tuple[int, Sequence[str]]] = [
    (1, _V1),
    (2, _V2),
    (3, _V3),
    (4, _V4),
    (5, _V5),
    (6, _V6),
    (7, _V7),
]

_FIELDS: Final = tuple(f.name for f in fields(AuditRecord))
_COLUMNS: Final = ", ".join(f'"{name}"' for name in _FIELDS)
# An upsert: the same request_id again updates its row, which keeps its id.
_INSERT: Final = (
    f"INSERT INTO requests ({_COLUMNS}) VALUES ({', '.join('?' for _ in _FIELDS)})"
    " ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(f'"{name}" = excluded."{name}"' for name in _FIELDS if name != "request_id")
)
_JSON_FIELDS: Final = frozenset({"attribution", "segments", "attribution_headers", "tool_loads"})
_BOOL_FIELDS: Final = frozenset({"stream", "attribution_found"})
_BODY_FIELDS: Final = frozenset({"request_body", "response_text"})


class AuditDBError(Exception):
    """The file is missing, not a prefixgate audit database, or unusable."""


class SchemaTooNewError(AuditDBError):
    """The database was written by a newer prefixgate than this one."""


def schema_version() -> int:
    """The schema version this code writes: the last entry of ``MIGRATIONS``."""
    _check_migrations(MIGRATIONS)
    return MIGRATIONS[-1][0]


def _check_migrations(migrations: Sequence[tuple[int, Sequence[str]]]) -> None:
    versions = [version for version, _ in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise AssertionError(f"MIGRATIONS must be numbered 1, 2, 3, ... in order, got {versions}")


def _too_new(path: Path, version: int, known: int) -> SchemaTooNewError:
    return SchemaTooNewError(
        f"{path}: audit database schema version {version} is newer than this "
        f"prefixgate knows (versions 1 to {known}); upgrade prefixgate or use another file"
    )


def _pragma_int(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute(f"PRAGMA {name}").fetchone()
    return int(row[0])


def _has_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchone()
    return int(row[0]) > 0


def _prepare(conn: sqlite3.Connection, path: Path) -> int:
    """Check ``conn`` (autocommit mode) is ours, switch it to WAL, migrate it; the version.

    The checks come first, so a file that is not ours is refused untouched.
    """
    _check_migrations(MIGRATIONS)
    latest = MIGRATIONS[-1][0]
    app_id = _pragma_int(conn, "application_id")
    if app_id not in (0, APPLICATION_ID):
        raise AuditDBError(f"{path}: not a prefixgate audit database (application_id {app_id})")
    version = _pragma_int(conn, "user_version")
    if version > latest:
        raise _too_new(path, version, latest)
    if version == 0 and _has_tables(conn):
        raise AuditDBError(
            f"{path}: an SQLite database with tables but no schema version; "
            "not a prefixgate audit database"
        )
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise AuditDBError(f"{path}: cannot use WAL journal mode (got {mode!r})")
    conn.execute("PRAGMA synchronous=NORMAL")
    for target, statements in MIGRATIONS:
        if target <= version:
            continue
        # BEGIN IMMEDIATE takes the write lock first, so two processes opening
        # the same new file cannot both apply the same step.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _pragma_int(conn, "user_version")
            if version < target:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
                version = target
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    return version


def _to_row(rec: AuditRecord, capture_bodies: bool) -> tuple[Any, ...]:
    row: list[Any] = []
    for name in _FIELDS:
        value = getattr(rec, name)
        if name in _BODY_FIELDS and not capture_bodies:
            value = None
        elif name in _JSON_FIELDS and value is not None:
            value = _json_text(dict(value) if isinstance(value, Mapping) else value)
        elif name in _BOOL_FIELDS:
            value = 1 if value else 0
        row.append(value)
    return tuple(row)


def _json_text(value: Any) -> str:
    """``value`` as compact JSON text: orjson's, the standard library's for what
    orjson refuses (keys that are not strings, a lone surrogate, odd types)."""
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _from_row(row: Sequence[Any]) -> AuditRecord:
    data: dict[str, Any] = {}
    for name, value in zip(_FIELDS, row, strict=True):
        if name in _JSON_FIELDS and value is not None:
            value = json.loads(value)
        elif name in _BOOL_FIELDS:
            value = bool(value)
        data[name] = value
    return AuditRecord(**data)


def _select(
    conn: sqlite3.Connection,
    *,
    since: float | None,
    session: str | None,
    tenant: str | None,
    limit: int | None,
) -> list[AuditRecord]:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 (0 or None: no limit), got {limit}")
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append("time >= ?")
        args.append(since)
    if session is not None:
        where.append("session = ?")
        args.append(session)
    if tenant is not None:
        where.append("tenant = ?")
        args.append(tenant)
    sql = f"SELECT id, {_COLUMNS} FROM requests"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if limit:
        sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) ORDER BY id"
        args.append(limit)
    else:
        sql += " ORDER BY id"
    return [_from_row(row[1:]) for row in conn.execute(sql, args)]


@contextlib.contextmanager
def _reader(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to an existing prefixgate audit database."""
    if not path.is_file():
        raise AuditDBError(f"{path}: no such audit database")
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise AuditDBError(f"{path}: cannot open audit database: {exc}") from exc
    try:
        try:
            app_id = _pragma_int(conn, "application_id")
            version = _pragma_int(conn, "user_version")
            has_requests = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'requests'"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise AuditDBError(f"{path}: not a prefixgate audit database ({exc})") from exc
        if app_id not in (0, APPLICATION_ID) or version < 1 or has_requests is None:
            raise AuditDBError(f"{path}: not a prefixgate audit database")
        latest = schema_version()
        if version > latest:
            raise _too_new(path, version, latest)
        if version < latest:
            raise AuditDBError(
                f"{path}: audit database schema version {version} is older than "
                f"this prefixgate's ({latest}); open it once with the gateway to upgrade it"
            )
        yield conn
    finally:
        conn.close()


def read_records(
    path: str | Path,
    *,
    since: float | None = None,
    session: str | None = None,
    tenant: str | None = None,
    limit: int | None = None,
) -> list[AuditRecord]:
    """Records from an existing audit database, oldest first, without writing to it.

    Filters as ``AuditSink.query``; with ``limit``, the newest ``limit``
    matching records (still oldest first). Raises ``AuditDBError`` when the
    file does not exist or is not a prefixgate audit database of this schema
    version (``SchemaTooNewError`` when it is newer).
    """
    with _reader(Path(path)) as conn:
        return _select(conn, since=since, session=session, tenant=tenant, limit=limit)


class _Flush:
    """A queue marker: set once every record queued before it is committed."""

    def __init__(self) -> None:
        self.done = threading.Event()


@dataclass(frozen=True, slots=True)
class _Pending:
    """A queued record and what to call once it is committed (or lost)."""

    rec: AuditRecord
    on_commit: OnCommit | None


_STOP: Final = object()


class SqliteAudit:
    """Audit sink writing one row per request to an SQLite file, off the caller's thread."""

    def __init__(self, path: str | Path, *, capture_bodies: bool = False) -> None:
        self.path = Path(path)
        self.capture_bodies = capture_bodies
        #: Records lost: dropped after close or on a full queue, or failed to insert.
        self.dropped = 0
        # Unbounded, so the flush and stop markers never wait; ``record`` bounds it.
        self._queue: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._conn = self._open()
        self._thread = threading.Thread(
            target=self._run, name=f"prefixgate-audit:{self.path.name}", daemon=True
        )
        self._thread.start()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            _prepare(conn, self.path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise AuditDBError(f"{self.path}: cannot use as an audit database: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    # -- the caller's side -------------------------------------------------

    def record(self, rec: AuditRecord, on_commit: OnCommit | None = None) -> None:
        """Queue ``rec`` for the writer thread; never blocks, never raises.

        ``on_commit()`` is called from the writer thread once the transaction
        holding ``rec`` is committed, or once it failed to insert; at once, in
        this thread, when ``rec`` is dropped (after ``close``, queue full).
        """
        with self._lock:
            if self._closed:
                self._drop(f"audit record after close dropped ({self.path})")
            elif self._queue.qsize() >= QUEUE_MAX:
                self._drop(f"audit queue full ({QUEUE_MAX}); record dropped ({self.path})")
            else:
                self._queue.put_nowait(_Pending(rec, on_commit))
                return
        notify(on_commit)

    def _drop(self, message: str) -> None:
        """Count one dropped record (caller holds the lock); log the first and every 1000th."""
        self.dropped += 1
        if self.dropped % 1000 == 1:
            log.warning("%s; %d dropped so far", message, self.dropped)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record given so far is committed.

        Raises ``TimeoutError`` when that takes longer than ``timeout`` seconds.
        Returns at once after ``close`` (which commits everything).
        """
        marker = _Flush()
        with self._lock:
            if self._closed:
                return
            self._queue.put(marker)
        if not marker.done.wait(timeout):
            raise TimeoutError(f"audit records not committed to {self.path} within {timeout}s")

    def close(self) -> None:
        """Stop accepting records, commit the ones queued, stop the writer; idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join()

    def query(
        self,
        *,
        since: float | None = None,
        session: str | None = None,
        tenant: str | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        """Committed records, oldest first (see ``read_records``); any thread may call it.

        Records still queued are not seen: ``flush`` first to read your own writes.
        """
        return read_records(self.path, since=since, session=session, tenant=tenant, limit=limit)

    def __enter__(self) -> SqliteAudit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the writer thread -------------------------------------------------

    def _run(self) -> None:
        try:
            stop = False
            while not stop:
                batch = [self._queue.get()]
                while len(batch) < BATCH_MAX:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                pending = [item for item in batch if isinstance(item, _Pending)]
                try:
                    if pending:
                        self._write([item.rec for item in pending])
                finally:
                    # After the commit (or the failure, already logged and counted).
                    for waiting in pending:
                        notify(waiting.on_commit)
                for item in batch:
                    if isinstance(item, _Flush):
                        item.done.set()
                    elif item is _STOP:
                        stop = True
        finally:
            self._conn.close()
            # Anyone still waiting (only if the loop died) must not hang forever,
            # and later records are dropped (and notified) at once.
            with self._lock:
                self._closed = True
            lost = 0
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Flush):
                    item.done.set()
                elif isinstance(item, _Pending):
                    lost += 1
                    notify(item.on_commit)
            if lost:
                with self._lock:
                    self.dropped += lost
                log.error("audit writer for %s stopped; %d queued records lost", self.path, lost)

    def _write(self, records: list[AuditRecord]) -> None:
        rows: list[tuple[Any, ...]] = []
        for rec in records:
            try:
                rows.append(_to_row(rec, self.capture_bodies))
            except Exception:
                log.exception("audit record cannot be stored; dropped (%s)", self.path)
                with self._lock:
                    self.dropped += 1
        if not rows:
            return
        try:
            self._insert(rows)
            return
        except Exception as exc:
            batch_error = exc
        # One bad row must not cost the others: retry them one by one.
        failed = 0
        first_error: Exception = batch_error
        for row in rows:
            try:
                self._insert([row])
            except Exception as exc:
                if failed == 0:
                    first_error = exc
                failed += 1
        if failed:
            with self._lock:
                self.dropped += failed
            log.error(
                "audit write to %s failed; %d of %d records dropped: %s: %s",
                self.path,
                failed,
                len(rows),
                type(first_error).__name__,
                first_error,
            )

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self._conn
        if len(rows) == 1:  # one statement is a transaction of its own (autocommit)
            conn.execute(_INSERT, rows[0])
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise


def connect_readonly(path: str | Path) -> contextlib.AbstractContextManager[sqlite3.Connection]:
    """A read-only connection to an existing, current audit database (closed on exit).

    For callers that want their own SQL (aggregates in the report); raises as
    ``read_records`` does.
    """
    return _reader(Path(path))


__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "AuditDBError",
    "SchemaTooNewError",
    "SqliteAudit",
    "connect_readonly",
    "read_records",
    "schema_version",
]
