"""``affinity_headers`` in an upstream's table, and the presets that set it."""

from __future__ import annotations

from typing import Any

import pytest

from prefixgate.config import ConfigError
from prefixgate.config.upstream import upstream_from_table
from prefixgate.core.affinity import AffinityHeaders

URL = "http://127.0.0.1:8080"


def read(value: Any = None, **table: Any) -> AffinityHeaders | None:
    if value is not None:
        table["affinity_headers"] = value
    return upstream_from_table("u", {"url": URL, **table}).affinity_headers


def test_off_unless_configured() -> None:
    assert read() is None
    assert read(False) is None
    assert read({"prefix": "", "session": ""}) is None


def test_true_is_the_default_pair() -> None:
    assert read(True) == AffinityHeaders("x-prefixgate-prefix-key", "x-session-id")


def test_a_table_names_each_header_and_a_left_out_key_keeps_its_default() -> None:
    assert read({"prefix": "X-SMG-Routing-Key"}) == AffinityHeaders(
        "X-SMG-Routing-Key", "x-session-id"
    )
    assert read({"prefix": "", "session": "x-user-id"}) == AffinityHeaders(None, "x-user-id")


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("yes", "true, false or a table"),
        ({"prefix": "bad name"}, "affinity_headers.prefix: a header name"),
        ({"session": 3}, "affinity_headers.session: a header name"),
        ({"prefix": "Authorization"}, "not a header the gateway may set"),
        ({"session": "Host"}, "not a header the gateway may set"),
        ({"prefix": "x-k", "session": "X-K"}, "the same header"),
        ({"key": "x-k"}, "unknown keys ['key']"),
    ],
)
def test_a_bad_value_is_refused_with_its_place(value: Any, said: str) -> None:
    with pytest.raises(ConfigError, match=r"upstreams\.u\.affinity_headers") as err:
        read(value)
    assert said in str(err.value)


def test_the_sglang_preset_hands_the_prefix_key_to_smg_and_vllm_the_default_pair() -> None:
    sglang = upstream_from_table("u", {"preset": "sglang"}).affinity_headers
    assert sglang == AffinityHeaders("X-SMG-Routing-Key", "x-session-id")
    assert upstream_from_table("u", {"preset": "vllm"}).affinity_headers == AffinityHeaders()
    assert upstream_from_table("u", {"preset": "llama.cpp"}).affinity_headers is None


def test_the_users_table_wins_over_the_presets() -> None:
    assert read(False, preset="sglang") is None
    assert read({"session": ""}, preset="vllm") == AffinityHeaders("x-prefixgate-prefix-key", None)
