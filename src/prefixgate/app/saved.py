"""Saved prefixes of the bundled runtime, wired into the gateway (the HTTP shell).

The decisions are ``runtime/restore.py``'s; the files ``runtime/prefixes.py``'s.
This module talks to llama-server (``/slots``, a priming ``/v1/messages``) and
tells the observer what a slot action put in a slot:

- ``hold`` runs on the request path, before the observer compares the request
  (``proxy.Proxy._attempts``): for a prefix key the runtime has not seen since
  it started and that has a saved file, it waits until the runtime is idle,
  restores the file into an idle slot and returns the body with ``id_slot``
  set to it; every request to the runtime then holds the ``RuntimeGate`` until
  its exchange ends. For any other upstream it returns at once.
- A key with no file is queued for saving; the ``run`` task saves it when the
  runtime is idle: a priming request (same system prompt and tools, one short
  message, ``max_tokens`` 1), then ``save`` of the slot that ran it, then the
  store's LRU. Every slot's prompt before the priming (the conversations the
  clients go on with) is saved to a scratch file first, and the primed slot's is
  restored after, so the next request still finds it.
- The same task watches the runtime: one that died is started again, and the
  observer and the plan are told (``CacheObserver.restarted``).

Only the ``anthropic`` kind: the body forwarded is the body ``with_slot`` edits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from prefixgate.core.oracle import Chain, prompt_chain
from prefixgate.core.pipeline import Rewrite
from prefixgate.core.prompt import prompt_view
from prefixgate.core.side import UNCACHED_KINDS
from prefixgate.runtime.prefixes import (
    PrefixStore,
    SlotActionError,
    SlotClient,
    model_digest,
    processed_slot,
)
from prefixgate.runtime.restore import (
    Arrival,
    ModelMark,
    PendingSave,
    PrefixPlan,
    RuntimeGate,
    gone_models,
    priming_body,
    with_slot,
    worth_saving,
)

if TYPE_CHECKING:
    from prefixgate.app.observer import CacheObserver
    from prefixgate.config import UpstreamConfig

log = logging.getLogger("prefixgate")
MODELS_FILE = "models.json"
#: How long a restore waits for the requests under way to end before giving up
#: (the request then goes on without it).
RESTORE_WAIT_S = 30.0
#: Seconds between checks that the runtime still runs; after a failed start.
WATCH_EVERY_S = 1.0
RETRY_START_S = 30.0
PRIMING_TIMEOUT_S = 600.0


def scratch_name(slot: int) -> str:
    """The file a slot's own prompt waits in while a priming request may use the
    slot (not a saved-prefix name: the store never adopts it)."""
    return f"scratch-slot-{slot}.kv"


class Runtime(Protocol):
    """What of ``LocalRuntime`` the gateway uses: whether it runs, and starting it."""

    def is_running(self) -> bool: ...

    def start(self) -> None: ...

    def restart(self) -> None: ...


@dataclass
class Counts:
    """What the saved prefixes did since the gateway started."""

    restores: int = 0
    restored_tokens: int = 0
    restore_failures: int = 0
    saves: int = 0
    saved_tokens: int = 0
    save_failures: int = 0
    restarts: int = 0


class SavedPrefixes:
    """One runtime's saved prefixes: restore on the request path, save in the background."""

    def __init__(
        self,
        url: str,
        store: PrefixStore,
        model: Path,
        runtime: Runtime | None = None,
        *,
        restore_wait: float = RESTORE_WAIT_S,
    ) -> None:
        self.url = url.rstrip("/")
        self.store = store
        self.runtime = runtime
        self.restore_wait = restore_wait
        digest = model_digest(model)
        forget_gone_models(store, model, digest)
        self.plan = PrefixPlan(digest)
        self.gate = RuntimeGate()
        self.counts = Counts()
        self._observer: CacheObserver | None = None
        self._upstream: UpstreamConfig | None = None
        self._http: Callable[[], httpx.AsyncClient] | None = None
        self._wake = asyncio.Event()
        self._saving = False

    def bind(self, observer: CacheObserver, http: Callable[[], httpx.AsyncClient]) -> None:
        """The observer told of slot actions, and the (opened) client to reach the runtime."""
        self._observer = observer
        self._http = http

    @property
    def busy(self) -> bool:
        """A save is queued or running."""
        return self._saving or self.plan.pending > 0

    # -- on the request path ------------------------------------------------------

    async def hold(
        self, upstream: UpstreamConfig, rw: Rewrite, kind: str, release: Callable[[], None]
    ) -> tuple[Rewrite, Callable[[], None]]:
        """``rw`` as it should be sent to ``upstream``, and what ends its hold there.

        For the runtime: restore its saved prefix first if that is due, and hold
        the runtime until ``release`` is called (by the exchange, when it ends)."""
        if upstream.url.rstrip("/") != self.url or kind in UNCACHED_KINDS:
            return rw, release
        self._upstream = upstream
        arrival = self.plan.arrive(rw.key.hex, self.store.lookup)
        slot = None
        if arrival.restore is not None:
            slot = await self._restore(upstream, rw, arrival)
        else:
            await self.gate.enter()  # before queueing: the save must wait for this request
            queued = arrival.save and worth_saving(rw.view)
            if queued and self.plan.queue(rw.key.hex, priming_body(rw.body)):
                self._wake.set()
        sent = rw if slot is None else replace(rw, body=with_slot(rw.body, slot))
        return sent, _both(release, self.gate.leave)

    async def _restore(self, upstream: UpstreamConfig, rw: Rewrite, arrival: Arrival) -> int | None:
        """Restore ``arrival``'s file into an idle slot with the runtime to itself;
        the slot, or None (the request then goes on as it would have)."""
        try:
            await asyncio.wait_for(self.gate.exclusive(), self.restore_wait)
        except TimeoutError:
            log.info("saved prefix %s not restored: the runtime stayed busy", arrival.name)
            await self.gate.enter()
            return None
        handed = False
        try:
            slot = await self._restore_held(upstream, rw, arrival)
            self.gate.handover()
            handed = True
            return slot
        finally:
            if not handed:  # cancelled: nobody will leave for this request
                self.gate.release()

    async def _restore_held(
        self, upstream: UpstreamConfig, rw: Rewrite, arrival: Arrival
    ) -> int | None:
        started = time.perf_counter()
        try:
            slots = SlotClient(self.url, self._client())
            slot = await slots.idle_slot()
            if slot is None:
                return None
            done = await slots.restore(slot, arrival.name)
        except SlotActionError as exc:  # a file the runtime will not load: forget it
            log.warning("saved prefix %s could not be restored (%s): forgotten", arrival.name, exc)
            self.store.forget(arrival.name)
            self.plan.restore_failed(rw.key.hex)
            self.counts.restore_failures += 1
            return None
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("saved prefix %s could not be restored: %s", arrival.name, exc)
            self.counts.restore_failures += 1
            return None
        self.counts.restores += 1
        self.counts.restored_tokens += done.tokens
        if self._observer is not None:
            self._observer.placed(upstream, stub_chain(rw.body), done.tokens, restored=True)
        log.info(
            "saved prefix %s restored into slot %d: %d tokens in %.2f s",
            arrival.name,
            slot,
            done.tokens,
            time.perf_counter() - started,
        )
        return slot

    # -- in the background -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While the gateway runs: saves made when the runtime is idle, and the
        runtime watched (when the gateway owns it)."""
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._save_loop())]
        if self.runtime is not None:
            tasks.append(loop.create_task(self._watch()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _save_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (job := self.plan.next_save()) is not None:
                self._saving = True
                try:
                    await self._save(job)
                finally:
                    self._saving = False

    async def _save(self, job: PendingSave) -> None:
        """Prime a slot with ``job``'s prefix and save it, the runtime held alone.

        ``/v1/messages`` ignores ``id_slot`` (llama-server picks the slot whose prompt
        shares most with the request, so the priming usually lands on the slot of
        the conversation it came from): every slot's own prompt is kept aside first,
        the slot that ran the priming is found from ``/slots`` after, and its prompt
        is put back once the prefix is saved.
        """
        await self.gate.exclusive()
        started = time.perf_counter()
        kept: set[int] = set()
        slots = SlotClient(self.url, self._client())
        slot: int | None = None
        primed = put_back = False
        before: list[dict[str, Any]] = []
        try:
            before = await slots.slots()
            kept = await self._keep(slots, before)
            response = await self._client().post(
                f"{self.url}/v1/messages",
                content=job.body,
                headers={"content-type": "application/json"},
                timeout=PRIMING_TIMEOUT_S,
            )
            primed = True  # a slot's prompt is the priming request's now
            slot = processed_slot(before, await slots.slots())
            if response.status_code != 200:
                raise SlotActionError(f"priming answered HTTP {response.status_code}")
            if slot is None:
                raise SlotActionError("no one slot ran the priming request")
            done = await slots.save(slot, job.name)
            evicted = self.store.saved(job.name, done.tokens)
        except Exception as exc:  # a failed save must never hurt the gateway
            log.warning("prefix %s could not be saved: %s", job.name, exc)
            self.plan.failed(job)
            self.counts.save_failures += 1
            return
        finally:
            if slot in kept:
                put_back = await self._put_back(slots, slot)
            self._drop_scratch({int(entry["id"]) for entry in before})
            observer, upstream = self._observer, self._upstream
            if primed and not put_back and observer is not None and upstream is not None:
                # the slot holds the prefix and the stub now, not the last request
                observer.placed(upstream, stub_chain(job.body), 0, restored=False)  # size unknown
            self.gate.release()
        self.counts.saves += 1
        self.counts.saved_tokens += done.tokens
        log.info(
            "prefix saved as %s from slot %d: %d tokens, %.1f MiB, in %.2f s%s",
            job.name,
            slot,
            done.tokens,
            done.size / 2**20,
            time.perf_counter() - started,
            f" ({len(evicted)} older evicted)" if evicted else "",
        )

    async def _keep(self, slots: SlotClient, listed: list[dict[str, Any]]) -> set[int]:
        """Save each slot's own prompt to its scratch file; the slots that held one."""
        kept = set()
        for entry in listed:
            slot = int(entry["id"])
            with contextlib.suppress(SlotActionError):
                if (await slots.save(slot, scratch_name(slot))).tokens > 0:
                    kept.add(slot)
        return kept

    async def _put_back(self, slots: SlotClient, slot: int) -> bool:
        """Restore the slot's own prompt from its scratch file."""
        try:
            await slots.restore(slot, scratch_name(slot))
            return True
        except (SlotActionError, httpx.HTTPError) as exc:
            log.info("the slot's prompt could not be put back after priming: %s", exc)
            return False

    def _drop_scratch(self, slots: set[int]) -> None:
        for slot in slots:
            (self.store.directory / scratch_name(slot)).unlink(missing_ok=True)

    async def _watch(self) -> None:
        runtime = self.runtime
        assert runtime is not None
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            if self.gate.held or runtime.is_running():  # held: a restart may be under way
                continue
            log.warning("the bundled runtime stopped: starting it again")
            try:
                await self._restart(runtime.start)
            except Exception:
                log.exception("the bundled runtime could not be started again")
                await asyncio.sleep(RETRY_START_S)

    async def restart_runtime(self) -> None:
        """Restart the runtime (the gateway's own; requests wait meanwhile)."""
        if self.runtime is None:
            raise RuntimeError("the gateway does not own this runtime")
        await self._restart(self.runtime.restart)

    async def _restart(self, start: Callable[[], None]) -> None:
        await self.gate.exclusive()
        try:
            await asyncio.to_thread(start)
        finally:
            self.restarted()
            self.gate.release()

    def restarted(self) -> None:
        """The runtime restarted: it holds nothing; each saved prefix may be restored."""
        self.plan.restarted()
        self.counts.restarts += 1
        if self._observer is not None and self._upstream is not None:
            self._observer.restarted(self._upstream.target)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("SavedPrefixes.bind() was not called")
        return self._http()


