"""core/toolload.py: tools loaded through ToolSearch placed where they were loaded."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from prefixgate.core.pipeline import RewriteOptions, rewrite
from prefixgate.core.toolload import (
    ToolLoadResult,
    ToolLoads,
    apply_tool_loads,
    function_line,
)

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
PLACEHOLDER = "DeferredToolPlaceholder"


def tool(name: str, *, deferred: bool = False, description: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "description": description if description is not None else f"The {name} tool — ü.",
        "input_schema": {
            "type": "object",
            "properties": {"x": {"type": "string", "description": "an x"}},
            "required": ["x"],
        },
    }
    if deferred:
        out["defer_loading"] = True
    return out


def first_tools() -> list[dict[str, Any]]:
    # Claude Code 2.1.332's order: built-ins, the placeholder second to last.
    return [
        tool("Bash"),
        tool("Read"),
        tool("ToolSearch"),
        tool(PLACEHOLDER, deferred=True),
        tool("Write"),
    ]


def first_request() -> dict[str, Any]:
    return {
        "model": "claude-opus-5-5",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "<system-reminder>ctx"}]},
            {"role": "system", "content": "# Environment\nDeferred: WebFetch, mcp__demo__echo"},
            {"role": "user", "content": [{"type": "text", "text": "load it"}]},
        ],
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "tools": first_tools(),
        "max_tokens": 32,
        "stream": True,
    }


def load(body: dict[str, Any], name: str, n: int, *, mcp: bool = False) -> dict[str, Any]:
    """The next request after the model loaded ``name`` through ToolSearch, as 2.1.332 sends it."""
    out = copy.deepcopy(body)
    tools = out["tools"]
    definition = tool(name, deferred=True)
    if mcp:  # appended; the placeholder moves behind every other tool
        holder = next(t for t in tools if t["name"] == PLACEHOLDER)
        tools.remove(holder)
        tools.append(holder)
        tools.append(definition)
    else:  # a built-in: inserted in alphabetical order, the placeholder still second to last
        holder = next(t for t in tools if t["name"] == PLACEHOLDER)
        tools.remove(holder)
        at = next((i for i, t in enumerate(tools) if t["name"] > name), len(tools))
        tools.insert(at, definition)
        tools.insert(len(tools) - 1, holder)
    for message in out["messages"]:
        if isinstance(message["content"], list):
            for block in message["content"]:
                block.pop("cache_control", None)
    out["messages"] += [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": f"toolu_{n}",
                    "name": "ToolSearch",
                    "input": {"query": f"select:{name}"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": f"toolu_{n}",
                    "content": [{"type": "tool_reference", "tool_name": name}],
                },
                {"type": "text", "text": "Tool loaded.", "cache_control": {"type": "ephemeral"}},
            ],
        },
    ]
    return out


def encode(body: Any) -> bytes:
    """As Claude Code (JSON.stringify) writes it."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def run(body: dict[str, Any], mode: ToolLoads = ToolLoads.INLINE) -> ToolLoadResult:
    raw = encode(body)
    result = apply_tool_loads(raw, json.loads(raw), mode)
    assert json.loads(result.body) == result.parsed
    return result


def names(tools: list[dict[str, Any]]) -> list[str]:
    return [t["name"] for t in tools]


# --- hand-made bodies


def test_inline_restores_the_first_tools_and_appends_the_loaded_one() -> None:
    a = first_request()
    b = load(a, "WebFetch", 1)
    assert names(b["tools"])[3] == "WebFetch"  # inserted in the middle
    out = run(b)
    assert out.changed
    assert out.parsed["tools"][: len(a["tools"])] == a["tools"]
    assert names(out.parsed["tools"]) == [*names(a["tools"]), "WebFetch"]
    assert out.loaded == ("WebFetch",)
    assert out.moved == ("WebFetch",)
    # byte for byte: the forwarded tools array opens with the previous request's
    old_tools = encode(a["tools"])
    assert old_tools[:-1] + b"," in out.body


def test_inline_only_sends_exactly_the_first_tools() -> None:
    a = first_request()
    out = run(load(a, "WebFetch", 1), ToolLoads.INLINE_ONLY)
    assert out.parsed["tools"] == a["tools"]
    assert b'"tools":' + encode(a["tools"]) in out.body
    assert out.moved == ("WebFetch",)


