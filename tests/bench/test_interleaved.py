"""bench/interleaved.py against the real stub and two running gateways."""

from __future__ import annotations

import pytest
from support.benchscripts import load_script

interleaved = load_script("interleaved")


def test_two_gateways_and_the_stub_answer_every_body_and_the_table_names_the_gap(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert interleaved.main(["--a", "tree", "--b", "tree", "--requests", "10"]) == 0
    out = capsys.readouterr().out
    assert "direct" in out and "tree" in out
    assert "B minus A, median over the same bodies:" in out


def test_the_paired_difference_is_over_the_same_bodies() -> None:
    from rich.console import Console

    totals = {"direct": [0.2, 0.2, 0.2], "a": [1.0, 3.0, 1.2], "b": [1.1, 2.0, 1.4]}
    assert interleaved.paired(totals) == pytest.approx(0.1)  # not 1.4 - 1.2
    console = Console(width=120, record=True)
    console.print(interleaved.render(totals, {"direct": "stub", "a": "old", "b": "new"}))
    text = console.export_text()
    assert "+1.000" in text and "+1.200" in text and "old" in text
