"""The table of upstream kinds: every kind the configuration accepts, by its name."""

from __future__ import annotations

from prefixgate.config import UPSTREAM_KINDS
from prefixgate.core.cachekey import ADAPTER_VERSION
from prefixgate.upstreams import anthropic, openai
from prefixgate.upstreams.registry import KINDS


def test_every_configurable_kind_is_in_the_table_under_its_own_name() -> None:
    assert set(KINDS) == set(UPSTREAM_KINDS)
    assert all(kind.name == name for name, kind in KINDS.items())


def test_each_kind_says_its_adapter_version_and_who_counts_tokens() -> None:
    assert KINDS["anthropic"] is anthropic.KIND
    assert KINDS["anthropic"].adapter_version == ADAPTER_VERSION
    assert not KINDS["anthropic"].counts_tokens  # the upstream has count_tokens
    assert KINDS["openai"] is openai.KIND
    assert KINDS["openai"].adapter_version == openai.ADAPTER_VERSION != ADAPTER_VERSION
    assert KINDS["openai"].counts_tokens  # chat completions has no such route
