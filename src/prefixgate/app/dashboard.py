"""A one-page HTML dashboard over the audit: cache reuse over time, misses by cause,
the latest requests, the oracle and what the runtime lost.

``render_dashboard`` is pure and returns one self-contained page (inline CSS and
SVG, no script, nothing fetched). Its totals come from ``report.build_report``,
so the terminal report and the dashboard cannot disagree. Numbers carry hooks
for machines: ``data-total`` / ``data-value`` on the headline totals, ``id`` on
every table and ``data-col`` on the cells of the latest requests.

``dashboard_endpoint`` wraps it in a Starlette endpoint (mounted at
``GET /dashboard``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from prefixgate.report import (
    CACHE_KINDS,
    HIT,
    CauseRow,
    LostRow,
    MoneyRow,
    Prices,
    Report,
    Totals,
    build_report,
    format_count,
    format_duration,
    format_money,
    format_share,
    format_time,
    is_error,
)
from prefixgate.store.audit import AuditRecord

__all__ = ["CHART_POINTS", "dashboard_endpoint", "render_dashboard", "share_points"]

CHART_POINTS = 120
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 960, 300, 48, 16, 36, 40
_ACTUAL, _EXPECTED, _ORACLE = "#2563eb", "#ea580c", "#16a34a"

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#111827;
background:#f9fafb}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.sub{color:#6b7280;margin:0 0 16px}
.stats{display:flex;flex-wrap:wrap;gap:12px;margin:0;padding:0}
.stat{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:10px 14px;min-width:130px}
.stat dt{color:#6b7280;font-size:12px}.stat dd{margin:2px 0 0;font-size:20px;font-weight:600}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:12px;overflow-x:auto}
svg{width:100%;height:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #f3f4f6;white-space:nowrap}
th{color:#6b7280;font-weight:500}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.detail{white-space:normal;min-width:240px;max-width:420px;overflow-wrap:anywhere}
.unknown{color:#9ca3af}tr.error td{background:#fef2f2}.miss{color:#b45309}
.bar{background:#f59e0b;height:14px;border-radius:3px;display:inline-block;vertical-align:middle}
.empty{color:#6b7280;font-style:italic}
"""