def test_definition_stands_where_the_reference_stood() -> None:
    b = load(first_request(), "WebFetch", 1)
    out = run(b)
    result, loaded_text = out.parsed["messages"][-1]["content"]
    assert loaded_text == b["messages"][-1]["content"][1]  # "Tool loaded." untouched
    assert result["tool_use_id"] == "toolu_1"
    [block] = result["content"]
    assert block["type"] == "text"
    text = block["text"]
    assert text.startswith("<functions>\n<function>") and text.endswith("</function>\n</functions>")
    definition = json.loads(text.removeprefix("<functions>\n<function>").split("</function>")[0])
    webfetch = tool("WebFetch", deferred=True)
    assert definition == {
        "description": webfetch["description"],
        "name": "WebFetch",
        "parameters": webfetch["input_schema"],
    }
    # the encoding ToolSearch's description promises, keys in that order
    assert text.split("\n")[1] == function_line(webfetch)
    assert list(definition) == ["description", "name", "parameters"]


def test_only_the_changed_arrays_differ() -> None:
    b = load(first_request(), "WebFetch", 1)
    raw = encode(b)
    out = run(b)
    old_content = encode(b["messages"][-1]["content"][0]["content"])
    new_content = encode(out.parsed["messages"][-1]["content"][0]["content"])
    expected = raw.replace(old_content, new_content).replace(
        encode(b["tools"]), encode(out.parsed["tools"])
    )
    assert out.body == expected


def test_client_spacing_escapes_and_numbers_are_kept() -> None:
    b = load(first_request(), "WebFetch", 1)
    b["temperature"] = 1.0
    raw = json.dumps(b, indent=2, ensure_ascii=True).encode().replace(b"1.0", b"1.0E0")
    out = apply_tool_loads(raw, json.loads(raw), ToolLoads.INLINE)
    assert out.changed
    assert json.loads(out.body) == out.parsed
    assert b'"temperature": 1.0E0' in out.body
    text = raw.decode()
    # each kept tool keeps its own bytes (indentation, \u escapes)
    for t in b["tools"]:
        encoded = json.dumps(t, indent=2, ensure_ascii=True).replace("\n", "\n    ")
        assert encoded in text and encoded.encode() in out.body
    # everything ahead of the tools array is the client's, byte for byte
    head = raw[: raw.index(b'"tools"')]
    assert out.body.startswith(head[: head.index(b'"tool_result"')])
    # the new text block is written in the client's style (indented, ASCII escapes)
    assert b"\\u2014" in out.body and b'"type": "text"' in out.body


def test_mcp_load_puts_the_placeholder_back() -> None:
    a = first_request()
    b = load(a, "mcp__demo__echo", 1, mcp=True)
    assert names(b["tools"])[-2:] == [PLACEHOLDER, "mcp__demo__echo"]
    assert names(b["tools"])[-3] == "Write"
    out = run(b)
    assert out.parsed["tools"][: len(a["tools"])] == a["tools"]
    assert out.moved == ()  # it already was at the end
    assert out.loaded == ("mcp__demo__echo",)


def test_two_loads_keep_the_first_tools_and_append_in_load_order() -> None:
    a = first_request()
    b = load(a, "WebFetch", 1)
    c = load(b, "mcp__demo__echo", 2, mcp=True)
    out_b, out_c = run(b), run(c)
    assert names(out_c.parsed["tools"]) == [*names(a["tools"]), "WebFetch", "mcp__demo__echo"]
    assert out_c.parsed["tools"][: len(out_b.parsed["tools"])] == out_b.parsed["tools"]
    # the earlier load renders the same in both requests
    strip = _without_cache_control
    assert strip(out_c.parsed["messages"][: len(b["messages"])]) == strip(out_b.parsed["messages"])
    d = load(c, "CronCreate", 3)  # alphabetically first, loaded last: appended last
    assert names(run(d).parsed["tools"])[-3:] == ["WebFetch", "mcp__demo__echo", "CronCreate"]


def test_several_references_in_one_result_become_one_block() -> None:
    b = load(first_request(), "WebFetch", 1)
    b["tools"].insert(0, tool("CronCreate", deferred=True))
    b["messages"][-1]["content"][0]["content"].insert(
        0, {"type": "tool_reference", "tool_name": "CronCreate"}
    )
    out = run(b)
    [block] = out.parsed["messages"][-1]["content"][0]["content"]
    lines = block["text"].split("\n")
    assert lines[0] == "<functions>" and lines[-1] == "</functions>"
    assert [json.loads(line[10:-11])["name"] for line in lines[1:-1]] == ["CronCreate", "WebFetch"]
    assert out.loaded == ("CronCreate", "WebFetch")


