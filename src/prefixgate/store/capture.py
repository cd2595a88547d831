"""Record mode: append every incoming request to a file in the corpus format.

One JSON object per line: ``method``, ``path`` (with its query), ``headers``,
``body`` (the request body as a string), ``t`` (seconds since the epoch), the
format ``prefixgate diagnose`` and the replay benchmark read. Credentials are
removed before anything is written.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from starlette.datastructures import URL

from prefixgate.core.secrets import CREDENTIAL_HEADERS
from prefixgate.store.files import private_file


def capture_line(
    method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes, t: float
) -> str:
    """One capture line; credential headers are left out."""
    kept = {k: v for k, v in headers if k.lower() not in CREDENTIAL_HEADERS}
    return json.dumps(
        {
            "method": method,
            "path": path,
            "headers": kept,
            "body": body.decode("utf-8", "replace"),
            "t": t,
        },
        ensure_ascii=False,
    )


class CaptureLog:
    """Appends capture lines to ``path``; one line per request, written whole."""

    def __init__(self, path: str | Path) -> None:
        private_file(path)  # mode 0600, its new folders 0700 (store/files.py)
        self._lock = threading.Lock()
        self._file = Path(path).open("a", encoding="utf-8")  # noqa: SIM115

    def append(self, method: str, url: URL, headers: Mapping[str, str], body: bytes) -> None:
        path = url.path + (f"?{url.query}" if url.query else "")
        line = capture_line(method, path, headers.items(), body, time.time())
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
