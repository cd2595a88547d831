"""Both kinds add the affinity headers to the request they send, and only when configured."""

from __future__ import annotations

import json
from dataclasses import replace

from prefixgate.config import UpstreamConfig
from prefixgate.core.affinity import AffinityHeaders
from prefixgate.core.pipeline import rewrite
from prefixgate.upstreams.anthropic import KIND as ANTHROPIC
from prefixgate.upstreams.anthropic import AnthropicKind
from prefixgate.upstreams.kind import Incoming
from prefixgate.upstreams.openai import KIND as OPENAI
from prefixgate.upstreams.openai import OpenAIKind

BODY = json.dumps(
    {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
).encode()
PLAIN = UpstreamConfig(name="u", url="http://127.0.0.1:8080")
ROUTED = replace(PLAIN, affinity_headers=AffinityHeaders("X-SMG-Routing-Key", "x-session-id"))
# a client's own header of a configured name is replaced, whatever its case
CLIENT = {"x-claude-code-session-id": "s-1", "X-Session-Id": "forged", "user-agent": "cli"}


def raw(kind: AnthropicKind | OpenAIKind, up: UpstreamConfig, session: str | None) -> list[str]:
    """The names of the headers sent, as sent."""
    call = kind.call(up, Incoming(CLIENT, "/v1/messages"), rewrite(BODY), session)
    return list(call.outgoing.headers)


def sent(
    kind: AnthropicKind | OpenAIKind, upstream: UpstreamConfig, session: str | None
) -> dict[str, str]:
    call = kind.call(upstream, Incoming(CLIENT, "/v1/messages"), rewrite(BODY), session)
    return {k.lower(): v for k, v in call.outgoing.headers.items()}


def test_the_anthropic_kind_adds_the_key_and_the_session_in_place_of_the_clients() -> None:
    key = rewrite(BODY).key.hex
    headers = sent(ANTHROPIC, ROUTED, "team:s-1")
    assert headers["x-smg-routing-key"] == key
    assert headers["x-session-id"] == "team:s-1"
    assert headers["x-claude-code-session-id"] == "s-1"  # the client's own still travels
    names = [name.lower() for name in raw(ANTHROPIC, ROUTED, "team:s-1")]
    assert names.count("x-session-id") == 1


def test_the_openai_kind_adds_them_too() -> None:
    headers = sent(OPENAI, ROUTED, "s-1")
    assert headers["x-smg-routing-key"] == rewrite(BODY).key.hex
    assert headers["x-session-id"] == "s-1"


def test_without_a_session_only_the_key_is_sent() -> None:
    for kind in (ANTHROPIC, OPENAI):
        headers = sent(kind, ROUTED, None)
        assert "x-smg-routing-key" in headers
        assert "x-session-id" not in headers  # nor the client's, which it would replace


def test_nothing_is_added_when_not_configured() -> None:
    assert "x-smg-routing-key" not in sent(ANTHROPIC, PLAIN, "s-1")
    assert (
        sent(ANTHROPIC, PLAIN, "s-1")["x-session-id"] == "forged"
    )  # forwarded as the client sent it
    openai = sent(OPENAI, PLAIN, "s-1")
    assert "x-smg-routing-key" not in openai and "x-session-id" not in openai
