"""Replay recorded Claude Code requests against an upstream and measure its cache.

The demo and the benchmark share this engine:

``load_capture``   read a recorded ``.jsonl`` file into ``CaptureRecord`` values
``prepare_body``   set ``max_tokens`` in a recorded body, every other byte kept
``replay``         send records in order, time them, read the usage they report
``summarize``      totals over one run (pure)
``miss_reason``    why a request could or could not reuse a prefix, in the words of
                   the gateway's miss causes (pure)
``render_report``  a rich table, one column set per run

Only ``replay`` does I/O, through an ``httpx.AsyncClient`` the caller injects.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Group, RenderableType
from rich.text import Text

from prefixgate.core.attribution import detect
from prefixgate.core.errors import PrefixgateError
from prefixgate.core.fold import MessageSummary, StreamFold, summarize_message
from prefixgate.core.misses import CAUSES
from prefixgate.core.pipeline import RewriteOptions, prompt_parts, rewrite
from prefixgate.core.policy import Policy
from prefixgate.core.prompt import Piece, PromptView, prompt_view
from prefixgate.core.promptdiff import common_pieces, first_change
from prefixgate.core.sse import SSEDecoder
from prefixgate.reporttables import Column as TableColumn
from prefixgate.reporttables import FittedTable
from prefixgate.upstreams.anthropic import HOP_BY_HOP_HEADERS

__all__ = [
    "CaptureRecord",
    "Column",
    "ReplayResult",
    "Summary",
    "forward_headers",
    "load_capture",
    "miss_reason",
    "miss_reasons",
    "prepare_body",
    "render_report",
    "replay",
    "replay_one",
    "request_url",
    "select",
    "summarize",
    "view_of",
]

SESSION_HEADER = "x-claude-code-session-id"
# Labels of the bench's "why" column: a cause of ``core/misses.py``, or one of these two.
HIT = "none"
COLD = "cold"  # nothing was sent before it
ERROR = "error"  # the request failed
LABELS = (COLD, ERROR, *CAUSES)
_MESSAGES_PATH = "/v1/messages"


@dataclass(frozen=True)
class CaptureRecord:
    """One recorded request. ``agent`` is ``main``, ``sub`` (subagent) or
    ``side`` (a request without tools, such as title generation)."""

    index: int
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    session: str
    agent: str = "main"
    model: str = ""

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (any case), if any."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)


@dataclass(frozen=True)
class ReplayResult:
    """What one replayed request cost. ``prompt_tokens`` is input plus cached;
    ``cached_tokens`` is ``None`` when the upstream did not report it."""

    index: int
    session: str
    status: int
    prompt_tokens: int | None
    cached_tokens: int | None
    seconds: float
    ttfb: float | None
    error: str | None = None


@dataclass(frozen=True)
class Summary:
    requests: int
    errors: int
    prompt_tokens: int
    cached_tokens: int
    seconds: float

    @property
    def cached_share(self) -> float:
        """Cached tokens over prompt tokens (0.0 for an empty run)."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


# -- loading and preparing --------------------------------------------------


def load_capture(path: Path | str) -> list[CaptureRecord]:
    """Read a recorded ``.jsonl`` file (one request per line)."""
    records: list[CaptureRecord] = []
    with Path(path).open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                records.append(_record(len(records), json.loads(line)))
    return records


def _record(index: int, raw: Mapping[str, Any]) -> CaptureRecord:
    headers = tuple((str(k), str(v)) for k, v in raw.get("headers", {}).items())
    body_text = raw["body"]
    if isinstance(body_text, str):
        body = body_text.encode("utf-8")
    else:  # a body recorded as a JSON value rather than a string
        body = json.dumps(body_text, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    try:
        parsed = json.loads(body)
    except ValueError:  # record mode also keeps requests the gateway refused
        parsed = None
    if not isinstance(parsed, dict):
        parsed = {}
    session = next((v for k, v in headers if k.lower() == SESSION_HEADER), "")
    return CaptureRecord(
        index=index,
        method=str(raw.get("method", "POST")),
        path=str(raw.get("path", _MESSAGES_PATH)),
        headers=headers,
        body=body,
        session=session,
        agent=_agent(parsed),
        model=str(parsed.get("model", "")),
    )


def _agent(body: Mapping[str, Any]) -> str:
    found = detect(body)
    if found is not None and found.is_subagent:
        return "sub"
    return "main" if body.get("tools") else "side"


def select(records: Sequence[CaptureRecord], spec: str) -> list[CaptureRecord]:
    """Pick records by index: ``"0,1,12"``, ``"0-3,12"`` (ranges inclusive).
    Raises ``ValueError`` for a malformed spec or an index not in ``records``."""
    by_index = {r.index: r for r in records}
    chosen: list[CaptureRecord] = []
    for part in (p.strip() for p in spec.split(",")):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"bad slice {part!r}: expected N or N-M")
        for index in range(int(first), int(last if dash else first) + 1):
            if index not in by_index:
                raise ValueError(f"no request {index} (the file has {len(records)})")
            chosen.append(by_index[index])
    return chosen


