"""Offline diagnosis of a capture, and ``prefixgate diagnose`` on the command line."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from prefixgate.cli import main
from prefixgate.core.pipeline import RewriteOptions, rewrite
from prefixgate.core.policy import Policy
from prefixgate.core.prompt import prompt_view
from prefixgate.core.promptdiff import first_change
from prefixgate.core.toolload import ToolLoads
from prefixgate.diagnose import Diagnosis, diagnose, estimate_tokens
from prefixgate.replay import CaptureRecord, load_capture

PLAIN = "claude-code-2.1.197.jsonl"
CCH = "claude-code-2.1.197-cch-per-request.jsonl"
HEX64 = re.compile(r"^[0-9a-f]{64}$")

STRIP_CAUSES = [
    "none",
    "none",
    "environment_changed",  # --continue re-renders the model line
    "none",
    "environment_changed",  # against the upstream's last request, the --continue one
    "system_prompt_changed",  # the subagent's own prompt
    "none",
    "none",
    "mcp_tools_changed",
    "none",
    "none",
    "none",
    "mcp_tools_changed",
    "none",
]
PASSTHROUGH_CAUSES = [
    "attribution_changed" if i in (4, 5, 8, 12) else cause for i, cause in enumerate(STRIP_CAUSES)
]


@pytest.fixture(scope="module")
def plain(corpus_directory: Path) -> list[CaptureRecord]:
    return load_capture(corpus_directory / PLAIN)


def rows(corpus_directory: Path, name: str = PLAIN) -> list[dict[str, Any]]:
    text = (corpus_directory / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line]


def write_capture(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# -- diagnose over the corpus ----------------------------------------------------


def test_strip_causes_by_index(plain: list[CaptureRecord]) -> None:
    results = diagnose(plain, Policy.STRIP)
    assert [d.index for d in results] == list(range(14))
    assert [d.cause for d in results] == STRIP_CAUSES
    assert all(d.error is None for d in results)


def test_strip_names_the_segments_and_details(plain: list[CaptureRecord]) -> None:
    results = diagnose(plain, Policy.STRIP)
    assert results[2].changed_segment == "environment"
    assert results[2].detail is not None
    assert results[2].detail.startswith("the model line differs: ")
    assert "You are powered by the model named" in results[2].detail
    assert results[4].changed_segment == "environment"
    assert (results[5].agent, results[5].changed_segment) == ("sub", "system[1]")
    assert results[6].agent == "sub"
    assert results[8].detail == "added mcp__projfs__list_dir, mcp__projfs__read_text"
    assert results[12].detail == "removed mcp__projfs__list_dir, mcp__projfs__read_text"
    assert (
        results[8].changed_segment
        == results[12].changed_segment
        == ("mcp_tools:mcp__projfs__list_dir")
    )
    for d in results:
        if d.cause == "none":
            assert d.changed_segment is None and d.detail is None


def test_the_main_agent_after_its_subagent_names_the_interloper(
    plain: list[CaptureRecord],
) -> None:
    results = diagnose(plain, Policy.STRIP)
    seventh = results[7]
    assert (seventh.agent, seventh.cause) == ("main", "none")
    assert seventh.interloper == "session 5229c4e6 (sub)"
    assert seventh.changed_vs_session == "none"
    assert seventh.changed_vs_previous == "system[1]"  # the subagent's own prompt
    assert [i for i, d in enumerate(results) if d.interloper] == [7]


def test_passthrough_causes_by_index(plain: list[CaptureRecord]) -> None:
    results = diagnose(plain, Policy.PASSTHROUGH)
    assert [d.cause for d in results] == PASSTHROUGH_CAUSES
    for i in (4, 5, 8, 12):
        assert results[i].changed_segment == "attribution"
        assert "cc_version 2.1.197." in (results[i].detail or "")
    assert results[5].detail is not None and "cc_is_subagent - -> true" in results[5].detail


def test_a_per_request_cch_changes_nothing_once_stripped(corpus_directory: Path) -> None:
    cch = load_capture(corpus_directory / CCH)
    assert [d.cause for d in diagnose(cch, Policy.STRIP)] == STRIP_CAUSES
    assert [d.cause for d in diagnose(cch, Policy.NORMALIZE)] == STRIP_CAUSES
    passthrough = diagnose(cch, Policy.PASSTHROUGH)
    assert passthrough[0].cause == "none"
    assert {d.cause for d in passthrough[1:]} == {"attribution_changed"}
    assert all("cch " in (d.detail or "") for d in passthrough[1:])


def test_identity_fields(plain: list[CaptureRecord]) -> None:
    results = diagnose(plain, Policy.STRIP)
    for record, d in zip(plain, results, strict=True):
        assert d.session == record.session
        assert d.session_source == "header"
        assert d.agent == record.agent
        assert d.kind == "message"
        assert d.model == "claude-opus-4-8"
        assert d.key is not None and HEX64.match(d.key)
        assert d.attribution is not None and "cc_version" in d.attribution
        assert d.expected_source == "estimate"
        assert d.prompt_tokens is not None and d.expected_cached_tokens is not None
        assert 0 <= d.expected_cached_tokens <= d.prompt_tokens
    # a session's first request has no session reference
    firsts = [0, 4, 5, 8, 10, 12]
    assert [i for i, d in enumerate(results) if d.changed_vs_session is None] == firsts


def test_keys_follow_the_stable_prefix(plain: list[CaptureRecord]) -> None:
    keys = [d.key for d in diagnose(plain, Policy.STRIP)]
    assert keys[0] == keys[1] != keys[2] == keys[3]  # the system prompt changed at 2
    assert keys[0] == keys[4]  # another conversation, the same prefix: the same key
    assert keys[5] == keys[6] != keys[4]  # the subagent's own prompt
    assert keys[8] == keys[9] == keys[10] == keys[11]
    assert keys[12] == keys[0]


def test_expected_tokens_follow_the_shared_prefix(plain: list[CaptureRecord]) -> None:
    results = diagnose(plain, Policy.STRIP)
    # the second request shares the whole first one
    assert results[1].expected_cached_tokens == results[0].prompt_tokens
    # after the model line changed only the system text before the environment is shared
    system = json.loads(plain[2].body)["system"]
    identity, main_text = system[1]["text"], system[2]["text"]
    assert identity.startswith("You are a Claude agent")
    before_environment = main_text[: main_text.index("# Environment")]
    assert results[2].expected_cached_tokens == -(-len(identity) // 4) + -(
        -len(before_environment) // 4
    )


# -- diagnose: odd records -------------------------------------------------------


def record(index: int, body: bytes, path: str = "/v1/messages", **headers: str) -> CaptureRecord:
    return CaptureRecord(
        index=index,
        method="POST",
        path=path,
        headers=tuple(headers.items()),
        body=body,
        session=headers.get("X-Claude-Code-Session-Id", ""),
    )


def test_a_bad_request_is_reported_and_the_rest_still_diagnosed(
    plain: list[CaptureRecord],
) -> None:
    records = [plain[0], record(1, b'{"messages": []}'), record(2, plain[1].body, "/v1/messages")]
    results = diagnose(records)
    bad = results[1]
    assert bad.error is not None and "model" in bad.error
    assert (bad.cause, bad.session, bad.key, bad.prompt_tokens) == ("none", None, None, None)
    # the bad request never reached the tracker: the third still extends the first
    assert results[2].cause == "none"
    assert results[2].changed_vs_previous == "none"
    assert results[2].expected_cached_tokens == results[0].prompt_tokens


def test_a_token_count_is_diagnosed_but_evicts_nothing(plain: list[CaptureRecord]) -> None:
    count = record(
        1,
        plain[10].body,
        "/v1/messages/count_tokens?beta=true",
        **{"X-Claude-Code-Session-Id": plain[10].session},
    )
    results = diagnose([plain[0], count, plain[1]])
    assert results[1].kind == "count_tokens"
    # as in the gateway, a token count is not the upstream's last request
    assert results[2].interloper is None
    assert results[2].changed_vs_previous == "none"


def test_the_tenant_enters_the_key(plain: list[CaptureRecord]) -> None:
    one = diagnose(plain[:1], tenant="one")[0]
    two = diagnose(plain[:1], tenant="two")[0]
    assert one.key != two.key


def test_estimate_tokens_is_a_quarter_of_the_text_at_least_one() -> None:
    body = {
        "model": "m",
        "system": [{"type": "text", "text": "x" * 9}],
        "messages": [{"role": "user", "content": ""}],
    }
    view = prompt_view(body, None)
    tokens = estimate_tokens(view)
    system, message = view.pieces
    assert tokens[system.digest] == 3  # 9 characters, rounded up
    assert tokens[message.digest] == -(-len(message.text) // 4)
    empty = prompt_view({"model": "m", "system": [{"type": "text", "text": ""}]}, None)
    assert estimate_tokens(empty) == {empty.pieces[0].digest: 1}


def test_to_json_has_every_field() -> None:
    d = Diagnosis(
        3, "s", "header", "main", "message", "m", "k", {"cch": "ab"}, 10, 5, "estimate",
        "none", "system[0]", "system[0]", "system_prompt_changed", "détail", None,
    )  # fmt: skip
    out = json.loads(d.to_json())
    assert out == asdict(d)
    assert list(out) == [f.name for f in fields(Diagnosis)]
    assert "détail" in d.to_json()  # not escaped


# -- the command line ------------------------------------------------------------


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def json_lines(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_cli_json_one_object_per_request(corpus_directory: Path) -> None:
    out = json_lines(run("diagnose", str(corpus_directory / PLAIN), "--json"))
    assert len(out) == 14
    for i, row in enumerate(out):
        assert {"index", "session", "agent", "key", "changed_segment", "cause"} <= set(row)
        assert row["index"] == i
        assert HEX64.match(row["key"])
    assert [row["cause"] for row in out] == STRIP_CAUSES
    assert out[2]["changed_segment"] == "environment"
    assert out[5]["agent"] == "sub"
    assert out[0]["session"] == "15389b44-ba54-41b7-8793-6b90cec761f6"


def test_cli_json_with_a_policy(corpus_directory: Path) -> None:
    out = json_lines(
        run("diagnose", "--json", "--policy", "passthrough", str(corpus_directory / PLAIN))
    )
    assert [row["cause"] for row in out] == PASSTHROUGH_CAUSES
    assert out[4]["changed_segment"] == "attribution"


def test_cli_json_matches_the_library(corpus_directory: Path, plain: list[CaptureRecord]) -> None:
    out = json_lines(run("diagnose", str(corpus_directory / PLAIN), "--json"))
    assert out == [asdict(d) for d in diagnose(plain)]


def test_cli_table(corpus_directory: Path) -> None:
    result = run("diagnose", str(corpus_directory / PLAIN))
    assert result.exit_code == 0, result.output
    assert "policy strip" in result.stdout
    text = " ".join(result.stdout.split())  # the details wrap at the terminal width
    assert "#2 environment_changed: the model line differs" in text
    assert "#8 mcp_tools_changed: added mcp__projfs__list_dir, mcp__projfs__read_text" in text
    assert "#12 mcp_tools_changed: removed" in text
    assert "#3 " not in text  # only requests with a cause get a line


def test_cli_table_with_passthrough(corpus_directory: Path) -> None:
    result = run("diagnose", "--policy", "passthrough", str(corpus_directory / PLAIN))
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "policy passthrough" in text
    assert "#4 attribution_changed: cc_version" in text


def test_cli_rejects_an_unknown_policy(corpus_directory: Path) -> None:
    result = run("diagnose", "--policy", "bogus", str(corpus_directory / PLAIN))
    assert result.exit_code == 2
    assert "bogus" in result.output


def test_cli_missing_capture(tmp_path: Path) -> None:
    result = run("diagnose", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2
    assert "does not exist" in result.output


@pytest.mark.parametrize("content", ["not json\n", '{"method": "POST"}\n'])
def test_cli_not_a_capture(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    result = run("diagnose", str(path), "--json")
    assert result.exit_code == 1
    assert "is not a capture file" in result.output


def test_cli_reports_a_bad_request_in_the_capture(tmp_path: Path, corpus_directory: Path) -> None:
    records = rows(corpus_directory)[:2]
    records.insert(1, {"method": "POST", "path": "/v1/messages", "headers": {}, "body": "{}"})
    out = json_lines(run("diagnose", str(write_capture(tmp_path / "c.jsonl", records)), "--json"))
    assert [row["index"] for row in out] == [0, 1, 2]
    assert out[1]["error"] is not None and out[1]["cause"] == "none"
    assert [out[0]["cause"], out[2]["cause"]] == ["none", "none"]
    table = run("diagnose", str(tmp_path / "c.jsonl"))
    assert table.exit_code == 0, table.output
    assert "#1 none: model" in " ".join(table.stdout.split())


# -- offline and live agree ------------------------------------------------------


async def test_keys_and_predicted_causes_equal_the_gateway_s(plain: list[CaptureRecord]) -> None:
    """``serve --upstream URL`` and ``diagnose`` run the same pipeline: same key, same cause."""
    import httpx

    from prefixgate.app.gateway import create_app
    from prefixgate.config import Settings
    from prefixgate.replay import replay
    from prefixgate.store.audit import MemoryAudit

    def answer(request: httpx.Request) -> httpx.Response:
        usage = {"input_tokens": 100, "output_tokens": 1}  # no cache fields: unknown
        message = {
            "id": "msg_01", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": usage,
        }  # fmt: skip
        return httpx.Response(200, json=message)

    audit = MemoryAudit()
    app = create_app(
        Settings().with_upstream("http://runtime.test:8080"),
        transport=httpx.MockTransport(answer),
        audit=audit,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            results = await replay(plain, "http://localhost", client=client, max_tokens=2)
        await app.state.proxy.observer.drain()
    assert [r.error for r in results] == [None] * len(plain)
    live = list(audit.records)
    offline = diagnose(plain)
    assert [r.key for r in live] == [d.key for d in offline]
    assert [r.session for r in live] == [d.session for d in offline]
    assert [r.changed_segment for r in live] == [d.changed_segment for d in offline]
    assert [r.cause for r in live] == STRIP_CAUSES


# -- the 2.1.332 corpus ----------------------------------------------------------

CURRENT = "claude-code-2.1.332.jsonl"
CURRENT_CAUSES = {
    5: ("system_prompt_changed", "system[1]"),  # the subagent's own prompt
    8: ("deferred_tools_changed", "deferred_tools"),  # a session with an MCP server
    10: ("tool_loaded", "tool_loaded:mcp__projfs__count_lines"),
    12: ("deferred_tools_changed", "deferred_tools"),  # the MCP server gone again
    13: ("tool_loaded", "tool_loaded:WebFetch"),
    14: ("environment_changed", "environment#2"),  # started in proj/src
    15: ("system_prompt_changed", "system[1]"),  # another project: its memory path
}


def test_current_corpus_tool_loads_inline_are_no_change(corpus_directory: Path) -> None:
    # the default for local upstreams: each loaded definition stands where it was loaded
    results = diagnose(load_capture(corpus_directory / CURRENT), Policy.STRIP)
    found = {d.index: (d.cause, d.changed_segment) for d in results if d.cause != "none"}
    assert found == {i: c for i, c in CURRENT_CAUSES.items() if c[0] != "tool_loaded"}


def test_current_corpus_names_the_piece_of_every_change(corpus_directory: Path) -> None:
    records = load_capture(corpus_directory / CURRENT)
    results = diagnose(records, Policy.STRIP, tool_loads=ToolLoads.AS_SENT)
    found = {d.index: (d.cause, d.changed_segment) for d in results if d.cause != "none"}
    assert found == CURRENT_CAUSES
    by_index = {d.index: d for d in results}
    assert by_index[8].detail == (
        "an MCP server was added between these sessions: "
        "mcp__projfs__count_lines, mcp__projfs__list_files"
    )
    assert by_index[12].detail is not None
    assert by_index[12].detail.startswith("an MCP server was removed between these sessions")
    assert by_index[10].detail is not None and "ToolSearch loaded mcp__projfs__count_lines" in (
        by_index[10].detail
    )
    assert by_index[14].detail == (
        "the working directory differs: /home/dev/proj -> /home/dev/proj/src"
    )
    assert by_index[15].detail is not None
    assert "the working directory differs too: /home/dev/proj/src -> /home/dev/other" in (
        by_index[15].detail
    )


@pytest.mark.parametrize("tool_loads", list(ToolLoads))
@pytest.mark.parametrize(
    "name",
    [
        CURRENT,
        "claude-code-2.1.332-interactive.jsonl",
        "claude-code-2.1.332-remote-host.jsonl",
        PLAIN,
        "claude-code-2.1.197-interactive.jsonl",
    ],
)
def test_every_request_that_is_no_plain_append_is_named(
    corpus_directory: Path, tool_loads: ToolLoads, name: str
) -> None:
    records = load_capture(corpus_directory / name)
    results = diagnose(records, Policy.STRIP, tool_loads=tool_loads)
    options = RewriteOptions(require_max_tokens=False, tool_loads=tool_loads)
    views = {r.index: rewrite(r.body, options).view for r in records}
    previous: dict[str, int] = {}
    for record, d in zip(records, results, strict=True):
        mine = previous.get(f"{d.session}/{d.agent}")
        if mine is not None and d.agent != "side":  # each side request is a new conversation
            appends = first_change(views[mine], views[record.index]) is None
            assert appends == (d.cause == "none"), record.index
        if d.cause != "none":
            assert d.changed_segment and d.detail, record.index
        previous[f"{d.session}/{d.agent}"] = record.index


def test_cli_names_tool_loads_when_forwarded_as_sent(corpus_directory: Path) -> None:
    capture = str(corpus_directory / CURRENT)
    runner = CliRunner()
    as_sent = runner.invoke(main, ["diagnose", "--tool-loads", "as_sent", "--json", capture])
    assert as_sent.exit_code == 0, as_sent.output
    causes = [json.loads(line)["cause"] for line in as_sent.stdout.splitlines()]
    assert causes.count("tool_loaded") == 2
    inline = runner.invoke(main, ["diagnose", "--json", capture])
    assert [json.loads(line)["cause"] for line in inline.stdout.splitlines()].count(
        "tool_loaded"
    ) == 0
