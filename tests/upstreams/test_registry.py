"""The table of upstream kinds: every kind the configuration accepts, by its name."""

from __future__ import annotations

import pytest

from prefixgate.config import ConfigError, build_settings
from prefixgate.core.cachekey import ADAPTER_VERSION
from prefixgate.upstreams import anthropic, openai
from prefixgate.upstreams.registry import KINDS

URL = "http://127.0.0.1:1"


def test_every_kind_in_the_table_is_configurable_under_its_own_name() -> None:
    assert all(kind.name == name for name, kind in KINDS.items())
    for name in KINDS:
        settings = build_settings({"upstreams": {"u": {"url": URL, "kind": name}}}, {}, {})
        assert settings.upstreams["u"].kind == name
        assert build_settings({}, {}, {"upstream_kind": name}).upstream_kind == name
    with pytest.raises(ConfigError, match="unknown kind"):
        build_settings({"upstreams": {"u": {"url": URL, "kind": "grpc"}}}, {}, {})


def test_each_kind_says_its_adapter_version_and_who_counts_tokens() -> None:
    assert KINDS["anthropic"] is anthropic.KIND
    assert KINDS["anthropic"].adapter_version == ADAPTER_VERSION
    assert not KINDS["anthropic"].counts_tokens  # the upstream has count_tokens
    assert KINDS["openai"] is openai.KIND
    assert KINDS["openai"].adapter_version == openai.ADAPTER_VERSION != ADAPTER_VERSION
    assert KINDS["openai"].counts_tokens  # chat completions has no such route
