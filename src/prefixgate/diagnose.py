"""Diagnose a capture offline: what each request shares with the ones before it.

No server, no runtime: each recorded request goes through the same pipeline
as live traffic (policy, segments, key, session, agent, ``CacheTracker``),
with token counts estimated from text length (``expected_source`` says so).
The result is the cause the gateway would predict before any upstream
answered: a prefix change, or ``none``.

``diagnose(records, policy)`` gives one ``Diagnosis`` per request;
``render_diagnosis`` prints them as a table and ``Diagnosis.to_json`` as one
JSON object per line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from prefixgate.core.errors import PrefixgateError
from prefixgate.core.identity import AgentLabeller, identify
from prefixgate.core.misses import CacheTracker, Owner, expected_tokens
from prefixgate.core.pipeline import RewriteOptions, rewrite
from prefixgate.core.policy import Policy
from prefixgate.core.prompt import PromptView
from prefixgate.core.toolload import ToolLoads
from prefixgate.replay import CaptureRecord
from prefixgate.reporttables import Column, FittedTable

UPSTREAM = "capture"
# the provider of ``serve --upstream URL`` (upstream kind ``anthropic``, named ``default``),
# so an offline key equals the one the gateway records for the same request
PROVIDER = "anthropic:default"
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Diagnosis:
    index: int
    session: str | None
    session_source: str | None
    agent: str | None
    kind: str | None
    model: str | None
    key: str | None
    attribution: dict[str, Any] | None
    prompt_tokens: int | None  # estimated
    expected_cached_tokens: int | None  # estimated
    expected_source: str
    changed_vs_session: str | None  # first changed segment against the session's previous request
    changed_vs_previous: str | None  # ... against the previous request overall
    changed_segment: str | None  # the one that explains the cause
    cause: str
    detail: str | None
    interloper: str | None  # who used the upstream since this session's last request
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def estimate_tokens(view: PromptView) -> dict[str, int]:
    """A rough token count per piece: its length over four, at least one."""
    return {p.digest: max(1, -(-len(p.text) // CHARS_PER_TOKEN)) for p in view.pieces}


def diagnose(
    records: Sequence[CaptureRecord],
    policy: Policy = Policy.STRIP,
    tenant: str = "default",
    provider: str = PROVIDER,
    tool_loads: ToolLoads = ToolLoads.INLINE,
) -> list[Diagnosis]:
    """One ``Diagnosis`` per record, in order, as the gateway would see them.

    ``tool_loads`` is the upstream's tool-load policy: with ``as_sent`` a tool
    loaded through ToolSearch is a ``tool_loaded`` change ahead of the
    conversation; with ``inline`` (the default for local upstreams) it is not.
    """
    tracker, labeller = CacheTracker(), AgentLabeller()
    options = RewriteOptions(
        policy=policy,
        tenant=tenant,
        provider=provider,
        require_max_tokens=False,
        tool_loads=tool_loads,
    )
    out = []
    for record in records:
        try:
            rw = rewrite(record.body, options)
        except PrefixgateError as exc:
            out.append(_failed(record.index, exc.message))
            continue
        headers = {k.lower(): v for k, v in record.headers}
        route = record.path.split("?", 1)[0]
        who = identify(headers, route, rw, tenant, labeller)
        owner = Owner(tenant, who.session, who.agent)
        # as in the gateway: a token count uses no cache, so it is no reference
        remember = who.kind != "count_tokens"
        cmp = tracker.observe(UPSTREAM, owner, rw.view, remember=remember)
        tokens = estimate_tokens(rw.view)
        change = cmp.change
        out.append(
            Diagnosis(
                index=record.index,
                session=who.session,
                session_source=who.session_source,
                agent=who.agent,
                kind=who.kind,
                model=rw.model,
                key=rw.key.hex,
                attribution=dict(rw.attribution.fields) if rw.attribution else None,
                prompt_tokens=sum(tokens.values()),
                expected_cached_tokens=expected_tokens(rw.view, cmp, tokens, None),
                expected_source="estimate",
                changed_vs_session=_segment(cmp.session_change, cmp.has_session_ref),
                changed_vs_previous=_segment(cmp.upstream_change, cmp.has_upstream_ref),
                changed_segment=change.segment if change else None,
                cause=cmp.predicted_cause,
                detail=change.detail if change else None,
                interloper=cmp.interloper,
            )
        )
    return out


def _segment(change: Any, had_reference: bool) -> str | None:
    if not had_reference:
        return None
    return change.segment if change is not None else "none"


def _failed(index: int, message: str) -> Diagnosis:
    return Diagnosis(
        index, None, None, None, None, None, None, None, None, None, "estimate",
        None, None, None, "none", None, None, message,
    )  # fmt: skip


def render_diagnosis(diagnoses: Sequence[Diagnosis], policy: Policy) -> RenderableType:
    """The table (as many columns as the terminal holds, ``reporttables.FittedTable``),
    then a line for each request that missed or failed."""
    title = f"Prefix changes, request by request (policy {policy.value}; tokens estimated)"
    ds = list(diagnoses)
    # drop: the order columns are left out in when the terminal is narrow
    columns = [
        Column("#", [str(d.index) for d in ds]),
        Column("session", [(d.session or "-")[:8] for d in ds], right=False),
        Column("agent", [d.agent or "-" for d in ds], right=False, drop=3),
        Column("key", [(d.key or "-")[:8] for d in ds], right=False, drop=1),
        Column("prompt~", [_num(d.prompt_tokens) for d in ds], drop=6),
        Column("expected~", [_num(d.expected_cached_tokens) for d in ds], drop=4),
        Column("vs session", [d.changed_vs_session or "-" for d in ds], right=False, drop=5),
        Column("vs previous", [d.changed_vs_previous or "-" for d in ds], right=False, drop=2),
        Column("cause", [_cause(d) for d in ds], right=False),
    ]
    table = FittedTable(title, columns, hint="a wider terminal or diagnose --json shows them")
    details = [
        Text(f"#{d.index} {d.cause}: {d.detail or d.error}")
        for d in diagnoses
        if d.cause != "none" or d.error
    ]
    return Group(table, *details)


def _cause(d: Diagnosis) -> Text:
    return Text(d.cause, style="bold red" if d.cause != "none" else "green")


def _num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
