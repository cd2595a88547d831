"""Presets: each builds a valid upstream, explicit settings win over it, an unknown
name is a clear error, and ``serve --preset`` hands the server those settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from prefixgate.cli import main
from prefixgate.config import ConfigError, Settings, UpstreamConfig, build_settings
from prefixgate.config.presets import PRESETS, apply_preset
from prefixgate.config.upstream import upstream_from_table
from prefixgate.core.policy import Policy
from prefixgate.upstreams.openai import OpenAISettings

KEYS = {"OPENROUTER_API_KEY": "or-key", "DEEPSEEK_API_KEY": "ds-key", "ANTHROPIC_API_KEY": "a-key"}
NAMES = ("llama.cpp", "ollama", "lmstudio", "vllm", "sglang", "openrouter", "deepseek", "anthropic")


def test_the_presets_are_the_documented_ones() -> None:
    assert tuple(PRESETS) == NAMES
    for name, found in PRESETS.items():
        assert found.docs == f"docs/runtimes/{name}.md"
        assert (Path(__file__).parents[2] / found.docs).is_file()


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_builds_a_valid_upstream(name: str) -> None:
    up = upstream_from_table("u", {"preset": name}, KEYS)
    assert isinstance(up, UpstreamConfig)
    assert up.url == PRESETS[name].table["url"]
    assert up.kind == PRESETS[name].table["kind"]
    assert up.tokenizer == PRESETS[name].table["tokenizer"]
    assert up.policy is Policy.parse(PRESETS[name].table["policy"])
    # a preset carries no prices: they are the user's numbers
    assert (up.price_input, up.price_cached, up.price_output) == (None, None, None)
    assert not any(key.startswith("price") for key in PRESETS[name].table)


@pytest.mark.parametrize(
    ("name", "url", "kind", "tokenizer", "policy", "slots", "key"),
    [
        ("llama.cpp", "http://127.0.0.1:8080", "anthropic", "llama.cpp", "strip", 4, None),
        ("ollama", "http://127.0.0.1:11434", "anthropic", "estimate", "strip", 1, None),
        ("lmstudio", "http://127.0.0.1:1234", "anthropic", "estimate", "strip", 4, None),
        ("vllm", "http://127.0.0.1:8000", "anthropic", "estimate", "strip", 4, None),
        ("sglang", "http://127.0.0.1:30000", "anthropic", "estimate", "strip", 4, None),
        (
            "openrouter",
            "https://openrouter.ai/api/v1",
            "openai",
            "estimate",
            "strip",
            1024,
            "or-key",
        ),
        (
            "deepseek",
            "https://api.deepseek.com/anthropic",
            "anthropic",
            "estimate",
            "strip",
            1024,
            "ds-key",
        ),
        (
            "anthropic",
            "https://api.anthropic.com",
            "anthropic",
            "estimate",
            "passthrough",
            1024,
            "a-key",
        ),
    ],
)
def test_preset_defaults(
    name: str, url: str, kind: str, tokenizer: str, policy: str, slots: int, key: str | None
) -> None:
    up = upstream_from_table("u", {"preset": name}, KEYS)
    assert (up.url, up.kind, up.tokenizer, up.policy.value, up.cache_slots, up.api_key) == (
        url,
        kind,
        tokenizer,
        policy,
        slots,
        key,
    )
    assert up.first_party is (name == "anthropic")


def test_openrouter_is_translated_with_the_kinds_own_settings() -> None:
    up = upstream_from_table("u", {"preset": "openrouter"}, KEYS)
    assert isinstance(up.kind_settings, OpenAISettings)


def test_explicit_settings_override_the_preset() -> None:
    table = {
        "preset": "ollama",
        "url": "http://gpu-box:11434",
        "kind": "openai",
        "policy": "normalize",
        "tokenizer": "auto",
        "cache_slots": 2,
        "price_input": 1.0,
        "price_cached": 0.1,
    }
    up = upstream_from_table("u", table, {})
    assert (up.url, up.kind, up.policy, up.tokenizer, up.cache_slots) == (
        "http://gpu-box:11434",
        "openai",
        Policy.NORMALIZE,
        "auto",
        2,
    )
    assert (up.price_input, up.price_cached, up.price_output) == (1.0, 0.1, None)


def test_an_api_key_or_replicas_replace_the_presets_key_variable_and_url() -> None:
    up = upstream_from_table("u", {"preset": "openrouter", "api_key": "inline"}, {})
    assert up.api_key == "inline"
    up = upstream_from_table(
        "u", {"preset": "vllm", "urls": ["http://a:8000", "http://b:8000"]}, {}
    )
    assert up.urls == ("http://a:8000", "http://b:8000")
    assert apply_preset("u", {"url": "http://x:1"}) == {"url": "http://x:1"}  # no preset


def test_a_missing_key_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="OPENROUTER_API_KEY is not set"):
        upstream_from_table("u", {"preset": "openrouter"}, {})


@pytest.mark.parametrize("bad", ["llamacpp", "", 3, None])
def test_an_unknown_preset_is_a_clear_config_error(bad: object) -> None:
    with pytest.raises(ConfigError) as err:
        upstream_from_table("u", {"preset": bad}, {})
    message = str(err.value)
    assert message.startswith("upstreams.u.preset: unknown preset")
    assert "llama.cpp" in message and "openrouter" in message


@pytest.mark.parametrize(
    ("prices", "message"),
    [
        ({"price_input": 3.0}, "price_input and price_cached are set together"),
        ({"price_cached": 0.3}, "price_input and price_cached are set together"),
        ({"price_input": -1, "price_cached": 0}, "upstreams.u.price_input: a price of 0 or more"),
        ({"price_input": "3", "price_cached": 0}, "upstreams.u.price_input: a price of 0 or more"),
        ({"price_input": 3, "price_cached": True}, "upstreams.u.price_cached: a price"),
        ({"price_input": 3, "price_cached": 0.3, "price_output": -2}, "price_output: a price"),
    ],
)
def test_bad_prices_are_refused(prices: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        upstream_from_table("u", {"url": "http://h:1", **prices}, {})


# -- the flag and the environment ------------------------------------------------


def test_preset_flag_makes_one_upstream_from_the_preset() -> None:
    s = build_settings({}, {}, {"preset": "lmstudio"})
    assert list(s.upstreams) == ["default"]
    assert s.upstreams["default"].url == "http://127.0.0.1:1234"


def test_preset_flag_under_the_file_the_upstream_flag_and_the_kind_flag() -> None:
    file = {"upstreams": {"default": {"url": "http://file:9", "cache_slots": 8}}}
    s = build_settings(file, {}, {"preset": "llama.cpp"})
    up = s.upstreams["default"]
    assert (up.url, up.cache_slots, up.tokenizer) == ("http://file:9", 8, "llama.cpp")
    s = build_settings(file, {}, {"preset": "sglang", "upstream": ["http://flag:7"]})
    assert (s.upstreams["default"].url, s.upstreams["default"].cache_slots) == ("http://flag:7", 8)
    s = build_settings({}, {}, {"preset": "vllm", "upstream_kind": "openai"})
    assert s.upstreams["default"].kind == "openai"
    s = build_settings({}, KEYS, {"preset": "anthropic", "policy": "strip"})
    assert s.upstreams["default"].policy is Policy.STRIP


def test_preset_from_the_environment() -> None:
    s = build_settings({}, {"PREFIXGATE_PRESET": "deepseek", **KEYS}, {})
    assert s.upstreams["default"].url == "https://api.deepseek.com/anthropic"
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        build_settings({}, {"PREFIXGATE_PRESET": "nope"}, {})


def test_preset_key_in_a_named_table() -> None:
    file = {"upstreams": {"box": {"preset": "ollama", "url": "http://box:11434"}}}
    s = build_settings(file, {}, {})
    assert s.upstreams["box"].url == "http://box:11434"
    assert s.upstreams["box"].tokenizer == "estimate"


def test_serve_with_a_preset_runs_the_server_with_its_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[Settings] = []
    monkeypatch.setattr("prefixgate.server.run", lambda s, **kw: started.append(s))
    result = CliRunner().invoke(main, ["serve", "--preset", "llama.cpp", "--audit", "memory"])
    assert result.exit_code == 0, result.output
    (settings,) = started
    up = settings.upstreams["default"]
    assert (up.url, up.tokenizer, up.policy) == ("http://127.0.0.1:8080", "llama.cpp", Policy.STRIP)


def test_serve_refuses_an_unknown_preset_as_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["serve", "--preset", "llamacpp"])
    assert result.exit_code == 2
    assert "llamacpp" in result.stderr and "llama.cpp" in result.stderr


def test_serve_help_lists_the_presets() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert "--preset" in result.stdout
    for name in NAMES:
        assert name in result.stdout
