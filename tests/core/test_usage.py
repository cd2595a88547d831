"""Prompt and cached token counts from every usage shape, unknown never 0."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefixgate.core.fold import Usage
from prefixgate.core.usage import CacheUsage, cache_usage, from_anthropic

# -- each shape ----------------------------------------------------------------


def test_anthropic() -> None:
    response = {
        "usage": {
            "input_tokens": 12,
            "cache_read_input_tokens": 2000,
            "cache_creation_input_tokens": 300,
            "output_tokens": 5,
        }
    }
    assert cache_usage(response) == CacheUsage(2312, 2000, "anthropic")


def test_anthropic_reporting_zero_cached_is_zero_not_unknown() -> None:
    response = {"usage": {"input_tokens": 40, "cache_read_input_tokens": 0}}
    assert cache_usage(response) == CacheUsage(40, 0, "anthropic")


def test_anthropic_without_cache_fields_is_unknown() -> None:
    assert cache_usage({"usage": {"input_tokens": 40}}) == CacheUsage(40, None, None)
    only_creation = {"usage": {"input_tokens": 40, "cache_creation_input_tokens": 60}}
    assert cache_usage(only_creation) == CacheUsage(100, None, None)


def test_anthropic_cache_read_without_input_tokens() -> None:
    assert cache_usage({"usage": {"cache_read_input_tokens": 7}}) == CacheUsage(
        None, 7, "anthropic"
    )


def test_from_anthropic_folded_usage() -> None:
    usage = Usage(input_tokens=3, cache_read_input_tokens=90, cache_creation_input_tokens=7)
    assert from_anthropic(usage) == CacheUsage(100, 90, "anthropic")
    assert from_anthropic(Usage(input_tokens=3)) == CacheUsage(3, None, None)
    assert from_anthropic(Usage()) == CacheUsage(None, None, None)


def test_openai() -> None:
    response = {
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 1024},
        }
    }
    assert cache_usage(response) == CacheUsage(1200, 1024, "openai")
    zero = {"usage": {"prompt_tokens": 50, "prompt_tokens_details": {"cached_tokens": 0}}}
    assert cache_usage(zero) == CacheUsage(50, 0, "openai")


def test_openai_without_cached_tokens_is_unknown() -> None:
    assert cache_usage({"usage": {"prompt_tokens": 1200}}) == CacheUsage(1200, None, None)
    empty_details = {"usage": {"prompt_tokens": 1200, "prompt_tokens_details": {}}}
    assert cache_usage(empty_details) == CacheUsage(1200, None, None)
    null_details = {"usage": {"prompt_tokens": 1200, "prompt_tokens_details": None}}
    assert cache_usage(null_details) == CacheUsage(1200, None, None)


def test_deepseek() -> None:
    response = {"usage": {"prompt_cache_hit_tokens": 640, "prompt_cache_miss_tokens": 60}}
    assert cache_usage(response) == CacheUsage(700, 640, "deepseek")
    with_prompt = {
        "usage": {
            "prompt_tokens": 701,
            "prompt_cache_hit_tokens": 640,
            "prompt_cache_miss_tokens": 60,
        }
    }
    assert cache_usage(with_prompt) == CacheUsage(701, 640, "deepseek")
    assert cache_usage({"usage": {"prompt_cache_hit_tokens": 0}}) == CacheUsage(None, 0, "deepseek")


def test_llama_cpp_timings() -> None:
    response = {"timings": {"cache_n": 4096, "prompt_n": 17, "predicted_n": 3}}
    assert cache_usage(response) == CacheUsage(4113, 4096, "llama.cpp")
    assert cache_usage({"timings": {"cache_n": 0, "prompt_n": 17}}) == CacheUsage(
        17, 0, "llama.cpp"
    )
    assert cache_usage({"timings": {"cache_n": 5}}) == CacheUsage(None, 5, "llama.cpp")


def test_llama_cpp_openai_route_keeps_the_reported_prompt_size() -> None:
    response = {"usage": {"prompt_tokens": 4113}, "timings": {"cache_n": 4096, "prompt_n": 17}}
    assert cache_usage(response) == CacheUsage(4113, 4096, "llama.cpp")


def test_ollama() -> None:
    response = {"prompt_eval_cached_count": 900, "prompt_eval_count": 20, "eval_count": 4}
    assert cache_usage(response) == CacheUsage(920, 900, "ollama")
    assert cache_usage({"prompt_eval_cached_count": 900}) == CacheUsage(None, 900, "ollama")


@pytest.mark.parametrize(
    "response",
    [
        {},
        {"usage": None},
        {"usage": {}},
        {"usage": {"output_tokens": 5}},
        {"usage": "12 tokens"},
        {"usage": [1, 2]},
        {"timings": {"prompt_n": 17}},
        {"timings": "fast"},
        {"prompt_eval_count": 20},
    ],
)
def test_a_response_that_reports_nothing_cached_is_unknown(response: dict[str, Any]) -> None:
    usage = cache_usage(response)
    assert usage.cached_tokens is None
    assert usage.source is None


def test_a_prompt_size_without_cache_counts_is_kept() -> None:
    assert cache_usage({"prompt_eval_count": 20}) == CacheUsage(20, None, None)
    assert cache_usage({"usage": {"prompt_tokens": 9}}) == CacheUsage(9, None, None)
    assert cache_usage({}) == CacheUsage(None, None, None)


# -- malformed counts ----------------------------------------------------------

MALFORMED = [-1, True, False, "5", 2.5, None, [3], {"n": 3}, float("nan"), float("inf")]


@pytest.mark.parametrize("bad", MALFORMED, ids=repr)
def test_malformed_counts_are_ignored(bad: Any) -> None:
    anthropic = cache_usage({"usage": {"input_tokens": 10, "cache_read_input_tokens": bad}})
    assert anthropic == CacheUsage(10, None, None)
    openai = {"usage": {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": bad}}}
    assert cache_usage(openai) == CacheUsage(10, None, None)
    deepseek = {"usage": {"prompt_cache_hit_tokens": bad, "prompt_cache_miss_tokens": 10}}
    assert cache_usage(deepseek) == CacheUsage(None, None, None)
    assert cache_usage({"timings": {"cache_n": bad, "prompt_n": 10}}).cached_tokens is None
    assert cache_usage({"prompt_eval_cached_count": bad}).cached_tokens is None


@pytest.mark.parametrize("bad", MALFORMED, ids=repr)
def test_malformed_prompt_sizes_are_ignored(bad: Any) -> None:
    assert cache_usage({"usage": {"input_tokens": bad, "cache_read_input_tokens": 5}}) == (
        CacheUsage(None, 5, "anthropic")
    )
    deepseek = {"usage": {"prompt_cache_hit_tokens": 5, "prompt_cache_miss_tokens": bad}}
    assert cache_usage(deepseek) == CacheUsage(None, 5, "deepseek")
    assert cache_usage({"timings": {"cache_n": 5, "prompt_n": bad}}) == CacheUsage(
        None, 5, "llama.cpp"
    )
    ollama = {"prompt_eval_cached_count": 5, "prompt_eval_count": bad}
    assert cache_usage(ollama) == CacheUsage(None, 5, "ollama")


def test_integral_floats_count() -> None:
    assert cache_usage({"usage": {"input_tokens": 10.0, "cache_read_input_tokens": 90.0}}) == (
        CacheUsage(100, 90, "anthropic")
    )


def test_a_malformed_cached_count_does_not_fall_through_to_another_shape() -> None:
    # the usage object is Anthropic's; a stray Ollama field is not read instead
    response = {
        "usage": {"input_tokens": 10, "cache_read_input_tokens": -5},
        "prompt_eval_cached_count": 10,
    }
    assert cache_usage(response) == CacheUsage(10, None, None)


# -- properties ----------------------------------------------------------------

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
KEYS = st.sampled_from(
    [
        "input_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "prompt_tokens",
        "prompt_tokens_details",
        "cached_tokens",
        "prompt_cache_hit_tokens",
        "prompt_cache_miss_tokens",
        "cache_n",
        "prompt_n",
    ]
)
FIELDS = st.dictionaries(KEYS, JSONISH | st.dictionaries(KEYS, JSONISH), max_size=6)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "usage": FIELDS | JSONISH,
            "timings": FIELDS | JSONISH,
            "prompt_eval_cached_count": JSONISH,
            "prompt_eval_count": JSONISH,
        },
    )
)
def test_any_response_gives_counts_or_unknown(response: dict[str, Any]) -> None:
    usage = cache_usage(response)
    for count in (usage.prompt_tokens, usage.cached_tokens):
        assert count is None or (type(count) is int and count >= 0)
    assert (usage.source is None) == (usage.cached_tokens is None)


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7))
def test_the_shapes_agree(input_tokens: int, cached: int, created: int) -> None:
    prompt = input_tokens + cached + created
    shapes: list[dict[str, Any]] = [
        {
            "usage": {
                "input_tokens": input_tokens,
                "cache_read_input_tokens": cached,
                "cache_creation_input_tokens": created,
            }
        },
        {"usage": {"prompt_tokens": prompt, "prompt_tokens_details": {"cached_tokens": cached}}},
        {"usage": {"prompt_cache_hit_tokens": cached, "prompt_cache_miss_tokens": prompt - cached}},
        {"timings": {"cache_n": cached, "prompt_n": prompt - cached}},
        {"prompt_eval_cached_count": cached, "prompt_eval_count": prompt - cached},
    ]
    for response in shapes:
        usage = cache_usage(response)
        assert (usage.prompt_tokens, usage.cached_tokens) == (prompt, cached), response
