"""Loading: file < environment < flags, the TOML file and its errors, the state folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from configtables import LOCAL, local_file

from prefixgate.config import ConfigError, Route, Settings, build_settings, env_path, load_settings
from prefixgate.core.policy import Policy


def test_port_and_host_file_then_env_then_flags() -> None:
    file = {"server": {"host": "10.0.0.1", "port": 1111, "allow_unauthenticated": True}}
    env = {"PREFIXGATE_HOST": "10.0.0.2", "PREFIXGATE_PORT": "2222"}
    flags = {"host": "10.0.0.3", "port": 3333}
    assert (build_settings(file, {}, {}).host, build_settings(file, {}, {}).port) == (
        "10.0.0.1",
        1111,
    )
    from_env = build_settings(file, env, {})
    assert (from_env.host, from_env.port) == ("10.0.0.2", 2222)
    from_flags = build_settings(file, env, flags)
    assert (from_flags.host, from_flags.port) == ("10.0.0.3", 3333)
    # a flag left unset (None) does not hide the environment
    partial = build_settings(file, env, {"host": None, "port": 3333})
    assert (partial.host, partial.port) == ("10.0.0.2", 3333)


def test_max_body_bytes_tenant_and_audit_path() -> None:
    file = {"server": {"max_body_bytes": 1000, "tenant": "team-a", "audit_path": "/a.jsonl"}}
    s = build_settings(file, {}, {})
    assert (s.max_body_bytes, s.tenant, s.audit_path) == (1000, "team-a", "/a.jsonl")
    env = {"PREFIXGATE_MAX_BODY_BYTES": "2000", "PREFIXGATE_AUDIT_PATH": "/b.jsonl"}
    s = build_settings({}, env, {})
    assert (s.max_body_bytes, s.audit_path) == (2000, "/b.jsonl")


def test_upstream_file_then_env_then_flags() -> None:
    file = {"upstreams": {"default": {"url": "http://file:1"}}}
    assert build_settings(file, {}, {}).upstreams["default"].url == "http://file:1"
    env = {"PREFIXGATE_UPSTREAM": "http://env:2/"}
    s = build_settings(file, env, {})
    assert s.upstreams["default"].url == "http://env:2"  # trailing slash dropped
    s = build_settings(file, env, {"upstream": "http://flag:3"})
    assert list(s.upstreams) == ["default"]
    assert s.upstreams["default"].url == "http://flag:3"
    assert s.routes == (Route("*", "default"),)
    assert s.embedded is False


def test_env_upstream_takes_its_api_key_from_the_environment() -> None:
    env = {"PREFIXGATE_UPSTREAM": LOCAL, "PREFIXGATE_UPSTREAM_API_KEY": "sk-env"}
    up = build_settings({}, env, {}).upstreams["default"]
    assert up.api_key == "sk-env"
    assert "sk-env" not in repr(up)


def test_policy_file_then_env_then_flags() -> None:
    file = {"upstreams": {"local": {"url": LOCAL, "policy": "normalize"}}}
    assert build_settings(file, {}, {}).upstreams["local"].policy is Policy.NORMALIZE
    env = {"PREFIXGATE_POLICY": "preserve-as-metadata"}
    assert build_settings(file, env, {}).upstreams["local"].policy is Policy.PRESERVE_AS_METADATA
    s = build_settings(file, env, {"policy": "passthrough"})
    assert s.upstreams["local"].policy is Policy.PASSTHROUGH
    assert s.route("any") == (s.upstreams["local"], Policy.PASSTHROUGH)


def test_policy_flag_applies_to_every_upstream() -> None:
    file = {"upstreams": {"a": {"url": LOCAL}, "b": {"url": "http://other:1", "policy": "strip"}}}
    s = build_settings(file, {}, {"policy": "normalize"})
    assert {name: up.policy for name, up in s.upstreams.items()} == {
        "a": Policy.NORMALIZE,
        "b": Policy.NORMALIZE,
    }


def test_upstream_kind_flag_and_environment() -> None:
    flags = {"upstream": LOCAL, "upstream_kind": "openai"}
    settings = build_settings({}, {}, flags)
    assert settings.upstreams["default"].kind == "openai"
    settings = build_settings({}, {"PREFIXGATE_UPSTREAM_KIND": "openai"}, {})
    assert settings.upstream_kind == "openai"  # for the bundled runtime
    assert settings.with_upstream(LOCAL).upstreams["default"].kind == "openai"
    with pytest.raises(ConfigError, match="--upstream-kind"):
        build_settings({}, {"PREFIXGATE_UPSTREAM_KIND": "grpc"}, {})


@pytest.mark.parametrize(
    ("file", "env", "flags", "where"),
    [
        ({"upstreams": {"local": {"url": LOCAL, "policy": "bogus"}}}, {}, {}, "upstreams.local"),
        (local_file(), {"PREFIXGATE_POLICY": "strp"}, {}, "PREFIXGATE_POLICY"),
        (local_file(), {}, {"policy": "remove"}, "--policy"),
    ],
)
def test_bad_policy_is_an_error_listing_the_names(
    file: dict[str, Any], env: dict[str, str], flags: dict[str, Any], where: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_settings(file, env, flags)
    message = str(info.value)
    assert message.startswith(f"{where}: unknown policy") or message.startswith(
        f"{where}.policy: unknown policy"
    )
    assert "strip, normalize, preserve_as_metadata, passthrough" in message


def test_bad_policy_without_an_upstream_is_an_error() -> None:
    with pytest.raises(ConfigError, match="policy"):
        build_settings({}, {"PREFIXGATE_POLICY": "bogus"}, {})


@pytest.mark.parametrize(
    "file",
    [
        {"server": "127.0.0.1"},
        {"upstreams": {"local": "http://127.0.0.1:8080"}},
        {"upstreams": {"a": {"url": LOCAL}}, "routes": ["claude-*"]},
        {"upstreams": {"a": {"url": LOCAL, "connect_timeout": "soon"}}},
        {"upstreams": {"a": {"url": LOCAL, "normalize_keep": "cc_entrypoint"}}},
    ],
)
def test_malformed_tables_are_config_errors(file: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        build_settings(file, {}, {})


def test_load_settings_reads_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "prefixgate.toml"
    path.write_text(
        """
