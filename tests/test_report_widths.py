"""``report`` and ``diagnose`` in the terminals people have: 80 and 120 columns.

A table too wide for the terminal leaves columns out (and says which) instead of
cutting every cell to ``sessi…`` / ``78,…``: no cell shown is cut, every number
shown is whole, and what matters most (the session, its requests, the cached
tokens and the hit share; in diagnose the request, its session and the cause)
is there at 80 columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from prefixgate.cli import main
from prefixgate.core.policy import Policy
from prefixgate.core.toolload import ToolLoads
from prefixgate.diagnose import diagnose, render_diagnosis
from prefixgate.replay import load_capture
from prefixgate.report import Prices, build_report, render_report
from prefixgate.reporttables import Column, FittedTable
from prefixgate.store.audit import AuditRecord
from prefixgate.store.sinks import open_audit

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "claude-code-2.1.332.jsonl"
T0 = 1_750_000_000.0
WIDTHS = (80, 120)
ELLIPSIS = "…"


def rec(**kw: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "time": T0,
        "route": "/v1/messages",
        "tenant": "platform-team",
        "session": "s1",
        "model": "claude-opus-4-8",
        "upstream": "paid",
        "policy": "strip",
        "status": 200,
        "agent": "main",
    }
    fields.update(kw)
    return AuditRecord(**fields)


def busy_records() -> list[AuditRecord]:
    """Three long sessions with large counts: every Sessions column filled and wide."""
    records = []
    for s, session in enumerate(("7d0546a6-aaaa", "0f6d535e-bbbb", "778731e4-cccc")):
        for i in range(40):
            records.append(
                rec(
                    session=session,
                    agent=("main", "sub", "side")[i % 3],
                    time=T0 + s * 1000 + i,
                    prompt_tokens=123_456 + i,
                    cached_tokens=None if i == 7 else 120_000 + i,
                    expected_cached_tokens=121_000,
                    oracle_tokens=122_500,
                    runtime_expected_tokens=121_500,
                    ttfb_ms=2_500.0,
                    status=500 if i == 9 else 200,
                    cause="attribution_changed" if i == 1 else None,
                    changed_segment="system[0]" if i == 1 else None,
                )
            )
    return records


def rendered(renderable: Any, width: int) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def lines_of(text: str, title: str, until: str) -> list[str]:
    """The lines of the table titled ``title``, up to the line starting ``until``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip().startswith(until))
    return lines[start:end]


def assert_nothing_cut(text: str, width: int) -> None:
    assert ELLIPSIS not in text, text
    assert max(len(line) for line in text.splitlines()) <= width


@pytest.mark.parametrize("width", WIDTHS)
def test_report_sessions_fit_the_terminal_with_every_number_whole(width: int) -> None:
    report = build_report(busy_records(), {"paid": Prices(input=3.0, cached=0.3, output=15.0)})
    text = rendered(render_report(report), width)
    assert_nothing_cut(text, width)
    table = lines_of(text, "Sessions", "Miss causes")
    rows = [line for line in table if line.strip().startswith(("7d0546a6", "0f6d535e", "778731"))]
    assert len(rows) == 3
    row = next(line for line in rows if line.strip().startswith("7d0546a6"))
    session = report.sessions[[r.session for r in report.sessions].index("7d0546a6-aaaa")]
    t = session.totals
    # what matters at any width: requests, tokens served from cache, hit share vs expected
    assert f" {t.requests:,} " in row
    assert f"{t.cached_tokens:,}" in row
    assert f"{t.hit_share:.1%} / {t.expected_share:.1%}" in row
    assert "money" in "\n".join(table)
    header = " ".join(table[:5])
    if width == 80:
        assert "Left out at this width:" in text
        assert "runtime expected" in text.split("Left out at this width:")[1]
    else:
        # 120 columns hold more than 80 do
        for name in ("agents", "prompt", "of oracle", "time saved"):
            assert name in header, name
        assert f"{t.prompt_tokens:,}" in row


def test_report_at_a_wide_terminal_leaves_nothing_out() -> None:
    report = build_report(busy_records(), {"paid": Prices(input=3.0, cached=0.3, output=15.0)})
    text = rendered(render_report(report), 220)
    assert "Left out" not in text
    table = "\n".join(lines_of(text, "Sessions", "Miss causes"))
    for name in ("tenant", "agents", "errors", "unknown", "runtime", "of oracle", "money"):
        assert name in table, name


def test_empty_columns_are_left_out_before_any_other() -> None:
    records = [r for r in busy_records() if r.status == 200 and r.cached_tokens is not None]
    text = rendered(render_report(build_report(records)), 100)
    assert_nothing_cut(text, 100)
    left_out = text.split("Left out at this width:")[1].split("(")[0]
    assert "errors" in left_out and "unknown" in left_out


def test_a_fitted_table_too_narrow_for_its_fixed_columns_still_renders() -> None:
    table = FittedTable(
        "t", [Column("name", ["x" * 30], right=False), Column("n", ["1,234,567"], drop=1)]
    )
    text = rendered(table, 20)
    assert "Left out at this width: n (" in " ".join(text.split())


@pytest.mark.parametrize("width", WIDTHS)
def test_diagnose_fits_the_terminal_with_every_number_whole(width: int) -> None:
    records = load_capture(CORPUS)
    results = diagnose(records, Policy.STRIP, tool_loads=ToolLoads.INLINE)
    text = rendered(render_diagnosis(results, Policy.STRIP), width)
    table = text.split("\n#")[0]  # the detail lines below the table wrap as prose
    assert_nothing_cut(table, width)
    changed = next(d for d in results if d.cause != "none")
    row = next(line for line in table.splitlines() if line.startswith(f"{changed.index:>3} "))
    assert changed.session is not None and changed.session[:8] in row
    assert changed.cause in row
    assert f"{changed.prompt_tokens:,}" in row
    if width == 120:
        assert "Left out" not in text
        assert changed.key is not None and changed.key[:8] in row


@pytest.mark.parametrize("width", WIDTHS)
def test_report_command_in_a_terminal_of_that_width(
    tmp_path: Path, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "audit.db"
    sink = open_audit(db)
    for record in busy_records():
        sink.record(record)
    sink.close()
    monkeypatch.setenv("COLUMNS", str(width))
    result = CliRunner().invoke(main, ["report", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert_nothing_cut(result.output, width)
    assert "Sessions" in result.output
