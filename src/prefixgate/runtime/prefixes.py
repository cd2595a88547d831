"""Saved prefixes: the KV state of a stable prompt prefix, kept on disk so that a
restarted llama-server (or a new session) need not compute it again.

The files and the runtime's slot API; the decisions are ``runtime/restore.py``'s
and the gateway's wiring ``app/saved.py``'s (docs/runtime-cache.md, "Saved
prefixes"). Three pieces:

- ``saved_name``: the file a prefix is saved under, from the gateway's prefix key
  (``core/cachekey.py``) and the digest of the model file (``model_digest``), so
  each model keeps its own saved prefixes and a changed model never loads
  another's state.
- ``PrefixLru`` (pure) and ``PrefixStore`` (its files): the saved prefixes, least
  recently used first, never above a cap in bytes; the store deletes what the LRU
  evicts and keeps its order in ``index.json`` beside the files.
- ``SlotClient``: llama-server's ``/slots`` API (``--slot-save-path``):
  ``POST /slots/{id}?action=save|restore|erase`` and ``GET /slots``.

What makes a restore count, on the bundled build (docs/runtime-cache.md): the
runtime runs with ``--swa-full``, and a saved state holds the full-attention
layers whole but the sliding-window layers only for the last ``n_swa`` (512)
positions. So a later prompt reuses a restored state only when it diverges from
it within those last positions: save the slot when it holds the stable prefix
and at most a short tail (a stub first message), not after a long request.
The next request must reach the restored slot: send it with ``id_slot``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "INDEX_FILE",
    "SAVED_SUFFIX",
    "PrefixLru",
    "PrefixStore",
    "SavedPrefix",
    "SlotActionError",
    "SlotClient",
    "SlotSave",
    "model_digest",
    "saved_name",
]

SAVED_SUFFIX = ".kv"
INDEX_FILE = "index.json"
_HEX = re.compile(r"[0-9a-f]{16,128}")
_NAME = re.compile(r"[0-9a-f]{12}-[0-9a-f]{40}" + re.escape(SAVED_SUFFIX))
_CHUNK = 1 << 20
_digests: dict[tuple[str, int, int], str] = {}


def model_digest(path: Path) -> str:
    """SHA-256 of the model file, hex; worked out once per (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    cached = _digests.get(key)
    if cached is not None:
        return cached
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
    _digests[key] = sha.hexdigest()
    return _digests[key]


def saved_name(prefix_key: str, digest: str) -> str:
    """The file name a prefix is saved under: ``<model 12 hex>-<40 hex>.kv``.

    ``prefix_key`` is the gateway's prefix key (``PromptCacheKey.hex``) and
    ``digest`` the model file's (``model_digest``); both lowercase hex. The name
    starts with the model's digest so one model's files can be listed apart, and
    is made of characters llama-server accepts in a slot file name.
    """
    for label, value in (("prefix key", prefix_key), ("model digest", digest)):
        if not _HEX.fullmatch(value):
            raise ValueError(f"{label} must be 16 to 128 lowercase hex digits, got {value!r}")
    both = hashlib.sha256(f"{prefix_key}\n{digest}".encode()).hexdigest()
    return f"{digest[:12]}-{both[:40]}{SAVED_SUFFIX}"


@dataclass(frozen=True)
class SavedPrefix:
    """One saved prefix: its file name, its size on disk and its tokens."""

    name: str
    size: int
    tokens: int


class PrefixLru:
    """Saved prefixes by name, least recently used first, at most ``cap`` bytes in all."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"cap must be at least 1 byte, got {cap}")
        self.cap = cap
        self._entries: OrderedDict[str, SavedPrefix] = OrderedDict()
        self._total = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[SavedPrefix]:
        """Least recently used first."""
        return iter(list(self._entries.values()))

    @property
    def total(self) -> int:
        """Bytes of all entries together."""
        return self._total

    def get(self, name: str) -> SavedPrefix | None:
        """The entry, now the most recently used; None if absent."""
        entry = self._entries.get(name)
        if entry is not None:
            self._entries.move_to_end(name)
        return entry

    def add(self, entry: SavedPrefix) -> list[str]:
        """Add or replace ``entry`` as the most recently used; return the names
        evicted to stay within the cap, least recently used first. An entry
        larger than the cap is not kept: its own name is returned."""
        if entry.size < 0 or entry.tokens < 0:
            raise ValueError(f"size and tokens must not be negative: {entry}")
        self.remove(entry.name)
        if entry.size > self.cap:
            return [entry.name]
        evicted: list[str] = []
        while self._entries and self._total + entry.size > self.cap:
            name, old = self._entries.popitem(last=False)
            self._total -= old.size
            evicted.append(name)
        self._entries[entry.name] = entry
        self._total += entry.size
        return evicted

    def remove(self, name: str) -> bool:
        entry = self._entries.pop(name, None)
        if entry is None:
            return False
        self._total -= entry.size
        return True


class PrefixStore:
    """The saved-prefix folder (llama-server's ``--slot-save-path``) under a cap in bytes.

    llama-server writes the files; the store decides which to keep. After each
    save call ``saved``: the file joins the LRU and the least recently used files
    are deleted until the folder is back under the cap. ``lookup`` marks a
    prefix used. The order survives restarts in ``index.json``; files the index
    does not know (an interrupted run) are adopted as least recently used, and
    entries whose file is gone are dropped.
    """

    def __init__(self, directory: Path, cap: int) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lru = PrefixLru(cap)
        self._load()

    @property
    def total(self) -> int:
        return self._lru.total

    @property
    def cap(self) -> int:
        return self._lru.cap

    def entries(self) -> list[SavedPrefix]:
        """Least recently used first."""
        return list(self._lru)

    def path(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a saved-prefix file name: {name!r}")
        return self.directory / name

    def lookup(self, name: str) -> SavedPrefix | None:
        """The saved prefix if its file is there (now most recently used), else None."""
        entry = self._lru.get(name)
        if entry is None:
            return None
        if not self.path(name).is_file():
            self._lru.remove(name)
            self._write_index()
            return None
        self._write_index()
        return entry

    def saved(self, name: str, tokens: int) -> list[str]:
        """Record the file llama-server just wrote for ``name`` (``tokens`` saved);
        delete and return the files evicted to stay under the cap (``name``
        itself when it alone is over the cap)."""
        size = self.path(name).stat().st_size
        evicted = self._lru.add(SavedPrefix(name, size, tokens))
        for old in evicted:
            self.path(old).unlink(missing_ok=True)
        self._write_index()
        return evicted

    def forget(self, name: str) -> None:
        """Delete a saved prefix (a restore that failed, a model that is gone)."""
        self._lru.remove(name)
        self.path(name).unlink(missing_ok=True)
        self._write_index()

    def _load(self) -> None:
        known: list[dict[str, Any]] = []
        try:
            data = json.loads((self.directory / INDEX_FILE).read_text(encoding="utf-8"))
            if isinstance(data, list):
                known = [x for x in data if isinstance(x, dict)]
        except (OSError, ValueError):
            known = []
        tokens = {str(x.get("name")): int(x.get("tokens", 0)) for x in known}
        order = [str(x.get("name")) for x in known]
        on_disk = {p.name: p for p in self.directory.iterdir() if _NAME.fullmatch(p.name)}
        strays = sorted((n for n in on_disk if n not in tokens), key=lambda n: _mtime(on_disk[n]))
        for name in [*strays, *order]:
            if name in on_disk and name not in self._lru:
                entry = SavedPrefix(name, on_disk[name].stat().st_size, tokens.get(name, 0))
                for old in self._lru.add(entry):
                    (self.directory / old).unlink(missing_ok=True)
        self._write_index()

    def _write_index(self) -> None:
        entries = [{"name": e.name, "size": e.size, "tokens": e.tokens} for e in self._lru]
        target = self.directory / INDEX_FILE
        partial = target.with_name(f"{INDEX_FILE}.{os.getpid()}.partial")
        partial.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
        os.replace(partial, target)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


class SlotActionError(RuntimeError):
    """llama-server refused a slot action (no ``--slot-save-path``, a bad file, a busy slot)."""


@dataclass(frozen=True)
class SlotSave:
    """What a save or restore moved: tokens and bytes of the file."""

    tokens: int
    size: int


def pick_idle(slots: list[dict[str, Any]]) -> int | None:
    """The idle slot that loses least when overwritten: one that never ran a task
    (it holds nothing), else the one whose last task is oldest (``id_task`` grows
    with every task); None if every slot is processing."""
    idle = [s for s in slots if not s.get("is_processing")]
    if not idle:
        return None
    return int(
        min(idle, key=lambda s: (s.get("id_task") is not None, s.get("id_task") or 0, s["id"]))[
            "id"
        ]
    )


def processed_slot(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> int | None:
    """The one slot that ran a task between two ``GET /slots`` answers (its
    ``id_task`` changed); None if none did or several did.

    llama-server's ``/v1/messages`` does not honour ``id_slot``: it picks the idle
    slot whose prompt shares most with the request, so the caller finds out after.
    """
    tasks = {s["id"]: s.get("id_task") for s in before}
    ran = [
        int(s["id"])
        for s in after
        if s.get("id_task") is not None and s.get("id_task") != tasks.get(s["id"])
    ]
    return ran[0] if len(ran) == 1 else None


class SlotClient:
    """llama-server's slot actions over HTTP, on the caller's ``httpx.AsyncClient``."""

    def __init__(self, base_url: str, client: httpx.AsyncClient, *, timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self._client = client
        self._timeout = timeout

    async def slots(self) -> list[dict[str, Any]]:
        """``GET /slots``: one object per slot (``id``, ``is_processing``, ...)."""
        response = await self._client.get(f"{self.base_url}/slots", timeout=self._timeout)
        body = self._json(response, "list slots")
        if not isinstance(body, list):
            raise SlotActionError(f"GET /slots answered {type(body).__name__}, not a list")
        return [s for s in body if isinstance(s, dict)]

    async def idle_slot(self) -> int | None:
        """The idle slot to load a file into (``pick_idle``); None if all are busy."""
        return pick_idle(await self.slots())

    async def save(self, slot: int, name: str) -> SlotSave:
        body = await self._action(slot, "save", {"filename": name})
        return SlotSave(int(body.get("n_saved", 0)), int(body.get("n_written", 0)))

    async def restore(self, slot: int, name: str) -> SlotSave:
        """Load ``name`` into ``slot``; a restore of no tokens is an error."""
        body = await self._action(slot, "restore", {"filename": name})
        done = SlotSave(int(body.get("n_restored", 0)), int(body.get("n_read", 0)))
        if done.tokens < 1:
            raise SlotActionError(f"restoring {name} into slot {slot} restored no tokens")
        return done

    async def erase(self, slot: int) -> int:
        body = await self._action(slot, "erase", {})
        return int(body.get("n_erased", 0))

    async def _action(self, slot: int, action: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._client.post(
            f"{self.base_url}/slots/{slot}",
            params={"action": action},
            json=body,
            timeout=self._timeout,
        )
        answer = self._json(response, f"{action} slot {slot}")
        if not isinstance(answer, dict):
            raise SlotActionError(f"{action} slot {slot}: the answer is not a JSON object")
        return answer

    @staticmethod
    def _json(response: httpx.Response, what: str) -> Any:
        if response.status_code != 200:
            raise SlotActionError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
        try:
            return response.json()
        except ValueError as exc:
            raise SlotActionError(f"{what}: the answer is not JSON") from exc
