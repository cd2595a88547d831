"""Upstream kind ``anthropic``: any server speaking the Anthropic Messages API.

llama.cpp's server, vLLM, SGLang, Ollama and Anthropic's own API all take the
request as it is: this kind decides which headers travel, relays the answer
byte for byte (``Passthrough`` for a stream) and reads its usage for the record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from prefixgate.config import UpstreamConfig
from prefixgate.core.affinity import AffinityHeaders, affinity_headers
from prefixgate.core.cachekey import ADAPTER_VERSION
from prefixgate.core.errors import PrefixgateError, UpstreamUnavailable
from prefixgate.core.fold import MessageSummary, StreamFold, summarize_message
from prefixgate.core.pipeline import Rewrite
from prefixgate.core.secrets import CREDENTIAL_HEADERS
from prefixgate.core.sse import SSEEvent, encode_event
from prefixgate.core.usage import cache_usage
from prefixgate.upstreams.http import Outgoing, check_header_values, json_object
from prefixgate.upstreams.kind import Answer, Incoming, Streamed, event_stream

# Hop-by-hop headers (RFC 9110 section 7.6.1) and headers the sender's HTTP
# stack computes itself (including Accept-Encoding: whoever asks must decode).
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)
# Upstream, client credentials are replaced by the upstream's own key.
DROPPED_REQUEST_HEADERS = HOP_BY_HOP_HEADERS | {"authorization", "x-api-key", "cookie"}
NO_AFFINITY = AffinityHeaders(None, None)
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "upgrade",
        "trailer",
        "server",
        "date",
        # never handed on: an upstream's cookies and its cross-origin grants are its own
        "set-cookie",
        "set-cookie2",
    }
)


def forward_headers(
    client_headers: Mapping[str, str],
    upstream: UpstreamConfig,
    extra: Mapping[str, str] | None = None,
    drop: Iterable[str] = (),
) -> dict[str, str]:
    """The headers sent upstream: the client's, less dropped ones, plus our own.

    Headers named in the client's ``Connection`` header are hop-by-hop too
    (RFC 9110 section 7.6.1) and are dropped with the fixed list, and so are
    the (lower-case) names in ``drop`` (attribution headers the policy removes).
    """
    dropped = DROPPED_REQUEST_HEADERS | _connection_options(client_headers) | set(drop)
    if upstream.api_key:  # the gateway's credential replaces every one of the client's
        dropped |= CREDENTIAL_HEADERS
    out = {k: v for k, v in client_headers.items() if k.lower() not in dropped}
    check_header_values(out)
    if upstream.api_key:
        out["x-api-key"] = upstream.api_key
        if not upstream.first_party:
            out["authorization"] = f"Bearer {upstream.api_key}"
    for name, value in (extra or {}).items():
        out[name] = value
    return out


def _connection_options(headers: Mapping[str, str]) -> frozenset[str]:
    """The header names listed in ``Connection`` (lower case)."""
    names: set[str] = set()
    for key, value in headers.items():
        if key.lower() == "connection":
            names.update(part.strip().lower() for part in value.split(",") if part.strip())
    return frozenset(names)


def response_headers(headers: httpx.Headers) -> dict[str, str]:
    """The upstream answer's headers that are relayed to the client."""
    dropped = DROPPED_RESPONSE_HEADERS | _connection_options(headers)
    return {
        k: v
        for k, v in headers.items()
        if k.lower() not in dropped and not k.lower().startswith("access-control-")
    }


class Passthrough:
    """An Anthropic stream relayed byte for byte."""

    def __init__(self) -> None:
        self._fold = StreamFold()

    def feed(self, events: Sequence[SSEEvent]) -> bytes:
        self._fold.feed_events(events)
        return b"".join(e.raw for e in events)

    def end(self) -> bytes:
        return b""

    def fail(self, error: PrefixgateError) -> bytes:
        return encode_event("error", error.to_body())

    def summary(self) -> MessageSummary:
        return self._fold.result()


@dataclass(frozen=True)
class AnthropicCall:
    """The rewritten request as it is, to one upstream."""

    outgoing: Outgoing
    upstream: UpstreamConfig

    def answer(self, status: int, headers: httpx.Headers, content: bytes) -> Answer:
        payload = json_object(content)
        if payload is None:  # never relay a 200 the client cannot read as an answer
            raise UpstreamUnavailable(
                f"upstream {self.upstream.name!r} ({self.upstream.url}) answered "
                f"{status} with a body that is not a JSON object"
            )
        summary = summarize_message(payload)
        return Answer(
            status, content, response_headers(headers), None, summary, cache_usage(payload)
        )

    def stream(self, status: int, headers: httpx.Headers) -> Streamed | None:
        if not event_stream(headers):
            return None
        return Streamed(status, response_headers(headers), Passthrough())


class AnthropicKind:
    """Relayed as it is: the request's own path, the answer's own bytes."""

    name = "anthropic"
    adapter_version = ADAPTER_VERSION
    counts_tokens = False  # the upstream answers count_tokens (or side_requests = "local")

    def call(
        self, upstream: UpstreamConfig, incoming: Incoming, rw: Rewrite, session: str | None
    ) -> AnthropicCall:
        # the body's block wins; the affinity headers replace a client's of the same name
        affinity = affinity_headers(upstream.affinity_headers, rw.key.hex, session)
        extra = {**incoming.added, **rw.upstream_headers, **affinity}
        drop = (*incoming.dropped, *(upstream.affinity_headers or NO_AFFINITY).names())
        headers = forward_headers(incoming.headers, upstream, extra, drop=drop)
        return AnthropicCall(Outgoing(incoming.path, rw.body, headers), upstream)

    def read_settings(self, where: str, table: Mapping[str, Any]) -> None:
        return None  # no settings of its own

    def models(self, upstream: UpstreamConfig, incoming: Incoming) -> Outgoing:
        headers = forward_headers(incoming.headers, upstream, incoming.added, drop=incoming.dropped)
        return Outgoing(incoming.path, b"", headers, method="GET")

    def model_list(self, status: int, headers: httpx.Headers, content: bytes) -> Answer:
        return Answer(status, content, response_headers(headers))


KIND = AnthropicKind()