def test_idempotent() -> None:
    c = load(load(first_request(), "WebFetch", 1), "mcp__demo__echo", 2, mcp=True)
    for mode in ToolLoads:
        once = run(c, mode)
        twice = apply_tool_loads(once.body, json.loads(once.body), mode)
        assert twice.body == once.body
        assert not twice.changed


def test_no_load_is_a_no_op() -> None:
    raw = encode(first_request())
    out = apply_tool_loads(raw, json.loads(raw), ToolLoads.INLINE)
    assert out.body is raw
    assert not out.changed and out.loaded == () and out.moved == ()
    assert "no tool loaded" in out.describe()


def test_as_sent_leaves_the_body_alone() -> None:
    b = load(first_request(), "WebFetch", 1)
    raw = encode(b)
    out = apply_tool_loads(raw, json.loads(raw), ToolLoads.AS_SENT)
    assert out.body is raw and not out.changed and out.parsed == b
    assert "as_sent" in out.describe()


def test_input_body_is_not_mutated() -> None:
    b = load(first_request(), "WebFetch", 1)
    before = copy.deepcopy(b)
    apply_tool_loads(encode(b), b, ToolLoads.INLINE)
    assert b == before


@pytest.mark.parametrize(
    "item",
    [
        {"type": "tool_reference"},
        {"type": "tool_reference", "tool_name": 42},
        {"type": "tool_reference", "tool_name": ""},
        {"type": "tool_reference", "tool_name": None},
        {"type": "tool_reference", "tool_name": "NotThere"},
        {"type": "tool_reference", "tool_name": "Read"},  # not deferred: already listed
        "tool_reference",
        7,
    ],
)
def test_malformed_or_unknown_references_are_left_as_sent(item: Any) -> None:
    b = load(first_request(), "WebFetch", 1)
    b["messages"][-1]["content"][0]["content"] = [item]
    raw = encode(b)
    out = apply_tool_loads(raw, json.loads(raw), ToolLoads.INLINE)
    assert out.body == raw and not out.changed
    out.describe()


def test_a_malformed_reference_beside_a_good_one() -> None:
    b = load(first_request(), "WebFetch", 1)
    bad = {"type": "tool_reference", "tool_name": ["x"]}
    b["messages"][-1]["content"][0]["content"].append(bad)
    out = run(b)
    content = out.parsed["messages"][-1]["content"][0]["content"]
    assert content[0]["type"] == "text" and content[1] == bad
    assert out.left == ("['x']",)
    assert "left as sent" in out.describe()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b.update(tools="nope"),
        lambda b: b.update(tools=None),
        lambda b: b["messages"][-1].update(content="a string"),
        lambda b: b["messages"][-1]["content"][0].update(content="a string"),
        lambda b: b["messages"][-1]["content"][0].update(content=None),
        lambda b: b["messages"].append("not a message"),
    ],
)
def test_odd_shapes_do_not_raise(mangle: Any) -> None:
    b = load(first_request(), "WebFetch", 1)
    mangle(b)
    raw = encode(b)
    out = apply_tool_loads(raw, json.loads(raw), ToolLoads.INLINE)
    assert json.loads(out.body) == out.parsed


def test_raw_that_cannot_be_spliced_is_re_encoded() -> None:
    b = load(first_request(), "WebFetch", 1)
    raw = encode(b)
    parsed = json.loads(raw)
    # a caller whose bytes are not this body: still a valid body equal to the result
    out = apply_tool_loads(b"[]", parsed, ToolLoads.INLINE)
    assert json.loads(out.body) == out.parsed
    assert names(out.parsed["tools"])[-1] == "WebFetch"


def test_duplicate_keys_follow_the_parser() -> None:
    b = load(first_request(), "WebFetch", 1)
    raw = encode(b)
    raw = b'{"tools":[],' + raw[1:]  # the last "tools" wins, as in json.loads
    out = apply_tool_loads(raw, json.loads(raw), ToolLoads.INLINE)
    assert json.loads(out.body) == out.parsed
    assert out.body.startswith(b'{"tools":[],')


