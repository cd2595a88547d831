"""Settings: file < environment < flags, upstreams, routes and their checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prefixgate.config import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY,
    DEFAULT_PORT,
    ConfigError,
    Route,
    Settings,
    build_settings,
    is_first_party,
    load_settings,
    upstream_from_table,
)
from prefixgate.core.policy import DEFAULT_NORMALIZE_KEEP, Policy
from prefixgate.core.toolload import ToolLoads

LOCAL = "http://127.0.0.1:8080"
ANTHROPIC = "https://api.anthropic.com"


def local_file(**server: Any) -> dict[str, Any]:
    return {"server": server, "upstreams": {"local": {"url": LOCAL}}}


# ----------------------------------------------------------------- precedence


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


# ------------------------------------------------------------------ upstreams


def test_upstream_table_fields() -> None:
    table = {
        "url": "http://host:9/v/",
        "kind": "anthropic",
        "api_key": "sk-x",
        "policy": "normalize",
        "normalize_keep": ["cc_entrypoint", "cc_version"],
        "metadata_header": "x-attr",
        "connect_timeout": 2,
        "read_timeout": 30.5,
    }
    up = upstream_from_table("u", table)
    assert up.name == "u"
    assert up.url == "http://host:9/v"
    assert up.api_key == "sk-x"
    assert up.first_party is False
    assert up.policy is Policy.NORMALIZE
    assert up.normalize_keep == ("cc_entrypoint", "cc_version")
    assert up.metadata_header == "x-attr"
    assert (up.connect_timeout, up.read_timeout) == (2.0, 30.5)
    plain = upstream_from_table("p", {"url": LOCAL})
    assert plain.policy is Policy.STRIP
    assert plain.api_key is None
    assert plain.normalize_keep == DEFAULT_NORMALIZE_KEEP
    assert plain.metadata_header is None


def test_first_party_defaults_to_passthrough_without_warning() -> None:
    s = build_settings({"upstreams": {"anthropic": {"url": ANTHROPIC}}}, {}, {})
    up = s.upstreams["anthropic"]
    assert up.first_party is True
    assert up.policy is Policy.PASSTHROUGH
    assert s.warnings() == []


def test_first_party_set_to_strip_warns() -> None:
    file = {"upstreams": {"anthropic": {"url": ANTHROPIC, "policy": "strip"}}}
    s = build_settings(file, {}, {})
    assert s.upstreams["anthropic"].policy is Policy.STRIP
    (warning,) = s.warnings()
    assert "'anthropic'" in warning
    assert "first-party" in warning
    assert "strip" in warning


def test_passthrough_on_a_non_first_party_upstream_warns() -> None:
    s = build_settings({}, {"PREFIXGATE_UPSTREAM": LOCAL, "PREFIXGATE_POLICY": "passthrough"}, {})
    (warning,) = s.warnings()
    assert "'default'" in warning
    assert "passthrough" in warning
    assert "not first-party" in warning
    assert build_settings({}, {"PREFIXGATE_UPSTREAM": LOCAL}, {}).warnings() == []


@pytest.mark.parametrize(
    ("url", "first_party"),
    [
        ("https://api.anthropic.com", True),
        ("https://api.anthropic.com/", True),
        ("https://API.Anthropic.com:443/v1", True),
        ("https://api.anthropic.com.evil.example", False),
        ("https://evil.example/api.anthropic.com", False),
        ("http://127.0.0.1:8080", False),
    ],
)
def test_is_first_party(url: str, first_party: bool) -> None:
    assert is_first_party(url) is first_party
    assert upstream_from_table("u", {"url": url}).first_party is first_party


def test_first_party_can_be_declared_explicitly() -> None:
    up = upstream_from_table("proxy", {"url": "https://corp-proxy.example", "first_party": True})
    assert up.first_party is True
    assert up.policy is Policy.PASSTHROUGH
    down = upstream_from_table("direct", {"url": ANTHROPIC, "first_party": False})
    assert down.policy is Policy.STRIP


def test_api_key_env() -> None:
    table = {"url": LOCAL, "api_key_env": "LOCAL_KEY"}
    assert upstream_from_table("local", table, {"LOCAL_KEY": "sk-1"}).api_key == "sk-1"
    s = build_settings({"upstreams": {"local": table}}, {"LOCAL_KEY": "sk-2"}, {})
    assert s.upstreams["local"].api_key == "sk-2"


def test_api_key_env_missing_is_an_error() -> None:
    file = {"upstreams": {"local": {"url": LOCAL, "api_key_env": "LOCAL_KEY"}}}
    with pytest.raises(ConfigError) as info:
        build_settings(file, {}, {})
    assert str(info.value) == "upstreams.local.api_key_env: variable LOCAL_KEY is not set"


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        42,
        "127.0.0.1:8080",
        "localhost:8080",
        "ftp://host/",
        "file:///tmp/x",
        "httpx://host",
        "http://",
        "http:",
        "http:///path",
    ],
)
def test_bad_upstream_url_is_an_error(url: Any) -> None:
    table = {} if url is None else {"url": url}
    with pytest.raises(ConfigError) as info:
        build_settings({"upstreams": {"local": table}}, {}, {})
    message = str(info.value)
    assert message.startswith("upstreams.local.url: an http(s) URL is required")
    assert repr(url) in message


def test_bad_upstream_url_from_the_environment_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"upstreams\.default\.url"):
        build_settings({}, {"PREFIXGATE_UPSTREAM": "localhost:8080"}, {})


def test_unknown_upstream_kind_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"upstreams\.local\.kind: unknown kind 'grpc'"):
        upstream_from_table("local", {"url": LOCAL, "kind": "grpc"})


def test_openai_kind_and_its_translation_settings() -> None:
    up = upstream_from_table("local", {"url": LOCAL, "kind": "openai"})
    assert (up.kind, up.system_messages, up.prompt_cache_key, up.reasoning) == (
        "openai",
        "system",
        "session",
        True,
    )
    table = {
        "url": LOCAL,
        "kind": "openai",
        "system_messages": "user",
        "prompt_cache_key": "prefix",
        "reasoning": False,
    }
    up = upstream_from_table("local", table)
    assert (up.system_messages, up.prompt_cache_key, up.reasoning) == ("user", "prefix", False)
    for key, bad in (("system_messages", "top"), ("prompt_cache_key", "random")):
        with pytest.raises(ConfigError, match=rf"upstreams\.local\.{key}: expected one of"):
            upstream_from_table("local", {**table, key: bad})


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


# --------------------------------------------------------------------- routes


def routed_file() -> dict[str, Any]:
    return {
        "upstreams": {
            "local": {"url": LOCAL},
            "cloud": {"url": "https://llm.example/", "policy": "preserve_as_metadata"},
            "anthropic": {"url": ANTHROPIC},
        },
        "routes": [
            {"model": "claude-haiku-*", "upstream": "local", "policy": "normalize"},
            {"model": "claude-sonnet-4-?", "upstream": "cloud"},
            {"model": "claude-opus-*", "upstream": "anthropic"},
        ],
    }


def test_routes_match_model_globs_in_order_with_a_fallback() -> None:
    s = build_settings(routed_file(), {}, {})
    ups = s.upstreams
    assert s.route("claude-haiku-4-5") == (ups["local"], Policy.NORMALIZE)
    assert s.route("claude-sonnet-4-5") == (ups["cloud"], Policy.PRESERVE_AS_METADATA)
    assert s.route("claude-sonnet-4-50") == (ups["local"], Policy.STRIP)  # ? is one char
    assert s.route("claude-opus-4-8") == (ups["anthropic"], Policy.PASSTHROUGH)
    assert s.route("Claude-Opus-4-8") == (ups["local"], Policy.STRIP)  # case-sensitive
    assert s.route("gpt-5") == (ups["local"], Policy.STRIP)  # fallback: first upstream
    assert s.routes[-1] == Route("*", "local")
    assert len(s.routes) == 4


def test_route_matches() -> None:
    route = Route("claude-*-4-[58]", "local")
    assert route.matches("claude-opus-4-8")
    assert route.matches("claude-haiku-4-5")
    assert not route.matches("claude-opus-4-7")


def test_route_without_a_model_matches_everything() -> None:
    file: dict[str, Any] = {
        "upstreams": {"a": {"url": LOCAL}, "b": {"url": "http://b:1"}},
        "routes": [{"upstream": "b"}],
    }
    s = build_settings(file, {}, {})
    assert s.route("anything") == (s.upstreams["b"], Policy.STRIP)


def test_route_to_an_unknown_upstream_is_an_error() -> None:
    file = routed_file()
    file["routes"].append({"model": "x", "upstream": "nowhere"})
    with pytest.raises(ConfigError) as info:
        build_settings(file, {}, {})
    assert str(info.value) == "routes[3].upstream: no upstream named 'nowhere'"


def test_route_with_a_bad_policy_is_an_error() -> None:
    file = routed_file()
    file["routes"][1]["policy"] = "keep"
    with pytest.raises(ConfigError, match=r"^routes\[1\]\.policy: unknown policy 'keep'"):
        build_settings(file, {}, {})


def test_a_single_upstream_from_env_or_flags_replaces_the_routes() -> None:
    s = build_settings(routed_file(), {"PREFIXGATE_UPSTREAM": "http://only:1"}, {})
    assert list(s.upstreams) == ["default"]
    assert s.routes == (Route("*", "default"),)
    assert s.route("claude-haiku-4-5") == (s.upstreams["default"], Policy.STRIP)


def test_with_upstream() -> None:
    s = build_settings(routed_file(), {}, {}).with_upstream("http://127.0.0.1:5555/")
    assert list(s.upstreams) == ["default"]
    assert s.upstreams["default"].url == "http://127.0.0.1:5555"
    assert s.route("claude-haiku-4-5") == (s.upstreams["default"], Policy.STRIP)
    assert s.embedded is False


# ----------------------------------------------------------------- load_settings


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


def test_policy_flag_reaches_the_embedded_upstream() -> None:
    # With no upstream configured, serve starts the bundled runtime and calls
    # with_upstream(); the --policy flag must survive that.
    settings = build_settings({}, {}, {"policy": "normalize"})
    assert settings.embedded
    up, policy = settings.with_upstream("http://127.0.0.1:9999").route("any-model") or (None, None)
    assert up is not None and up.url == "http://127.0.0.1:9999"
    assert policy is Policy.NORMALIZE


def test_policy_flag_beats_a_route_policy() -> None:
    file = {
        "upstreams": {"local": {"url": LOCAL}},
        "routes": [{"model": "claude-*", "upstream": "local", "policy": "passthrough"}],
    }
    routed = build_settings(file, {}, {}).route("claude-x")
    assert routed is not None and routed[1] is Policy.PASSTHROUGH
    settings = build_settings(file, {}, {"policy": "strip"})
    routed = settings.route("claude-x")
    assert routed is not None and routed[1] is Policy.STRIP


# ------------------------------------------------ audit, body capture, record, tokenizer


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


@pytest.mark.parametrize("memory", ["memory", "MEMORY", "none", "None"])
def test_audit_path_memory_means_no_file(memory: str) -> None:
    env = {"HOME": "/home/u"}
    assert build_settings(local_file(audit_path=memory), env, {}).audit_path is None
    assert build_settings({}, {**env, "PREFIXGATE_AUDIT_PATH": memory}, {}).audit_path is None


def test_audit_path_expands_the_home_folder() -> None:
    s = build_settings(local_file(audit_path="~/logs/audit.db"), {}, {})
    assert s.audit_path == str(Path("~/logs/audit.db").expanduser())
    assert not s.audit_path.startswith("~")


def test_audit_path_from_the_environment_beats_the_file() -> None:
    file = local_file(audit_path="/file/audit.db")
    assert build_settings(file, {}, {}).audit_path == "/file/audit.db"
    env = {"PREFIXGATE_AUDIT_PATH": "/env/audit.jsonl"}
    assert build_settings(file, env, {}).audit_path == "/env/audit.jsonl"
    assert build_settings(file, {"PREFIXGATE_AUDIT_PATH": "memory"}, {}).audit_path is None


def test_capture_bodies_is_off_unless_asked_for() -> None:
    assert build_settings({}, {}, {}).capture_bodies is False
    assert build_settings(local_file(capture_bodies=True), {}, {}).capture_bodies is True
    assert build_settings(local_file(capture_bodies=False), {}, {}).capture_bodies is False


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


@pytest.mark.parametrize("value", ["maybe", "", "2", 1, None])
def test_capture_bodies_that_is_not_a_flag_is_an_error(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^server\.capture_bodies: expected true or false"):
        build_settings(local_file(capture_bodies=value), {}, {})


def test_capture_bodies_that_is_not_a_flag_in_the_environment_is_an_error() -> None:
    with pytest.raises(ConfigError, match="capture_bodies"):
        build_settings({}, {"PREFIXGATE_CAPTURE_BODIES": "sometimes"}, {})


def test_record_path_from_the_file_or_the_record_flag() -> None:
    assert build_settings({}, {}, {}).record_path is None
    file = local_file(record_path="/file/capture.jsonl")
    assert build_settings(file, {}, {}).record_path == "/file/capture.jsonl"
    assert build_settings(file, {}, {"record": "/flag.jsonl"}).record_path == "/flag.jsonl"
    assert build_settings(file, {}, {"record": None}).record_path == "/file/capture.jsonl"
    assert build_settings({}, {}, {"record": "/flag.jsonl"}).record_path == "/flag.jsonl"


def test_upstream_tokenizer_defaults_to_auto() -> None:
    assert upstream_from_table("u", {"url": LOCAL}).tokenizer == "auto"
    assert upstream_from_table("a", {"url": ANTHROPIC}).tokenizer == "auto"


@pytest.mark.parametrize("tokenizer", ["auto", "llama.cpp", "estimate"])
def test_upstream_tokenizer_choices(tokenizer: str) -> None:
    file = {"upstreams": {"local": {"url": LOCAL, "tokenizer": tokenizer}}}
    assert build_settings(file, {}, {}).upstreams["local"].tokenizer == tokenizer


@pytest.mark.parametrize("tokenizer", ["llamacpp", "LLAMA.CPP", "tiktoken", "", 4, None])
def test_an_unknown_tokenizer_is_an_error(tokenizer: Any) -> None:
    file = {"upstreams": {"local": {"url": LOCAL, "tokenizer": tokenizer}}}
    with pytest.raises(ConfigError) as info:
        build_settings(file, {}, {})
    message = str(info.value)
    assert message.startswith("upstreams.local.tokenizer: expected one of auto, llama.cpp, ")
    assert repr(tokenizer) in message


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


def test_the_audit_flag_beats_file_and_environment() -> None:
    file = {"server": {"audit_path": "/from-file.db"}}
    env = {"PREFIXGATE_AUDIT_PATH": "/from-env.db"}
    assert build_settings(file, env, {"audit_path": "/from-flag.db"}).audit_path == "/from-flag.db"
    assert build_settings(file, env, {"audit_path": "memory"}).audit_path is None
    assert build_settings(file, env, {"audit_path": None}).audit_path == "/from-env.db"


# -- tool_loads: where tools loaded through ToolSearch go


def test_tool_loads_default_inline_for_local_and_as_sent_for_first_party() -> None:
    s = build_settings(
        {"upstreams": {"local": {"url": "http://127.0.0.1:8080"}, "anthropic": {"url": ANTHROPIC}}},
        {},
        {},
    )
    assert s.upstreams["local"].tool_loads is ToolLoads.INLINE
    assert s.upstreams["anthropic"].tool_loads is ToolLoads.AS_SENT
    third = upstream_from_table("or", {"url": "https://openrouter.ai/api", "kind": "openai"})
    assert third.tool_loads is ToolLoads.INLINE


@pytest.mark.parametrize("value", ["inline", "inline_only", "as_sent"])
def test_tool_loads_is_set_per_upstream(value: str) -> None:
    up = upstream_from_table("local", {"url": "http://127.0.0.1:8080", "tool_loads": value})
    assert up.tool_loads is ToolLoads(value)
    first = upstream_from_table("a", {"url": ANTHROPIC, "tool_loads": value})
    assert first.tool_loads is ToolLoads(value)


def test_tool_loads_rejects_an_unknown_value() -> None:
    with pytest.raises(ConfigError, match=r"upstreams\.local\.tool_loads: expected one of"):
        upstream_from_table("local", {"url": "http://127.0.0.1:8080", "tool_loads": "expand"})


def test_tool_loads_default_for_an_upstream_given_as_a_flag() -> None:
    s = build_settings({"upstreams": {"local": {"url": "http://127.0.0.1:8080"}}}, {}, {})
    assert s.with_upstream("http://127.0.0.1:9").upstreams["default"].tool_loads is (
        ToolLoads.INLINE
    )
