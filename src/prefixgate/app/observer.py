"""Watch the cache: one observation per request, from arrival to audit record.

``begin`` runs on the request path, after the rewrite and before the upstream
is called, so requests are compared in the order they reach the upstream: it
names the session and agent and compares the prompt with the session's and
the upstream's previous ones (``core/misses.py``), with every earlier prompt
on the same replica (the oracle) and with what a runtime of the upstream's
capacity holds (``core/oracle.py``); no I/O, microseconds.

``finish`` runs when the answer is over (or failed). It schedules the rest in
a task of its own so the client never waits for it: count the shared prefix's
tokens (the upstream's tokenizer or an estimate), decide the cause, write the
audit record, update the metrics. ``drain`` waits for those tasks on shutdown;
a task cut short still writes its record, without the expected count.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from prefixgate.app.metrics import Metrics
from prefixgate.config import Settings, UpstreamConfig
from prefixgate.core.identity import AgentLabeller, Identity, identify
from prefixgate.core.misses import (
    CacheTracker,
    Comparison,
    Owner,
    expected_tokens,
    prefix_tokens,
    verdict,
)
from prefixgate.core.oracle import Capacity, Chain, Reach, ReachTracker, judge_loss, prompt_chain
from prefixgate.core.pipeline import Rewrite
from prefixgate.core.side import UNCACHED_KINDS
from prefixgate.store.audit import AuditRecord, AuditSink
from prefixgate.upstreams.http import UpstreamClient
from prefixgate.upstreams.tokenize import TokenCounter, estimate

log = logging.getLogger("prefixgate")


@dataclass(frozen=True)
class Observation:
    """What is known about a request when it is forwarded."""

    identity: Identity
    owner: Owner
    comparison: Comparison
    upstream: UpstreamConfig
    rewrite: Rewrite
    where: str  # the cache it was compared with: the upstream's, or one replica's
    chain: Chain = ()  # the prompt's piece-hash chain (core/oracle.py)
    reach: Reach | None = None  # oracle and runtime model, in pieces


class CacheObserver:
    def __init__(
        self,
        settings: Settings,
        audit: AuditSink,
        metrics: Metrics,
        upstreams: UpstreamClient | None = None,
    ) -> None:
        self.settings = settings
        self.audit = audit
        self.metrics = metrics
        self.upstreams = upstreams or UpstreamClient()  # for the upstreams' tokenizers
        self._tracker = CacheTracker()
        self._reach = ReachTracker()
        self._labeller = AgentLabeller()
        self._counters: dict[str, TokenCounter] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def identify(
        self, headers: Mapping[str, str], route: str, rw: Rewrite, tenant: str
    ) -> Identity:
        """Session, agent and kind of the request (before it is routed)."""
        return identify(headers, route, rw, tenant, self._labeller)

    def begin(
        self, who: Identity, rw: Rewrite, upstream: UpstreamConfig, tenant: str
    ) -> Observation:
        """Compare the prompt with what ``upstream`` (or the replica of it) last held.

        Sessions are the tenant's: the same session id sent by two tenants
        names two sessions."""
        owner = Owner(tenant, who.session, who.agent)
        where = upstream.target
        scope = where if upstream.replica else ""  # a replica holds only its own turns
        comparison = self._tracker.compare(where, owner, rw.view, scope=scope)
        chain = prompt_chain(rw.view)
        floor = max(comparison.session_common, comparison.upstream_common)
        reach = self._reach.reach(where, chain, capacity(upstream), floor=floor)
        return Observation(who, owner, comparison, upstream, rw, where, chain, reach)

    def restarted(self, target: str) -> None:
        """The runtime behind ``target`` (``UpstreamConfig.target``) restarted: what
        it held before is lost there (lost tokens are then named ``restarted``)."""
        self._reach.restarted(target)

    def placed(
        self, upstream: UpstreamConfig, chain: Chain, tokens: int, *, restored: bool
    ) -> None:
        """A slot action loaded ``chain`` (``tokens`` long) into one of ``upstream``'s
        slots: a saved prefix restored (``restored``: the next request's expected
        counts it, and a shortfall is ``partial_restore_refused``), or a priming
        request that replaced the slot's prompt (``app/saved.py``)."""
        self._reach.place(upstream.target, chain, tokens, capacity(upstream), restored=restored)

    def answered(self, seen: Observation) -> None:
        """The upstream has answered ``seen`` in full: it now holds that prompt.

        Called (through ``finish``'s after-work) as soon as the client has the
        answer and before the gateway reads anything more, so a client that
        sends its next request at once is compared with this one.
        """
        if seen.identity.kind not in UNCACHED_KINDS:  # never reached the upstream's cache
            scope = seen.where if seen.upstream.replica else ""
            self._tracker.remember(seen.where, seen.owner, seen.rewrite.view, scope=scope)
            tokens = self._weight(seen)
            self._reach.remember(seen.where, seen.chain, tokens, capacity(seen.upstream))

    def _weight(self, seen: Observation) -> int:
        """The prompt's tokens for the runtime model's RAM cache: the upstream's
        counts when known, else an estimate."""
        pieces = seen.rewrite.view.pieces
        counter = self._counters.get(seen.upstream.url)
        known = counter.known(pieces) if counter is not None else None
        if known is not None:
            return sum(known[0].values())
        return sum(estimate(p.text) for p in pieces)

    def finish(
        self,
        rec: AuditRecord,
        seen: Observation | None,
        *,
        on_commit: Callable[[], None] | None = None,
    ) -> Callable[[], None]:
        """Complete ``rec`` with the cache fields off the request path, then record it.

        ``on_commit``: called (from any thread) once the record is on disk. When
        the cause still needs the upstream's tokenizer, the record is written
        at once without it, and again (same ``request_id``) when complete, so a
        gateway killed meanwhile keeps every answered request.

        Returns what is left for when the client has its answer (the caller
        calls it then, before its next request can be read): the cache model
        learns the prompt the upstream now holds, and the record is counted in
        the metrics and logged (when complete)."""
        learnt = seen if seen is not None and rec.status == 200 and rec.error is None else None
        if seen is None or not self.upstreams.started or seen.identity.kind in UNCACHED_KINDS:
            self._record(rec, on_commit)
            return functools.partial(self._after, learnt, rec)
        known = self.counter(seen.upstream).known(seen.rewrite.view.pieces)
        if known is not None:  # nothing to ask the upstream: finish now
            rec = self._judged(rec, seen, *known)
            self._record(rec, on_commit)
            return functools.partial(self._after, learnt, rec)
        self._record(rec, on_commit)  # provisional: replaced when the count is known
        task = asyncio.get_running_loop().create_task(self._complete(rec, seen))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return functools.partial(self._after, learnt, None)

    def _after(self, learnt: Observation | None, rec: AuditRecord | None) -> None:
        """``finish``'s part for after the answer (see there)."""
        if learnt is not None:
            self.answered(learnt)
        if rec is not None:
            self._observed(rec)

    @property
    def pending(self) -> int:
        """Records still waiting for their token counts."""
        return len(self._tasks)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for records still being completed; cut them short after ``timeout``."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _complete(self, rec: AuditRecord, seen: Observation) -> None:
        tokens: dict[str, int] | None = None
        source: str | None = None
        try:
            tokens, source = await self.counter(seen.upstream).counts(seen.rewrite.view.pieces)
        except Exception:  # a failed count must not lose the record
            log.exception("counting expected cached tokens failed")
        finally:  # also when cancelled at shutdown
            judged = self._judged(rec, seen, tokens, source)
            self._record(judged)
            self._observed(judged)

    def _judged(
        self,
        rec: AuditRecord,
        seen: Observation,
        tokens: dict[str, int] | None,
        source: str | None,
    ) -> AuditRecord:
        """``rec`` with expected cached tokens and the cause filled in."""
        view, cmp = seen.rewrite.view, seen.comparison
        expected = None if tokens is None else expected_tokens(view, cmp, tokens, rec.prompt_tokens)
        ok = rec.status == 200 and rec.error is None
        judged = verdict(cmp, expected, rec.cached_tokens if ok else None)
        oracle = runtime = lost = restored_tokens = None
        lost_cause = None
        if tokens is not None and seen.reach is not None:
            oracle = prefix_tokens(view, seen.reach.oracle, tokens, rec.prompt_tokens)
            runtime = prefix_tokens(view, seen.reach.expected, tokens, rec.prompt_tokens)
            restored = prefix_tokens(view, seen.reach.restored, tokens, rec.prompt_tokens)
            if seen.reach.restored:  # pieces a saved-prefix restore put in the slot for it
                restored_tokens = restored
            actual = rec.cached_tokens if ok else None
            loss = judge_loss(seen.reach, oracle, runtime, actual, restored)
            if loss is not None:
                lost, lost_cause = loss.lost_by_runtime, loss.cause
        return replace(
            rec,
            expected_cached_tokens=expected,
            expected_source=source if expected is not None else None,
            changed_segment=judged.changed_segment,
            cause=judged.cause,
            cause_detail=judged.detail,
            oracle_tokens=oracle,
            runtime_expected_tokens=runtime,
            lost_by_runtime=lost,
            lost_cause=lost_cause,
            restored_tokens=restored_tokens,
        )

    def counter(self, upstream: UpstreamConfig) -> TokenCounter:
        counter = self._counters.get(upstream.url)
        if counter is None:
            client = self.upstreams.http
            counter = self._counters[upstream.url] = TokenCounter(upstream, client)
        return counter

    def _record(self, rec: AuditRecord, on_commit: Callable[[], None] | None = None) -> None:
        try:
            self.audit.record(rec, on_commit)
        except Exception:  # an audit failure must never fail the request
            log.exception("audit record could not be written")
            if on_commit is not None:
                on_commit()

    def _observed(self, rec: AuditRecord) -> None:
        """``rec`` counted in the metrics and logged."""
        try:
            self.metrics.observe(rec)
        except Exception:
            log.exception("metrics could not be updated")
        if log.isEnabledFor(logging.INFO):  # built only when it is written
            log.info("%s", log_line(rec))


