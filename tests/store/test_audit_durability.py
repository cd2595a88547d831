"""A gateway killed with -9 keeps every record whose on_commit had been called.

A child process records into an SqliteAudit, printing each record's
request_id from its on_commit callback; the parent kills it with SIGKILL
partway through and checks that every id printed is in the database.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import prefixgate
from prefixgate.store.sqlite import SqliteAudit, read_records

N = 2000
KILL_AFTER = 500
TIMEOUT_S = 60.0

CHILD = """
import sys, time
from prefixgate.store.audit import AuditRecord
from prefixgate.store.sqlite import SqliteAudit

path, n = sys.argv[1], int(sys.argv[2])
audit = SqliteAudit(path)
out = sys.stdout

def printer(request_id):
    def committed():
        out.write(request_id + "\\n")
        out.flush()
    return committed

for i in range(n):
    request_id = f"{i:032x}"
    rec = AuditRecord(
        time=float(i), route="/v1/messages", tenant="t", session=f"s{i % 7}",
        model="m", upstream="u", policy="strip", status=200,
        cause_detail="x" * 200, request_id=request_id,
    )
    audit.record(rec, printer(request_id))
    if i % 5 == 0:
        time.sleep(0.005)  # paced, so the kill lands while records are still coming
sys.stdin.read()  # never exits by itself: only the kill ends it
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_every_committed_record_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    src = Path(prefixgate.__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    with (tmp_path / "child.err").open("w+", encoding="utf-8") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db), str(N)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            text=True,
        )
        try:
            printed = _printed_until_killed(child)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(10)
            assert child.stdin is not None and child.stdout is not None
            child.stdin.close()
            child.stdout.close()
        err.seek(0)
        errors = err.read()
    assert child.returncode == -signal.SIGKILL, errors
    assert len(printed) >= KILL_AFTER, errors
    assert len(set(printed)) == len(printed)

    with SqliteAudit(db) as reopened:  # opens cleanly: WAL recovered, schema current
        stored = reopened.query()
    ids = [r.request_id for r in stored]
    assert set(printed) <= set(ids), f"{len(set(printed) - set(ids))} committed ids lost"
    assert len(set(ids)) == len(ids)
    # Rows are whole and in order: a prefix of what was recorded.
    assert ids == [f"{i:032x}" for i in range(len(ids))]
    assert all(r.cause_detail == "x" * 200 for r in stored)
    assert read_records(db, session="s0") == [r for r in stored if r.session == "s0"]


def _printed_until_killed(child: subprocess.Popen[str]) -> list[str]:
    """Ids the child printed: read until KILL_AFTER, kill it, then read what is left."""
    assert child.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    stdout = child.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    printed: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S
    killed = False
    ended = False
    while not ended:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"child printed only {len(printed)} ids in {TIMEOUT_S}s")
        try:
            line = lines.get(timeout=min(left, 1.0))
        except queue.Empty:
            if child.poll() is not None and not killed:
                raise AssertionError(f"child exited early ({child.returncode})") from None
            continue
        if line is None:
            ended = True
        elif line.endswith("\n"):  # a whole line: written before the kill
            printed.append(line.strip())
        if not killed and len(printed) >= KILL_AFTER:
            os.kill(child.pid, signal.SIGKILL)
            killed = True
    reader.join(10)
    return printed
