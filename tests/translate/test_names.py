"""Tool names for OpenAI-style upstreams: valid names kept, others shortened stably."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixgate.translate.names import MAX_NAME, ToolNames, openai_name

VALID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
PROPERTY = settings(max_examples=300, deadline=None)


def short_hash(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]


@pytest.mark.parametrize(
    "name", ["Read", "mcp__projfs__read_file", "a", "A-b_9", "x" * 64, "_", "-"]
)
def test_valid_names_are_kept(name: str) -> None:
    assert openai_name(name) == name


def test_a_name_one_character_too_long_is_shortened() -> None:
    name = "t" * 65
    assert openai_name(name) == "t" * 55 + "_" + short_hash(name)
    assert len(openai_name(name)) == MAX_NAME


def test_disallowed_characters_become_underscores_and_the_hash_is_of_the_original() -> None:
    assert openai_name("mcp.server/tool name") == "mcp_server_tool_name_" + short_hash(
        "mcp.server/tool name"
    )
    assert openai_name("wetter-äöü") == "wetter-___" + "_" + short_hash("wetter-äöü")


def test_the_empty_name_gets_a_valid_one() -> None:
    assert openai_name("") == "_" + short_hash("")


def test_names_that_differ_after_the_cut_stay_apart() -> None:
    a, b = "n" * 60 + "_alpha", "n" * 60 + "_beta"
    assert openai_name(a) != openai_name(b)
    assert openai_name(a)[:55] == openai_name(b)[:55]


def test_a_seventy_character_name_maps_to_at_most_64_and_back() -> None:
    name = "mcp__a_very_long_server_name_for_tests__" + "and_an_even_longer_tool_name_x"
    assert len(name) == 70
    names = ToolNames.from_tools([{"name": "Read"}, {"name": name}])
    mapped = names.to_openai(name)
    assert len(mapped) <= MAX_NAME
    assert VALID.fullmatch(mapped)
    assert mapped == openai_name(name)
    assert names.to_anthropic(mapped) == name
    assert names.to_openai("Read") == "Read"
    assert names.to_anthropic("Read") == "Read"


@PROPERTY
@given(st.text())
def test_every_name_maps_to_a_valid_stable_name(name: str) -> None:
    mapped = openai_name(name)
    assert VALID.fullmatch(mapped)
    assert openai_name(name) == mapped
    assert openai_name(mapped) == mapped


@PROPERTY
@given(st.lists(st.text(), max_size=8))
def test_from_tools_round_trips_every_name(tool_names: list[str]) -> None:
    names = ToolNames.from_tools([{"name": n, "input_schema": {}} for n in tool_names])
    for name in tool_names:
        mapped = names.to_openai(name)
        assert VALID.fullmatch(mapped)
        assert names.to_anthropic(mapped) == name
    assert len(set(names.to_openai_map.values())) == len(set(tool_names))


@pytest.mark.parametrize(
    "tools",
    [None, "garbage", 3, {"name": "x"}, [1, None, "Read", {"name": 3}, {}, {"type": "x"}]],
)
def test_from_tools_is_lenient(tools: object) -> None:
    names = ToolNames.from_tools(tools)
    assert dict(names.to_openai_map) == {}
    assert dict(names.to_anthropic_map) == {}


def test_unknown_names() -> None:
    names = ToolNames.from_tools([{"name": "Read"}])
    assert names.to_openai("not.listed") == openai_name("not.listed")
    assert names.to_anthropic("never_sent") == "never_sent"
    assert ToolNames().to_openai("a b") == openai_name("a b")


def test_a_collision_is_resolved_deterministically_first_tool_wins() -> None:
    first = "a.b"
    second = openai_name(first)  # a valid name equal to the first one's shortened form
    tools = [{"name": first}, {"name": second}]
    names = ToolNames.from_tools(tools)
    assert names.to_openai(first) == second
    assert names.to_openai(second) != second
    assert VALID.fullmatch(names.to_openai(second))
    assert names.to_anthropic(names.to_openai(first)) == first
    assert names.to_anthropic(names.to_openai(second)) == second
    assert ToolNames.from_tools(tools) == names


def test_duplicate_names_map_once() -> None:
    names = ToolNames.from_tools([{"name": "x.y"}, {"name": "x.y"}])
    assert dict(names.to_openai_map) == {"x.y": openai_name("x.y")}


def test_the_maps_are_read_only_and_the_value_is_hashable() -> None:
    names = ToolNames.from_tools([{"name": "Read"}])
    with pytest.raises(TypeError):
        names.to_openai_map["x"] = "y"  # type: ignore[index]
    assert hash(names) == hash(ToolNames.from_tools([{"name": "Read"}]))
    assert names == ToolNames.from_tools([{"name": "Read"}])


def test_corpus_tool_names_are_all_kept(corpus_directory: Path) -> None:
    files = sorted(corpus_directory.glob("*.jsonl"))
    assert files, f"no corpus files in {corpus_directory}"
    seen = set()
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            for tool in json.loads(json.loads(line)["body"]).get("tools", []):
                seen.add(tool["name"])
    assert seen
    names = ToolNames.from_tools([{"name": n} for n in sorted(seen)])
    assert all(names.to_openai(n) == n for n in seen)
