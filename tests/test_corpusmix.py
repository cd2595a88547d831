"""The mixed, shrunk corpus: equal stays equal, prefixes stay prefixes, order is kept."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from prefixgate.core.pipeline import RewriteOptions, rewrite
from prefixgate.corpusmix import (
    copy_session,
    cut,
    interleave,
    mixed_corpus,
    session_id,
    sessions,
    shrink,
)

FILES = ("claude-code-2.1.197.jsonl", "claude-code-2.1.197-interactive.jsonl")


@pytest.fixture(scope="module")
def lines(corpus_directory: Any) -> list[dict[str, Any]]:
    out = []
    for name in FILES:
        with (corpus_directory / name).open(encoding="utf-8") as f:
            out += [json.loads(x) for x in f if x.strip()]
    return out


def key(line: dict[str, Any]) -> str:
    return rewrite(line["body"].encode(), RewriteOptions()).key.hex


def test_cut_keeps_short_texts_and_is_a_function_of_the_text() -> None:
    assert cut("short") == "short"
    long = "a" * 600 + "MIDDLE" + "z" * 600
    assert cut(long) == cut(long) and "MIDDLE" not in cut(long)
    assert cut(long).startswith("a" * 600) and cut(long).endswith("z" * 500)
    assert cut(long, 10, 0).startswith("a" * 10 + "\n[... ")
    other = "a" * 600 + "middle" + "z" * 600
    assert cut(other) != cut(long)  # the part cut out still counts


def test_shrunk_requests_are_small_and_still_valid(lines: list[dict[str, Any]]) -> None:
    for line in lines:
        small = shrink(line)
        assert len(small["body"]) < 16_000 < len(line["body"]) or len(line["body"]) < 16_000
        rewrite(small["body"].encode(), RewriteOptions())  # parses, has the fields it needs


def test_shrinking_keeps_prefix_keys_equal_and_different(lines: list[dict[str, Any]]) -> None:
    """Two recorded requests share a stable prefix key exactly when their shrunk ones do."""
    before = [key(x) for x in lines]
    after = [key(shrink(x)) for x in lines]
    for i in range(len(lines)):
        for j in range(i):
            assert (before[i] == before[j]) == (after[i] == after[j]), (i, j)


def test_a_session_still_grows_by_appending(lines: list[dict[str, Any]]) -> None:
    def bare(value: Any) -> Any:  # Claude Code moves its cache_control markers each turn
        if isinstance(value, dict):
            return {k: bare(v) for k, v in value.items() if k != "cache_control"}
        return [bare(v) for v in value] if isinstance(value, list) else value

    for session in sessions(shrink(x) for x in lines):
        mains = [bare(json.loads(x["body"])) for x in session if json.loads(x["body"]).get("tools")]
        for earlier, later in itertools.pairwise(mains):
            if earlier["system"] == later["system"] and len(later["messages"]) > len(
                earlier["messages"]
            ):
                head = later["messages"][: len(earlier["messages"]) - 1]
                assert head == earlier["messages"][:-1]


def test_sessions_group_in_recorded_order(lines: list[dict[str, Any]]) -> None:
    groups = sessions(lines)
    assert sum(len(g) for g in groups) == len(lines)
    assert [len(g) for g in groups] == [4, 4, 2, 2, 2, 11, 3]
    for group in groups:
        assert len({session_id(x) for x in group}) == 1


def test_a_copy_is_a_new_session_with_the_same_prefix(lines: list[dict[str, Any]]) -> None:
    original = sessions(shrink(x) for x in lines)[0]
    copy = copy_session(original, 3, seed=7)
    assert copy == copy_session(original, 3, seed=7)  # deterministic
    assert {session_id(x) for x in copy} != {session_id(x) for x in original}
    assert len({session_id(x) for x in copy}) == 1
    for a, b in zip(original, copy, strict=True):
        assert key(a) == key(b)  # the attribution block is stripped: same stable prefix
        first_a = json.loads(a["body"])["messages"][0]
        first_b = json.loads(b["body"])["messages"][0]
        assert first_a != first_b  # but its own conversation
        assert json.loads(a["body"])["system"][0] != json.loads(b["body"])["system"][0]


def test_interleave_keeps_each_sessions_order() -> None:
    groups = [[{"s": g, "n": n} for n in range(length)] for g, length in enumerate([3, 1, 4, 2])]
    mixed = interleave(groups, seed=1)
    assert len(mixed) == 10
    for g in range(4):
        assert [x["n"] for x in mixed if x["s"] == g] == list(range(len(groups[g])))
    assert mixed != [x for group in groups for x in group]  # actually mixed
    assert interleave(groups, seed=1) == mixed


def test_mixed_corpus_has_the_asked_sessions(lines: list[dict[str, Any]]) -> None:
    mixed = mixed_corpus(lines, 10, seed=3)
    assert len({session_id(x) for x in mixed}) == 10
    assert len(mixed) == sum(len(g) for g in sessions(lines)) + 4 + 4 + 2  # 7 sources, 3 again
