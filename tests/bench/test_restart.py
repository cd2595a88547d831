"""bench/restart.py's request choice and table (the runs need the bundled runtime)."""

from __future__ import annotations

from pathlib import Path

from support.benchscripts import load_script

restart = load_script("restart")
CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "claude-code-2.1.332.jsonl"


def test_the_first_main_request_is_taken_whole_with_one_token_out() -> None:
    body = restart.first_request(CORPUS)
    assert (body["max_tokens"], body["stream"]) == (1, False)
    assert body["system"] and body["tools"] and body["messages"]


def test_the_table_names_the_share_of_the_saved_prefix_served() -> None:
    row = {
        "corpus": "claude-code-2.1.332.jsonl",
        "prompt_tokens": 20_000,
        "saved_tokens": 16_000,
        "saved_bytes": 300 * 2**20,
        "cold_cached": 0,
        "cold_seconds": 75.0,
        "restored_cached": 15_990,
        "restored_seconds": 20.5,
        "share_of_saved": 15_990 / 16_000,
    }
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(restart.render([row]))
    text = console.export_text()
    assert "2.1.332" in text and "15,990, 20.5 s" in text and "99.9%" in text
    assert "0, 75.0 s" in text and "16,000 (300 MiB)" in text
