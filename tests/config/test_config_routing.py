"""Routes: model globs in order, a catch-all, policies per route, one upstream by flag."""

from __future__ import annotations

from typing import Any

import pytest
from configtables import ANTHROPIC, LOCAL

from prefixgate.config import ConfigError, Route, build_settings
from prefixgate.core.policy import Policy


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