def stub_chain(body: bytes) -> Chain:
    """The chain (``core/oracle.py``) of the priming request made from ``body``:
    what a slot holds after a restore or a priming."""
    return prompt_chain(prompt_view(json.loads(priming_body(body)), None))


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def release() -> None:
        try:
            first()
        finally:
            second()

    return release


def model_mark(path: Path) -> ModelMark | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return ModelMark(str(path), stat.st_size, stat.st_mtime_ns)


def forget_gone_models(store: PrefixStore, model: Path, digest: str) -> list[str]:
    """Forget the saved files of models whose file is gone or changed (listed in
    ``models.json`` beside the files), and list ``model`` there; the digests gone."""
    index = store.directory / MODELS_FILE
    known: dict[str, ModelMark] = {}
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            for short, mark in data.items():
                if isinstance(mark, dict):
                    known[str(short)] = ModelMark(
                        str(mark["path"]), int(mark["size"]), int(mark["mtime_ns"])
                    )
    except (OSError, ValueError, KeyError, TypeError):
        known = {}
    current = model_mark(model.resolve())
    short = digest[:12]
    known.pop(short, None)
    gone = gone_models(known, lambda path: model_mark(Path(path)))
    for old in gone:
        known.pop(old)
        for entry in store.entries():
            if entry.name.startswith(f"{old}-"):
                store.forget(entry.name)
        log.info("saved prefixes of model %s forgotten: its file is gone or changed", old)
    if current is not None:
        known[short] = current
    partial = index.with_name(f"{MODELS_FILE}.partial")
    body = {k: {"path": m.path, "size": m.size, "mtime_ns": m.mtime_ns} for k, m in known.items()}
    partial.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    partial.replace(index)
    return gone
