"""The recorded corpus's file names and one recorded request, for tests to import.

Kept out of conftest.py: a test module that imports from ``conftest`` gets
whichever conftest comes first on the import path (tests/e2e has its own).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PLAIN = "claude-code-2.1.197.jsonl"
CCH_PER_REQUEST = "claude-code-2.1.197-cch-per-request.jsonl"
INTERACTIVE = "claude-code-2.1.197-interactive.jsonl"
CORPUS_FILES = (PLAIN, CCH_PER_REQUEST, INTERACTIVE)
REQUESTS_PER_FILE = 14

# The current client (package.json's claude-code-current), recorded by
# ``bash scripts/record-corpus``; corpus/README.md lists what each request is.
CURRENT_VERSION = "2.1.332"
CURRENT_PLAIN = f"claude-code-{CURRENT_VERSION}.jsonl"
CURRENT_INTERACTIVE = f"claude-code-{CURRENT_VERSION}-interactive.jsonl"
CURRENT_REMOTE_HOST = f"claude-code-{CURRENT_VERSION}-remote-host.jsonl"
CURRENT_REQUESTS = {CURRENT_PLAIN: 16, CURRENT_INTERACTIVE: 12, CURRENT_REMOTE_HOST: 2}
CURRENT_FILES = tuple(CURRENT_REQUESTS)


@dataclass(frozen=True)
class CorpusRecord:
    """One recorded request: ``raw`` is the body exactly as Claude Code sent it."""

    file: str
    index: int
    method: str
    path: str
    headers: Mapping[str, str]
    raw: bytes

    @property
    def body(self) -> dict[str, Any]:
        """A fresh parse of the body (callers may mutate it)."""
        parsed: dict[str, Any] = json.loads(self.raw)
        return parsed

    @property
    def label(self) -> str:
        return f"{self.file}[{self.index}]"
