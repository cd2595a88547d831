"""The [server] table: defaults, port and size checks, the audit path, body capture, record mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from configtables import local_file

from prefixgate.config import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY,
    DEFAULT_PORT,
    ConfigError,
    Settings,
    build_settings,
)


def test_defaults_with_nothing_configured() -> None:
    s = build_settings({}, {}, {})
    assert s == Settings()
    assert s.host == DEFAULT_HOST == "127.0.0.1"
    assert s.port == DEFAULT_PORT == 8787
    assert s.max_body_bytes == DEFAULT_MAX_BODY
    assert s.tenant == "default"
    assert s.audit_path is None
    assert s.embedded is True
    assert s.routes == ()
    assert s.route("claude-opus-4-8") is None
    assert s.warnings() == []


@pytest.mark.parametrize(
    ("file", "env", "flags", "where"),
    [
        ({"server": {"port": "eighty"}}, {}, {}, "server.port"),
        ({}, {"PREFIXGATE_PORT": "80a"}, {}, "server.port"),
        ({}, {"PREFIXGATE_PORT": ""}, {}, "server.port"),
        ({}, {}, {"port": "x"}, "server.port"),
        ({"server": {"port": [8787]}}, {}, {}, "server.port"),
        ({}, {"PREFIXGATE_MAX_BODY_BYTES": "1MB"}, {}, "server.max_body_bytes"),
    ],
)
def test_non_integer_port_or_size_is_an_error(
    file: dict[str, Any], env: dict[str, str], flags: dict[str, Any], where: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_settings(file, env, flags)
    assert str(info.value).startswith(f"{where}: an integer is required")


@pytest.mark.parametrize("port", ["-1", "65536", "99999"])
def test_port_out_of_range_is_an_error(port: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.port"):
        build_settings({}, {"PREFIXGATE_PORT": port}, {})


@pytest.mark.parametrize("memory", ["memory", "MEMORY", "none", "None"])
def test_audit_path_memory_means_no_file(memory: str) -> None:
    env = {"HOME": "/home/u"}
    assert build_settings(local_file(audit_path=memory), env, {}).audit_path is None
    assert build_settings({}, {**env, "PREFIXGATE_AUDIT_PATH": memory}, {}).audit_path is None


def test_audit_path_expands_the_home_folder() -> None:
    s = build_settings(local_file(audit_path="~/logs/audit.db"), {}, {})
    assert s.audit_path == str(Path("~/logs/audit.db").expanduser())
    assert not s.audit_path.startswith("~")


def test_capture_bodies_is_off_unless_asked_for() -> None:
    assert build_settings({}, {}, {}).capture_bodies is False
    assert build_settings(local_file(capture_bodies=True), {}, {}).capture_bodies is True
    assert build_settings(local_file(capture_bodies=False), {}, {}).capture_bodies is False


@pytest.mark.parametrize("value", ["maybe", "", "2", 1, None])
def test_capture_bodies_that_is_not_a_flag_is_an_error(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^server\.capture_bodies: expected true or false"):
        build_settings(local_file(capture_bodies=value), {}, {})


def test_record_path_from_the_file_or_the_record_flag() -> None:
    assert build_settings({}, {}, {}).record_path is None
    file = local_file(record_path="/file/capture.jsonl")
    assert build_settings(file, {}, {}).record_path == "/file/capture.jsonl"
    assert build_settings(file, {}, {"record": "/flag.jsonl"}).record_path == "/flag.jsonl"
    assert build_settings(file, {}, {"record": None}).record_path == "/file/capture.jsonl"
    assert build_settings({}, {}, {"record": "/flag.jsonl"}).record_path == "/flag.jsonl"


def test_allowed_hosts_from_the_flag_or_the_file() -> None:
    from prefixgate.config import build_settings

    flagged = build_settings(
        {}, {}, {"upstream": ["http://127.0.0.1:9"], "allowed_hosts": ["gw.lan"]}
    )
    assert flagged.allowed_hosts == ("gw.lan",)
    filed = build_settings(
        {"server": {"allowed_hosts": ["a.lan"], "allowed_origins": ["https://x.example"]}},
        {},
        {"upstream": ["http://127.0.0.1:9"]},
    )
    assert (filed.allowed_hosts, filed.allowed_origins) == (("a.lan",), ("https://x.example",))
    assert not filed.trust_forwarded