[server]
host = "0.0.0.0"
port = 9000
allow_unauthenticated = true

[upstreams.local]
url = "http://127.0.0.1:8080"
api_key_env = "LOCAL_KEY"

[upstreams.anthropic]
url = "https://api.anthropic.com"

[[routes]]
model = "claude-haiku-*"
upstream = "local"
policy = "normalize"
""",
        encoding="utf-8",
    )
    s = load_settings(path, environ={"LOCAL_KEY": "sk-local"})
    assert (s.host, s.port) == ("0.0.0.0", 9000)
    assert s.upstreams["local"].api_key == "sk-local"
    assert s.upstreams["anthropic"].policy is Policy.PASSTHROUGH
    assert s.route("claude-haiku-4-5") == (s.upstreams["local"], Policy.NORMALIZE)
    assert s.route("claude-opus-4-8") == (s.upstreams["local"], Policy.STRIP)
    # the environment and the flags still win over the file
    s = load_settings(
        str(path), environ={"LOCAL_KEY": "k", "PREFIXGATE_PORT": "9001"}, flags={"host": "::1"}
    )
    assert (s.host, s.port) == ("::1", 9001)


def test_load_settings_finds_the_file_through_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "conf.toml"
    path.write_text("[server]\nport = 7000\n", encoding="utf-8")
    assert load_settings(environ={"PREFIXGATE_CONFIG": str(path)}).port == 7000
    other = tmp_path / "other.toml"
    other.write_text("[server]\nport = 7001\n", encoding="utf-8")
    assert load_settings(other, environ={"PREFIXGATE_CONFIG": str(path)}).port == 7001


def test_load_settings_without_a_file() -> None:
    assert load_settings(environ={}) == Settings()
    assert load_settings(environ={"PREFIXGATE_PORT": "1234"}).port == 1234


def test_load_settings_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(info.value) == f"cannot read config file {path}: No such file or directory"


def test_load_settings_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path, environ={})


@pytest.mark.parametrize(
    "content",
    [
        b"[server\nport = 1\n",
        b"port = \n",
        b"[server]\nport = 1\nport = 2\n",
        b"\xff\xfe[server]\n",  # not UTF-8
    ],
)
def test_load_settings_invalid_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(info.value).startswith(f"config file {path} is not valid TOML: ")


def test_load_settings_reports_a_bad_value_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[upstreams.local]\nurl = "localhost:8080"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^upstreams\.local\.url: "):
        load_settings(path, environ={})


def test_load_settings_reads_the_new_server_and_upstream_keys(tmp_path: Path) -> None:
    path = tmp_path / "prefixgate.toml"
    path.write_text(
        """
