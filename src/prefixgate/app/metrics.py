"""Prometheus metrics, fed one audit record at a time, served at ``GET /metrics``.

Each app gets a registry of its own (two gateways in one test process do not
share counters). Every series fed by the audit records carries the tenant.

=============================================  ==================================
``prefixgate_requests_total``                  by status, upstream, policy, kind
``prefixgate_prompt_tokens_total``             prompt tokens the upstream counted
                                               (answered messages and probes, as
                                               in the report; not token counts)
``prefixgate_cached_tokens_total``             of which it served from cache
``prefixgate_expected_cached_tokens_total``    what an ideal prefix cache would serve
                                               (the session's and upstream's last)
``prefixgate_oracle_cached_tokens_total``      the longest prefix of any earlier
                                               prompt on the replica (the oracle)
``prefixgate_runtime_expected_tokens_total``   what the modelled runtime holds
``prefixgate_lost_tokens_total``               between oracle and actual, by cause
                                               (``core/oracle.py``; ``capacity``
                                               counts oracle - runtime expected)
``prefixgate_cache_unknown_total``             requests whose cache use was not reported
``prefixgate_cache_misses_total``              by cause (``none`` is not counted)
``prefixgate_attribution_blocks_total``        blocks found, by the policy that handled them
``prefixgate_time_to_first_byte_seconds``      histogram
``prefixgate_request_seconds``                 histogram, whole request
``prefixgate_replica_requests_total``          by replica, for replicated upstreams
``prefixgate_failovers_total``                 requests moved off a replica that
                                               refused or dropped them
``prefixgate_refused_total``                   requests refused at the door, by
                                               status (401, 429, 431; tenant ``-``
                                               when no key matched)
``prefixgate_saved_prefix_restores_total``     requests a saved-prefix restore of
                                               the bundled runtime came right
                                               before (``restored_tokens`` set)
``prefixgate_restored_tokens_total``           tokens of their prompts it restored
=============================================  ==================================

With the bundled runtime's saved prefixes (``app/saved.py``), gateway-wide
series without a tenant, read from them at each scrape:

====================================================  ==================================
``prefixgate_saved_prefix_saves_total``               prefixes saved since the gateway started
``prefixgate_saved_prefix_save_failures_total``       saves that failed
``prefixgate_saved_prefix_restore_failures_total``    restores that failed
``prefixgate_runtime_restarts_total``                 times the runtime was started again
``prefixgate_saved_prefix_bytes``                     gauge: size of the saved files
``prefixgate_saved_prefix_files``                     gauge: number of saved files
====================================================  ==================================

With tenant keys configured, ``/metrics`` needs a key too and shows only the
series of that key's tenant; an admin tenant's key sees every series, the
gateway-wide ones too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response

from prefixgate.report import CACHE_KINDS, is_error, lost_by_cause
from prefixgate.store.audit import AuditRecord

if TYPE_CHECKING:
    from prefixgate.app.saved import SavedPrefixes

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


_UP = ["tenant", "upstream"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._request_series()
        self._token_series()
        self._replica_series()

    def _request_series(self) -> None:
        """Requests by how they ended, at the door, and their times."""
        up = _UP
        self.requests = self._counter(
            "prefixgate_requests",
            "Requests answered, by status, upstream, policy and kind.",
            ["tenant", "status", "upstream", "policy", "kind"],
        )
        self.refusals = self._counter(
            "prefixgate_refused",
            "Requests refused before they were read: no valid key, too many under way, "
            "headers too large.",
            ["tenant", "status"],
        )
        self.blocks = self._counter(
            "prefixgate_attribution_blocks",
            "Attribution blocks found, by the policy that handled them.",
            ["tenant", "policy"],
        )
        self.ttfb = self._histogram(
            "prefixgate_time_to_first_byte_seconds",
            "Time from the request to the first byte of the upstream's answer: its "
            "headers for a whole answer, its first event for a stream.",
            up,
            buckets=_BUCKETS,
        )
        self.total = self._histogram(
            "prefixgate_request_seconds",
            "Time from the request to its last byte.",
            up,
            buckets=_BUCKETS,
        )

    def _token_series(self) -> None:
        """Prompt tokens: served, expected, the oracle, lost, restored; misses."""
        up = _UP
        self.prompt = self._counter(
            "prefixgate_prompt_tokens", "Prompt tokens as the upstream counted them.", up
        )
        self.cached = self._counter(
            "prefixgate_cached_tokens", "Prompt tokens the upstream served from its cache.", up
        )
        self.expected = self._counter(
            "prefixgate_expected_cached_tokens",
            "Prompt tokens an ideal prefix cache on the upstream would have served.",
            up,
        )
        self.oracle = self._counter(
            "prefixgate_oracle_cached_tokens",
            "Prompt tokens shared with any earlier prompt on the same replica (the oracle).",
            up,
        )
        self.runtime_expected = self._counter(
            "prefixgate_runtime_expected_tokens",
            "Prompt tokens the upstream should have served given what it can hold.",
            up,
        )
        self.lost = self._counter(
            "prefixgate_lost_tokens",
            "Prompt tokens between the oracle and what the upstream served, by cause.",
            [*up, "cause"],
        )
        self.unknown = self._counter(
            "prefixgate_cache_unknown", "Requests whose upstream did not report its cache use.", up
        )
        self.misses = self._counter(
            "prefixgate_cache_misses", "Requests that missed the cache, by cause.", [*up, "cause"]
        )
        self.restores = self._counter(
            "prefixgate_saved_prefix_restores",
            "Requests that a restore of a saved prefix into the bundled runtime came right before.",
            up,
        )
        self.restored = self._counter(
            "prefixgate_restored_tokens",
            "Prompt tokens a restore of a saved prefix put in the runtime for them.",
            up,
        )

    def _replica_series(self) -> None:
        """Replicated upstreams: requests by replica, and failovers."""
        self.replica_requests = self._counter(
            "prefixgate_replica_requests",
            "Requests answered, by replica of a replicated upstream.",
            [*_UP, "replica"],
        )
        self.failovers = self._counter(
            "prefixgate_failovers",
            "Requests moved to another replica after this one refused or dropped them.",
            [*_UP, "replica"],
        )

    def watch_prefixes(self, prefixes: SavedPrefixes) -> None:
        """Serve ``prefixes``' gateway-wide figures too, read at each scrape."""
        self.registry.register(_SavedPrefixSeries(prefixes))

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up in a plain dict after the first time
        (prometheus_client checks and locks on every ``labels`` call, and a request
        touches about ten series)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _counter(self, name: str, doc: str, labels: list[str]) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _histogram(
        self, name: str, doc: str, labels: list[str], buckets: tuple[float, ...]
    ) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def refused(self, tenant: str, status: str) -> None:
        self._child(self.refusals, tenant, status).inc()

    def failover(self, tenant: str, upstream: str, replica: str) -> None:
        self._child(self.failovers, tenant, upstream, replica).inc()

    def observe(self, rec: AuditRecord) -> None:
        up = (rec.tenant, rec.upstream or "-")
        self._child(
            self.requests,
            rec.tenant,
            str(rec.status),
            rec.upstream or "-",
            rec.policy or "-",
            rec.kind,
        ).inc()
        if rec.replica:
            self._child(self.replica_requests, *up, rec.replica).inc()
        if rec.attribution_found:
            self._child(self.blocks, rec.tenant, rec.policy or "-").inc()
        if rec.kind in CACHE_KINDS and not is_error(rec):  # as in the report
            self._tokens(rec, up)
        if rec.cause and rec.cause != "none":
            self._child(self.misses, *up, rec.cause).inc()
        if rec.restored_tokens is not None:
            self._child(self.restores, *up).inc()
            self._child(self.restored, *up).inc(rec.restored_tokens)
        if rec.ttfb_ms is not None:
            self._child(self.ttfb, *up).observe(rec.ttfb_ms / 1000)
        if rec.total_ms is not None:
            self._child(self.total, *up).observe(rec.total_ms / 1000)

    def _tokens(self, rec: AuditRecord, up: tuple[str, str]) -> None:
        if rec.prompt_tokens is not None:
            self._child(self.prompt, *up).inc(rec.prompt_tokens)
        if rec.cached_tokens is not None:
            self._child(self.cached, *up).inc(rec.cached_tokens)
        else:
            self._child(self.unknown, *up).inc()
        if rec.expected_cached_tokens is not None:
            self._child(self.expected, *up).inc(rec.expected_cached_tokens)
        if rec.oracle_tokens is not None:
            self._child(self.oracle, *up).inc(rec.oracle_tokens)
        if rec.runtime_expected_tokens is not None:
            self._child(self.runtime_expected, *up).inc(rec.runtime_expected_tokens)
        for cause, tokens in lost_by_cause(rec):
            self._child(self.lost, *up, cause).inc(tokens)

    def exposition(self, tenant: str | None = None) -> bytes:
        """The text format: every series, or only ``tenant``'s."""
        if tenant is None:
            return generate_latest(self.registry)
        view = CollectorRegistry(auto_describe=False)
        view.register(_TenantSeries(self.registry, tenant))
        return generate_latest(view)

    async def endpoint(self, request: Request) -> Response:
        state = request.scope.get("state", {})  # set by the Guard in front
        tenant = state.get("tenant")  # a Tenant, with keys configured
        only = None if tenant is None or tenant.admin else tenant.name
        return Response(self.exposition(only), media_type=CONTENT_TYPE_LATEST)