def log_line(rec: AuditRecord) -> str:
    parts: list[tuple[str, object]] = [
        ("route", rec.route),
        ("status", rec.status),
        ("session", rec.session[:8] if rec.session else None),
        ("agent", rec.agent),
        ("kind", rec.kind if rec.kind != "message" else None),
        ("model", rec.model),
        ("upstream", rec.upstream),
        ("policy", rec.policy),
        ("attribution", "found" if rec.attribution_found else "none"),
        ("key", rec.key[:12] if rec.key else None),
        ("prompt", rec.prompt_tokens),
        ("cached", rec.cached_tokens if rec.cached_tokens is not None else "unknown"),
        ("expected", rec.expected_cached_tokens),
        ("oracle", rec.oracle_tokens),
        ("runtime_expected", rec.runtime_expected_tokens),
        ("restored", rec.restored_tokens),
        ("cause", rec.cause),
        ("lost", f"{rec.lost_by_runtime}:{rec.lost_cause}" if rec.lost_by_runtime else None),
        ("output", rec.output_tokens),
        ("ms", None if rec.total_ms is None else round(rec.total_ms)),
    ]
    if rec.error:
        parts.append(("error", rec.error))
    return " ".join(f"{k}={v}" for k, v in parts if v is not None)


def capacity(upstream: UpstreamConfig) -> Capacity:
    """What ``upstream``'s runtime can hold, from its ``cache_slots`` / ``cache_tokens``."""
    return Capacity(slots=upstream.cache_slots, tokens=upstream.cache_tokens)
