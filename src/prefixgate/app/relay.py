"""Streamed answers: relayed event by event, folded for the audit record.

``Relay`` reads the upstream's stream as it arrives (decoded by its kind's
``Decoder``, ``SSEDecoder`` for an event stream) and
hands each batch of decoded events to an ``EventStream``, which says what the
client gets and folds it (``StreamFold``) for usage:

- ``upstreams.anthropic.Passthrough``: each event's exact bytes, unchanged;
- ``upstreams.openai.OpenAIEvents``: OpenAI chunks turned into Anthropic
  events by the pure ``StreamTranslator``.

A stream under way always ends with ``message_stop`` or an Anthropic ``error``
event, never a silent cut: when the upstream fails (reset, garbage the fold
cannot finish), goes silent for longer than ``stream_idle_timeout``, ends
before ``message_stop``, or the gateway stops (``Streams.abort``). The audit
record is made before the last bytes go out, and is committed (``Exchange.durable``)
before they do. ``RelayResponse`` closes the upstream answer however the
response ends, records a stream the client abandoned, and settles the exchange
(``Exchange.settle``: the cache model, metrics, the log line) once the last
bytes are out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from prefixgate.app.exchange import Exchange
from prefixgate.config import UpstreamConfig
from prefixgate.core.errors import (
    PrefixgateError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_body,
)
from prefixgate.core.secrets import redact_bytes
from prefixgate.core.sse import SSEDecoder, SSEEvent, encode_event
from prefixgate.upstreams.anthropic import Passthrough
from prefixgate.upstreams.http import transport_error
from prefixgate.upstreams.kind import Decoder, EventStream

__all__ = ["EventStream", "GatewayStopping", "Passthrough", "Relay", "RelayResponse", "Streams"]

log = logging.getLogger("prefixgate")

# How an event stream's last event may end: a blank line after its last line.
_TERMINATED = (b"\n\n", b"\r\r", b"\r\n\r\n", b"\n\r\n", b"\r\n\n")


class GatewayStopping(PrefixgateError):
    """The gateway ended a stream under way because it is stopping."""

    status = 503
    error_type = "overloaded_error"


class Streams:
    """The streams under way, so that the server can end them when it stops.

    A ``Relay`` joins when its events start and leaves when it ends. ``abort``
    ends every one with an ``error`` event, and any that starts afterwards at once.
    """

    def __init__(self) -> None:
        self._live: set[Relay] = set()
        self.stopping: str | None = None  # abort's message, once it was called

    def __len__(self) -> int:
        return len(self._live)

    def add(self, relay: Relay) -> None:
        self._live.add(relay)

    def discard(self, relay: Relay) -> None:
        self._live.discard(relay)

    async def abort(self, message: str) -> None:
        """End every stream under way with an ``overloaded_error`` event saying ``message``."""
        self.stopping = message
        for relay in list(self._live):
            await relay.abort(message)


class Relay:
    """One streamed answer, from the upstream's bytes to the client's."""

    ABANDONED = "stream abandoned before its end (client disconnected or gateway stopping)"
    INTERNAL = "internal error in the gateway while relaying the stream; see its log"

    def __init__(
        self,
        ex: Exchange,
        upstream: UpstreamConfig,
        response: httpx.Response,
        stream: EventStream,
        streams: Streams | None = None,
        decoder: Decoder | None = None,
    ) -> None:
        self._ex = ex
        self._decoder = decoder or SSEDecoder()
        self._upstream = upstream
        self._response = response
        self._stream = stream
        self._streams = streams
        self._error: str | None = None
        self._ended = False  # the stream reached its end: complete, or an error event
        self._recorded = False  # the exchange was ended (once)
        self._closed = False
        self._stopping: str | None = None  # abort's message
        self._reading: asyncio.Timeout | None = None  # around a pending read

    async def events(self) -> AsyncIterator[bytes]:
        """The client's bytes, each batch sent as soon as its last upstream byte arrived.

        The last batch (the one that ends the message, with the events read
        together with its end, or an ``error`` event) goes out only once the
        request is recorded and its record committed.
        """
        if self._streams is not None:
            self._streams.add(self)
            if self._streams.stopping is not None:
                self._stopping = self._streams.stopping
        secrets = self._upstream.secrets  # an upstream may echo its own key
        try:
            async for out in self._relay():
                yield redact_bytes(out, secrets) if secrets else out
        finally:
            if self._streams is not None:
                self._streams.discard(self)

    async def _relay(self) -> AsyncIterator[bytes]:
        upstream = self._upstream
        self._lift_read_timeout()
        decoder = self._decoder
        chunks = self._response.aiter_bytes()
        held: bytes | None = None  # message_stop on: sent once the record is committed
        first = True
        try:
            while (chunk := await self._next(chunks)) is not None:
                if first:  # a runtime sends its headers before it has read the prompt
                    self._ex.ttfb, first = time.perf_counter(), False
                events = decoder.decode(chunk)
                if held is not None:
                    held += self._stream.feed(events)
                    continue
                out = self._stream.feed(events)
                # The events read with message_stop (an upstream's, or a translated
                # stream's own) go out with it: one write to the client less.
                if _stop_index(events) is not None or _STOP_EVENT in out:
                    held = out
                elif out:
                    yield out
            out = (held or b"") + self._stream.feed(decoder.flush()) + self._stream.end()
            summary = self._stream.summary()
        except PrefixgateError as err:  # failed, silent too long, or the gateway stopping
            yield await self._ending(err.message, self._stream.fail(err))
            return
        except Exception:
            log.exception("relaying the upstream stream failed")
            error = encode_event("error", error_body("api_error", self.INTERNAL))
            yield await self._ending(self.INTERNAL, error)
            return
        # message_stop came from the upstream (held), or the translation ended with one
        stopped = held is not None or _STOP_EVENT in out
        if summary.error is None and not stopped:
            cut = UpstreamUnavailable(
                f"upstream {upstream.name!r} ({upstream.url}) ended the stream "
                "before message_stop (the answer is incomplete)"
            )
            if not out.endswith(_TERMINATED):
                out = b""  # an unfinished event: a client's parser would drop it at the end
            yield await self._ending(cut.message, out + self._stream.fail(cut))
            return
        out = await self._ending(None, out)
        if out:
            yield out

    async def _next(self, chunks: AsyncIterator[bytes]) -> bytes | None:
        """The upstream's next bytes; None at its end. Raises ``PrefixgateError``."""
        upstream = self._upstream
        limit = upstream.stream_idle_timeout
        if self._stopping is not None:
            raise GatewayStopping(self._stopping)
        try:
            async with asyncio.timeout(limit if limit > 0 else None) as scope:
                self._reading = scope
                try:
                    return await chunks.__anext__()
                except StopAsyncIteration:
                    return None
                finally:
                    self._reading = None
        except TimeoutError:
            pass  # silent too long, or ``abort`` ended the read
        except httpx.HTTPError as exc:
            if self._stopping is not None:  # abort closed the response under the read
                raise GatewayStopping(self._stopping) from None
            raise transport_error(upstream, exc) from None
        if self._stopping is not None:
            raise GatewayStopping(self._stopping)
        raise UpstreamTimeout(
            f"upstream {upstream.name!r} ({upstream.url}) sent nothing for {limit:g} s "
            f"while streaming (stream_idle_timeout={limit:g}s)"
        )

    def ended(self) -> bool:
        """The stream reached its end: what ``events`` yields next is its last."""
        return self._ended

    def _lift_read_timeout(self) -> None:
        """Inside a stream, silence is bounded by ``stream_idle_timeout`` alone.

        httpx applies the request's read timeout (``read_timeout``, meant for the
        first byte) to every read of the body; the transport takes it from the
        request's ``timeout`` extension when the body is first read.
        """
        request = self._response._request  # None for a response built by hand
        timeouts = request.extensions.get("timeout") if request is not None else None
        if isinstance(timeouts, dict):
            timeouts["read"] = None

    async def _ending(self, error: str | None, out: bytes) -> bytes:
        """Record the stream's end (``error``: how it failed) and wait until the
        record is committed; returns ``out``, the last bytes for the client."""
        self._ended = True
        self._error = error
        with anyio.CancelScope(shield=True):
            await self._response.aclose()  # the upstream stops generating at once
        self._record()
        await self._ex.durable()
        return out

    def _record(self) -> None:
        if self._recorded:
            return
        self._recorded = True
        summary = self._stream.summary()
        error = self._error
        if error is None and not self._ended:
            error = self.ABANDONED
        if error is None and summary.error is not None:
            error = str(summary.error.get("message", summary.error))
        self._ex.answered(self._response.status_code, summary, error=error)
        self._ex.end()

    async def abort(self, message: str) -> None:
        """End this stream with an ``overloaded_error`` event (the gateway is stopping)."""
        if self._ended or self._stopping is not None:
            return
        self._stopping = message
        if self._reading is not None:  # the pending read ends at once
            self._reading.reschedule(asyncio.get_running_loop().time())
        else:  # between reads (sending to the client): the next read stops
            with anyio.CancelScope(shield=True):
                await self._response.aclose()

    async def close(self) -> None:
        """Close the upstream answer (once); record the stream if it was abandoned.

        Called right after the last bytes went out (``RelayResponse``): what the
        exchange left for then (``Exchange.settle``) is done before the gateway
        reads the client's next request."""
        if self._closed:
            return
        self._closed = True
        if self._streams is not None:
            self._streams.discard(self)
        self._record()
        self._ex.settle()
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
        ended: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(content, status_code=status_code, headers=headers)
        self._on_close = on_close
        self._ended = ended

    async def stream_response(self, send: Send) -> None:
        """Starlette's, but the relay's last bytes (``ended()`` once they come) go
        out with the end of the body: one write to the socket less per answer."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        done = False
        async for chunk in self.body_iterator:
            done = self._ended()
            await send({"type": "http.response.body", "body": chunk, "more_body": not done})
        if not done:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream the body; a client that disconnects cancels it at once.

        What Starlette does for servers of ASGI spec 2.3 (uvicorn), with one
        cancel scope and one plain task watching ``receive`` instead of a task
        group: a third of the response machinery's cost per request.
        """
        try:
            with anyio.CancelScope() as streaming:
                watcher = asyncio.get_running_loop().create_task(_watch(receive, streaming))
                try:
                    await self.stream_response(send)
                finally:
                    watcher.cancel()
        finally:
            await self._on_close()


async def _watch(receive: Receive, streaming: anyio.CancelScope) -> None:
    """Cancel ``streaming`` when the client disconnects (or its channel fails)."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except asyncio.CancelledError:
        raise
    except Exception:
        log.debug("watching the client for a disconnect failed", exc_info=True)
    streaming.cancel()


_STOP_EVENT = b"event: message_stop\n"  # as ``encode_event`` writes it


def _stop_index(events: Sequence[SSEEvent]) -> int | None:
    """Where ``message_stop`` is among ``events`` (the end of an Anthropic answer)."""
    for i, event in enumerate(events):
        if event.event == "message_stop":
            return i
    return None
