"""The report in a terminal: number formats, and tables that fit the console's width.

``render_report`` turns a ``report.Report`` into rich tables (``report.py`` builds
the numbers and re-exports what is here). ``FittedTable`` is a table that
chooses its columns when it is rendered, for the width it is given: every
column when they all fit, else it leaves out columns in a fixed order, the
least useful first (one whose cells are all empty before any other), until
the rest fits without a cell being cut, and says in its caption which ones it
left out. Numbers are never cut to ``12,…``: a column shown is shown whole.
``diagnose`` uses it too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rich.text import TextType

    from prefixgate.report import CauseExample, Report, Totals

__all__ = [
    "UNKNOWN",
    "Column",
    "Entries",
    "FittedTable",
    "format_agents",
    "format_count",
    "format_duration",
    "format_money",
    "format_share",
    "format_time",
    "render_report",
]

UNKNOWN = "unknown"
WIDER = "a wider terminal or --json shows them"
_UNBOUNDED = 100_000


# -- formatting -------------------------------------------------------------


def format_count(value: int | None) -> str:
    return UNKNOWN if value is None else f"{value:,}"


def format_share(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:.1%}"


def format_duration(ms: float | None) -> str:
    """``~350 ms``, ``~4.2 s``, ``~3 min 5 s`` (always an estimate here)."""
    if ms is None:
        return UNKNOWN
    if ms < 1000:
        return f"~{ms:,.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"~{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"~{minutes:,} min {rest} s"


def format_money(value: float | None) -> str:
    """``12.34``, ``0.0042`` for amounts under a cent (in the prices' currency)."""
    if value is None:
        return UNKNOWN
    if 0 < abs(value) < 0.01:
        return f"{value:.4f}"
    return f"{value:,.2f}"


def format_time(epoch: float) -> str:
    """``2025-01-31 14:05:09`` in UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def format_agents(agents: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{name} {count}" for name, count in agents)


# -- tables that fit --------------------------------------------------------


@dataclass(frozen=True, eq=False)  # one column is itself, whatever its cells
class Column:
    """One column of a ``FittedTable``: its header, its cells top to bottom, and
    ``drop``: None for a column always shown, else its place in the order in
    which columns are left out when the table is too wide (1 goes first)."""

    header: str
    cells: Sequence[RenderableType]
    right: bool = True  # numbers are right-aligned
    wrap: bool = False  # only free text may wrap; numbers and names never do
    drop: int | None = None

    @property
    def empty(self) -> bool:
        return all(isinstance(c, str | Text) and not str(c).strip() for c in self.cells)


class Entries:
    """``main 14, side 13, sub 13``: a cell that wraps between entries, never inside one."""

    def __init__(self, entries: Sequence[str]) -> None:
        self.entries = list(entries)

    def lines(self, width: int) -> list[str]:
        lines: list[str] = []
        for index, entry in enumerate(self.entries):
            piece = entry if index == len(self.entries) - 1 else f"{entry},"
            if lines and cell_len(f"{lines[-1]} {piece}") <= width:
                lines[-1] = f"{lines[-1]} {piece}"
            else:
                lines.append(piece)
        return lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text("\n".join(self.lines(options.max_width)), no_wrap=True)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widest = max((cell_len(e) + 1 for e in self.entries), default=0)
        whole = cell_len(", ".join(self.entries))
        return Measurement(min(widest, whole), whole)

    def __str__(self) -> str:
        return ", ".join(self.entries)


def _table(title: TextType | None, caption: str | None = None) -> Table:
    return Table(
        title=title,
        caption=caption,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )


class FittedTable:
    """A table that shows as many of its columns as fit the width it is rendered
    in (see the module docstring); ``hint`` ends the caption that names the
    columns left out."""

    def __init__(
        self,
        title: TextType | None,
        columns: Sequence[Column],
        *,
        hint: str = WIDER,
        total: bool = False,
    ) -> None:
        self.title = title
        self.columns = list(columns)
        self.hint = hint
        self.total = total  # the last row is a total: a rule above it

    def table(self, columns: Sequence[Column], left_out: Sequence[Column] = ()) -> Table:
        caption = None
        if left_out:
            names = ", ".join(c.header.replace("\n", " ") for c in left_out)
            caption = f"Left out at this width: {names} ({self.hint})."
        table = _table(self.title, caption)
        for column in columns:
            table.add_column(
                column.header,
                justify="right" if column.right else "left",
                no_wrap=not column.wrap,
            )
        rows = len(self.columns[0].cells) if self.columns else 0
        for index in range(rows):
            if self.total and index == rows - 1:
                table.add_section()
            table.add_row(*(column.cells[index] for column in columns))
        return table

    def fitted(self, console: Console, width: int) -> Table:
        """The table for ``width``: every column that fits, left out in order."""
        order = sorted(
            (c for c in self.columns if c.drop is not None),
            key=lambda c: (not c.empty, c.drop),
        )
        shown = list(self.columns)
        left_out: list[Column] = []
        for column in [None, *order]:
            if column is not None:
                shown.remove(column)
                left_out.append(column)
            if self.needed(console, shown) <= width:
                break
        in_order = [c for c in self.columns if c in left_out]
        return self.table(shown, in_order)

    def needed(self, console: Console, columns: Sequence[Column]) -> int:
        """The width ``columns`` need with no cell cut: a column that does not wrap
        as wide as its widest cell, one that wraps as wide as its longest word.
        (rich's own minimum counts words in every column, wrapping or not.)"""
        # rich clamps a measurement to the width it is given: measure unbounded
        options = console.options.update_width(_UNBOUNDED)
        probe = self.table(columns)
        for fixed, column in zip(probe.columns, columns, strict=True):
            sizes = [Measurement.get(console, options, c) for c in (column.header, *column.cells)]
            fixed.width = max(m.minimum if column.wrap else m.maximum for m in sizes)
        return Measurement.get(console, options, probe).maximum

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.fitted(console, options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.table(self.columns))


# -- the report -------------------------------------------------------------


def render_report(report: Report) -> RenderableType:
    """ "Sessions" and "Miss causes" tables, what to do about each cause, then a totals line
    (and one on the saved-prefix restores, when there were any)."""
    return Group(
        _sessions_table(report),
        _causes_table(report),
        *_cause_words(report),
        *_lost_table(report.totals),
        *_money_table(report),
        _totals_line(report.totals),
        *_restores_line(report.totals),
    )


def _cause_words(report: Report) -> list[Text]:
    return [Text(f"{row.cause}: {row.words}") for row in report.causes]


# The Sessions columns left out first when the terminal is narrow (a column whose
# cells are all empty goes before any other): what the other columns or the
# totals line already say, then the detail behind the shares.
_SESSION_DROPS = (
    "runtime\nexpected",
    "oracle",
    "expected",
    "tenant",
    "unknown",
    "errors",
    "prompt",
    "agents",
    "of oracle\nreached",
    "time saved\n(estimate)",
)


def _sessions_table(report: Report) -> FittedTable:
    rows = report.sessions
    totals = [row.totals for row in rows]

    def column(header: str, cells: Iterable[RenderableType], **kw: bool) -> Column:
        drop = _SESSION_DROPS.index(header) + 1 if header in _SESSION_DROPS else None
        return Column(header, list(cells), drop=drop, **kw)

    columns = [
        column("session", (Text((r.session or "-")[:8]) for r in rows), right=False),
        column("tenant", (Text(r.tenant) for r in rows), right=False),
        column("agents", (_agents(t) for t in totals), right=False, wrap=True),
        column("requests", (f"{t.requests:,}" for t in totals)),
        column("errors", (f"{t.errors:,}" if t.errors else "" for t in totals)),
        column("unknown", (f"{t.unknown_cached:,}" if t.unknown_cached else "" for t in totals)),
        column("prompt", (format_count(t.prompt_tokens) for t in totals)),
        column("cached\n= saved", (format_count(t.cached_tokens) for t in totals)),
        column("expected", (format_count(t.expected_cached_tokens) for t in totals)),
        column("hit share\nvs expected", (_shares(t) for t in totals)),
        column("oracle", (format_count(t.oracle_tokens) for t in totals)),
        column("runtime\nexpected", (format_count(t.runtime_expected_tokens) for t in totals)),
        column("of oracle\nreached", (format_share(t.oracle_share) for t in totals)),
        column(
            "time saved\n(estimate)", (format_duration(t.time_saved_estimate_ms) for t in totals)
        ),
    ]
    if report.money:
        money = (format_money(t.money_saved) if t.money_saved is not None else "" for t in totals)
        columns.append(column("money\nsaved", money))
    return FittedTable("Sessions", columns, hint="a wider terminal or report --json shows them")


def _agents(t: Totals) -> Entries:
    return Entries([f"{name} {count}" for name, count in t.agents])


def _shares(t: Totals) -> str:
    return f"{format_share(t.hit_share)} / {format_share(t.expected_share)}"


def _causes_table(report: Report) -> Table:
    table = _table("Miss causes")
    table.add_column("cause", no_wrap=True)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("latest example")
    for row in report.causes:
        table.add_row(Text(row.cause), f"{row.count:,}", Text(_example_text(row.example)))
    return table


def _example_text(ex: CauseExample) -> str:
    parts = [(ex.session or "-")[:8], format_time(ex.time)]
    if ex.changed_segment:
        parts.append(ex.changed_segment)
    if ex.cause_detail:
        parts.append(ex.cause_detail)
    return "  ".join(parts)


def _lost_table(t: Totals) -> list[RenderableType]:
    """Tokens lost between oracle and actual, by cause, with what each means."""
    if not t.lost:
        return []
    table = _table("Lost between oracle and actual")
    table.add_column("cause", no_wrap=True)
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("requests", justify="right", no_wrap=True)
    table.add_column("what it means")
    for row in t.lost:
        table.add_row(Text(row.cause), f"{row.tokens:,}", f"{row.requests:,}", Text(row.words))
    return [table]


def _money_table(report: Report) -> list[RenderableType]:
    """Money the cache saved per upstream and model, only where prices are configured."""
    if not report.money:
        return []
    table = _table("Saved at your prices (per million tokens)")
    table.add_column("upstream", no_wrap=True)
    table.add_column("model")
    for name in ("requests", "cached", "input - cached", "saved"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in report.money:
        table.add_row(
            Text(row.upstream),
            Text(row.model or "-"),
            f"{row.requests:,}",
            f"{row.cached_tokens:,}",
            f"{row.price_input:g} - {row.price_cached:g}",
            format_money(row.saved),
        )
    return [table]


def _totals_line(t: Totals) -> Text:
    errors = f", {t.errors:,} failed" if t.errors else ""
    unknown = f", {t.unknown_cached:,} with unknown cache" if t.unknown_cached else ""
    return Text(
        f"Total: {t.requests:,} requests{errors}{unknown}; "
        f"prompt {format_count(t.prompt_tokens)}, "
        f"cached {_with_share(t.cached_tokens, t.hit_share)}, "
        f"expected {_with_share(t.expected_cached_tokens, t.expected_share)}; "
        f"oracle {format_count(t.oracle_tokens)}, "
        f"runtime expected {format_count(t.runtime_expected_tokens)}, "
        f"{format_share(t.oracle_share)} of the oracle reached; "
        f"tokens saved {format_count(t.tokens_saved)}, time saved {_estimate(t)}"
        + (f", money saved {format_money(t.money_saved)}" if t.money_saved is not None else "")
    )


def _restores_line(t: Totals) -> list[Text]:
    """What the saved-prefix restores of the bundled runtime put back, when any did."""
    if t.restored_tokens is None:
        return []
    restores = "restore" if t.restores == 1 else "restores"
    return [
        Text(
            f"saved prefixes: {t.restores:,} {restores}, "
            f"{format_count(t.restored_tokens)} tokens restored"
        )
    ]


def _with_share(tokens: int | None, share: float | None) -> str:
    if share is None:
        return format_count(tokens)
    return f"{format_count(tokens)} ({format_share(share)})"


def _estimate(t: Totals) -> str:
    if t.time_saved_estimate_ms is None:
        return "unknown (no prefill timings)"
    return f"{format_duration(t.time_saved_estimate_ms)} (estimate)"