[server]
audit_path = "memory"
capture_bodies = true
record_path = "capture.jsonl"

[upstreams.local]
url = "http://127.0.0.1:8080"
tokenizer = "estimate"
""",
        encoding="utf-8",
    )
    s = load_settings(path, environ={"HOME": "/home/u"})
    assert s.audit_path is None
    assert s.capture_bodies is True
    assert s.record_path == "capture.jsonl"
    assert s.upstreams["local"].tokenizer == "estimate"


def test_default_audit_path_follows_xdg_state_home_then_home() -> None:
    from prefixgate.config import default_audit_path

    assert default_audit_path({"XDG_STATE_HOME": "/xdg", "HOME": "/home/u"}) == (
        "/xdg/prefixgate/audit.db"
    )
    assert default_audit_path({"HOME": "/home/u"}) == "/home/u/.local/state/prefixgate/audit.db"
    assert default_audit_path({"XDG_STATE_HOME": "", "HOME": "/home/u"}) == (
        "/home/u/.local/state/prefixgate/audit.db"
    )
    assert default_audit_path({}) is None  # nowhere to put it: memory only


def test_audit_path_defaults_to_the_state_folder_of_the_given_environment() -> None:
    s = build_settings(local_file(), {"HOME": "/home/u"}, {})
    assert s.audit_path == "/home/u/.local/state/prefixgate/audit.db"
    s = build_settings({}, {"XDG_STATE_HOME": "/state", "HOME": "/home/u"}, {})
    assert s.audit_path == "/state/prefixgate/audit.db"


def test_audit_path_from_the_environment_beats_the_file() -> None:
    file = local_file(audit_path="/file/audit.db")
    assert build_settings(file, {}, {}).audit_path == "/file/audit.db"
    env = {"PREFIXGATE_AUDIT_PATH": "/env/audit.jsonl"}
    assert build_settings(file, env, {}).audit_path == "/env/audit.jsonl"
    assert build_settings(file, {"PREFIXGATE_AUDIT_PATH": "memory"}, {}).audit_path is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[("1", True), ("true", True), ("YES", True), ("on", True)],
        *[("0", False), ("false", False), ("No", False), ("off", False)],
    ],
)
def test_capture_bodies_from_the_environment(value: str, expected: bool) -> None:
    env = {"PREFIXGATE_CAPTURE_BODIES": value}
    assert build_settings({}, env, {}).capture_bodies is expected
    # the environment beats the file
    assert build_settings(local_file(capture_bodies=not expected), env, {}).capture_bodies is (
        expected
    )


def test_capture_bodies_that_is_not_a_flag_in_the_environment_is_an_error() -> None:
    with pytest.raises(ConfigError, match="capture_bodies"):
        build_settings({}, {"PREFIXGATE_CAPTURE_BODIES": "sometimes"}, {})


def test_the_audit_flag_beats_file_and_environment() -> None:
    file = {"server": {"audit_path": "/from-file.db"}}
    env = {"PREFIXGATE_AUDIT_PATH": "/from-env.db"}
    assert build_settings(file, env, {"audit_path": "/from-flag.db"}).audit_path == "/from-flag.db"
    assert build_settings(file, env, {"audit_path": "memory"}).audit_path is None
    assert build_settings(file, env, {"audit_path": None}).audit_path == "/from-env.db"


def test_env_path_names_a_path_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_path("PREFIXGATE_X", {"PREFIXGATE_X": str(tmp_path)}) == tmp_path
    assert env_path("PREFIXGATE_X", {"PREFIXGATE_X": "~/c"}) == (Path("~/c").expanduser())
    assert env_path("PREFIXGATE_X", {"PREFIXGATE_X": "  "}) is None
    assert env_path("PREFIXGATE_X", {}) is None
    # without a mapping it reads the process environment
    monkeypatch.setenv("PREFIXGATE_X", str(tmp_path / "d"))
    assert env_path("PREFIXGATE_X") == tmp_path / "d"
    monkeypatch.delenv("PREFIXGATE_X")
    assert env_path("PREFIXGATE_X") is None