class _TenantSeries:
    """A registry's samples whose ``tenant`` label is one tenant's."""

    def __init__(self, registry: CollectorRegistry, tenant: str) -> None:
        self._registry = registry
        self._tenant = tenant

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            samples = [s for s in family.samples if s.labels.get("tenant") == self._tenant]
            if samples:
                kept = Metric(family.name, family.documentation, family.type, family.unit)
                kept.samples = samples
                yield kept


class _SavedPrefixSeries:
    """The saved prefixes' counts and files, read when scraped (no tenant label:
    the saves, the files and the runtime are the gateway's, not a tenant's)."""

    def __init__(self, prefixes: SavedPrefixes) -> None:
        self._prefixes = prefixes

    def collect(self) -> Iterator[Metric]:
        counts, store = self._prefixes.counts, self._prefixes.store
        yield CounterMetricFamily(
            "prefixgate_saved_prefix_saves",
            "Prefixes the gateway saved from the bundled runtime since it started.",
            value=counts.saves,
        )
        yield CounterMetricFamily(
            "prefixgate_saved_prefix_save_failures",
            "Saves of a prefix from the bundled runtime that failed.",
            value=counts.save_failures,
        )
        yield CounterMetricFamily(
            "prefixgate_saved_prefix_restore_failures",
            "Restores of a saved prefix into the bundled runtime that failed.",
            value=counts.restore_failures,
        )
        yield CounterMetricFamily(
            "prefixgate_runtime_restarts",
            "Times the bundled runtime was started again (it stopped, or was restarted).",
            value=counts.restarts,
        )
        yield GaugeMetricFamily(
            "prefixgate_saved_prefix_bytes",
            "Bytes of the saved-prefix files on disk.",
            value=store.total,
        )
        yield GaugeMetricFamily(
            "prefixgate_saved_prefix_files",
            "Saved-prefix files on disk.",
            value=len(store.entries()),
        )
