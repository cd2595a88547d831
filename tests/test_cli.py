"""The command line: rewrite, key and serve's argument handling, with CliRunner."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from prefixgate.cli import main
from prefixgate.store.audit import AuditRecord
from prefixgate.store.sinks import open_audit

CORPUS_DIR = Path(__file__).resolve().parents[1] / "corpus"
SDK = CORPUS_DIR / "claude-code-2.1.197.jsonl"
CCH = CORPUS_DIR / "claude-code-2.1.197-cch-per-request.jsonl"
CURRENT = CORPUS_DIR / "claude-code-2.1.332.jsonl"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
PLAIN = b'{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}'


def corpus(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_record(tmp_path: Path, path: Path, index: int, name: str = "record.json") -> Path:
    out = tmp_path / name
    out.write_text(json.dumps(corpus(path)[index]), encoding="utf-8")
    return out


def write_body(tmp_path: Path, path: Path, index: int, name: str = "body.json") -> Path:
    out = tmp_path / name
    out.write_bytes(corpus(path)[index]["body"].encode("utf-8"))
    return out


def run(*args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def stripped(raw: bytes) -> bytes:
    """``raw`` less its first system element, encoded compactly as the corpus is."""
    first = json.dumps(json.loads(raw)["system"][0], separators=(",", ":")).encode() + b","
    assert raw.count(first) == 1
    return raw.replace(first, b"", 1)


# -- rewrite --------------------------------------------------------------------


def test_rewrite_a_capture_record_prints_the_forwarded_body(tmp_path: Path) -> None:
    result = run("rewrite", str(write_record(tmp_path, SDK, 0)))
    assert result.exit_code == 0, result.output
    raw = corpus(SDK)[0]["body"].encode("utf-8")
    assert result.stdout_bytes == stripped(raw) + b"\n"
    assert result.stderr == ""


def test_rewrite_a_plain_body_gives_the_same_bytes(tmp_path: Path) -> None:
    from_record = run("rewrite", str(write_record(tmp_path, SDK, 3)))
    from_body = run("rewrite", str(write_body(tmp_path, SDK, 3)))
    assert from_body.exit_code == 0, from_body.output
    assert from_body.stdout_bytes == from_record.stdout_bytes
    assert b"x-anthropic-billing-header" not in from_body.stdout_bytes


def test_rewrite_reads_stdin_by_default() -> None:
    raw = corpus(SDK)[0]["body"].encode("utf-8")
    result = run("rewrite", stdin=raw)
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == stripped(raw) + b"\n"
    assert run("rewrite", "-", stdin=raw).stdout_bytes == result.stdout_bytes


def test_rewrite_explain_describes_the_block_on_stderr(tmp_path: Path) -> None:
    result = run("rewrite", "--explain", str(write_record(tmp_path, CCH, 0)))
    assert result.exit_code == 0, result.output
    json.loads(result.stdout_bytes)  # stdout is still only the body
    explain = result.stderr
    assert "attribution block found: kv form" in explain
    assert "cc_version=2.1.197.56c" in explain
    assert "cc_entrypoint=sdk-cli" in explain
    assert "cch=45a33" in explain
    assert "policy strip: body changed" in explain
    key = re.search(r"prefix key: ([0-9a-f]+)", explain)
    assert key is not None and HEX64.match(key.group(1))


def test_rewrite_explain_names_the_tools_loaded_and_moved(tmp_path: Path) -> None:
    loads = [i for i, r in enumerate(corpus(CURRENT)) if '"tool_reference"' in r["body"]]
    assert loads, "the 2.1.332 corpus records a ToolSearch load"
    source = str(write_record(tmp_path, CURRENT, loads[0]))
    result = run("rewrite", "--explain", source)
    assert result.exit_code == 0, result.output
    assert "tool loads inline: definitions placed where referenced: " in result.stderr
    assert "moved to the end of tools[]" in result.stderr
    assert b'"tool_reference"' not in result.stdout_bytes
    kept = run("rewrite", "--tool-loads", "as_sent", "--explain", source)
    assert kept.exit_code == 0, kept.output
    assert "tool loads as_sent" in kept.stderr
    assert b'"tool_reference"' in kept.stdout_bytes


def test_rewrite_explain_without_a_block(tmp_path: Path) -> None:
    body = tmp_path / "plain.json"
    body.write_bytes(PLAIN)
    result = run("rewrite", "--explain", str(body))
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == PLAIN + b"\n"
    assert "no attribution block found" in result.stderr


def test_rewrite_normalize_puts_a_fixed_line_in_place_of_the_block(tmp_path: Path) -> None:
    outputs = [
        run("rewrite", "--policy", "normalize", str(write_record(tmp_path, CCH, i, f"{i}.json")))
        for i in (0, 1, 4)  # two requests of one session, one of another: three cch values
    ]
    firsts = [json.loads(r.stdout_bytes)["system"][0] for r in outputs]
    assert all(r.exit_code == 0 for r in outputs)
    assert (
        firsts
        == [{"type": "text", "text": "x-anthropic-billing-header: cc_entrypoint=sdk-cli;"}] * 3
    )


def test_rewrite_passthrough_prints_the_original_bytes(tmp_path: Path) -> None:
    result = run("rewrite", "--policy", "passthrough", str(write_record(tmp_path, CCH, 0)))
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == corpus(CCH)[0]["body"].encode("utf-8") + b"\n"


def test_rewrite_refuses_an_unknown_policy(tmp_path: Path) -> None:
    result = run("rewrite", "--policy", "delete", str(write_record(tmp_path, SDK, 0)))
    assert result.exit_code == 2
    assert "delete" in result.output


# -- key ------------------------------------------------------------------------


def key_of(tmp_path: Path, path: Path, index: int) -> dict[str, Any]:
    result = run("key", str(write_record(tmp_path, path, index, f"{path.stem}-{index}.json")))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1  # one JSON object on one line
    out: dict[str, Any] = json.loads(lines[0])
    return out


def test_key_output_shape(tmp_path: Path) -> None:
    out = key_of(tmp_path, SDK, 0)
    assert set(out) == {"key", "segments", "attribution", "pieces"}
    assert HEX64.match(out["key"])
    assert set(out["segments"]) == {
        "system",
        "tools",
        "mcp_tools",
        "deferred_tools",
        "project_context",
        "environment",
    }
    assert all(HEX64.match(v) for v in out["segments"].values())
    assert out["attribution"] == {"cc_version": "2.1.197.56c", "cc_entrypoint": "sdk-cli"}
    names = [p["name"] for p in out["pieces"]]
    assert names[:3] == ["system[0]", "system[1]", "environment"]
    assert {"git_status", "project_context", "date", "messages[0]", "messages[1]"} <= set(names)
    assert all(HEX64.match(p["digest"]) for p in out["pieces"])
    in_key = {p["section"] for p in out["pieces"] if p["in_key"]}
    assert in_key == {"system", "tools", "environment", "project_context"}


def test_key_names_every_piece_of_a_current_request(tmp_path: Path) -> None:
    out = key_of(tmp_path, CURRENT, 0)
    by_section: dict[str, list[str]] = {}
    for piece in out["pieces"]:
        by_section.setdefault(piece["section"], []).append(piece["name"])
    assert by_section["git_status"] == ["git_status"]
    assert by_section["deferred_tools"] == ["deferred_tools"]
    assert by_section["date"] == ["date"]
    assert "environment#2" in by_section["environment"]  # the one in messages[1]
    assert "tools:ToolSearch" in by_section["tools"]
    assert not any(p["in_key"] for p in out["pieces"] if p["section"] in ("date", "git_status"))


def test_key_of_a_body_without_a_block_has_null_attribution(tmp_path: Path) -> None:
    body = tmp_path / "plain.json"
    body.write_bytes(PLAIN)
    result = run("key", str(body))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["attribution"] is None
    assert HEX64.match(out["key"])


def test_key_is_the_same_across_sessions_of_the_same_agent(tmp_path: Path) -> None:
    records = corpus(SDK)
    first, later = 0, 12
    sessions = [records[i]["headers"]["X-Claude-Code-Session-Id"] for i in (first, later)]
    assert sessions[0] != sessions[1]
    a, b = key_of(tmp_path, SDK, first), key_of(tmp_path, SDK, later)
    assert a["attribution"] != b["attribution"]  # cc_version suffix differs per session
    assert a["key"] == b["key"]
    assert a["segments"] == b["segments"]
    # a per-request cch changes nothing either
    assert key_of(tmp_path, CCH, first)["key"] == a["key"]


def test_key_differs_for_a_subagent(tmp_path: Path) -> None:
    main_agent, subagent = key_of(tmp_path, SDK, 4), key_of(tmp_path, SDK, 5)
    assert subagent["attribution"]["cc_is_subagent"] == "true"
    assert main_agent["key"] != subagent["key"]


def test_key_depends_on_the_policy(tmp_path: Path) -> None:
    record = str(write_record(tmp_path, SDK, 0))
    strip = json.loads(run("key", record).stdout)
    passthrough = json.loads(run("key", "--policy", "passthrough", record).stdout)
    assert strip["key"] != passthrough["key"]
    assert strip["segments"] == passthrough["segments"]


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["rewrite", "key"])
def test_a_missing_file_is_a_clear_error(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "nope.json"
    result = run(command, str(missing))
    assert result.exit_code == 1
    assert f"cannot read {missing}" in result.stderr
    assert "No such file or directory" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["rewrite", "key"])
def test_a_directory_is_a_clear_error(tmp_path: Path, command: str) -> None:
    result = run(command, str(tmp_path))
    assert result.exit_code == 1
    assert f"cannot read {tmp_path}" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "request body is not valid JSON"),
        (b"not json at all", "request body is not valid JSON"),
        (b"\xff\xfe\x00", "request body is not valid JSON"),
        (b"[1, 2]", "request body must be a JSON object"),
        (b'{"model": "m", "messages": []}', "max_tokens"),
        (b'{"method": "POST", "body": "{\\"model\\": 5}"}', "model"),
    ],
    ids=["empty", "text", "binary", "array", "no-max-tokens", "record-with-bad-body"],
)
@pytest.mark.parametrize("command", ["rewrite", "key"])
def test_a_bad_request_is_a_clear_error(
    tmp_path: Path, command: str, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    result = run(command, str(path))
    assert result.exit_code == 1
    assert "Error: invalid_request_error:" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.output


# -- serve and the group --------------------------------------------------------


def test_serve_help() -> None:
    result = run("serve", "--help")
    assert result.exit_code == 0
    for option in ("--upstream", "--policy", "--host", "--port", "--config", "--log-level"):
        assert option in result.stdout
    assert "strip" in result.stdout and "passthrough" in result.stdout


def test_serve_reports_a_missing_config_file_without_starting(tmp_path: Path) -> None:
    result = run("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.exit_code == 1
    assert "cannot read config file" in result.stderr


def test_serve_reports_a_broken_config_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[upstreams.local]\nurl = 'not a url'\n", encoding="utf-8")
    result = run("serve", "--config", str(config))
    assert result.exit_code == 1
    assert "upstreams.local.url" in result.stderr


def test_serve_reports_an_audit_log_it_cannot_open(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    audit = tmp_path / "a-file" / "audit.jsonl"  # no folder can be made under a file
    result = CliRunner().invoke(
        main,
        ["serve", "--upstream", "http://127.0.0.1:9"],
        env={"PREFIXGATE_AUDIT_PATH": str(audit)},
    )
    assert result.exit_code == 1
    assert f"cannot open the audit log {audit}" in result.stderr
    assert "Traceback" not in result.output


def test_serve_refuses_an_unknown_log_level() -> None:
    result = run("serve", "--upstream", "http://127.0.0.1:9", "--log-level", "loud")
    assert result.exit_code == 2
    assert "loud" in result.output


def test_version_and_help() -> None:
    from prefixgate import __version__

    assert __version__ in run("--version").stdout
    listing = run("--help").stdout
    for command in ("serve", "rewrite", "key", "demo"):
        assert command in listing


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "prefixgate", "key", "-"],
        input=PLAIN,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert HEX64.match(json.loads(done.stdout)["key"])


# -- report ---------------------------------------------------------------------


def audit_records() -> list[AuditRecord]:
    base = AuditRecord(
        time=1_700_000_000.0,
        route="/v1/messages",
        tenant="alpha",
        session="0123456789abcdef",
        model="claude",
        upstream="local",
        policy="strip",
        status=200,
        agent="main",
        prompt_tokens=12_000,
        cached_tokens=0,
        expected_cached_tokens=0,
        ttfb_ms=1200.0,
        request_id="aa01",
    )
    later = dataclasses.replace
    return [
        base,
        later(base, time=base.time + 10, agent="sub", cached_tokens=11_000, request_id="aa02"),
        later(
            base,
            time=base.time + 20,
            cached_tokens=2_000,
            expected_cached_tokens=11_500,
            cause="attribution_changed",
            changed_segment="system[0]",
            cause_detail="cch=abc12 -> cch=def34",
            request_id="aa03",
        ),
        later(base, time=base.time + 30, session="fedcba9876543210", request_id="aa04"),
        later(base, time=base.time + 40, tenant="beta", request_id="aa05"),
        later(base, time=base.time + 50, status=502, error="upstream said no", request_id="aa06"),
    ]


def write_audit(path: Path, records: list[AuditRecord]) -> Path:
    sink = open_audit(path)
    for rec in records:
        sink.record(rec)
    sink.close()
    return path


@pytest.mark.parametrize("extra", [[], ["--json"], ["--since", "2023-11-14T22:13:35"]])
def test_report_of_a_jsonl_log_is_the_report_of_the_same_sqlite_log(
    tmp_path: Path, extra: list[str]
) -> None:
    records = audit_records()
    db = write_audit(tmp_path / "audit.db", records)
    jsonl = write_audit(tmp_path / "audit.jsonl", records)
    from_db = run("report", "--db", str(db), "--tenant", "alpha", *extra)
    from_jsonl = run("report", "--db", str(jsonl), "--tenant", "alpha", *extra)
    assert from_db.exit_code == 0, from_db.output
    assert from_jsonl.exit_code == 0, from_jsonl.output
    assert from_jsonl.stdout == from_db.stdout
    assert "01234567" in from_db.stdout


def test_report_json_of_a_jsonl_log_counts_its_requests(tmp_path: Path) -> None:
    jsonl = write_audit(tmp_path / "audit.jsonl", audit_records())
    result = run("report", "--db", str(jsonl), "--tenant", "alpha", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["requests"] == 5


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.db", "no such audit log"),
        ("missing.jsonl", "no such audit log"),
        ("memory", "memory only"),
    ],
)
def test_report_of_a_log_it_cannot_read_is_a_clear_error(
    tmp_path: Path, name: str, message: str
) -> None:
    path = name if name == "memory" else str(tmp_path / name)
    result = run("report", "--db", path)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("name", "other"), [("audit.db", "x.jsonl"), ("audit.jsonl", "x.db")])
def test_report_of_a_file_in_the_other_format_is_a_clear_error(
    tmp_path: Path, name: str, other: str
) -> None:
    renamed = tmp_path / other
    renamed.write_bytes(write_audit(tmp_path / name, audit_records()).read_bytes())
    result = run("report", "--db", str(renamed))
    assert result.exit_code == 1
    assert "not a" in result.stderr and str(renamed) in result.stderr
    assert "Traceback" not in result.output


def test_report_help_names_both_formats() -> None:
    help_text = " ".join(run("report", "--help").stdout.split())
    assert "SQLite file or a .jsonl file" in help_text
