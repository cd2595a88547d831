"""The headers handed to a cluster router: the prefix key and the session, or none."""

from __future__ import annotations

import json

from prefixgate.core.affinity import (
    DEFAULT_PREFIX_HEADER,
    DEFAULT_SESSION_HEADER,
    AffinityHeaders,
    affinity_headers,
)
from prefixgate.core.pipeline import rewrite

KEY = "ab" * 32


def body(turn: str, *, system: str = "You are a coding agent.") -> bytes:
    return json.dumps(
        {
            "model": "m",
            "max_tokens": 64,
            "system": [{"type": "text", "text": system}],
            "tools": [{"name": "Read", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": turn}],
        }
    ).encode()


def test_none_configured_sends_none() -> None:
    assert affinity_headers(None, KEY, "s-1") == {}


def test_the_default_pair_carries_the_prefix_key_and_the_session() -> None:
    assert affinity_headers(AffinityHeaders(), KEY, "tenant:s-1") == {
        DEFAULT_PREFIX_HEADER: KEY,
        DEFAULT_SESSION_HEADER: "tenant:s-1",
    }


def test_names_are_the_configured_ones_and_an_unset_one_is_left_out() -> None:
    smg = AffinityHeaders("X-SMG-Routing-Key", None)
    assert affinity_headers(smg, KEY, "s-1") == {"X-SMG-Routing-Key": KEY}
    assert affinity_headers(AffinityHeaders(None, "x-sid"), KEY, "s-1") == {"x-sid": "s-1"}
    assert smg.names() == frozenset({"x-smg-routing-key"})


def test_no_session_or_one_that_is_not_plain_ascii_sends_only_the_key() -> None:
    for session in (None, "", "a b", "line\nbreak", "caf\u00e9", "x" * 129):
        assert affinity_headers(AffinityHeaders(), KEY, session) == {DEFAULT_PREFIX_HEADER: KEY}
    assert affinity_headers(AffinityHeaders(), KEY, "x" * 128)[DEFAULT_SESSION_HEADER] == "x" * 128


def test_the_prefix_key_stays_across_turns_and_moves_with_the_system_prompt() -> None:
    first, later = rewrite(body("hello")).key.hex, rewrite(body("and now the tests")).key.hex
    other = rewrite(body("hello", system="You are a reviewer.")).key.hex
    assert first == later != other
    sent = affinity_headers(AffinityHeaders(), later, "s-1")[DEFAULT_PREFIX_HEADER]
    assert sent == first and len(sent) == 64 and int(sent, 16) >= 0
