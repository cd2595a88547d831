"""What ``prefixgate serve`` stores is readable by its owner only (issue: hostile
clients, tenants and upstreams, exposure "Files")."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import httpx
from support.hostile import HostileUpstream
from support.servers import ServerThread, free_port

from prefixgate.demo import ManagedProcess


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_audit_files_captures_and_their_new_folders_are_owner_only(tmp_path: Path) -> None:
    """Exposure: the audit database, JSON-lines audit files and ``--record`` captures
    (and their folders) were created with the umask's modes, readable by everyone."""
    upstream = HostileUpstream()
    old = os.umask(0o022)
    try:
        with ServerThread(upstream.app) as server:
            for audit in (tmp_path / "db" / "audit.db", tmp_path / "lines" / "audit.jsonl"):
                port = free_port()
                capture = audit.parent / "capture" / "requests.jsonl"
                command = [sys.executable, "-m", "prefixgate", "serve", "--upstream", server.url,
                           "--port", str(port), "--audit", str(audit),
                           "--record", str(capture)]  # fmt: skip
                with ManagedProcess("gateway", command, f"http://127.0.0.1:{port}/healthz"):
                    body = {"model": "m", "max_tokens": 4,
                            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
                    answer = httpx.post(f"http://127.0.0.1:{port}/v1/messages", json=body)
                    assert answer.status_code == 200
                    for journal in audit.parent.glob(audit.name + "-*"):  # SQLite's -wal, -shm
                        assert mode(journal) == 0o600, (journal, oct(mode(journal)))
                for path in (audit, capture):
                    assert path.stat().st_size > 0
                    assert mode(path) == 0o600, (path, oct(mode(path)))
                    assert mode(path.parent) == 0o700, (path.parent, oct(mode(path.parent)))
    finally:
        os.umask(old)