def test_parse_accepts_dashes_and_names_the_choices() -> None:
    assert ToolLoads.parse("inline-only") is ToolLoads.INLINE_ONLY
    assert ToolLoads.parse(" AS_SENT ") is ToolLoads.AS_SENT
    with pytest.raises(ValueError, match="as_sent"):
        ToolLoads.parse("expand")


# --- through the pipeline


def test_pipeline_applies_the_setting_after_the_attribution_policy() -> None:
    b = load(first_request(), "WebFetch", 1)
    b["system"].insert(
        0, {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.abc;"}
    )
    raw = encode(b)
    out = rewrite(raw)
    assert out.tool_loads is not None and out.tool_loads.loaded == ("WebFetch",)
    assert "x-anthropic-billing-header" not in out.body.decode()
    assert names(json.loads(out.body)["tools"])[-1] == "WebFetch"
    assert json.loads(out.body) == out.parsed
    kept = rewrite(raw, RewriteOptions(tool_loads=ToolLoads.AS_SENT))
    assert kept.tool_loads is not None and not kept.tool_loads.changed
    assert json.loads(kept.body)["tools"] == b["tools"]


def test_pipeline_key_survives_a_load_under_inline_only() -> None:
    a = first_request()
    b = load(a, "WebFetch", 1)
    options = RewriteOptions(tool_loads=ToolLoads.INLINE_ONLY)
    assert rewrite(encode(a), options).key == rewrite(encode(b), options).key


# --- the recorded 2.1.332 corpus


def recorded_sessions() -> list[list[dict[str, Any]]]:
    files = sorted(CORPUS.glob("claude-code-2.1.332*.jsonl"))
    assert files, f"no recorded 2.1.332 corpus in {CORPUS}"
    sessions: dict[str, list[dict[str, Any]]] = {}
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "count_tokens" in record["path"] or record["method"] != "POST":
                continue
            body = json.loads(record["body"])
            if not body.get("tools"):
                continue
            sid = record["headers"].get("x-claude-code-session-id", "-")
            agent = "sub" if "cc_is_subagent" in json.dumps(body.get("system")) else "main"
            sessions.setdefault(f"{path.name}/{sid}/{agent}", []).append(record)
    return list(sessions.values())


def has_reference(body: dict[str, Any]) -> bool:
    return '"tool_reference"' in json.dumps(body)


def test_recorded_loads_keep_the_first_tools() -> None:
    seen = 0
    for session in recorded_sessions():
        first: list[Any] | None = None
        for record in session:
            raw = record["body"].encode("utf-8")
            body = json.loads(raw)
            if first is None:
                first = body["tools"]
            if not has_reference(body):
                continue
            for mode in (ToolLoads.INLINE, ToolLoads.INLINE_ONLY):
                out = apply_tool_loads(raw, body, mode)
                assert json.loads(out.body) == out.parsed
                if not out.loaded:
                    continue
                seen += 1
                assert out.parsed["tools"][: len(first)] == first
                if mode is ToolLoads.INLINE_ONLY:
                    assert out.parsed["tools"] == first
                    assert b'"tools":' + encode(first) in out.body
                if not out.left:
                    assert '"tool_reference"' not in json.dumps(out.parsed["messages"])
                again = apply_tool_loads(out.body, json.loads(out.body), mode)
                assert again.body == out.body
    assert seen, "the recorded corpus has no ToolSearch load"


def test_recorded_request_after_a_load_extends_the_one_before() -> None:
    pairs = 0
    for session in recorded_sessions():
        bodies = [json.loads(r["body"]) for r in session]
        for before, after in itertools.pairwise(bodies):
            if not has_reference(after) or len(after["messages"]) <= len(before["messages"]):
                continue
            a = rewrite(encode(before)).parsed
            b = rewrite(encode(after)).parsed
            assert b["tools"][: len(a["tools"])] == a["tools"]
            # every earlier message renders alike (cache markers move between turns)
            strip = _without_cache_control
            n = len(a["messages"]) - 1
            assert strip(b["messages"][:n]) == strip(a["messages"][:n])
            pairs += 1
    assert pairs


def _without_cache_control(value: Any) -> Any:
    """Cache markers dropped, and a one-text-block list read as its string (same prompt)."""
    if isinstance(value, dict):
        content = value.get("content")
        one = content[0] if isinstance(content, list) and len(content) == 1 else None
        if isinstance(one, dict) and one.get("type") == "text":
            value = {**value, "content": one["text"]}
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(v) for v in value]
    return value
