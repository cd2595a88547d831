"""MemoryAudit and JsonlAudit: the latest record per request_id, and on_commit."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from prefixgate.store.audit import AuditRecord, AuditSink, JsonlAudit, MemoryAudit, read_jsonl


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


def test_new_fields_come_last_and_round_trip() -> None:
    names = [f.name for f in dataclasses.fields(AuditRecord)]
    assert names[-8:-5] == ["request_id", "attribution_headers", "tool_loads"]
    assert names[-5:] == [
        "oracle_tokens",
        "runtime_expected_tokens",
        "lost_by_runtime",
        "lost_cause",
        "restored_tokens",
    ]
    reached = rec(
        4, oracle_tokens=9, runtime_expected_tokens=7, lost_by_runtime=0, lost_cause="capacity"
    )
    assert AuditRecord.from_dict(json.loads(reached.to_json())) == reached
    restored = rec(5, restored_tokens=4929)
    assert json.loads(restored.to_json())["restored_tokens"] == 4929
    assert AuditRecord.from_dict(json.loads(restored.to_json())) == restored
    assert rec().restored_tokens is None
    loads = {"mode": "inline", "loaded": ["WebFetch"], "moved": ["WebFetch"]}
    with_loads = rec(3, tool_loads=loads)
    assert AuditRecord.from_dict(json.loads(with_loads.to_json())) == with_loads
    headers = {"x-anthropic-billing-header": {"form": "kv", "fields": {"cc_entrypoint": "cli"}}}
    with_headers = rec(2, attribution_headers=headers)
    assert AuditRecord.from_dict(json.loads(with_headers.to_json())) == with_headers
    assert rec().request_id is None
    full = rec(1, request_id="9f" * 16)
    assert AuditRecord.from_dict(json.loads(full.to_json())) == full
    assert AuditRecord.from_dict({**rec().to_dict(), "request_id": None, "new": 1}) == rec()


# -- MemoryAudit ---------------------------------------------------------------


def test_memory_keeps_the_latest_record_per_request_id_in_place() -> None:
    audit = MemoryAudit()
    sink: AuditSink = audit
    sink.record(rec(1, request_id="a"))
    sink.record(rec(2))
    sink.record(rec(3, request_id="b"))
    sink.record(rec(1, request_id="a", expected_cached_tokens=10))
    sink.record(rec(2))  # no request_id: a new record every time
    assert sink.query() == [
        rec(1, request_id="a", expected_cached_tokens=10),
        rec(2),
        rec(3, request_id="b"),
        rec(2),
    ]


def test_memory_replaces_after_the_deque_has_moved_on() -> None:
    audit = MemoryAudit(limit=3)
    for n in range(5):
        audit.record(rec(n, request_id=f"r{n}"))
    assert [r.request_id for r in audit.query()] == ["r2", "r3", "r4"]
    audit.record(rec(3, request_id="r3", cached_tokens=1))
    assert [(r.request_id, r.cached_tokens) for r in audit.query()] == [
        ("r2", None),
        ("r3", 1),
        ("r4", None),
    ]
    audit.record(rec(0, request_id="r0", cached_tokens=2))  # evicted already: a new record
    assert [r.request_id for r in audit.query()] == ["r3", "r4", "r0"]
    audit.record(rec(0, request_id="r0", cached_tokens=3))
    assert [(r.request_id, r.cached_tokens) for r in audit.query()] == [
        ("r3", 1),
        ("r4", None),
        ("r0", 3),
    ]
    assert len(audit._seq) == 3


def test_memory_index_stays_bounded_and_survives_a_cleared_deque() -> None:
    audit = MemoryAudit(limit=10)
    for n in range(1000):
        audit.record(rec(n, request_id=f"r{n}"))
        audit.record(rec(n, request_id=f"r{n}", cached_tokens=n))
    assert len(audit.records) == 10 and len(audit._seq) == 10
    assert [r.cached_tokens for r in audit.query()] == list(range(990, 1000))
    audit.records.clear()
    audit.record(rec(999, request_id="r999", cached_tokens=-1))
    audit.record(rec(5, request_id="new"))
    audit.record(rec(5, request_id="new", cached_tokens=5))
    assert [(r.request_id, r.cached_tokens) for r in audit.query()] == [
        ("r999", -1),
        ("new", 5),
    ]


def test_memory_calls_on_commit_after_keeping_the_record() -> None:
    audit = MemoryAudit()
    seen: list[list[AuditRecord]] = []
    audit.record(rec(1, request_id="a"), lambda: seen.append(audit.query()))
    audit.close()
    audit.record(rec(2), lambda: seen.append(audit.query()))  # close keeps nothing back
    assert seen == [[rec(1, request_id="a")], [rec(1, request_id="a"), rec(2)]]


def test_memory_logs_an_on_commit_that_raises(caplog: pytest.LogCaptureFixture) -> None:
    audit = MemoryAudit()

    def broken() -> None:
        raise RuntimeError("callback broke")

    with caplog.at_level(logging.ERROR, logger="prefixgate"):
        audit.record(rec(1), broken)
    assert audit.query() == [rec(1)]
    assert "callback broke" in caplog.text


def test_memory_from_many_threads() -> None:
    audit = MemoryAudit()
    start = threading.Barrier(4)

    def work(t: int) -> None:
        start.wait()
        for n in range(500):
            audit.record(rec(n, request_id=f"{t}-{n % 50}", cached_tokens=n))

    pool = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    got = audit.query()
    assert len(got) == 4 * 50
    assert len({r.request_id for r in got}) == 4 * 50


# -- JsonlAudit ----------------------------------------------------------------


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_appends_every_record_and_readers_keep_the_last_per_request_id(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    audit = JsonlAudit(path)
    audit.record(rec(1, request_id="a"))
    audit.record(rec(2))
    audit.record(rec(1, request_id="a", expected_cached_tokens=10, restored_tokens=7))
    audit.record(rec(2))
    audit.close()
    written = lines(path)
    assert [(w["request_id"], w["expected_cached_tokens"]) for w in written] == [
        ("a", None),
        (None, None),
        ("a", 10),
        (None, None),
    ]
    assert [w["restored_tokens"] for w in written] == [None, None, 7, None]
    latest = [
        rec(1, request_id="a", expected_cached_tokens=10, restored_tokens=7),
        rec(2),
        rec(2),
    ]
    assert audit.query() == latest
    assert read_jsonl(path) == latest


def test_jsonl_on_commit_runs_once_the_line_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = JsonlAudit(path)
    seen: list[list[AuditRecord]] = []
    audit.record(rec(1, request_id="a"), lambda: seen.append(read_jsonl(path)))
    audit.record(rec(1, request_id="a", cached_tokens=4), lambda: seen.append(read_jsonl(path)))
    audit.close()
    assert seen == [[rec(1, request_id="a")], [rec(1, request_id="a", cached_tokens=4)]]


def test_jsonl_after_close_logs_and_still_calls_on_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    audit = JsonlAudit(path)
    audit.close()
    called: list[int] = []
    with caplog.at_level(logging.WARNING, logger="prefixgate"):
        audit.record(rec(1), lambda: called.append(1))
    assert called == [1]
    assert "after close" in caplog.text
    assert path.read_text(encoding="utf-8") == ""


def test_jsonl_unwritable_record_logs_and_still_calls_on_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    audit = JsonlAudit(path)
    called: list[int] = []
    with caplog.at_level(logging.ERROR, logger="prefixgate"):
        audit.record(rec(1, attribution={"x": object()}), lambda: called.append(1))
        audit.record(rec(2), lambda: called.append(2))
    audit.close()
    assert called == [1, 2]
    assert "could not be written" in caplog.text
    assert read_jsonl(path) == [rec(2)]


def test_jsonl_on_commit_that_raises_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = JsonlAudit(tmp_path / "audit.jsonl")

    def broken() -> None:
        raise RuntimeError("callback broke")

    with caplog.at_level(logging.ERROR, logger="prefixgate"):
        audit.record(rec(1), broken)
        audit.record(rec(2))
    audit.close()
    assert "callback broke" in caplog.text
    assert read_jsonl(tmp_path / "audit.jsonl") == [rec(1), rec(2)]


def test_read_jsonl_skips_a_line_cut_short_and_other_junk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    full = rec(1, request_id="a").to_json()
    path.write_text(
        "\n".join([full, "", "[1, 2]", '{"time": 1}', rec(2).to_json(), full[:40]]),
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="prefixgate"):
        assert read_jsonl(path) == [rec(1, request_id="a"), rec(2)]
    assert caplog.text.count("line skipped") == 3


def test_read_jsonl_of_a_file_from_before_request_ids(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    old = {k: v for k, v in rec(1).to_dict().items() if k not in {"request_id", "replica"}}
    path.write_text(json.dumps(old) + "\n" + json.dumps(old) + "\n", encoding="utf-8")
    assert read_jsonl(path) == [rec(1), rec(1)]


def test_memory_with_no_room_keeps_nothing() -> None:
    audit = MemoryAudit(limit=0)
    called: list[int] = []
    audit.record(rec(1, request_id="a"), lambda: called.append(1))
    audit.record(rec(1, request_id="a"), lambda: called.append(2))
    assert audit.query() == []
    assert called == [1, 2]
