"""Files the gateway writes that hold what its users sent: only their owner reads them.

The audit database (and its SQLite journals, which SQLite creates with the
database's own mode), JSON-lines audit files and ``--record`` captures hold
sessions, models, prompt metadata and, when asked for, request bodies. Each is
created with mode 0600 and a folder the gateway creates for one with 0700; an
existing file is narrowed to 0600 when opened. Folders that already exist
(``/tmp``, a home directory) are left as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_parent(path: str | Path) -> None:
    """Create ``path``'s missing folders, each one only its owner may enter."""
    missing: list[Path] = []
    folder = Path(path).parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(created, DIR_MODE)  # mkdir's mode passes through the umask


def private_file(path: str | Path) -> Path:
    """``path`` (with its folders) created if missing, in any case mode 0600."""
    private_parent(path)
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    try:
        os.fchmod(handle, FILE_MODE)
    finally:
        os.close(handle)
    return Path(path)
