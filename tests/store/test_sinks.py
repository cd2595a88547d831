"""open_audit and read_audit: one rule, from a path, for serve, report and the dashboard."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest

from prefixgate.store import sinks
from prefixgate.store.audit import AuditRecord, AuditSink, JsonlAudit, MemoryAudit
from prefixgate.store.sinks import AuditLogError, open_audit, read_audit, sink_kind
from prefixgate.store.sqlite import SqliteAudit


def rec(n: int = 0, **changes: Any) -> AuditRecord:
    base = AuditRecord(
        time=1_700_000_000.0 + n,
        route="/v1/messages",
        tenant=f"t{n % 2}",
        session=f"s{n % 3}",
        model="claude",
        upstream="local",
        policy="strip",
        status=200,
        segments={"system[0]": "h1", "tools:Bash": "h2"},
        attribution={"cc_version": "2.1.332"},
        prompt_tokens=1000 + n,
        cached_tokens=900,
        ttfb_ms=12.5,
    )
    return dataclasses.replace(base, **changes)


RECORDS = [
    rec(1, request_id="aa01"),
    rec(2),
    rec(3, request_id="aa03"),
    rec(1, request_id="aa01", expected_cached_tokens=950, cause="none"),  # completes the first
    rec(4, request_id="aa04", status=502, error="upstream said no"),
    rec(5, request_id="aa05"),
]


def write(path: Path, records: list[AuditRecord]) -> Path:
    sink = open_audit(path)
    for r in records:
        sink.record(r)
    sink.close()
    return path


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        (None, "memory"),
        ("", "memory"),
        ("memory", "memory"),
        ("MEMORY", "memory"),
        ("none", "memory"),
        ("audit.jsonl", "jsonl"),
        (Path("logs/audit.jsonl"), "jsonl"),
        ("audit.db", "sqlite"),
        ("audit.sqlite", "sqlite"),
        ("audit", "sqlite"),
        ("audit.JSONL", "sqlite"),  # the suffix test serve has always made
    ],
)
def test_sink_kind_is_the_rule_serve_uses(path: str | Path | None, kind: str) -> None:
    assert sink_kind(path) == kind


def test_open_audit_returns_the_sink_the_path_names(tmp_path: Path) -> None:
    assert type(open_audit(None)) is MemoryAudit
    assert type(open_audit("memory")) is MemoryAudit
    jsonl = open_audit(tmp_path / "audit.jsonl")
    assert isinstance(jsonl, JsonlAudit)
    jsonl.close()
    db = open_audit(tmp_path / "new" / "dir" / "audit.db", capture_bodies=True)
    assert isinstance(db, SqliteAudit) and db.capture_bodies
    db.close()
    assert (tmp_path / "new" / "dir" / "audit.db").is_file()


def test_open_audit_errors_say_which_log_and_why(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    under_a_file = tmp_path / "a-file" / "audit.jsonl"  # no folder can be made there
    with pytest.raises(AuditLogError, match=f"cannot open the audit log {under_a_file}: "):
        open_audit(under_a_file)
    text = tmp_path / "notes.db"
    text.write_text("not a database\n" * 200, encoding="utf-8")
    with pytest.raises(AuditLogError, match=f"cannot open the audit log {text}: "):
        open_audit(text)


@pytest.mark.parametrize("name", ["audit.db", "audit.jsonl"])
def test_read_audit_gives_the_latest_record_per_request_id_in_place(
    tmp_path: Path, name: str
) -> None:
    path = write(tmp_path / name, RECORDS)
    assert read_audit(path) == [RECORDS[3], RECORDS[1], RECORDS[2], RECORDS[4], RECORDS[5]]
    assert read_audit(str(path)) == read_audit(path)


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"since": 1_700_000_003.0},
        {"session": "s1"},
        {"tenant": "t1"},
        {"tenant": "t0", "since": 1_700_000_001.5},
        {"limit": 2},
        {"limit": 0},
        {"tenant": "t1", "limit": 1},
        {"session": "nobody"},
    ],
)
def test_sqlite_and_jsonl_read_back_the_same_records(
    tmp_path: Path, filters: dict[str, Any]
) -> None:
    db = write(tmp_path / "audit.db", RECORDS)
    jsonl = write(tmp_path / "audit.jsonl", RECORDS)
    assert read_audit(db, **filters) == read_audit(jsonl, **filters)
    with_sink = open_audit(tmp_path / "audit.db")  # the same filters as the sink's query
    try:
        assert read_audit(db, **filters) == with_sink.query(**filters)
    finally:
        with_sink.close()


def test_read_audit_refuses_a_negative_limit(tmp_path: Path) -> None:
    jsonl = write(tmp_path / "audit.jsonl", RECORDS)
    with pytest.raises(ValueError, match="limit"):
        read_audit(jsonl, limit=-1)


def test_an_empty_jsonl_file_has_no_records(tmp_path: Path) -> None:
    empty = tmp_path / "audit.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    assert read_audit(empty) == []


@pytest.mark.parametrize("name", ["audit.db", "audit.jsonl"])
def test_a_missing_log_is_a_clear_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(AuditLogError, match="no such audit log"):
        read_audit(tmp_path / name)
    assert not (tmp_path / name).exists()  # reading never creates it


@pytest.mark.parametrize("name", ["audit.db", "audit.jsonl"])
def test_a_directory_is_a_clear_error(tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir()
    with pytest.raises(AuditLogError, match="not a file"):
        read_audit(tmp_path / name)


@pytest.mark.parametrize("path", ["memory", "none"])
def test_memory_has_nothing_to_read(path: str) -> None:
    with pytest.raises(AuditLogError, match="memory only"):
        read_audit(path)


def test_a_file_of_the_other_format_is_a_clear_error(tmp_path: Path) -> None:
    db = write(tmp_path / "audit.db", RECORDS)
    as_jsonl = tmp_path / "renamed.jsonl"
    as_jsonl.write_bytes(db.read_bytes())
    with pytest.raises(AuditLogError, match="not a JSON-lines audit log"):
        read_audit(as_jsonl)
    jsonl = write(tmp_path / "audit.jsonl", RECORDS)
    as_db = tmp_path / "renamed.db"
    as_db.write_bytes(jsonl.read_bytes())
    with pytest.raises(AuditLogError, match="not a prefixgate audit database"):
        read_audit(as_db)


def test_an_unreadable_jsonl_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jsonl = write(tmp_path / "audit.jsonl", RECORDS)

    def denied(path: Path) -> list[AuditRecord]:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(sinks, "read_jsonl", denied)
    with pytest.raises(AuditLogError, match="cannot read the audit log: Permission denied"):
        read_audit(jsonl)


def test_every_sink_open_audit_returns_is_an_audit_sink(tmp_path: Path) -> None:
    for path in (None, tmp_path / "a.jsonl", tmp_path / "a.db"):
        sink: AuditSink = open_audit(path)
        committed = threading.Event()
        sink.record(rec(1, request_id="bb01"), committed.set)
        assert committed.wait(30)
        assert sink.query() == [rec(1, request_id="bb01")]
        sink.close()


def test_read_audit_expands_a_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path / "audit.jsonl", RECORDS)
    assert read_audit("~/audit.jsonl") == read_audit(tmp_path / "audit.jsonl")
