"""Saved prefixes on the bundled runtime: what to restore, what to save, and when.

The decisions, with no HTTP (``app/saved.py`` is the shell that talks to
llama-server and the gateway):

- ``PrefixPlan``: per runtime, which prefix keys it has seen since it started
  (a key seen since then is never restored: the runtime's slots and RAM cache
  may hold more than the saved prefix, and a restored slot would hide them),
  which keys have a saved file to restore, and which still need saving (once
  per key and model; a save waits in a short queue until the runtime is idle).
- ``priming_body`` / ``with_slot``: the request that primes a slot with a
  prefix (the same system prompt and tools, a one-character first message,
  ``max_tokens`` 1), and a forwarded body sent to one slot (``id_slot``).
- ``RuntimeGate``: one runtime's requests and its slot actions (restore, save,
  a restart) never overlap: requests share it, an action has it alone; an
  action waits for the requests under way to end and lets new ones in while
  it waits (a save never holds up a client for longer than its own run).
- ``gone_models``: the models whose saved files can be forgotten (the file at
  the path a digest was worked out from is gone or changed).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prefixgate.core.prompt import PromptView
from prefixgate.runtime.prefixes import SavedPrefix, saved_name

__all__ = [
    "PRIMING_MESSAGE",
    "Arrival",
    "ModelMark",
    "PendingSave",
    "PrefixPlan",
    "RuntimeGate",
    "gone_models",
    "prefix_chars",
    "priming_body",
    "with_slot",
    "worth_saving",
]

#: The first message of a priming request: the saved state then ends a few
#: tokens after the prefix, within the sliding-window tail a restore can resume in.
PRIMING_MESSAGE = "."
#: Saves waiting for an idle runtime; more are dropped (tried again on a later request).
MAX_PENDING_SAVES = 16
#: A prefix shorter than this (system prompt and tools, in characters: about 500
#: tokens) is not saved: computing it again costs less than a file of at least 7.5 MiB.
MIN_PREFIX_CHARS = 2000
#: The sections a priming request keeps (core/prompt.py).
PREFIX_SECTIONS = frozenset({"attribution", "system", "tools", "mcp_tools", "tool_loaded"})


@dataclass(frozen=True)
class Arrival:
    """What a request's prefix key asks for: restore a saved file, queue a save, or nothing."""

    name: str
    restore: SavedPrefix | None = None
    save: bool = False


@dataclass(frozen=True)
class PendingSave:
    """A prefix to save once the runtime is idle: its key, file name and priming body."""

    key: str
    name: str
    body: bytes


class PrefixPlan:
    """The decisions for one runtime and one model (``digest``); no I/O."""

    def __init__(self, digest: str, *, max_pending: int = MAX_PENDING_SAVES) -> None:
        self.digest = digest
        self.max_pending = max_pending
        self._seen: set[str] = set()  # prefix keys the runtime has had since it started
        self._tried: set[str] = set()  # names saved (or being saved) by this gateway
        self._pending: OrderedDict[str, PendingSave] = OrderedDict()

    def name(self, key: str) -> str:
        return saved_name(key, self.digest)

    def arrive(self, key: str, lookup: Callable[[str], SavedPrefix | None]) -> Arrival:
        """A request with prefix key ``key`` is about to reach the runtime.

        ``lookup`` finds a saved file by name (``PrefixStore.lookup``); it is
        asked only for a key the runtime has not seen since it started."""
        name = self.name(key)
        if key in self._seen:
            return Arrival(name)
        self._seen.add(key)
        entry = lookup(name)
        if entry is not None:
            self._tried.add(name)  # saved before: never again for this model
            return Arrival(name, restore=entry)
        return Arrival(name, save=name not in self._tried and name not in self._pending)

    def queue(self, key: str, body: bytes) -> bool:
        """Queue the save of ``key``'s prefix (``body`` primes it); False when the
        queue is full or the save is already queued or done."""
        name = self.name(key)
        if name in self._tried or name in self._pending or len(self._pending) >= self.max_pending:
            return False
        self._pending[name] = PendingSave(key, name, body)
        return True

    def next_save(self) -> PendingSave | None:
        """The oldest queued save, now taken (it is not tried again unless ``failed``)."""
        if not self._pending:
            return None
        name, job = self._pending.popitem(last=False)
        self._tried.add(name)
        return job

    @property
    def pending(self) -> int:
        return len(self._pending)

    def failed(self, job: PendingSave) -> None:
        """A save that could not be made: a later request may queue it again."""
        self._tried.discard(job.name)
        self._seen.discard(job.key)

    def restore_failed(self, key: str) -> None:
        """The restore of ``key`` failed (its file is forgotten): save it again later."""
        self._tried.discard(self.name(key))
        self._seen.discard(key)

    def restarted(self) -> None:
        """The runtime restarted: it holds nothing, every saved prefix may be restored."""
        self._seen.clear()

    def seen(self, key: str) -> bool:
        return key in self._seen


