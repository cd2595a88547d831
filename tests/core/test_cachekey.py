"""The stable prefix cache key: what moves it, what never does, and the corpus."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixgate.core.attribution import HEADER_NAME
from prefixgate.core.cachekey import ADAPTER_VERSION, PromptCacheKey, build_key
from prefixgate.core.canonical import chain, digest
from prefixgate.core.pipeline import RewriteOptions, rewrite
from prefixgate.core.policy import Policy
from prefixgate.core.segments import split, without_cache_control
from prefixgate.replay import CaptureRecord, load_capture

# Each example builds and rewrites several whole requests: fewer examples suffice,
# fewest for the properties that change one part.
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ONE_CHANGE = settings(PROPERTY, max_examples=50)
HEX = "0123456789abcdef"
EPHEMERAL = {"type": "ephemeral"}


def key_of(body: dict[str, Any], policy: Policy = Policy.STRIP) -> PromptCacheKey:
    return rewrite(json.dumps(body).encode(), RewriteOptions(policy=policy)).key


# ------------------------------------------------------------------ build_key


def test_build_key_carries_every_field() -> None:
    seg = split(
        {
            "system": "s",
            "tools": [{"name": "Bash"}, {"name": "mcp__a__b"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "<system-reminder>x"}]}
            ],
        },
        None,
    )
    key = build_key(seg, provider="p", model="m", tenant="t", policy="strip")
    assert asdict(key) == {
        "provider": "p",
        "model": "m",
        "adapter_version": ADAPTER_VERSION,
        "tenant": "t",
        "policy": "strip",
        "system_hash": seg.system,
        "tool_schema_hash": seg.tools_hash,
        "mcp_descriptor_hash": seg.mcp_tools_hash,
        "deferred_tools_hash": chain([]),
        "project_context_hash": seg.project_context,
        "environment_hash": chain([]),
    }
    assert key.hex == digest(asdict(key))
    assert build_key(seg.view, provider="p", model="m", tenant="t", policy="strip") == key
    assert len(key.hex) == 64


@pytest.mark.parametrize(
    "field",
    [
        "provider",
        "model",
        "adapter_version",
        "tenant",
        "policy",
        "system_hash",
        "tool_schema_hash",
        "mcp_descriptor_hash",
        "deferred_tools_hash",
        "project_context_hash",
        "environment_hash",
    ],
)
def test_every_key_field_moves_the_hex(field: str) -> None:
    key = build_key(split({}, None), provider="p", model="m", tenant="t", policy="strip")
    changed = replace(key, **{field: getattr(key, field) + "x"})
    assert changed.hex != key.hex


def test_the_key_holds_no_message_digest() -> None:
    seg = split({"messages": [{"role": "user", "content": "a"}]}, None)
    other = split({"messages": [{"role": "user", "content": "b"}]}, None)
    assert seg.messages != other.messages
    k1 = build_key(seg, provider="p", model="m", tenant="t", policy="strip")
    k2 = build_key(other, provider="p", model="m", tenant="t", policy="strip")
    assert k1 == k2


# --------------------------------------------------------------------- corpus


def keys(records: list[Any]) -> list[PromptCacheKey]:
    return [rewrite(r.raw).key for r in records]


def groups(values: list[Any]) -> list[list[int]]:
    """Indices grouped by equal value, in order of first appearance."""
    out: dict[Any, list[int]] = {}
    for i, value in enumerate(values):
        out.setdefault(value, []).append(i)
    return list(out.values())


def test_every_corpus_request_has_its_block_detected_and_stripped(
    all_records: list[Any],
) -> None:
    assert len(all_records) == 42
    for record in all_records:
        out = rewrite(record.raw)
        assert out.attribution is not None, record.label
        assert out.attribution.fields["cc_version"].startswith("2.1.197."), record.label
        assert out.changed is True
        forwarded = json.loads(out.body)
        assert forwarded["system"] == record.body["system"][1:], record.label
        assert HEADER_NAME not in forwarded["system"][0]["text"]


def test_plain_corpus_sessions_collapse_to_four_keys(plain_records: list[Any]) -> None:
    ks = keys(plain_records)
    assert groups([k.hex for k in ks]) == [
        [0, 1, 4, 7, 12, 13],  # main agent, three sessions with three cc_version suffixes
        [2, 3],  # --continue: model line and one tool description re-rendered
        [5, 6],  # the subagent
        [8, 9, 10, 11],  # two sessions with the MCP server
    ]
    versions = {plain_records[i].body["system"][0]["text"] for i in (0, 4, 12)}
    assert len(versions) == 3  # the blocks differ, the keys do not
    # Without stripping, those three would not share a system hash.
    unstripped = {split(plain_records[i].body, None).system for i in (0, 4, 12)}
    assert len(unstripped) == 3


def test_plain_corpus_key_differences_are_named_precisely(plain_records: list[Any]) -> None:
    ks = keys(plain_records)
    main, cont, sub, mcp = ks[0], ks[2], ks[5], ks[8]

    def differing(a: PromptCacheKey, b: PromptCacheKey) -> set[str]:
        return {f for f, v in asdict(a).items() if asdict(b)[f] != v}

    # --continue re-renders the model line, in the environment section of the system block
    assert differing(main, cont) == {"environment_hash", "tool_schema_hash"}
    assert differing(main, mcp) == {"mcp_descriptor_hash"}
    # the subagent's system prompt has no environment section of its own
    assert differing(main, sub) == {"system_hash", "tool_schema_hash", "environment_hash"}
    assert len({k.project_context_hash for k in ks}) == 1
    assert main.mcp_descriptor_hash == sub.mcp_descriptor_hash == cont.mcp_descriptor_hash
    mcp_names = [name for name, _ in rewrite(plain_records[8].raw).segments.mcp_tools]
    assert mcp_names == ["mcp__projfs__list_dir", "mcp__projfs__read_text"]
    # --continue: exactly one built-in tool description differs
    first = dict(rewrite(plain_records[0].raw).segments.tools)
    cont_tools = dict(rewrite(plain_records[2].raw).segments.tools)
    assert first.keys() == cont_tools.keys()
    assert [n for n in first if first[n] != cont_tools[n]] == ["Bash"]


def test_cch_per_request_file_gives_the_same_keys_as_the_plain_file(
    plain_records: list[Any], cch_records: list[Any]
) -> None:
    for plain, cch in zip(plain_records, cch_records, strict=True):
        a, b = rewrite(plain.raw), rewrite(cch.raw)
        assert a.attribution is not None and b.attribution is not None
        assert "cch" not in a.attribution.fields
        assert "cch" in b.attribution.fields
        assert a.key == b.key, plain.label
        assert a.segments == b.segments, plain.label
    cchs = [rewrite(r.raw).attribution.fields["cch"] for r in cch_records]  # type: ignore[union-attr]
    assert len(set(cchs)) == len(cchs)  # a new value on every request


@pytest.mark.parametrize("policy", list(Policy))
def test_plain_and_cch_files_agree_under_every_policy(
    plain_records: list[Any], cch_records: list[Any], policy: Policy
) -> None:
    options = RewriteOptions(policy=policy)
    for plain, cch in zip(plain_records, cch_records, strict=True):
        assert rewrite(plain.raw, options).key == rewrite(cch.raw, options).key


def test_interactive_corpus_collapses_to_three_keys(interactive_records: list[Any]) -> None:
    ks = keys(interactive_records)
    assert groups([k.hex for k in ks]) == [
        [0, 3, 8, 11],  # title side requests, each with its own cc_version suffix
        [1, 2, 4, 7, 9, 10, 12, 13],  # main agent of both sessions
        [5, 6],  # the subagent
    ]
    suffixes = {interactive_records[i].body["system"][0]["text"] for i in (0, 3, 8, 11)}
    assert len(suffixes) == 4
    sessions = {interactive_records[i].body["system"][0]["text"] for i in (1, 12)}
    assert len(sessions) == 2
    title = interactive_records[0].body
    assert "tools" not in title or title["tools"] == []
    assert ks[0].tool_schema_hash != ks[1].tool_schema_hash


def test_subagent_tools_are_the_same_for_both_clients(
    plain_records: list[Any], interactive_records: list[Any]
) -> None:
    sdk_sub, cli_sub = rewrite(plain_records[5].raw), rewrite(interactive_records[5].raw)
    assert sdk_sub.attribution is not None and sdk_sub.attribution.is_subagent
    assert cli_sub.attribution is not None and cli_sub.attribution.is_subagent
    assert sdk_sub.key.tool_schema_hash == cli_sub.key.tool_schema_hash
    assert sdk_sub.key.system_hash != cli_sub.key.system_hash


# ----------------------------------------------------------------- properties

TEXT = st.text(max_size=16)
TOOL_NAME = st.text(min_size=1, max_size=10).filter(lambda s: not s.startswith("mcp__"))
MCP_NAME = st.builds(
    "mcp__{}__{}".format,
    st.text(alphabet="abcdefgh_", min_size=1, max_size=6),
    st.text(alphabet="abcdefgh_", min_size=1, max_size=6),
)


def tool(name: str, description: str, props: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "input_schema": {
            "type": "object",
            "properties": {k: {"type": t} for k, t in props.items()},
        },
    }


TOOLS = st.lists(
    st.builds(
        tool, TOOL_NAME, TEXT, st.dictionaries(TEXT, st.sampled_from(["string", "int"]), max_size=2)
    ),
    min_size=1,
    max_size=3,
)
MCP_TOOLS = st.lists(
    st.builds(tool, MCP_NAME, TEXT, st.dictionaries(TEXT, st.just("string"), max_size=2)),
    min_size=1,
    max_size=3,
)
REMINDERS = st.lists(
    st.builds("<system-reminder>\n{}\n</system-reminder>".format, TEXT), min_size=1, max_size=2
)


@st.composite
def conversations(draw: st.DrawFn) -> dict[str, Any]:
    """A Claude Code-like request without a block: ends on a user tool result."""
    system: Any = draw(
        st.lists(st.builds(lambda t: {"type": "text", "text": t}, TEXT), min_size=1, max_size=3)
        | TEXT.map(lambda t: "You are" + t)
    )
    first = {
        "role": "user",
        "content": [{"type": "text", "text": r} for r in draw(REMINDERS)]
        + [{"type": "text", "text": draw(TEXT)}],
    }
    middle: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        middle.append({"role": "assistant", "content": draw(TEXT)})
        middle.append({"role": "user", "content": [{"type": "text", "text": draw(TEXT)}]})
    last_tool = {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}],
    }
    result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": draw(TEXT)}],
    }
    return {
        "model": "claude-opus-4-8",
        "messages": [first, *middle, last_tool, result],
        "system": system,
        "tools": draw(TOOLS) + (draw(MCP_TOOLS) if draw(st.booleans()) else []),
        "metadata": {"user_id": draw(TEXT)},
        "max_tokens": 32000,
        "stream": True,
    }


@st.composite
def blocks(draw: st.DrawFn) -> str:
    """A random attribution header with the trailing ``;``."""
    pairs = [
        f"cc_version=2.1.{draw(st.integers(0, 400))}."
        + draw(st.text(alphabet=HEX, min_size=3, max_size=3)),
        "cc_entrypoint=" + draw(st.sampled_from(["cli", "sdk-cli", "claude-vscode"])),
    ]
    if draw(st.booleans()):
        pairs.append("cc_is_subagent=true")
    if draw(st.booleans()):
        pairs.append("cch=" + draw(st.text(alphabet=HEX, min_size=5, max_size=5)))
    if draw(st.booleans()):
        pairs.append("cc_prev_req=req_" + draw(st.text(alphabet=HEX, min_size=4, max_size=8)))
    if draw(st.booleans()):
        return f'{HEADER_NAME}: {{"cc_is_subagent":{draw(st.sampled_from(["true", "false"]))}}}'
    return f"{HEADER_NAME}: " + "; ".join(pairs) + ";"


def with_block(body: dict[str, Any], header: str, glue: bool) -> dict[str, Any]:
    out = copy.deepcopy(body)
    system = out["system"]
    if isinstance(system, str):
        joiner = "" if glue and header.endswith(";") else "\n"
        out["system"] = header + joiner + system
    else:
        out["system"] = [{"type": "text", "text": header}, *system]
    return out


@PROPERTY
@given(body=conversations(), a=blocks(), b=blocks(), glue=st.booleans())
def test_requests_differing_only_in_the_block_share_a_key(
    body: dict[str, Any], a: str, b: str, glue: bool
) -> None:
    ka = key_of(with_block(body, a, glue))
    kb = key_of(with_block(body, b, not glue))
    assert ka == kb
    assert ka == key_of(body)
    for policy in (Policy.PRESERVE_AS_METADATA, Policy.PASSTHROUGH, Policy.NORMALIZE):
        assert key_of(with_block(body, a, glue), policy) == key_of(
            with_block(body, b, glue), policy
        )


@ONE_CHANGE
@given(body=conversations(), data=st.data())
def test_changing_one_builtin_tool_changes_only_the_tool_hash(
    body: dict[str, Any], data: st.DataObject
) -> None:
    builtin = [i for i, t in enumerate(body["tools"]) if not t["name"].startswith("mcp__")]
    i = data.draw(st.sampled_from(builtin))
    changed = copy.deepcopy(body)
    if data.draw(st.booleans()):
        changed["tools"][i]["description"] += data.draw(st.text(min_size=1, max_size=5))
    else:
        changed["tools"][i]["input_schema"]["required"] = ["x"]
    k1, k2 = key_of(body), key_of(changed)
    assert k1.tool_schema_hash != k2.tool_schema_hash
    assert replace(k2, tool_schema_hash=k1.tool_schema_hash) == k1
    assert k1.hex != k2.hex


@ONE_CHANGE
@given(body=conversations(), mcp=MCP_TOOLS, data=st.data())
def test_mcp_tools_change_only_the_mcp_hash(
    body: dict[str, Any], mcp: list[dict[str, Any]], data: st.DataObject
) -> None:
    added = copy.deepcopy(body)
    added["tools"] = body["tools"] + mcp
    k1, k2 = key_of(body), key_of(added)
    assert k1.mcp_descriptor_hash != k2.mcp_descriptor_hash
    assert replace(k2, mcp_descriptor_hash=k1.mcp_descriptor_hash) == k1
    edited = copy.deepcopy(added)
    j = data.draw(st.integers(len(body["tools"]), len(added["tools"]) - 1))
    edited["tools"][j]["description"] += "!"
    k3 = key_of(edited)
    assert k3.mcp_descriptor_hash != k2.mcp_descriptor_hash
    assert replace(k3, mcp_descriptor_hash=k2.mcp_descriptor_hash) == k2


@PROPERTY
@given(
    body=conversations(),
    user_id=TEXT,
    last_text=TEXT,
    tool_result=TEXT,
    data=st.data(),
)
def test_volatile_parts_never_move_the_key(
    body: dict[str, Any], user_id: str, last_text: str, tool_result: str, data: st.DataObject
) -> None:
    base = key_of(body)

    other_user = copy.deepcopy(body)
    other_user["metadata"]["user_id"] = user_id + "-other"
    assert key_of(other_user) == base

    no_metadata = copy.deepcopy(body)
    del no_metadata["metadata"]
    assert key_of(no_metadata) == base

    new_result = copy.deepcopy(body)
    new_result["messages"][-1]["content"][0]["content"] = tool_result + "!"
    assert key_of(new_result) == base

    next_turn = copy.deepcopy(body)
    next_turn["messages"][-1] = {"role": "user", "content": [{"type": "text", "text": last_text}]}
    assert key_of(next_turn) == base

    longer = copy.deepcopy(body)
    longer["messages"] += [
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": last_text},
    ]
    assert key_of(longer) == base

    # cache_control markers moved anywhere (they move to the newest block each turn)
    moved = without_cache_control(copy.deepcopy(body))
    if isinstance(moved["system"], list):
        for block in moved["system"]:
            if data.draw(st.booleans()):
                block["cache_control"] = EPHEMERAL
    for t in moved["tools"]:
        if data.draw(st.booleans()):
            t["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    for message in moved["messages"]:
        if isinstance(message["content"], list):
            for block in message["content"]:
                if data.draw(st.booleans()):
                    block["cache_control"] = EPHEMERAL
    assert key_of(moved) == base


@ONE_CHANGE
@given(body=conversations(), extra=st.text(min_size=1, max_size=10))
def test_a_different_project_context_changes_the_project_context_hash(
    body: dict[str, Any], extra: str
) -> None:
    changed = copy.deepcopy(body)
    changed["messages"][0]["content"][0]["text"] = changed["messages"][0]["content"][0][
        "text"
    ].replace("</system-reminder>", extra + "\n</system-reminder>")
    k1, k2 = key_of(body), key_of(changed)
    assert k1.project_context_hash != k2.project_context_hash
    assert replace(k2, project_context_hash=k1.project_context_hash) == k1


@ONE_CHANGE
@given(body=conversations(), text=st.text(min_size=1, max_size=10))
def test_a_different_system_prompt_changes_the_system_hash(body: dict[str, Any], text: str) -> None:
    changed = copy.deepcopy(body)
    if isinstance(changed["system"], str):
        changed["system"] += text
    else:
        changed["system"][-1]["text"] += text
    k1, k2 = key_of(body), key_of(changed)
    assert k1.system_hash != k2.system_hash
    assert replace(k2, system_hash=k1.system_hash) == k1


# ----------------------------------------------------------- the 2.1.332 corpus

CURRENT = "claude-code-2.1.332.jsonl"
REMOTE = "claude-code-2.1.332-remote-host.jsonl"


def capture_keys(path: Path) -> list[tuple[CaptureRecord, PromptCacheKey]]:
    records = load_capture(path)
    return [(r, rewrite(r.body, RewriteOptions(require_max_tokens=False)).key) for r in records]


def test_current_key_is_stable_per_project_and_moves_with_mcp_and_cwd(
    corpus_directory: Path,
) -> None:
    pairs = capture_keys(corpus_directory / CURRENT)
    by_session: dict[tuple[str, str], set[str]] = {}
    for record, key in pairs:
        by_session.setdefault((record.session, record.agent), set()).add(key.hex)
    # every turn of a conversation has one key, ToolSearch loads included
    assert all(len(keys) == 1 for keys in by_session.values()), by_session
    by_kind: dict[tuple[str, bool], dict[str, PromptCacheKey]] = {}
    sessions: dict[tuple[str, bool], set[str]] = {}
    for record, key in pairs:
        if record.agent == "main":
            kind = (cwd_of(record), any(n.startswith("mcp__") for n in deferred(record)))
            by_kind.setdefault(kind, {})[key.hex] = key
            sessions.setdefault(kind, set()).add(record.session)
    assert set(by_kind) == {
        ("/home/dev/proj", False),
        ("/home/dev/proj", True),  # an MCP server configured
        ("/home/dev/proj/src", False),
        ("/home/dev/other", False),
    }
    # one key per kind: sessions of the project share it whatever their prompts
    assert all(len(keys) == 1 for keys in by_kind.values())
    assert len(sessions[("/home/dev/proj", False)]) >= 3
    (plain,) = by_kind[("/home/dev/proj", False)].values()
    (mcp,) = by_kind[("/home/dev/proj", True)].values()
    (sub_directory,) = by_kind[("/home/dev/proj/src", False)].values()
    (other,) = by_kind[("/home/dev/other", False)].values()
    # an MCP server added moves it through the deferred list and the MCP digest
    assert differing(plain, mcp) == {"deferred_tools_hash", "mcp_descriptor_hash"}
    assert differing(plain, sub_directory) == {"environment_hash"}
    # another project: its memory path sits in the system prompt too
    assert differing(plain, other) == {"environment_hash", "system_hash"}


def test_a_non_loopback_base_url_gives_the_same_key(corpus_directory: Path) -> None:
    local = {k.hex for r, k in capture_keys(corpus_directory / CURRENT) if r.agent == "main"}
    remote = {k.hex for _, k in capture_keys(corpus_directory / REMOTE)}
    assert len(remote) == 1 and remote <= local


def test_the_date_and_the_git_status_never_move_the_key(corpus_directory: Path) -> None:
    record = load_capture(corpus_directory / CURRENT)[0]
    body = json.loads(record.body)
    base = rewrite(record.body, RewriteOptions(require_max_tokens=False)).key
    other_day = copy.deepcopy(body)
    system_message = other_day["messages"][1]
    text = (
        system_message["content"]
        if isinstance(system_message["content"], str)
        else (system_message["content"][0]["text"])
    )
    assert "Today's date is " in text
    replaced = re.sub(r"Today's date is [0-9-]+", "Today's date is 2030-01-01", text)
    system_message["content"] = replaced
    git = copy.deepcopy(body)
    reminder = git["messages"][0]["content"][0]
    assert "gitStatus" in reminder["text"]
    reminder["text"] = reminder["text"].replace("(clean)", "M README.md")
    for changed in (other_day, git):
        key = rewrite(json.dumps(changed).encode(), RewriteOptions(require_max_tokens=False)).key
        assert key == base


def differing(a: PromptCacheKey, b: PromptCacheKey) -> set[str]:
    return {f for f, v in asdict(a).items() if asdict(b)[f] != v}


def cwd_of(record: CaptureRecord) -> str:
    found = re.search(r"Primary working directory: ([^\s\\]+)", record.body.decode())
    assert found is not None
    return found.group(1)


def deferred(record: CaptureRecord) -> list[str]:
    return rewrite(record.body, RewriteOptions(require_max_tokens=False)).view.deferred_names