_WS = re.compile(r"[ \t\n\r]*")


def prepare_body(body: bytes, max_tokens: int = 1) -> bytes:
    """Return ``body`` with its top-level ``max_tokens`` set to ``max_tokens``.

    Every other byte stays as recorded (key order, spacing, escapes, ``stream``);
    a body without ``max_tokens`` gets it appended as the last key.
    """
    text = body.decode("utf-8")
    spans, closing = _top_level_spans(text)
    value = json.dumps(max_tokens)
    if "max_tokens" in spans:
        start, end = spans["max_tokens"]
        return (text[:start] + value + text[end:]).encode("utf-8")
    comma = "," if spans else ""
    return (text[:closing] + f'{comma}"max_tokens":{value}' + text[closing:]).encode("utf-8")


def _top_level_spans(text: str) -> tuple[dict[str, tuple[int, int]], int]:
    """Map each top-level key to its value's span; also return the closing ``}``."""
    decoder = json.JSONDecoder()
    pos = _skip(text, 0)
    if not text.startswith("{", pos):
        raise ValueError("request body is not a JSON object")
    pos = _skip(text, pos + 1)
    spans: dict[str, tuple[int, int]] = {}
    while not text.startswith("}", pos):
        key, pos = decoder.raw_decode(text, pos)
        pos = _skip(text, pos)
        if not text.startswith(":", pos):
            raise ValueError(f"expected ':' at offset {pos}")
        start = _skip(text, pos + 1)
        _, end = decoder.raw_decode(text, start)
        spans[str(key)] = (start, end)
        pos = _skip(text, end)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)
    return spans, pos


