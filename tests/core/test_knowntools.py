"""A tools array sent before is not parsed again (``core/knowntools.py``)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from corpusfiles import CORPUS_FILES, CURRENT_FILES

from prefixgate.core import knowntools, pipeline
from prefixgate.core.errors import InvalidRequest
from prefixgate.core.knowntools import KNOWN_TOOLS, KnownTools
from prefixgate.core.limits import Limits
from prefixgate.core.pipeline import RewriteOptions, parse_request, rewrite_parsed
from prefixgate.core.prompt import prompt_view
from prefixgate.core.toolload import ToolLoads
from prefixgate.translate.request import to_openai

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
TOOL = {
    "name": "Bash",
    "description": "runs a command " + "x" * 5000,
    "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}},
}


def corpus_bodies(names: tuple[str, ...] = (*CORPUS_FILES, *CURRENT_FILES)) -> Iterator[bytes]:
    for name in names:
        for line in (CORPUS / name).read_text().splitlines():
            body = json.loads(line).get("body")
            if isinstance(body, str):
                yield body.encode()


def raw(tools: Any = None, **fields: Any) -> bytes:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    body["tools"] = [TOOL] if tools is None else tools  # last, as the tail stays the same
    return orjson.dumps(body)


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    KNOWN_TOOLS.clear()
    yield
    KNOWN_TOOLS.clear()


@pytest.mark.parametrize("name", [*CORPUS_FILES, *CURRENT_FILES])
def test_every_corpus_body_parses_as_the_standard_library_reads_it_the_second_time(
    name: str,
) -> None:
    bodies = list(corpus_bodies((name,)))
    for body in bodies:
        parse_request(body, require_max_tokens=False)  # remembers its tools
    hits = 0
    for body in bodies:
        hits += KNOWN_TOOLS.split(body) is not None
        assert parse_request(body, require_max_tokens=False) == json.loads(body)
    sent = [orjson.dumps(json.loads(b).get("tools") or []) for b in bodies]
    compact = [
        b for b, t in zip(bodies, sent, strict=True) if len(t) > 4096 and b'"tools":' + t in b
    ]
    assert hits == len(compact)  # the Python-written corpus (spaces) parses whole
    assert hits > 0 or "cch-per-request" in name


def test_a_known_array_comes_back_as_the_remembered_value() -> None:
    first = parse_request(raw())
    second = parse_request(raw(messages=[{"role": "user", "content": "again"}]))
    assert second["tools"] is first["tools"]
    assert second["messages"] == [{"role": "user", "content": "again"}]


def test_the_copy_nested_elsewhere_is_not_taken_for_the_tools() -> None:
    parse_request(raw())  # remembered
    tools = [dict(TOOL, name="Read")]
    body = raw(tools=tools, metadata={"tools": [TOOL]})  # the known bytes, nested
    assert parse_request(body)["tools"] == tools
    assert parse_request(body) == json.loads(body)


def test_a_duplicate_tools_key_keeps_the_last_as_json_does() -> None:
    parse_request(raw())
    body = raw(tools=[]).replace(b'"tools":[]', b'"tools":' + orjson.dumps([TOOL]) + b',"tools":[]')
    assert parse_request(body)["tools"] == []
    body = raw().replace(b'"tools":', b'"tools":[1],"tools":', 1)
    assert KNOWN_TOOLS.split(body) is not None  # the known bytes are there, last
    assert parse_request(body) == json.loads(body)


def test_a_long_integer_beside_a_known_array_is_read_as_the_standard_library_reads_it() -> None:
    parse_request(raw())
    body = raw(metadata={"n": 0}).replace(b'"n":0', b'"n":' + str(2**70).encode())
    assert KNOWN_TOOLS.split(body) is not None
    assert parse_request(body)["metadata"]["n"] == 2**70


def test_the_depth_of_a_known_array_counts() -> None:
    deep: Any = "x" * 5000
    for _ in range(6):
        deep = [deep]
    tools = [dict(TOOL, input_schema={"type": "object", "deep": deep})]
    parse_request(raw(tools=tools))  # depth 1 (body) + 2 (tools, tool) + 1 + 6 = 10
    assert KNOWN_TOOLS.split(raw(tools=tools)) is not None
    with pytest.raises(InvalidRequest, match="max_json_depth"):
        parse_request(raw(tools=tools), limits=Limits(max_json_depth=9))
    assert parse_request(raw(tools=tools), limits=Limits(max_json_depth=10))["tools"] == tools


def test_arrays_sent_in_another_style_or_short_or_with_floats_are_not_remembered() -> None:
    spaced = json.dumps(json.loads(raw())).encode()  # ", " and ": "
    parse_request(spaced)
    parse_request(raw(tools=[{"name": "tiny"}]))
    parse_request(raw(tools=[dict(TOOL, input_schema={"minimum": 0.5})]))
    assert KNOWN_TOOLS._known == []


def test_it_keeps_the_most_recently_used_arrays() -> None:
    known = KnownTools(slots=2, min_bytes=10)
    arrays = [[dict(TOOL, name=f"T{i}")] for i in range(3)]
    for tools in arrays:
        known.remember(raw(tools=tools), tools, 64)
    assert [k.value[0]["name"] for k in known._known] == ["T2", "T1"]
    found = known.split(raw(tools=arrays[1]))
    assert found is not None
    known.found(found[1])
    assert [k.value[0]["name"] for k in known._known] == ["T1", "T2"]
    assert known.encoded(arrays[1]) == orjson.dumps(arrays[1])
    assert known.encoded([dict(TOOL, name="T1")]) is None  # equal is not the same value


def test_nothing_on_the_request_path_changes_a_shared_array() -> None:
    """Requests share a remembered value: the rewrite, the prompt walk, the tool-load
    step and the OpenAI translation must leave it as it was parsed."""
    bodies = list(corpus_bodies())
    for body in bodies:
        parse_request(body, require_max_tokens=False)
    before = [(k.value, copy.deepcopy(k.value)) for k in KNOWN_TOOLS._known]
    assert before
    for body in bodies:
        parsed = parse_request(body, require_max_tokens=False)
        for loads in ToolLoads:
            rw = rewrite_parsed(body, parsed, RewriteOptions(tool_loads=loads))
            prompt_view(rw.parsed, None)
            to_openai(rw.parsed)
    for value, snapshot in before:
        assert value == snapshot


def test_the_placeholder_holds_a_token_made_at_start() -> None:
    assert orjson.dumps(knowntools.PLACEHOLDER_VALUE) == knowntools.PLACEHOLDER
    token = knowntools.PLACEHOLDER_VALUE[0].rsplit(":", 1)[1]
    assert len(token) == 32
    assert pipeline.KNOWN_TOOLS is KNOWN_TOOLS


def test_where_finds_a_remembered_array_only_in_a_body_it_was_found_in() -> None:
    first = raw()
    tools = parse_request(first)["tools"]
    sent = orjson.dumps([TOOL])
    assert KNOWN_TOOLS.where(first, tools) == (first.index(b'"tools":') + 8, sent)
    longer = raw(messages=[{"role": "user", "content": "a longer question"}])
    assert KNOWN_TOOLS.where(longer, tools) == (longer.index(b'"tools":') + 8, sent)
    assert KNOWN_TOOLS.where(raw(tools=[TOOL, TOOL]), tools) is None  # not those bytes there
    assert KNOWN_TOOLS.where(first, copy.deepcopy(tools)) is None  # not the remembered value


@pytest.mark.parametrize("inside", [0, 1, 2])
def test_system_keys_in_a_body_with_a_known_array_are_those_a_full_search_finds(
    inside: int,
) -> None:
    schema = {"type": "object", "properties": {"system": {"type": "string"}}}
    tool = {**TOOL, "input_schema": schema} if inside else TOOL
    tools = [tool] * inside or [TOOL]
    system = [{"type": "text", "text": '"system": quoted, "system" : spaced'}]
    parse_request(raw(tools=tools, system=system))  # remembered
    for body in (
        raw(tools=tools, system=system),
        raw(tools=tools, system=system, metadata={"system": "after"}),
        raw(tools=tools),
    ):
        parsed = parse_request(body)
        assert KNOWN_TOOLS.where(body, parsed["tools"]) is not None
        full = [m.start() for m in re.finditer(rb'"system"\s*:', body)]
        assert pipeline.system_keys(body, parsed["tools"]) == full
        assert len(full) == inside + ("system" in parsed) + body.count(b'"after"')
