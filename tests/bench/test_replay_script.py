"""bench/replay.py's corpus loading (the replays themselves need the bundled runtime)."""

from __future__ import annotations

import json
from pathlib import Path

from support.benchscripts import load_script

replay = load_script("replay")
CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "claude-code-2.1.332.jsonl"


def test_shrink_keeps_every_request_in_order_with_fewer_tokens() -> None:
    whole = replay.load_records(CORPUS, shrunk=False)
    shrunk = replay.load_records(CORPUS, shrunk=True)
    assert [r.index for r in shrunk] == [r.index for r in whole]
    assert [r.agent for r in shrunk] == [r.agent for r in whole]
    assert sum(len(r.body) for r in shrunk) < 0.4 * sum(len(r.body) for r in whole)
    first, small = json.loads(whole[0].body), json.loads(shrunk[0].body)
    assert [t["name"] for t in small["tools"]] == [t["name"] for t in first["tools"]]


def test_the_flags_parse() -> None:
    args = replay.parse_args(["--shrink", "--no-direct", "--no-litellm"])
    assert (args.shrink, args.no_direct, args.no_litellm) == (True, True, True)
