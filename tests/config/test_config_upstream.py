"""Upstream tables: fields, first party, keys, URLs, kinds, tokenizer and tool loads."""

from __future__ import annotations

from typing import Any

import pytest
from configtables import ANTHROPIC, LOCAL

from prefixgate.config import ConfigError, build_settings, is_first_party, upstream_from_table
from prefixgate.core.policy import DEFAULT_NORMALIZE_KEEP, Policy
from prefixgate.core.toolload import ToolLoads
from prefixgate.upstreams.openai import OpenAISettings


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
    with pytest.raises(ConfigError, match=r"\('anthropic', 'openai'\)\)$"):
        upstream_from_table("local", {"url": LOCAL, "kind": "grpc"})


def test_the_anthropic_kind_has_no_settings_of_its_own() -> None:
    assert upstream_from_table("local", {"url": LOCAL}).kind_settings is None


def test_openai_kind_and_its_translation_settings() -> None:
    up = upstream_from_table("local", {"url": LOCAL, "kind": "openai"})
    assert (up.kind, up.kind_settings) == ("openai", OpenAISettings("system", "session", True))
    table = {
        "url": LOCAL,
        "kind": "openai",
        "system_messages": "user",
        "prompt_cache_key": "prefix",
        "reasoning": False,
    }
    up = upstream_from_table("local", table)
    assert up.kind_settings == OpenAISettings("user", "prefix", False)
    for key, bad in (("system_messages", "top"), ("prompt_cache_key", "random")):
        with pytest.raises(ConfigError, match=rf"upstreams\.local\.{key}: expected one of"):
            upstream_from_table("local", {**table, key: bad})


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


def test_credentials_in_a_url_are_taken_out_of_it_and_kept_apart() -> None:
    up = upstream_from_table(
        "u",
        {"urls": ["http://me:p%40ss-word@10.0.0.1:8080/", "http://10.0.0.2:8080"]},
    )
    assert up.urls == ("http://10.0.0.1:8080", "http://10.0.0.2:8080")
    assert up.url == "http://10.0.0.1:8080"
    assert up.basic_auth() == ("me", "p@ss-word")
    assert up.for_replica("http://10.0.0.2:8080").basic_auth() is None
    assert "p@ss-word" in up.secrets
    assert "p@ss-word" not in repr(up) and "p%40ss" not in repr(up)


def test_a_bad_url_with_credentials_is_refused_without_showing_them() -> None:
    with pytest.raises(ConfigError) as refused:
        upstream_from_table("u", {"url": "ftp://me:hunter2-secret@host"})
    assert "hunter2-secret" not in str(refused.value)
    assert "***@host" in str(refused.value)


def test_cache_capacity_for_the_runtime_model() -> None:
    plain = upstream_from_table("p", {"url": LOCAL})
    assert (plain.cache_slots, plain.cache_tokens) == (4, 0)
    assert upstream_from_table("a", {"url": ANTHROPIC}).cache_slots == 1024
    sized = upstream_from_table("s", {"url": LOCAL, "cache_slots": 2, "cache_tokens": 50_000})
    assert (sized.cache_slots, sized.cache_tokens) == (2, 50_000)
    with pytest.raises(ConfigError, match="cache_slots"):
        upstream_from_table("s", {"url": LOCAL, "cache_slots": 0})
    with pytest.raises(ConfigError, match="cache_tokens"):
        upstream_from_table("s", {"url": LOCAL, "cache_tokens": -5})
    settings = build_settings({}, {}, {}).with_upstream(
        LOCAL, cache={"cache_slots": 1, "cache_tokens": 455_111}
    )
    up = settings.upstreams["default"]
    assert (up.cache_slots, up.cache_tokens) == (1, 455_111)
