"""One request's life: the ``Exchange``, reading the body, error responses.

An ``Exchange`` is made when a request arrives (or is refused at the door),
learns what happens to it on the way (its rewrite, the upstream it is sent to,
the observation), is told how it ended (``answered``, ``failed``,
``refused``) and, in ``end``, releases its replica and writes its one audit
record (``store.records.audit_record``), once, whoever ends it: the request
handler's ``finally``, or the stream relay when the answer streams. ``settle``
then does what can wait until the client has the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse

from prefixgate.app.observer import Observation
from prefixgate.config import UpstreamConfig
from prefixgate.core.auth import Tenant
from prefixgate.core.errors import PayloadTooLarge, PrefixgateError
from prefixgate.core.fold import MessageSummary
from prefixgate.core.headers import HeaderRewrite
from prefixgate.core.identity import Identity
from prefixgate.core.pipeline import Rewrite
from prefixgate.core.usage import CacheUsage
from prefixgate.store.audit import AuditRecord
from prefixgate.store.records import Outcome, audit_record

REQUEST_ID_HEADER = "x-prefixgate-request-id"
INTERNAL = "internal error in the gateway; see its log for details"


def error_response(exc: PrefixgateError, request_id: str | None = None) -> JSONResponse:
    """The error as sent to the client; an upstream's error status is kept."""
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return JSONResponse(exc.to_body(), status_code=error_status(exc), headers=headers)


def error_status(exc: PrefixgateError) -> int:
    status = getattr(exc, "upstream_status", exc.status)
    return status if isinstance(status, int) else exc.status


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(f"request body exceeds the gateway's limit max_body_bytes={limit}")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class Observer(Protocol):
    """What an exchange reports to (``CacheObserver``)."""

    def finish(
        self,
        rec: AuditRecord,
        seen: Observation | None,
        *,
        on_commit: Callable[[], None] | None = None,
    ) -> Callable[[], None]: ...


@dataclass
class Exchange:
    """One request from arrival to its audit record (``store.records.Facts``)."""

    route: str
    tenant: str
    session: str | None  # as the client sent it
    observer: Observer
    capture_bodies: bool = False
    principal: Tenant | None = None  # the tenant whose key came with it (with keys)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)
    # learnt on the way, for the record; the code that needs one is handed it
    raw: bytes | None = None
    rewrite: Rewrite | None = None
    upstream: UpstreamConfig | None = None  # the route's, then the replica's it is sent to
    headers: HeaderRewrite = field(default_factory=HeaderRewrite)  # attribution headers
    identity: Identity | None = None  # session, agent, kind (once the body is read)
    seen: Observation | None = None  # compared with the cache model (while it is sent)
    ttfb: float | None = None
    committed: asyncio.Future[None] | None = None  # set once its audit record is on disk
    # how it ended, and what is left to do then
    _outcome: Outcome | None = field(default=None, init=False, repr=False)
    _release: Callable[[], None] | None = field(default=None, init=False, repr=False)
    _after: Callable[[], None] | None = field(default=None, init=False, repr=False)
    _ended: bool = field(default=False, init=False, repr=False)

    @property
    def scoped_session(self) -> str | None:
        """The session as an upstream may see it: never another tenant's."""
        session = self.identity.session if self.identity else None
        if session is not None and self.principal is not None:
            return f"{self.tenant}:{session}"
        return session

    def sent_to(
        self,
        upstream: UpstreamConfig,
        seen: Observation | None,
        release: Callable[[], None] | None,
    ) -> None:
        """It goes to ``upstream`` (one replica); ``release`` ends its hold there.

        ``seen``: its observation, or ``None`` until ``observed`` is told it."""
        self._let_go()
        self.upstream, self.seen, self._release = upstream, seen, release

    def observed(self, seen: Observation) -> None:
        """Its prompt was compared with ``seen.upstream``'s cache model."""
        self.seen = seen

    def let_go(self) -> None:
        """The replica it was sent to failed it: release the hold before the next."""
        self._let_go()

    def answered(
        self,
        status: int,
        summary: MessageSummary | None,
        usage: CacheUsage | None = None,
        error: str | None = None,
    ) -> None:
        """The answer (whole, or a stream that ended; ``error``: how it failed)."""
        self._told(Outcome(status, summary, usage, error))

    def failed(self, status: int, error: str) -> None:
        """No answer: ``error`` says why, ``status`` is what the client got."""
        self._told(Outcome(status, error=error))

    def refused(self, status: int, error: str) -> None:
        """Refused at the door, before the request path."""
        self._told(Outcome(status, error=error, at_door=True))

    def _told(self, outcome: Outcome) -> None:
        if self._outcome is None:  # the first word on it stands
            self._outcome = outcome

    def end(self) -> None:
        """Release its replica and write its one audit record (later calls do nothing).

        What is left for when the client has its answer waits for ``settle``."""
        if self._ended:
            return
        self._ended = True
        self._let_go()
        outcome = self._outcome or Outcome(500, error=INTERNAL)
        rec = audit_record(self, outcome, capture_bodies=self.capture_bodies)
        self.committed = committed = asyncio.get_running_loop().create_future()
        self._after = self.observer.finish(rec, self.seen, on_commit=_setter(committed))

    def settle(self) -> None:
        """The client has its answer (or is gone): the observer's work left from
        ``end`` (the cache model learns the prompt, metrics, the log line), once.

        Called before the gateway reads the client's next request: by the relay
        right after the last bytes, else right after ``end``."""
        after, self._after = self._after, None
        if after is not None:
            after()

    def _let_go(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()

    async def durable(self, timeout: float = 2.0) -> None:
        """Wait (up to ``timeout``) until this request's audit record is committed.

        Called before the last bytes of an answer go out, so a client that got
        its whole answer can count on the record, even if the gateway is then
        killed. A stuck disk delays the answer by ``timeout`` at most.
        """
        committed = self.committed
        if committed is None or committed.done():
            return
        with contextlib.suppress(TimeoutError):  # the future is only ours: no shield
            async with asyncio.timeout(timeout):
                await committed


def _setter(future: asyncio.Future[None]) -> Callable[[], None]:
    """A callback, safe from any thread, that completes ``future``."""
    loop = future.get_loop()

    def done() -> None:
        if not future.done():
            future.set_result(None)

    def on_commit() -> None:
        loop.call_soon_threadsafe(done)

    return on_commit
