"""bench/upstream_leg.py against the real stub: both clients read every answer whole."""

from __future__ import annotations

import pytest
from support.benchscripts import load_script

leg = load_script("upstream_leg")


def test_both_clients_post_the_corpus_body_and_the_table_names_the_gap(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert leg.main(["--requests", "20", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "gateway" in out and "bare" in out
    assert "the gateway's client adds" in out


def test_the_table_reads_the_medians() -> None:
    from rich.console import Console

    results = {"gateway": {"wall_ms": 0.3, "cpu_ms": 0.2}, "bare": {"wall_ms": 0.2, "cpu_ms": 0.07}}
    console = Console(width=120, record=True)
    console.print(leg.render(results))
    text = console.export_text()
    assert "0.300" in text and "0.070" in text and "0.130 ms of CPU a request" in text
