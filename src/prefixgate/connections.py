"""Client connections before a request exists: the head deadline and the caps.

uvicorn bounds an idle kept-alive connection (``timeout_keep_alive``) but not
the time a client may take to send a request head: a connection that sends
``POST / HTTP/1.1\\r\\n`` and then one byte a minute is held for ever, and
the first byte of a head cancels the keep-alive timer. Nor does it cap the
connections it holds (``limit_concurrency`` answers 503 only once a head is
whole), and with httptools it reads a head of any size.

``protocol_class`` gives uvicorn's own HTTP protocol (httptools when it is
installed, as uvicorn's ``auto`` picks, else h11) with three additions:

* **head deadline**: from a connection's opening, and from the first byte of
  each later head, the head must be whole within ``header_timeout`` seconds,
  else the connection is closed. The keep-alive timeout still bounds an idle
  connection between requests;
* **head size**: a head still incomplete after ``max_header_bytes`` + 16 KiB
  is answered 431 and closed (the guard answers a whole head above
  ``max_header_bytes`` with its own 431, naming the limit);
* **connection caps**: beyond ``max_connections`` open connections, or
  ``max_connections_per_client`` from one address, a new connection is
  answered 503 (429 for one address's cap) and closed at once. Behind a
  reverse proxy every connection has the proxy's address: raise the
  per-client cap to ``max_connections`` there.

Run it with ``ws="none"``: a connection upgraded to a WebSocket moves to
another protocol object and would never be counted out.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from prefixgate.config import Settings
from prefixgate.core.errors import error_body

log = logging.getLogger("prefixgate")
HEAD_SLACK = 16 * 1024  # past the guard's max_header_bytes before a head is cut off


@dataclass
class Door:
    """Open connections, counted in all and per client address."""

    header_timeout: float
    max_connections: int
    max_per_client: int
    max_head_bytes: int
    open: int = 0
    by_client: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # connections closed at once by a cap
    timed_out: int = 0  # connections closed for a head not whole in time

    @classmethod
    def of(cls, settings: Settings) -> Door:
        return cls(
            header_timeout=settings.header_timeout,
            max_connections=settings.max_connections,
            max_per_client=min(settings.max_connections_per_client, settings.max_connections),
            max_head_bytes=settings.max_header_bytes + HEAD_SLACK,
        )

    def admit(self, client: str) -> bytes | None:
        """Count a new connection from ``client``; else the answer refusing it."""
        if self.open >= self.max_connections:
            self.refused += 1
            return refusal(
                503,
                "overloaded_error",
                f"the gateway holds {self.open} connections, its limit "
                f"max_connections={self.max_connections}; retry shortly",
            )
        if self.by_client.get(client, 0) >= self.max_per_client:
            self.refused += 1
            return refusal(
                429,
                "rate_limit_error",
                f"{self.max_per_client} connections are open from this address, the "
                f"gateway's limit max_connections_per_client={self.max_per_client}",
            )
        self.open += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        return None

    def leave(self, client: str) -> None:
        self.open -= 1
        left = self.by_client[client] - 1
        if left:
            self.by_client[client] = left
        else:
            del self.by_client[client]


def refusal(status: int, error_type: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer closing the connection, with an Anthropic-shaped body."""
    body = json.dumps(error_body(error_type, message)).encode()
    reason = {
        408: "Request Timeout",
        429: "Too Many Requests",
        431: "Request Header Fields Too Large",
    }
    head = (
        f"HTTP/1.1 {status} {reason.get(status, 'Service Unavailable')}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
        + ("retry-after: 1\r\n" if status in (429, 503) else "")
        + "\r\n"
    )
    return head.encode() + body


class DoorMixin(asyncio.Protocol):
    """The additions (see the module's docstring), over either uvicorn protocol."""

    door: ClassVar[Door]
    # uvicorn's, set by the protocol it is mixed into
    transport: asyncio.Transport
    client: tuple[str, int] | None
    cycle: Any
    _peer: str | None = None  # counted by the door
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes: int = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = self.client[0] if self.client else ""
        refused = self.door.admit(peer)
        if refused is not None:
            self.transport.write(refused)
            self.transport.close()
            return
        self._peer = peer
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head():
            if self._head_timer is None:
                self._arm()  # the first byte of a later head
            self._head_bytes += len(data)
        super().data_received(data)
        if not self._awaiting_head():
            self._disarm()
            self._head_bytes = 0
        elif self._head_bytes > self.door.max_head_bytes and not self.transport.is_closing():
            message = (
                f"request head beyond {self.door.max_head_bytes} bytes "
                f"(the gateway's limit max_header_bytes is {self.door.max_head_bytes - HEAD_SLACK})"
            )
            self.transport.write(refusal(431, "request_too_large", message))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._peer is not None:
            self.door.leave(self._peer)
            self._peer = None
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        """No request under way: the next bytes are (part of) a head."""
        return self.cycle is None or bool(self.cycle.response_complete)

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self.door.header_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._awaiting_head() and not self.transport.is_closing():
            self.door.timed_out += 1
            log.debug("closing a connection whose request head was not whole in time")
            self.transport.close()


def protocol_class(settings: Settings) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with the door's additions, for ``uvicorn.Config(http=)``."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return with_door(AutoHTTPProtocol, Door.of(settings))


def with_door(base: type[asyncio.Protocol], door: Door) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol) with the additions, counting in ``door``."""
    return type(f"Door{base.__name__}", (DoorMixin, base), {"door": door})