def _skip(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos


# -- sending ----------------------------------------------------------------


def forward_headers(record: CaptureRecord) -> dict[str, str]:
    """The recorded headers minus hop-by-hop ones, ``Host`` and ``Content-Length``."""
    return {k: v for k, v in record.headers if k.lower() not in HOP_BY_HOP_HEADERS}


def request_url(base_url: str, record: CaptureRecord) -> str:
    """``{base_url}/v1/messages``, keeping the recorded query (``?beta=true``)."""
    _, _, query = record.path.partition("?")
    return base_url.rstrip("/") + _MESSAGES_PATH + (f"?{query}" if query else "")


async def replay(
    records: Sequence[CaptureRecord],
    base_url: str,
    *,
    client: httpx.AsyncClient,
    on_start: Callable[[CaptureRecord], None] | None = None,
    on_result: Callable[[ReplayResult], None] | None = None,
    max_tokens: int = 1,
) -> list[ReplayResult]:
    """Send ``records`` one after another and return one result each.

    A transport error or an error status becomes a result with ``error`` set;
    the replay goes on with the next request.
    """
    results = []
    for record in records:
        if on_start is not None:
            on_start(record)
        result = await replay_one(record, base_url, client=client, max_tokens=max_tokens)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


async def replay_one(
    record: CaptureRecord, base_url: str, *, client: httpx.AsyncClient, max_tokens: int = 1
) -> ReplayResult:
    """Send one record and measure it (see ``replay``)."""
    body = prepare_body(record.body, max_tokens)
    started = time.perf_counter()
    try:
        status, ttfb, usage, error = await _exchange(
            client, request_url(base_url, record), forward_headers(record), body, started
        )
    except httpx.HTTPError as exc:
        status, ttfb, usage, error = 0, None, _Usage(), f"{type(exc).__name__}: {exc}"
    return ReplayResult(
        index=record.index,
        session=record.session,
        status=status,
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        seconds=time.perf_counter() - started,
        ttfb=ttfb,
        error=error,
    )


@dataclass(frozen=True)
class _Usage:
    prompt_tokens: int | None = None
    cached_tokens: int | None = None


async def _exchange(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: bytes, started: float
) -> tuple[int, float | None, _Usage, str | None]:
    ttfb: float | None = None
    chunks: list[bytes] = []
    async with client.stream("POST", url, headers=headers, content=body) as response:
        async for chunk in response.aiter_bytes():
            if ttfb is None and chunk:
                ttfb = time.perf_counter() - started
            chunks.append(chunk)
        content_type = response.headers.get("content-type", "")
        status = response.status_code
    data = b"".join(chunks)
    if status >= 400:
        return status, ttfb, _Usage(), f"HTTP {status}: {_clip(data)}"
    if content_type.startswith("text/event-stream"):
        usage, error = _usage_from_sse(data)
    else:
        usage, error = _usage_from_json(data)
    return status, ttfb, usage, error


def _usage_from_json(data: bytes) -> tuple[_Usage, str | None]:
    try:
        payload = json.loads(data)
    except ValueError:
        return _Usage(), f"not JSON: {_clip(data)}"
    if not isinstance(payload, dict):
        return _Usage(), f"unexpected answer: {_clip(data)}"
    return _from_summary(summarize_message(payload))


def _usage_from_sse(data: bytes) -> tuple[_Usage, str | None]:
    decoder = SSEDecoder()
    fold = StreamFold()
    fold.feed_events([*decoder.decode(data), *decoder.flush()])
    return _from_summary(fold.result())


def _from_summary(summary: MessageSummary) -> tuple[_Usage, str | None]:
    if summary.error is not None:
        return _Usage(), f"error: {json.dumps(summary.error)[:300]}"
    usage = summary.usage
    if usage.prompt_tokens is None:
        return _Usage(), "answer reports no usage"
    return _Usage(usage.prompt_tokens, usage.cache_read_input_tokens), None


def _clip(data: bytes, limit: int = 300) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


# -- summaries and reasons (pure) -------------------------------------------


def summarize(results: Sequence[ReplayResult]) -> Summary:
    """Totals over one run; unreported token counts count as zero."""
    return Summary(
        requests=len(results),
        errors=sum(1 for r in results if r.error is not None),
        prompt_tokens=sum(r.prompt_tokens or 0 for r in results),
        cached_tokens=sum(r.cached_tokens or 0 for r in results),
        seconds=sum(r.seconds for r in results),
    )


@functools.lru_cache(maxsize=512)
def view_of(body: bytes, attribution_removed: bool = False) -> PromptView:
    """The prompt model of a recorded body (``core/prompt.py``), as the upstream
    sees it: forwarded as sent, or (``attribution_removed``) as prefixgate
    forwards it to a local upstream by default: block stripped, tools loaded
    through ToolSearch placed where they were loaded."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return PromptView(model="", pieces=())
    if attribution_removed:
        try:
            return rewrite(body, RewriteOptions(require_max_tokens=False)).view
        except PrefixgateError:  # a body the gateway refuses: as sent, less the block
            return prompt_view(*prompt_parts(parsed, detect(parsed), Policy.STRIP))
    return prompt_view(*prompt_parts(parsed, detect(parsed), Policy.PASSTHROUGH))


def _bare(view: PromptView) -> tuple[Piece, ...]:
    return tuple(p for p in view.pieces if p.section != "attribution")


def _best_match(history: Sequence[CaptureRecord], view: PromptView, removed: bool) -> int:
    """Index in ``history`` of the request sharing the longest prefix with
    ``view``; ties go to the longest prefix past the attribution, then to the
    latest."""
    bare = _bare(view)

    def rank(i: int) -> tuple[int, int, int]:
        other = view_of(history[i].body, removed)
        return (common_pieces(other, view), _common_count(_bare(other), bare), i)

    return max(range(len(history)), key=rank)


def _common_count(a: Sequence[Piece], b: Sequence[Piece]) -> int:
    count = 0
    for left, right in zip(a, b, strict=False):
        if (left.name, left.digest) != (right.name, right.digest):
            break
        count += 1
    return count


def _size(pieces: Sequence[Piece]) -> int:
    return sum(len(p.text) for p in pieces)


def _structural(
    history: Sequence[CaptureRecord], record: CaptureRecord, removed: bool
) -> tuple[str, float]:
    """A cause from the bodies alone (``core/misses.py`` words), and the share
    of the prompt (in characters) that a cache holding the best-matching
    earlier request could serve."""
    view = view_of(record.body, removed)
    if not history:
        return COLD, 0.0
    best = history[_best_match(history, view, removed)]
    before = view_of(best.body, removed)
    common = common_pieces(before, view)
    shared = _size(view.pieces[:common]) / max(1, _size(view.pieces))
    other = best.session != record.session or best.agent != record.agent
    change = first_change(before, view, across_sessions=best.session != record.session)
    if change is None or (other and change.section == "messages"):
        return HIT, shared
    return change.cause, shared


def miss_reason(
    history: Sequence[CaptureRecord],
    record: CaptureRecord,
    result: ReplayResult | None = None,
    *,
    attribution_removed: bool = False,
) -> str:
    """Why ``record`` could or could not reuse a cached prefix, as a cause of
    ``core/misses.py`` (the words the gateway, ``diagnose`` and ``report`` use).

    ``history`` holds the requests sent before ``record``, in order. From the
    bodies, against the earlier request sharing the longest prefix: ``cold``
    (nothing was sent before), ``none`` (it extends that request, or shares
    all of its head for a new conversation), or the piece where it stops
    extending it (``attribution_changed``, ``system_prompt_changed``,
    ``environment_changed``, ``deferred_tools_changed``, ``tool_loaded``,
    ``messages_rewritten``, ...). With ``result``: ``error``, and
    ``evicted_by_other_session`` (another session or agent came in between) or
    ``upstream_dropped`` when the bodies say ``none`` but less than half of
    the reusable share came from cache. Set ``attribution_removed`` for runs
    where the upstream never saw the block.
    """
    if result is not None and result.error is not None:
        return ERROR
    label, shared = _structural(history, record, attribution_removed)
    share = _cached_share(result)
    if share is None:
        return label
    if label == "attribution_changed":
        # Some upstreams neutralise (part of) the block: trust the tokens.
        blind, blind_shared = _structural(history, record, True)
        if blind_shared > 0 and share >= 0.5 * blind_shared:
            label, shared = blind, blind_shared
    if label == HIT and share < 0.5 * shared:
        last = history[-1]
        if (last.session, last.agent) != (record.session, record.agent):
            return "evicted_by_other_session"
        return "upstream_dropped"
    return label


def _cached_share(result: ReplayResult | None) -> float | None:
    if result is None or result.cached_tokens is None or not result.prompt_tokens:
        return None
    return result.cached_tokens / result.prompt_tokens


def miss_reasons(
    records: Sequence[CaptureRecord],
    results: Sequence[ReplayResult],
    *,
    attribution_removed: bool = False,
) -> list[str]:
    """``miss_reason`` for every request of one run, in order."""
    return [
        miss_reason(records[:i], record, result, attribution_removed=attribution_removed)
        for i, (record, result) in enumerate(zip(records, results, strict=True))
    ]


# -- rendering --------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One run to show: its name, its results (same order as the records) and
    whether the upstream saw the attribution block."""

    name: str
    results: Sequence[ReplayResult]
    attribution_removed: bool = False


def render_report(records: Sequence[CaptureRecord], columns: Sequence[Column]) -> RenderableType:
    """A table with one row per request and a column set per run, then the
    time of each run relative to the first. Too wide for the terminal, it
    leaves out the session, then the agent (``reporttables.FittedTable``)."""
    reasons = [
        miss_reasons(records, c.results, attribution_removed=c.attribution_removed) for c in columns
    ]
    rows = [_row(record, i, columns, reasons) for i, record in enumerate(records)]
    rows.append(_totals_row(columns))
    cells = list(zip(*rows, strict=True))
    shown = [
        TableColumn("#", cells[0]),
        TableColumn("session", cells[1], right=False, drop=1),
        TableColumn("agent", cells[2], right=False, drop=2),
        TableColumn("prompt", cells[3]),
    ]
    for k, column in enumerate(columns):
        shown.append(TableColumn(f"{column.name}\ncached / s", cells[4 + 2 * k]))
        why = [Text.from_markup(c, style="dim") for c in cells[5 + 2 * k]]
        shown.append(TableColumn("why", why, right=False))
    title = "Prompt tokens served from cache / seconds per request"
    table = FittedTable(title, shown, hint="a wider terminal shows them", total=True)
    return Group(table, *_ratios(columns))


def _row(
    record: CaptureRecord, row: int, columns: Sequence[Column], reasons: Sequence[list[str]]
) -> list[str]:
    first = columns[0].results[row] if columns else None
    prompt = _num(first.prompt_tokens) if first else "-"
    cells = [str(record.index), record.session[:8], record.agent, prompt]
    for column, labels in zip(columns, reasons, strict=True):
        result = column.results[row]
        if result.error is not None:
            cells += [f"[red]{result.status or 'failed'}[/red]", "error"]
            continue
        cells += [f"{_num(result.cached_tokens)} / {result.seconds:.1f}", labels[row]]
    return cells


def _totals_row(columns: Sequence[Column]) -> list[str]:
    first = summarize(columns[0].results) if columns else None
    cells = ["", "", "total", _num(first.prompt_tokens) if first else "-"]
    for column in columns:
        total = summarize(column.results)
        errors = f"{total.errors} failed" if total.errors else ""
        cells += [f"[bold]{total.cached_share:.1%}[/bold] / {total.seconds:.1f}", errors]
    return cells


def _ratios(columns: Sequence[Column]) -> list[Text]:
    if len(columns) < 2:
        return []
    base = summarize(columns[0].results)
    lines = []
    for column in columns[1:]:
        total = summarize(column.results)
        ratio = total.seconds / base.seconds if base.seconds else float("nan")
        lines.append(
            Text(
                f"{column.name}: {total.cached_share:.1%} of prompt tokens from cache "
                f"(vs {base.cached_share:.1%} {columns[0].name}), "
                f"total time {ratio:.2f}x of {columns[0].name}"
            )
        )
    return lines


def _num(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"
