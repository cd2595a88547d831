"""What an upstream kind is: one small protocol, and the values it works with.

A kind (``anthropic``, ``openai``; the table is ``registry.KINDS``) knows the
upstream's API and nothing of the request path: given the rewritten Anthropic
request it builds the upstream request (a ``Call``), and it turns the
upstream's answer, whole or streamed, into what the client gets plus what the
audit record keeps (summary, cache usage). Sending, relaying, routing and
recording are the app's, the same for every kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from prefixgate.config import UpstreamConfig
from prefixgate.core.errors import PrefixgateError
from prefixgate.core.fold import MessageSummary
from prefixgate.core.pipeline import Rewrite
from prefixgate.core.sse import SSEDecoder, SSEEvent
from prefixgate.core.usage import CacheUsage
from prefixgate.upstreams.http import Outgoing


@dataclass(frozen=True)
class Incoming:
    """What of the client's request an upstream request is built from."""

    headers: Mapping[str, str]  # the client's
    path: str  # the client's path, with its query
    added: Mapping[str, str] = field(default_factory=dict)  # headers the gateway adds
    dropped: Iterable[str] = ()  # attribution headers the policy removes (lower case)


@dataclass(frozen=True)
class Answer:
    """A whole answer as the client gets it, and what its record keeps."""

    status: int
    content: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str | None = None
    summary: MessageSummary | None = None
    usage: CacheUsage | None = None  # None: read off ``summary``
    error: str | None = None  # the answer is an error the gateway made of it


class EventStream(Protocol):
    """What the client receives for the upstream's events, and what it folds to."""

    def feed(self, events: Sequence[SSEEvent]) -> bytes: ...
    def end(self) -> bytes: ...  # the upstream's stream ended
    def fail(self, error: PrefixgateError) -> bytes: ...  # it broke off
    def summary(self) -> MessageSummary: ...


class Decoder(Protocol):
    """The upstream's stream bytes as events (``SSEDecoder`` for event streams)."""

    def decode(self, chunk: bytes) -> list[SSEEvent]: ...
    def flush(self) -> list[SSEEvent]: ...


@dataclass
class Streamed:
    """A streamed answer: what the client is sent, and how the upstream's bytes are read."""

    status: int
    headers: dict[str, str]
    events: EventStream
    decoder: Decoder = field(default_factory=SSEDecoder)


def event_stream(headers: httpx.Headers) -> bool:
    """Whether the upstream answered with an event stream."""
    content_type: str = headers.get("content-type", "")
    return content_type.startswith("text/event-stream")


class Call(Protocol):
    """One rewritten request, prepared for one upstream by its kind."""

    @property
    def outgoing(self) -> Outgoing: ...

    def answer(self, status: int, headers: httpx.Headers, content: bytes) -> Answer:
        """The whole answer for the client; raises ``PrefixgateError`` to try the next replica."""
        ...

    def stream(self, status: int, headers: httpx.Headers) -> Streamed | None:
        """The answer as a stream, relayed as it arrives; None for a whole answer."""
        ...


class Kind(Protocol):
    """One upstream API, behind the same request path as every other."""

    @property
    def name(self) -> str: ...

    @property
    def adapter_version(self) -> str:
        """Part of the cache key: a new translation is a new cache."""
        ...

    @property
    def counts_tokens(self) -> bool:
        """The gateway answers ``count_tokens`` itself (the API has no such route)."""
        ...

    def call(
        self, upstream: UpstreamConfig, incoming: Incoming, rw: Rewrite, session: str | None
    ) -> Call:
        """The upstream request for ``rw``; ``session`` as the upstream may see it."""
        ...

    def read_settings(self, where: str, table: Mapping[str, Any]) -> object | None:
        """The kind's own settings from an upstream's table (None: it has none).

        ``where`` names the table in errors; the result is the upstream's
        ``kind_settings``.
        """
        ...

    def models(self, upstream: UpstreamConfig, incoming: Incoming) -> Outgoing:
        """The request for the upstream's model list."""
        ...

    def model_list(self, status: int, headers: httpx.Headers, content: bytes) -> Answer:
        """The upstream's model list in the Anthropic shape."""
        ...
