"""Streamed answers: relayed event by event, folded for the audit record.

``Relay`` reads the upstream's event stream as it arrives (``SSEDecoder``) and
hands each batch of decoded events to an ``EventStream``, which says what the
client gets and folds it (``StreamFold``) for usage:

- ``Passthrough`` (kind ``anthropic``): each event's exact bytes, unchanged;
- ``translated.OpenAIEvents`` (kind ``openai``): OpenAI chunks turned into
  Anthropic events by the pure ``StreamTranslator``.

A failure mid-stream ends the stream with an Anthropic ``error`` event, never
a silent cut. ``RelayResponse`` closes the upstream answer and writes the audit
record however the response ends: completed, failed, or abandoned by a client
that went away.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from prefixgate.app.exchange import Answered, Exchange, Finish
from prefixgate.core.errors import PrefixgateError, error_body
from prefixgate.core.fold import MessageSummary, StreamFold
from prefixgate.core.sse import SSEDecoder, SSEEvent, encode_event
from prefixgate.upstreams.anthropic import transport_error

log = logging.getLogger("prefixgate")


class EventStream(Protocol):
    """What the client receives for the upstream's events, and what it folds to."""

    def feed(self, events: Sequence[SSEEvent]) -> bytes: ...
    def end(self) -> bytes: ...  # the upstream's stream ended
    def fail(self, error: PrefixgateError) -> bytes: ...  # it broke off
    def summary(self) -> MessageSummary: ...


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


class Relay:
    """One streamed answer, from the upstream's bytes to the client's."""

    ABANDONED = "stream abandoned before its end (client disconnected or gateway stopping)"
    INTERNAL = "internal error in the gateway while relaying the stream; see its log"

    def __init__(
        self,
        finish: Finish,
        ex: Exchange,
        response: httpx.Response,
        stream: EventStream,
        answered: Answered | None = None,
    ) -> None:
        self._finish = finish
        self._answered = answered
        self._ex = ex
        self._response = response
        self._stream = stream
        self._error: str | None = None
        self._ended = False
        self._closed = False

    async def events(self) -> AsyncIterator[bytes]:
        """The client's bytes, each batch sent as soon as its last upstream byte arrived."""
        decoder = SSEDecoder()
        try:
            async for chunk in self._response.aiter_bytes():
                out = self._stream.feed(decoder.decode(chunk))
                if out:
                    yield out
            out = self._stream.feed(decoder.flush()) + self._stream.end()
            summary = self._stream.summary()
            if self._answered is not None and summary.error is None:
                self._answered(self._ex)  # before the client can send its next request
            if out:
                yield out
        except httpx.HTTPError as exc:
            assert self._ex.upstream is not None
            err = transport_error(self._ex.upstream, exc)
            self._error = err.message
            self._ended = True
            yield self._stream.fail(err)
        except Exception:
            log.exception("relaying the upstream stream failed")
            self._error = self.INTERNAL
            self._ended = True
            yield encode_event("error", error_body("api_error", self.INTERNAL))
        self._ended = True

    async def close(self) -> None:
        """Write the audit record and close the upstream answer (once)."""
        if self._closed:
            return
        self._closed = True
        summary = self._stream.summary()
        error = self._error
        if error is None and not self._ended:
            error = self.ABANDONED
        if error is None and summary.error is not None:
            error = str(summary.error.get("message", summary.error))
        self._finish(self._ex, self._response.status_code, summary, error, None)
        with anyio.CancelScope(shield=True):
            await self._response.aclose()


class RelayResponse(StreamingResponse):
    """A StreamingResponse that runs ``on_close`` however it ends.

    Starlette stops iterating the body when the client disconnects, and may
    never start it when the client is gone first; either way the upstream answer
    must still be closed (so the upstream stops generating) and audited.
    """

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        *,
        status_code: int,
        headers: dict[str, str],
    ) -> None:
        super().__init__(content, status_code=status_code, headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()