def render_dashboard(
    records: Sequence[AuditRecord],
    *,
    title: str = "prefixgate",
    latest: int = 50,
    prices: Mapping[str, Prices] | None = None,
) -> str:
    """The whole page for ``records`` (any order; shown in time order); money
    saved only where ``prices`` (by upstream name) are given."""
    report = build_report(records, prices)
    ordered = sorted(records, key=lambda r: r.time)
    sections = [
        f"<h1>{_e(title)}: prompt-cache reuse</h1>",
        _subtitle(ordered),
        _headline(report.totals),
        "<h2>Hit share over time</h2>",
        f'<div class="card">{_chart(ordered)}</div>',
        "<h2>Misses by cause</h2>",
        f'<div class="card">{_causes(report)}</div>',
        "<h2>Lost between oracle and actual</h2>",
        f'<div class="card">{_lost(report.totals)}</div>',
        *_money(report),
        f"<h2>Latest {min(latest, len(ordered)):,} requests</h2>",
        f'<div class="card">{_latest(ordered, latest)}</div>',
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} dashboard</title><style>{_CSS}</style></head>\n"
        "<body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def dashboard_endpoint(
    source: Callable[[], Sequence[AuditRecord]],
    *,
    title: str = "prefixgate",
    latest: int = 50,
    prices: Mapping[str, Prices] | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint serving ``render_dashboard(source())``, never cached.

    ``source`` (e.g. ``audit.query``) and the rendering run in a worker thread,
    so a slow sink does not hold up the event loop.
    """

    def page() -> str:
        return render_dashboard(source(), title=title, latest=latest, prices=prices)

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(
            await run_in_threadpool(page),
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    return dashboard


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _subtitle(ordered: Sequence[AuditRecord]) -> str:
    if not ordered:
        return '<p class="sub">No requests recorded yet.</p>'
    span = f"{format_time(ordered[0].time)} to {format_time(ordered[-1].time)} UTC"
    return f'<p class="sub">{len(ordered):,} requests, {span}</p>'


# -- headline ---------------------------------------------------------------


def _headline(t: Totals) -> str:
    stats = [
        ("requests", "requests", f"{t.requests:,}", str(t.requests)),
        ("errors", "errors", f"{t.errors:,}", str(t.errors)),
        ("unknown_cached", "cache unknown", f"{t.unknown_cached:,}", str(t.unknown_cached)),
        ("prompt_tokens", "prompt tokens", *_count(t.prompt_tokens)),
        ("cached_tokens", "cached tokens (saved)", *_count(t.cached_tokens)),
        ("expected_cached_tokens", "expected cached", *_count(t.expected_cached_tokens)),
        ("hit_share", "hit share", *_share(t.hit_share)),
        ("expected_share", "expected share", *_share(t.expected_share)),
        ("oracle_tokens", "oracle (any earlier prompt)", *_count(t.oracle_tokens)),
        ("runtime_expected_tokens", "runtime expected", *_count(t.runtime_expected_tokens)),
        ("oracle_share", "of oracle reached", *_share(t.oracle_share)),
        (
            "time_saved_estimate_ms",
            "time saved (estimate)",
            format_duration(t.time_saved_estimate_ms),
            _raw(t.time_saved_estimate_ms),
        ),
        *_optional_stats(t),
    ]
    items = "".join(
        f'<div class="stat"><dt>{_e(label)}</dt>'
        f'<dd data-total="{key}" data-value="{_e(raw)}">{_e(text)}</dd></div>'
        for key, label, text, raw in stats
    )
    return f'<dl class="stats" id="totals">{items}</dl>'


def _optional_stats(t: Totals) -> list[tuple[str, str, str, str]]:
    """Headline figures shown only when known: money saved (prices configured) and
    what saved-prefix restores of the bundled runtime put back (any happened)."""
    stats = []
    if t.money_saved is not None:
        money = format_money(t.money_saved)
        stats.append(("money_saved", "money saved (your prices)", money, _raw(t.money_saved)))
    if t.restored_tokens is not None:
        restores = f"{t.restores:,} restore{'' if t.restores == 1 else 's'}"
        shown = f"{t.restored_tokens:,} ({restores})"
        stats.append(
            ("restored_tokens", "restored (saved prefixes)", shown, str(t.restored_tokens))
        )
    return stats


def _money(report: Report) -> list[str]:
    """Money saved per upstream and model; nothing where no prices are configured."""
    if not report.money:
        return []
    rows = "".join(_money_row(row) for row in report.money)
    head = (
        '<tr><th>upstream</th><th>model</th><th class="num">requests</th>'
        '<th class="num">cached tokens</th><th class="num">input - cached</th>'
        '<th class="num">saved</th></tr>'
    )
    table = f'<table id="money"><thead>{head}</thead><tbody>{rows}</tbody></table>'
    title = "<h2>Saved at your prices (per million tokens)</h2>"
    return [title, f'<div class="card">{table}</div>']


def _money_row(row: MoneyRow) -> str:
    return (
        f"<tr><td>{_e(row.upstream)}</td><td>{_e(row.model or '-')}</td>"
        f'<td class="num">{row.requests:,}</td><td class="num">{row.cached_tokens:,}</td>'
        f'<td class="num">{row.price_input:g} - {row.price_cached:g}</td>'
        f'<td class="num" data-value="{row.saved!r}">{_e(format_money(row.saved))}</td></tr>'
    )


def _count(value: int | None) -> tuple[str, str]:
    return format_count(value), _raw(value)


def _share(value: float | None) -> tuple[str, str]:
    return format_share(value), _raw(value)


def _raw(value: float | None) -> str:
    return "" if value is None else repr(value)


# -- chart ------------------------------------------------------------------


@dataclass(frozen=True)
class SharePoint:
    """One chart point: requests ``first``..``last`` (indexes into the chart's
    requests), their time span and shares (``None`` when unknown)."""

    first: int
    last: int
    start: float
    end: float
    hit: float | None
    expected: float | None
    oracle: float | None = None  # the oracle's share (any earlier prompt on the replica)


def share_points(
    ordered: Sequence[AuditRecord], max_points: int = CHART_POINTS
) -> list[SharePoint]:
    """Hit and expected share per request in time order, or per run of equally
    many requests when there are more than ``max_points``. Only cache requests
    with a known, positive prompt size are charted."""
    charted = [r for r in ordered if r.kind in CACHE_KINDS and r.prompt_tokens]
    size = max(1, math.ceil(len(charted) / max_points))
    points = []
    for first in range(0, len(charted), size):
        bucket = charted[first : first + size]
        measured = [r for r in bucket if r.cached_tokens is not None]
        expected = [r for r in bucket if r.expected_cached_tokens is not None]
        oracle = [r for r in bucket if r.oracle_tokens is not None]
        points.append(
            SharePoint(
                first=first,
                last=first + len(bucket) - 1,
                start=bucket[0].time,
                end=bucket[-1].time,
                hit=_ratio([(r.cached_tokens or 0, r.prompt_tokens or 0) for r in measured]),
                expected=_ratio(
                    [(r.expected_cached_tokens or 0, r.prompt_tokens or 0) for r in expected]
                ),
                oracle=_ratio([(r.oracle_tokens or 0, r.prompt_tokens or 0) for r in oracle]),
            )
        )
    return points


def _ratio(pairs: Sequence[tuple[int, int]]) -> float | None:
    whole = sum(w for _, w in pairs)
    return sum(p for p, _ in pairs) / whole if pairs and whole > 0 else None


def _chart(ordered: Sequence[AuditRecord]) -> str:
    points = share_points(ordered)
    if not points:
        return '<p class="empty">No requests with a known prompt size yet.</p>'
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    step = plot_w / max(1, len(points) - 1)

    def xy(i: int, share: float) -> tuple[float, float]:
        x = _LEFT + (i * step if len(points) > 1 else plot_w / 2)
        return round(x, 1), round(_TOP + plot_h * (1 - min(max(share, 0.0), 1.0)), 1)

    parts = [_grid(plot_w, plot_h), _legend(), _x_labels(points, plot_w)]
    series = (
        ("oracle", _ORACLE, "2 3", [p.oracle for p in points]),
        ("expected", _EXPECTED, "6 4", [p.expected for p in points]),
        ("hit", _ACTUAL, "", [p.hit for p in points]),
    )
    for name, color, dash, values in series:
        if any(v is not None for v in values) or name != "oracle":
            parts.append(_series(name, color, dash, values, xy, points))
    return (
        f'<svg id="share-chart" data-points="{len(points)}" viewBox="0 0 {_W} {_H}" '
        f'width="{_W}" height="{_H}" role="img" aria-label="hit share and expected share '
        f'over time" xmlns="http://www.w3.org/2000/svg" font-size="12" '
        f'font-family="system-ui,sans-serif">{"".join(parts)}</svg>'
    )


def _grid(plot_w: float, plot_h: float) -> str:
    lines = []
    for pct in (0, 25, 50, 75, 100):
        y = round(_TOP + plot_h * (1 - pct / 100), 1)
        lines.append(
            f'<line x1="{_LEFT}" y1="{y}" x2="{_LEFT + plot_w}" y2="{y}" stroke="#e5e7eb"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4}" text-anchor="end" fill="#6b7280">{pct}%</text>'
        )
    return "".join(lines)


def _legend() -> str:
    items = [
        ("actual hit share", _ACTUAL, ""),
        ("expected share", _EXPECTED, "6 4"),
        ("oracle share", _ORACLE, "2 3"),
    ]
    out, x = [], _LEFT
    for label, color, dash in items:
        out.append(
            f'<line x1="{x}" y1="14" x2="{x + 24}" y2="14" stroke="{color}" stroke-width="3" '
            f'stroke-dasharray="{dash}"/><text x="{x + 30}" y="18" fill="#374151">{label}</text>'
        )
        x += 170
    return f'<g class="legend">{"".join(out)}</g>'


def _x_labels(points: Sequence[SharePoint], plot_w: float) -> str:
    y = _H - _BOTTOM + 18
    first, last = points[0], points[-1]
    left = f"#{first.first + 1}  {format_time(first.start)}"
    right = f"#{last.last + 1}  {format_time(last.end)} UTC"
    return (
        f'<text x="{_LEFT}" y="{y}" fill="#6b7280">{_e(left)}</text>'
        f'<text x="{_LEFT + plot_w}" y="{y}" text-anchor="end" fill="#6b7280">{_e(right)}</text>'
        f'<text x="{_LEFT + plot_w / 2}" y="{y + 16}" text-anchor="middle" fill="#6b7280">'
        "requests in time order</text>"
    )


def _series(
    name: str,
    color: str,
    dash: str,
    values: Sequence[float | None],
    xy: Callable[[int, float], tuple[float, float]],
    points: Sequence[SharePoint],
) -> str:
    """A polyline per run of known values (unknown breaks the line), a dot per value."""
    runs: list[list[str]] = [[]]
    dots = []
    for i, value in enumerate(values):
        if value is None:
            runs.append([])
            continue
        x, y = xy(i, value)
        runs[-1].append(f"{x},{y}")
        p = points[i]
        label = f"requests {p.first + 1}-{p.last + 1}" if p.last > p.first else f"#{p.first + 1}"
        dots.append(
            f'<circle cx="{x}" cy="{y}" r="3" fill="{color}"><title>{_e(label)} '
            f"{_e(format_time(p.start))}: {name} {value:.1%}</title></circle>"
        )
    lines = [
        f'<polyline points="{" ".join(run)}" fill="none" stroke="{color}" stroke-width="2" '
        f'stroke-dasharray="{dash}"/>'
        for run in runs
        if len(run) > 1
    ]
    return f'<g class="series" data-series="{name}">{"".join(lines)}{"".join(dots)}</g>'


# -- causes and latest requests ---------------------------------------------


def _causes(report: Report) -> str:
    if not report.causes:
        return '<p class="empty">No misses with a known cause.</p>'
    top = max(row.count for row in report.causes)
    rows = "".join(_cause_row(row, top) for row in report.causes)
    return (
        '<table id="causes"><thead><tr><th>cause</th><th>requests</th>'
        f"<th>what to do</th><th>latest example</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _cause_row(row: CauseRow, top: int) -> str:
    ex = row.example
    width = max(2.0, 240 * row.count / top)
    example = " ".join(
        _e(part)
        for part in ((ex.session or "-")[:8], format_time(ex.time), ex.changed_segment or "")
        if part
    )
    detail = f"<br>{_e(ex.cause_detail)}" if ex.cause_detail else ""
    return (
        f'<tr data-cause="{_e(row.cause)}" data-count="{row.count}">'
        f'<td class="miss">{_e(row.cause)}</td>'
        f'<td><span class="bar" style="width:{width:.0f}px"></span> {row.count:,}</td>'
        f'<td class="words">{_e(row.words)}</td>'
        f'<td class="detail">{example}{detail}</td></tr>'
    )


def _lost(t: Totals) -> str:
    if not t.lost:
        return '<p class="empty">Nothing lost between oracle and actual.</p>'
    top = max(row.tokens for row in t.lost) or 1
    rows = "".join(_lost_row(row, top) for row in t.lost)
    return (
        '<table id="lost"><thead><tr><th>cause</th><th>tokens</th><th>requests</th>'
        f"<th>what it means</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _lost_row(row: LostRow, top: int) -> str:
    width = max(2.0, 240 * row.tokens / top)
    return (
        f'<tr data-cause="{_e(row.cause)}" data-tokens="{row.tokens}" '
        f'data-requests="{row.requests}"><td class="miss">{_e(row.cause)}</td>'
        f'<td><span class="bar" style="width:{width:.0f}px"></span> {row.tokens:,}</td>'
        f'<td class="num">{row.requests:,}</td><td class="words">{_e(row.words)}</td></tr>'
    )


_COLUMNS = (
    ("time", "time (UTC)", ""),
    ("session", "session", ""),
    ("tenant", "tenant", ""),
    ("agent", "agent", ""),
    ("kind", "kind", ""),
    ("model", "model", ""),
    ("status", "status", "num"),
    ("prompt", "prompt", "num"),
    ("cached", "cached", "num"),
    ("expected", "expected", "num"),
    ("oracle", "oracle", "num"),
    ("runtime", "runtime expected", "num"),
    ("lost", "lost by runtime", "num"),
    ("cause", "cause", ""),
    ("detail", "detail", "detail"),
)


def _latest(ordered: Sequence[AuditRecord], limit: int) -> str:
    shown = list(reversed(ordered[-limit:])) if limit > 0 else []
    if not shown:
        return '<p class="empty">No requests.</p>'
    head = "".join(f'<th class="{cls}">{_e(label)}</th>' for _, label, cls in _COLUMNS)
    rows = "".join(_request_row(rec) for rec in shown)
    return f'<table id="requests"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _request_row(rec: AuditRecord) -> str:
    detail = ": ".join(x for x in (rec.changed_segment, rec.cause_detail or rec.error) if x)
    cells: dict[str, tuple[str, str]] = {  # column: (text, extra class)
        "time": (format_time(rec.time), ""),
        "session": ((rec.session or "-")[:8], ""),
        "tenant": (rec.tenant, ""),
        "agent": (rec.agent or "?", ""),
        "kind": (rec.kind, ""),
        "model": (rec.model or "-", ""),
        "status": (str(rec.status), ""),
        "prompt": _token_cell(rec.prompt_tokens),
        "cached": _token_cell(rec.cached_tokens),
        "expected": _token_cell(rec.expected_cached_tokens),
        "oracle": _token_cell(rec.oracle_tokens),
        "runtime": _token_cell(rec.runtime_expected_tokens),
        "lost": _lost_cell(rec),
        "cause": (rec.cause or "-", "miss" if rec.cause not in (None, HIT) else ""),
        "detail": (detail, ""),
    }
    tds = "".join(_cell(col, cls, *cells[col]) for col, _, cls in _COLUMNS)
    return f'<tr class="{"error" if is_error(rec) else ""}">{tds}</tr>'


def _lost_cell(rec: AuditRecord) -> tuple[str, str]:
    """``1,234 evicted``, or ``capacity`` / nothing when the runtime lost nothing."""
    if rec.lost_by_runtime is None:
        return format_count(None), "unknown"
    if rec.lost_by_runtime:
        return f"{rec.lost_by_runtime:,} {rec.lost_cause or ''}".strip(), "miss"
    return ("capacity" if rec.lost_cause == "capacity" else ""), ""


def _token_cell(value: int | None) -> tuple[str, str]:
    return format_count(value), "unknown" if value is None else ""


def _cell(col: str, cls: str, text: str, extra: str) -> str:
    classes = " ".join(c for c in (cls, extra) if c)
    attr = f' class="{classes}"' if classes else ""
    return f'<td data-col="{col}"{attr}>{_e(text)}</td>'
