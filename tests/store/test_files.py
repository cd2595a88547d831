from __future__ import annotations

import os
import stat
from pathlib import Path

from prefixgate.store.files import private_file
from prefixgate.store.sinks import open_audit


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_and_its_new_folders_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = private_file(tmp_path / "a" / "b" / "audit.jsonl")
    finally:
        os.umask(old)
    assert mode(target) == 0o600
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700
    tmp_path.chmod(0o755)
    private_file(tmp_path / "c.jsonl")
    assert mode(tmp_path) == 0o755  # a folder that exists is left as it is


def test_an_existing_file_is_narrowed_and_kept(tmp_path: Path) -> None:
    existing = tmp_path / "audit.jsonl"
    existing.write_text("kept\n", encoding="utf-8")
    existing.chmod(0o644)
    private_file(existing)
    assert mode(existing) == 0o600 and existing.read_text(encoding="utf-8") == "kept\n"


def test_every_audit_sink_file_is_created_owner_only(tmp_path: Path) -> None:
    for name in ("new/audit.db", "other/audit.jsonl"):
        sink = open_audit(tmp_path / name)
        sink.close()
        assert mode(tmp_path / name) == 0o600
        assert mode((tmp_path / name).parent) == 0o700