def prefix_chars(view: PromptView) -> int:
    """Characters of the leading pieces a priming request keeps (system prompt, tools)."""
    total = 0
    for piece in view.pieces:
        if piece.section not in PREFIX_SECTIONS:
            break
        total += len(piece.text)
    return total


def worth_saving(view: PromptView) -> bool:
    return prefix_chars(view) >= MIN_PREFIX_CHARS


def priming_body(forwarded: bytes, slot: int | None = None) -> bytes:
    """The request that primes a slot with ``forwarded``'s prefix: its system
    prompt and tools (every field but the messages), one short user message,
    ``max_tokens`` 1, not streamed; sent to ``slot`` when given."""
    body: dict[str, Any] = json.loads(forwarded)
    body["messages"] = [{"role": "user", "content": PRIMING_MESSAGE}]
    body["max_tokens"] = 1
    body["stream"] = False
    for field in ("thinking", "output_config", "tool_choice", "stop_sequences"):
        body.pop(field, None)
    if slot is not None:
        body["id_slot"] = slot
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def with_slot(body: bytes, slot: int) -> bytes:
    """``body`` (a JSON object) with ``"id_slot": slot`` as its last member, so the
    runtime processes it in that slot; the rest of the bytes are unchanged."""
    end = body.rstrip()
    if not end.endswith(b"}"):
        raise ValueError("the body is not a JSON object")
    inner = end[:-1].rstrip()
    separator = b"" if inner.endswith(b"{") else b","
    return inner + separator + b'"id_slot":' + str(int(slot)).encode() + b"}"


@dataclass(frozen=True)
class ModelMark:
    """Where a model's digest was worked out: the file's path, size and mtime."""

    path: str
    size: int
    mtime_ns: int


def gone_models(
    known: Mapping[str, ModelMark], current: Callable[[str], ModelMark | None]
) -> list[str]:
    """The digests (12 hex, as in file names) of ``known`` models whose file is
    gone or changed: ``current(path)`` is what is at that path now (None: nothing)."""
    return sorted(d for d, mark in known.items() if current(mark.path) != mark)


class RuntimeGate:
    """Requests share the runtime; a slot action has it alone.

    ``enter``/``leave`` around each request; ``exclusive`` waits until no
    request is under way and no other action runs, then holds the runtime
    until ``release`` (or ``handover``, which lets exactly one request in at
    once: the one the action was for). Requests that arrive while an action
    waits still go in: a saved prefix is worth less than a client's wait.
    """

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []
        self.in_flight = 0
        self.held = False

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and not self.held

    async def enter(self) -> None:
        await self._until(lambda: not self.held)
        self.in_flight += 1

    def leave(self) -> None:
        if self.in_flight < 1:
            raise RuntimeError("leave() without enter()")
        self.in_flight -= 1
        self._notify()

    async def exclusive(self) -> None:
        await self._until(lambda: self.idle)
        self.held = True

    def release(self) -> None:
        if not self.held:
            raise RuntimeError("release() without exclusive()")
        self.held = False
        self._notify()

    def handover(self) -> None:
        """End an action and let the request it was for in (``leave`` it later)."""
        self.release()
        self.in_flight += 1

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
