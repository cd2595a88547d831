"""Tests for the SQLite audit sink: schema, migrations, the writer thread, reads."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from prefixgate.store import sqlite as store
from prefixgate.store.audit import AuditRecord, AuditSink
from prefixgate.store.sqlite import (
    APPLICATION_ID,
    AuditDBError,
    SchemaTooNewError,
    SqliteAudit,
    connect_readonly,
    read_records,
    schema_version,
)


def rec(n: int = 0, **changes: Any) -> AuditRecord:
    base = AuditRecord(
        time=1_700_000_000.0 + n,
        route="/v1/messages",
        tenant="t1",
        session=f"s{n % 3}",
        model="claude",
        upstream="local",
        policy="strip",
        status=200,
    )
    return dataclasses.replace(base, **changes)


FULL = AuditRecord(
    time=1_712_345_678.123456,
    route="/v1/messages",
    tenant="équipe-日本",
    session="sess-😀",
    model="claude-sonnet-4",
    upstream="llama",
    policy="strip",
    status=529,
    session_source="header",
    agent="sub",
    kind="probe",
    attribution={"cch": "abc", "n": 3, "nested": {"ok": True, "none": None}, "l": [1, 2.5]},
    attribution_found=True,
    key="k" * 64,
    segments={"system[0]": "h1", "tools:Bash": "h2", "messages[0]": "ünï"},
    stream=True,
    input_tokens=12,
    cache_read_input_tokens=0,
    cache_creation_input_tokens=2**40,
    output_tokens=7,
    prompt_tokens=1234,
    cached_tokens=1000,
    expected_cached_tokens=1200,
    expected_source="tokenizer",
    changed_segment="system[2]",
    cause="attribution",
    cause_detail="line 3: 'x-anthropic-billing-header' — changed\nsecond line",
    ttfb_ms=12.5,
    total_ms=0.1 + 0.2,
    replica="http://[::1]:8081",
    error="upstream said: «no»",
    request_body='{"messages":[{"role":"user","content":"héllo\\u0000"}]}',
    response_text="réponse\x00with nul",
    attribution_headers={"x-anthropic-billing-header": {"form": "json", "fields": {"a": True}}},
    restored_tokens=4929,
)

SPARSE = AuditRecord(
    time=0.0,
    route="",
    tenant="",
    session=None,
    model=None,
    upstream=None,
    policy=None,
    status=0,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def sink(db: Path) -> Iterator[SqliteAudit]:
    audit = SqliteAudit(db)
    yield audit
    audit.close()


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def count(path: Path) -> int:
    with raw(path) as conn:
        return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])


def columns(path: Path) -> list[str]:
    with raw(path) as conn:
        return [str(row[1]) for row in conn.execute("PRAGMA table_info(requests)")]


# -- schema ------------------------------------------------------------------


def test_is_an_audit_sink(sink: SqliteAudit) -> None:
    assert isinstance(sink, SqliteAudit)
    as_sink: AuditSink = sink
    assert as_sink.query() == []


def test_new_database_has_latest_schema_wal_and_id(sink: SqliteAudit, db: Path) -> None:
    with raw(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_version() == 7
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        indexes = {
            row[0]: row[1]
            for row in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
        }
    assert "(tenant, time)" in indexes["requests_tenant_time"]
    assert "(session)" in indexes["requests_session"]
    assert "UNIQUE INDEX" in indexes["requests_request_id"]
    assert "(request_id)" in indexes["requests_request_id"]


def test_one_column_per_record_field(sink: SqliteAudit, db: Path) -> None:
    """A new AuditRecord field needs a migration adding its column (this fails until then)."""
    assert columns(db) == ["id", *(f.name for f in dataclasses.fields(AuditRecord))]


def test_column_types(sink: SqliteAudit, db: Path) -> None:
    sink.record(FULL)
    sink.flush(10)
    with raw(db) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT *, typeof(time) AS t_time FROM requests").fetchone()
    assert row["id"] == 1
    assert row["t_time"] == "real"
    assert row["stream"] == 1 and row["attribution_found"] == 1
    assert isinstance(row["status"], int) and isinstance(row["ttfb_ms"], float)
    assert isinstance(row["attribution"], str) and row["attribution"].startswith("{")
    assert isinstance(row["segments"], str) and "ünï" in row["segments"]


def test_reopen_keeps_rows_and_version(db: Path) -> None:
    with SqliteAudit(db) as audit:
        audit.record(rec(1))
    with SqliteAudit(db) as audit:
        audit.record(rec(2))
    assert [r.time for r in read_records(db)] == [rec(1).time, rec(2).time]
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_version()


# -- migrations ---------------------------------------------------------------

# What an older prefixgate wrote as version 1: no session_source, agent, kind.
OLD_V1 = (
    """CREATE TABLE requests (
        id INTEGER PRIMARY KEY, time REAL NOT NULL, route TEXT NOT NULL,
        tenant TEXT NOT NULL, session TEXT, model TEXT, upstream TEXT, policy TEXT,
        status INTEGER NOT NULL, attribution TEXT,
        attribution_found INTEGER NOT NULL DEFAULT 0, "key" TEXT,
        segments TEXT NOT NULL DEFAULT '{}', stream INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER, cache_read_input_tokens INTEGER,
        cache_creation_input_tokens INTEGER, output_tokens INTEGER,
        prompt_tokens INTEGER, cached_tokens INTEGER, expected_cached_tokens INTEGER,
        expected_source TEXT, changed_segment TEXT, cause TEXT, cause_detail TEXT,
        ttfb_ms REAL, total_ms REAL, error TEXT, request_body TEXT, response_text TEXT
    )""",
    "CREATE INDEX requests_tenant_time ON requests (tenant, time)",
    "CREATE INDEX requests_session ON requests (session)",
)
V2 = (
    "ALTER TABLE requests ADD COLUMN session_source TEXT",
    "ALTER TABLE requests ADD COLUMN agent TEXT",
    "ALTER TABLE requests ADD COLUMN kind TEXT NOT NULL DEFAULT 'message'",
)


def make_old_db(path: Path) -> None:
    with raw(path) as conn:
        for statement in OLD_V1:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO requests (time, route, tenant, session, status, segments, stream)"
            " VALUES (1.5, '/v1/messages', 'old', 'sess', 200, '{\"system[0]\":\"h\"}', 1)"
        )
        conn.execute("PRAGMA user_version = 1")


def test_migrates_forward_and_keeps_old_rows(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_old_db(db)
    monkeypatch.setattr(
        store,
        "MIGRATIONS",
        [
            (1, OLD_V1),
            (2, V2),
            (3, store._V2),
            (4, store._V3),
            (5, store._V4),
            (6, store._V5),
            (7, store._V6),
            (8, store._V7),
        ],
    )
    assert schema_version() == 8
    with SqliteAudit(db) as audit:
        audit.record(rec(5, agent="main"))
        audit.flush(10)
        got = audit.query()
    assert got == [
        AuditRecord(
            time=1.5,
            route="/v1/messages",
            tenant="old",
            session="sess",
            model=None,
            upstream=None,
            policy=None,
            status=200,
            segments={"system[0]": "h"},
            stream=True,
        ),
        rec(5, agent="main"),
    ]
    assert got[0].kind == "message"
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 8
    assert set(columns(db)) == {"id", *(f.name for f in dataclasses.fields(AuditRecord))}


def test_version_1_database_gains_the_replica_column(db: Path) -> None:
    with raw(db) as conn:
        for statement in store._V1:
            conn.execute(statement)
        conn.execute("INSERT INTO requests (time, route, tenant, status) VALUES (1, '/', 't', 200)")
        conn.execute("PRAGMA user_version = 1")
    with SqliteAudit(db) as audit:
        audit.record(rec(2, replica="http://10.0.0.2:8080"))
    old, new = read_records(db)
    assert old.replica is None
    assert new.replica == "http://10.0.0.2:8080"
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_version()


def test_version_4_database_gains_the_tool_loads_column(db: Path) -> None:
    with SqliteAudit(db) as audit:
        audit.record(rec(1))
    with raw(db) as conn:  # back to version 4: the columns did not exist then
        for column in ("tool_loads", *ORACLE_COLUMNS, "restored_tokens"):
            conn.execute(f"ALTER TABLE requests DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 4")
    loads = {"mode": "inline", "loaded": ["WebFetch"], "moved": ["WebFetch"]}
    with SqliteAudit(db) as audit:
        audit.record(rec(2, tool_loads=loads))
    old, new = read_records(db)
    assert old.tool_loads is None
    assert new.tool_loads == loads
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_version() == 7


ORACLE_COLUMNS = ("oracle_tokens", "runtime_expected_tokens", "lost_by_runtime", "lost_cause")


def test_version_5_database_gains_the_oracle_columns(db: Path) -> None:
    with SqliteAudit(db) as audit:
        audit.record(rec(1, expected_cached_tokens=10))
    with raw(db) as conn:  # back to version 5: the columns did not exist then
        for column in (*ORACLE_COLUMNS, "restored_tokens"):
            conn.execute(f"ALTER TABLE requests DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 5")
    with pytest.raises(AuditDBError, match="version 5 is older"):
        read_records(db)
    reached = {
        "oracle_tokens": 900,
        "runtime_expected_tokens": 700,
        "lost_by_runtime": 700,
        "lost_cause": "evicted",
    }
    with SqliteAudit(db) as audit:
        audit.record(rec(2, **reached))
    old, new = read_records(db)
    assert old.expected_cached_tokens == 10
    assert (old.oracle_tokens, old.runtime_expected_tokens, old.lost_by_runtime) == (None,) * 3
    assert old.lost_cause is None
    assert new == rec(2, **reached)
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_version() == 7


def test_version_6_database_gains_the_restored_tokens_column(db: Path) -> None:
    with SqliteAudit(db) as audit:
        audit.record(rec(1, oracle_tokens=900))
    with raw(db) as conn:  # back to version 6: the column did not exist then
        conn.execute("ALTER TABLE requests DROP COLUMN restored_tokens")
        conn.execute("PRAGMA user_version = 6")
    with pytest.raises(AuditDBError, match="version 6 is older"):
        read_records(db)
    with SqliteAudit(db) as audit:
        audit.record(rec(2, restored_tokens=4929))
        audit.record(rec(3, restored_tokens=0))
    old, new, zero = read_records(db)
    assert (old.oracle_tokens, old.restored_tokens) == (900, None)
    assert new == rec(2, restored_tokens=4929)
    assert zero.restored_tokens == 0  # a known zero stays a zero, not unknown
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_version() == 7


def make_v2_db(path: Path) -> None:
    """A database as the previous prefixgate left it: schema version 2, two rows."""
    with raw(path) as conn:
        for statement in (*store._V1, *store._V2):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO requests (time, route, tenant, status, replica)"
            " VALUES (1, '/v1/messages', 't', 200, 'http://a')"
        )
        conn.execute("INSERT INTO requests (time, route, tenant, status) VALUES (2, '/', 't', 500)")
        conn.execute("PRAGMA user_version = 2")


def test_version_2_database_gains_request_id_and_its_unique_index(db: Path) -> None:
    make_v2_db(db)
    with pytest.raises(AuditDBError, match="version 2 is older"):
        read_records(db)
    with SqliteAudit(db) as audit:
        audit.record(rec(3, request_id="r1"))
        audit.record(rec(4))
        audit.record(rec(3, request_id="r1", expected_cached_tokens=7))
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_version()
        index = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'requests_request_id'"
        ).fetchone()[0]
        ids = [row[0] for row in conn.execute("SELECT id FROM requests ORDER BY id")]
    assert "UNIQUE" in index
    assert ids == [1, 2, 3, 4]
    assert "request_id" in columns(db)
    first, second, third, fourth = read_records(db)
    assert (first.time, first.replica, first.request_id) == (1.0, "http://a", None)
    assert (second.status, second.request_id) == (500, None)
    assert third == rec(3, request_id="r1", expected_cached_tokens=7)
    assert fourth == rec(4)
    with SqliteAudit(db) as audit:  # opening it again changes nothing
        assert len(audit.query()) == 4


def test_migrates_from_empty_through_every_step(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        store,
        "MIGRATIONS",
        [
            (1, OLD_V1),
            (2, V2),
            (3, store._V2),
            (4, store._V3),
            (5, store._V4),
            (6, store._V5),
            (7, store._V6),
            (8, store._V7),
        ],
    )
    with SqliteAudit(db) as audit:
        audit.record(FULL)
    assert read_records(db) == [dataclasses.replace(FULL, request_body=None, response_text=None)]


def test_failed_migration_rolls_back_that_step(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_old_db(db)
    broken = (V2[0], "ALTER TABLE no_such_table ADD COLUMN x TEXT")
    monkeypatch.setattr(store, "MIGRATIONS", [(1, OLD_V1), (2, broken)])
    with pytest.raises(AuditDBError, match="no_such_table"):
        SqliteAudit(db)
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "session_source" not in columns(db)
    assert count(db) == 1


def test_refuses_newer_schema(db: Path) -> None:
    with SqliteAudit(db):
        pass
    with raw(db) as conn:
        conn.execute("PRAGMA user_version = 8")
    with pytest.raises(SchemaTooNewError, match=r"version 8 .*versions 1 to 7"):
        SqliteAudit(db)
    with pytest.raises(SchemaTooNewError, match="version 8"):
        read_records(db)


def test_migrations_must_be_numbered_in_order(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "MIGRATIONS", [(1, OLD_V1), (3, V2)])
    with pytest.raises(AssertionError, match="numbered"):
        SqliteAudit(db)


def test_refuses_foreign_sqlite_database(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("CREATE TABLE requests (x)")
    with pytest.raises(AuditDBError, match="not a prefixgate audit database"):
        SqliteAudit(db)
    with pytest.raises(AuditDBError, match="not a prefixgate audit database"):
        read_records(db)
    with raw(db) as conn:  # left as it was
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_refuses_other_application_id(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("PRAGMA application_id = 42")
    with pytest.raises(AuditDBError, match="application_id 42"):
        SqliteAudit(db)


def test_refuses_a_file_that_is_not_sqlite(db: Path) -> None:
    db.write_bytes(b"not a database at all\n" * 100)
    with pytest.raises(AuditDBError, match="cannot use"):
        SqliteAudit(db)
    with pytest.raises(AuditDBError, match="not a prefixgate audit database"):
        read_records(db)


# -- writing ------------------------------------------------------------------


def test_round_trips_every_field(db: Path) -> None:
    with SqliteAudit(db, capture_bodies=True) as audit:
        audit.record(FULL)
        audit.record(SPARSE)
        audit.flush(10)
        assert audit.query() == [FULL, SPARSE]
    got = read_records(db)
    assert got == [FULL, SPARSE]
    for name in ("stream", "attribution_found"):
        assert type(getattr(got[0], name)) is bool
    assert got[1].attribution is None and got[1].segments == {}


def test_json_that_orjson_refuses_is_written_the_standard_way(db: Path) -> None:
    odd = rec(attribution={1: "integer key", "big": 2**70}, tool_loads={"mode": "inline"})
    with SqliteAudit(db) as audit:
        audit.record(odd)
    with raw(db) as conn:
        text = conn.execute("SELECT attribution, tool_loads FROM requests").fetchone()
    assert text == ('{"1":"integer key","big":1180591620717411303424}', '{"mode":"inline"}')


def test_bodies_are_null_unless_captured(db: Path) -> None:
    with SqliteAudit(db) as audit:
        audit.record(FULL)
    with raw(db) as conn:
        row = conn.execute("SELECT request_body, response_text FROM requests").fetchone()
    assert row == (None, None)
    assert read_records(db) == [dataclasses.replace(FULL, request_body=None, response_text=None)]


def test_close_loses_nothing(db: Path) -> None:
    audit = SqliteAudit(db)
    for n in range(1000):
        audit.record(rec(n))
    audit.close()
    assert count(db) == 1000
    with SqliteAudit(db) as reopened:
        assert len(reopened.query()) == 1000
    assert [r.time for r in read_records(db)] == [rec(n).time for n in range(1000)]


def test_close_is_idempotent_and_later_records_are_dropped(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = SqliteAudit(db)
    audit.record(rec(1))
    audit.close()
    audit.close()
    with caplog.at_level(logging.WARNING, logger="prefixgate"):
        audit.record(rec(2))
    audit.flush()
    assert "after close" in caplog.text
    assert audit.dropped == 1
    assert audit.query() == [rec(1)]


def test_records_from_many_threads_all_land(sink: SqliteAudit, db: Path) -> None:
    threads, per_thread = 8, 200
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        start.wait()
        for n in range(per_thread):
            sink.record(rec(n, tenant=f"tenant{t}"))

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    sink.flush(30)
    assert count(db) == threads * per_thread
    for t in range(threads):
        assert len(sink.query(tenant=f"tenant{t}")) == per_thread
    assert sink.dropped == 0


def test_record_does_not_wait_for_the_disk(sink: SqliteAudit, db: Path) -> None:
    """With another connection holding the write lock, ``record`` still returns at once."""
    with raw(db) as blocker:
        blocker.execute("BEGIN IMMEDIATE")
        began = time.monotonic()
        for n in range(50):
            sink.record(rec(n))
        assert time.monotonic() - began < 1.0
        with pytest.raises(TimeoutError):
            sink.flush(0.2)
        assert count(db) == 0  # nothing got past the lock
        blocker.execute("ROLLBACK")
    sink.flush(30)
    assert count(db) == 50


def test_a_full_queue_drops_and_logs_instead_of_growing(
    sink: SqliteAudit, db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(store, "QUEUE_MAX", 5)
    with caplog.at_level(logging.WARNING, logger="prefixgate"), raw(db) as blocker:
        blocker.execute("BEGIN IMMEDIATE")  # the writer is stuck on its first batch
        for n in range(20):
            sink.record(rec(n))
        blocker.execute("ROLLBACK")
    sink.flush(30)
    assert sink.dropped > 0
    assert count(db) + sink.dropped == 20
    assert "audit queue full" in caplog.text


def test_a_bad_record_is_logged_and_the_rest_of_its_batch_lands(
    sink: SqliteAudit, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = rec(1, tenant=cast(str, None))  # violates NOT NULL
    with caplog.at_level(logging.ERROR, logger="prefixgate"):
        for n in range(20):
            sink.record(bad if n == 10 else rec(n))
        sink.flush(30)
    assert times(sink.query()) == [n for n in range(20) if n != 10]
    assert sink.dropped == 1
    assert re.search(r"1 of \d+ records dropped", caplog.text)
    assert "NOT NULL" in caplog.text


def test_unserializable_values_are_stored_as_text(sink: SqliteAudit) -> None:
    sink.record(rec(1, attribution={"when": object, "raw": b"x"}))
    sink.flush(10)
    [got] = sink.query()
    assert got.attribution is not None
    assert got.attribution["raw"] == "b'x'"
    assert sink.dropped == 0


def test_flush_after_close_returns(db: Path) -> None:
    audit = SqliteAudit(db)
    audit.close()
    audit.flush(0)


# -- reading ------------------------------------------------------------------


@pytest.fixture
def filled(sink: SqliteAudit) -> SqliteAudit:
    for n in range(12):
        sink.record(rec(n, tenant="a" if n % 2 else "b"))
    sink.flush(10)
    return sink


def times(records: Sequence[AuditRecord]) -> list[int]:
    return [int(r.time - 1_700_000_000.0) for r in records]


def test_query_filters_and_order(filled: SqliteAudit) -> None:
    assert times(filled.query()) == list(range(12))
    assert times(filled.query(tenant="a")) == [1, 3, 5, 7, 9, 11]
    assert times(filled.query(session="s0")) == [0, 3, 6, 9]
    assert times(filled.query(session="s0", tenant="a")) == [3, 9]
    assert times(filled.query(since=1_700_000_008.0)) == [8, 9, 10, 11]
    assert times(filled.query(since=1_700_000_004.0, tenant="b", session="s0")) == [6]
    assert filled.query(session="nobody") == []


def test_query_limit_is_the_newest_oldest_first(filled: SqliteAudit) -> None:
    assert times(filled.query(limit=3)) == [9, 10, 11]
    assert times(filled.query(tenant="b", limit=2)) == [8, 10]
    assert times(filled.query(limit=100)) == list(range(12))
    assert times(filled.query(limit=0)) == list(range(12))  # as MemoryAudit: 0 is no limit
    with pytest.raises(ValueError, match="limit"):
        filled.query(limit=-1)


def test_query_orders_by_arrival_not_time(sink: SqliteAudit) -> None:
    sink.record(rec(5))
    sink.record(rec(1))
    sink.flush(10)
    assert times(sink.query()) == [5, 1]


def test_query_from_another_thread(filled: SqliteAudit) -> None:
    result: list[list[AuditRecord]] = []
    thread = threading.Thread(target=lambda: result.append(filled.query(tenant="a")))
    thread.start()
    thread.join()
    assert times(result[0]) == [1, 3, 5, 7, 9, 11]


def test_read_records_while_a_writer_is_open(filled: SqliteAudit, db: Path) -> None:
    assert times(read_records(db, tenant="b", limit=2)) == [8, 10]
    assert read_records(db, since=1_800_000_000.0) == []


def test_read_records_needs_an_existing_database(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(AuditDBError, match="no such audit database"):
        read_records(missing)
    assert not missing.exists()


def test_read_records_refuses_an_older_schema(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_old_db(db)
    monkeypatch.setattr(store, "MIGRATIONS", [(1, OLD_V1), (2, V2)])
    with pytest.raises(AuditDBError, match="version 1 is older"):
        read_records(db)


def test_connect_readonly_is_read_only(filled: SqliteAudit, db: Path) -> None:
    with connect_readonly(db) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 12
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM requests")


# -- one row per request_id ---------------------------------------------------


def row_ids(path: Path) -> list[tuple[int, str | None]]:
    with raw(path) as conn:
        return [
            (int(r[0]), r[1])
            for r in conn.execute("SELECT id, request_id FROM requests ORDER BY id")
        ]


def test_a_record_again_with_its_request_id_updates_its_row_in_place(
    sink: SqliteAudit, db: Path
) -> None:
    provisional = rec(1, request_id="aa01", cause="none")
    completed = rec(1, request_id="aa01", expected_cached_tokens=900, expected_source="estimate")
    sink.record(provisional)
    sink.record(rec(2, request_id="bb02"))
    sink.record(rec(3))
    sink.flush(10)
    assert sink.query()[0] == provisional
    sink.record(completed)
    sink.record(rec(4))
    sink.flush(10)
    assert row_ids(db) == [(1, "aa01"), (2, "bb02"), (3, None), (4, None)]
    got = sink.query()
    assert got == [completed, rec(2, request_id="bb02"), rec(3), rec(4)]
    assert got[0].cause is None  # every column is replaced, not only the new ones
    assert sink.dropped == 0


def test_both_records_of_a_request_in_one_batch_make_one_row(sink: SqliteAudit, db: Path) -> None:
    with raw(db) as blocker:
        blocker.execute("BEGIN IMMEDIATE")  # the writer waits, so all of them are one batch
        sink.record(rec(0))
        sink.record(rec(1, request_id="cc03"))
        sink.record(rec(2, request_id="dd04"))
        sink.record(rec(1, request_id="cc03", cached_tokens=5))
        blocker.execute("ROLLBACK")
    sink.flush(30)
    assert row_ids(db) == [(1, None), (2, "cc03"), (3, "dd04")]
    assert sink.query()[1] == rec(1, request_id="cc03", cached_tokens=5)


def test_records_without_a_request_id_are_always_new_rows(sink: SqliteAudit, db: Path) -> None:
    for _ in range(3):
        sink.record(rec(1))
    sink.flush(10)
    assert row_ids(db) == [(1, None), (2, None), (3, None)]


def test_a_request_id_from_an_earlier_run_is_updated_too(db: Path) -> None:
    with SqliteAudit(db) as audit:
        audit.record(rec(1, request_id="ee05"))
        audit.record(rec(2))
    with SqliteAudit(db) as audit:
        audit.record(rec(1, request_id="ee05", output_tokens=3))
    assert read_records(db) == [rec(1, request_id="ee05", output_tokens=3), rec(2)]


# -- on_commit ----------------------------------------------------------------


def test_on_commit_runs_once_the_row_is_readable_from_another_connection(
    sink: SqliteAudit, db: Path
) -> None:
    seen: list[list[AuditRecord]] = []
    threads: list[str] = []
    done = threading.Event()

    def committed() -> None:
        threads.append(threading.current_thread().name)
        seen.append(read_records(db))  # its own read-only connection
        done.set()

    sink.record(rec(1, request_id="ff06"), committed)
    assert done.wait(10)
    assert seen == [[rec(1, request_id="ff06")]]
    assert threads == [sink._thread.name]  # the writer thread
    assert read_records(db) == [rec(1, request_id="ff06")]


def test_on_commit_is_called_once_per_record_in_order(sink: SqliteAudit, db: Path) -> None:
    called: list[int] = []
    rows_then: list[int] = []
    lock = threading.Lock()

    def committed(n: int) -> None:
        with lock:
            called.append(n)
            rows_then.append(count(db))

    for n in range(300):
        sink.record(rec(n, request_id=f"{n:04x}"), lambda n=n: committed(n))
        if n == 150:
            sink.record(rec(n, request_id=f"{n:04x}", cached_tokens=1), lambda: committed(-1))
    sink.flush(30)
    assert called == [*range(151), -1, *range(151, 300)]
    # Each record's row (and the ones before it) was there when its callback ran.
    needed = [151 if n == -1 else n + 1 for n in called]
    assert all(then >= need for then, need in zip(rows_then, needed, strict=True))
    assert count(db) == 300


async def test_on_commit_resolves_an_asyncio_future(sink: SqliteAudit, db: Path) -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    sink.record(
        rec(1, request_id="0a0a"), lambda: loop.call_soon_threadsafe(future.set_result, None)
    )
    await asyncio.wait_for(future, 10)
    assert read_records(db) == [rec(1, request_id="0a0a")]


def test_on_commit_is_called_for_a_record_dropped_after_close(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = SqliteAudit(db)
    audit.close()
    called: list[str] = []
    with caplog.at_level(logging.WARNING, logger="prefixgate"):
        audit.record(rec(1), lambda: called.append(threading.current_thread().name))
    assert called == [threading.current_thread().name]  # at once, in the caller's thread
    assert "after close" in caplog.text
    assert audit.dropped == 1


def test_on_commit_is_called_for_a_record_dropped_on_a_full_queue(
    sink: SqliteAudit, db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(store, "QUEUE_MAX", 2)
    called: list[int] = []
    with caplog.at_level(logging.WARNING, logger="prefixgate"), raw(db) as blocker:
        blocker.execute("BEGIN IMMEDIATE")
        for n in range(10):
            sink.record(rec(n), lambda n=n: called.append(n))
        dropped_at_once = list(called)
        blocker.execute("ROLLBACK")
    sink.flush(30)
    assert dropped_at_once  # called before the writer could commit anything
    assert sorted(called) == list(range(10))
    assert count(db) + sink.dropped == 10
    assert "audit queue full" in caplog.text


def test_on_commit_is_called_for_a_record_that_fails_to_insert(
    sink: SqliteAudit, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = rec(1, tenant=cast(str, None))  # violates NOT NULL
    called: list[str] = []
    with caplog.at_level(logging.ERROR, logger="prefixgate"):
        sink.record(bad, lambda: called.append("bad"))
        sink.record(rec(2), lambda: called.append("good"))
        sink.flush(30)
    assert called == ["bad", "good"]
    assert sink.dropped == 1
    assert "NOT NULL" in caplog.text


def test_on_commit_is_called_for_a_record_that_cannot_be_stored(
    sink: SqliteAudit, caplog: pytest.LogCaptureFixture
) -> None:
    circular: dict[str, Any] = {}
    circular["self"] = circular  # json.dumps refuses it, before any SQL
    unstorable = rec(1, attribution=circular)
    called: list[str] = []
    with caplog.at_level(logging.ERROR, logger="prefixgate"):
        sink.record(unstorable, lambda: called.append("bad"))
        sink.flush(30)
    assert called == ["bad"]
    assert sink.dropped == 1
    assert sink.query() == []


def test_an_on_commit_that_raises_is_logged_and_the_writer_goes_on(
    sink: SqliteAudit, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("callback broke")

    called: list[int] = []
    with caplog.at_level(logging.ERROR, logger="prefixgate"):
        sink.record(rec(1), broken)
        sink.record(rec(2), lambda: called.append(2))
        sink.flush(10)
        sink.record(rec(3), lambda: called.append(3))
        sink.flush(10)
    assert called == [2, 3]
    assert times(sink.query()) == [1, 2, 3]
    assert "on_commit" in caplog.text and "callback broke" in caplog.text
    assert sink._thread.is_alive()
    assert sink.dropped == 0


def test_close_calls_on_commit_for_everything_queued(db: Path) -> None:
    audit = SqliteAudit(db)
    called: list[int] = []
    for n in range(1000):
        audit.record(rec(n), lambda n=n: called.append(n))
    audit.close()
    assert called == list(range(1000))
    assert count(db) == 1000
