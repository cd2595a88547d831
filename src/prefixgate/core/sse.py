"""Incremental server-sent-events decoding and encoding, byte exact.

``SSEDecoder`` follows the shape of httpx's content decoders: feed it chunks
with ``decode(chunk)`` and call ``flush()`` once at the end of the stream. Any
chunking of the same byte stream yields the same list of events.

How it works: bytes are split into lines first (``\\n``, ``\\r\\n`` or a lone
``\\r``; all three are ASCII, so a split never falls inside a UTF-8 sequence)
and each complete line is then decoded as UTF-8 (undecodable bytes become
U+FFFD). A chunk split inside a multi-byte character therefore needs no special
care. A chunk that ends in ``\\r`` is held back until the next byte shows
whether it is ``\\r\\n``, so the split of lines never depends on the chunking.
Bytes of an unfinished line are kept as a list of chunks and joined once the
line ends, so a long line arriving in many small chunks costs linear time.

Every blank line ends a *block*, and every block becomes exactly one
``SSEEvent`` whose ``raw`` holds its exact bytes, terminator included.
Joining ``raw`` over everything ``decode`` and ``flush`` return reproduces the
input stream byte for byte, which is what lets the gateway relay upstream
bytes unchanged while still looking inside them.

Comments: a block that sets no field (only ``:`` comment lines such as
``: ping``, unknown fields, or a stray blank line) is returned as an
``SSEEvent`` with ``comment=True``, ``event=None`` and ``data=""``. It is not
an event to interpret, but returning it (rather than hiding its bytes inside
the next event) keeps keep-alives prompt when relayed. Consumers that
interpret events skip ``comment`` ones. Comment lines inside a block with
fields are simply part of that event's ``raw``.

Field rules follow the WHATWG event-stream interpretation: one leading space
after the colon is dropped, ``data`` lines are joined with ``\\n``, ``retry``
must be ASCII digits, an ``id`` containing NUL is ignored, the last event id
carries over to later events, and a leading UTF-8 BOM is ignored for parsing
(its bytes stay in ``raw``). Unlike a browser, a block with an ``event``,
``id`` or ``retry`` field but no ``data`` is still returned as an event.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["SSEDecoder", "SSEEvent", "encode_event"]

# A digit before a fraction or an exponent, or 19 digits in a row: maybe a float or
# an integer past 64 bits (or only text that looks like one: then json.loads reads it).
_MAYBE_FLOAT = re.compile(r"\d(?:[.eE]|\d{18})")  # one branch: twice as fast

_BOM = b"\xef\xbb\xbf"
_NEWLINES = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class SSEEvent:
    """One block of an event stream, parsed, with its exact bytes.

    ``comment`` is true for a block that set no field (see the module
    docstring); such a block has ``event=None`` and ``data=""``.
    """

    event: str | None
    data: str
    id: str | None = None
    retry: int | None = None
    raw: bytes = b""
    comment: bool = False

    def json(self) -> Any:
        """The data parsed as JSON; raises ``json.JSONDecodeError`` if it is not.

        orjson first (an answer's events are parsed on the request path); what it
        refuses (``NaN``, a lone surrogate) goes to ``json.loads``, which decides,
        and so does data that may hold a float or a long integer (orjson reads an
        integer past 64 bits as a float, see ``pipeline._loads``).
        """
        if _MAYBE_FLOAT.search(self.data) is None:
            with contextlib.suppress(orjson.JSONDecodeError):
                return orjson.loads(self.data)
        return json.loads(self.data)


class SSEDecoder:
    """Incremental, chunking-independent decoder; see the module docstring."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._tail: list[bytes] = []  # chunks of the unfinished line
        self._tail_cr = False  # the unfinished line ends with a lone "\r" so far
        self._raw: list[bytes] = []  # lines of the current block, as received
        self._event: str | None = None
        self._data: list[str] = []
        self._retry: int | None = None
        self._has_field = False
        self._last_id: str | None = None
        self._first_line = True

    def decode(self, chunk: bytes) -> list[SSEEvent]:
        """Feed ``chunk``; return the events whose blocks it completed."""
        if not chunk:
            return []
        if not self._tail_cr and b"\n" not in chunk and b"\r" not in chunk:
            self._tail.append(chunk)
            return []
        self._tail.append(chunk)
        lines = b"".join(self._tail).splitlines(keepends=True)
        last = lines[-1]
        if last.endswith(b"\r") or not last.endswith(b"\n"):
            # Unfinished, or a "\r" that may still turn out to be "\r\n".
            self._tail = [lines.pop()]
            self._tail_cr = last.endswith(b"\r")
        else:
            self._tail = []
            self._tail_cr = False
        return self._feed_lines(lines)

    def flush(self) -> list[SSEEvent]:
        """End the stream: return what is left, then reset to a fresh state.

        A final line without terminator counts as a line, and a final block
        without its blank line is still returned, so no byte is dropped.
        """
        lines = [b"".join(self._tail)] if self._tail else []
        self._tail = []
        events = self._feed_lines(lines)
        if self._raw:
            events.append(self._dispatch())
        self._reset()
        return events

    def _feed_lines(self, lines: list[bytes]) -> list[SSEEvent]:
        events = []
        for line in lines:
            self._raw.append(line)
            content = line.rstrip(b"\r\n")
            if self._first_line:
                self._first_line = False
                content = content.removeprefix(_BOM)
            if not content:
                events.append(self._dispatch())
            elif content.startswith(b"data: "):  # the usual lines, read without _field
                self._data.append(content[6:].decode("utf-8", "replace"))
                self._has_field = True
            elif content.startswith(b"event: "):
                self._event = content[7:].decode("utf-8", "replace")
                self._has_field = True
            else:
                self._field(content.decode("utf-8", "replace"))
        return events

    def _field(self, line: str) -> None:
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        else:
            return
        self._has_field = True

    def _dispatch(self) -> SSEEvent:
        raw = b"".join(self._raw)
        if self._has_field:
            event = SSEEvent(
                event=self._event,
                data="\n".join(self._data),
                id=self._last_id,
                retry=self._retry,
                raw=raw,
            )
        else:
            event = SSEEvent(event=None, data="", raw=raw, comment=True)
        self._raw = []
        self._event = None
        self._data = []
        self._retry = None
        self._has_field = False
        return event


def encode_event(event: str | None, data: str | Mapping[str, Any]) -> bytes:
    """Encode one event as ``event: X\\ndata: ...\\n\\n`` in UTF-8.

    A mapping is written as compact JSON, non-ASCII kept as is like the
    Anthropic API; if the data holds a lone surrogate, which UTF-8 cannot
    carry, the JSON falls back to ASCII ``\\u`` escapes. A string with line
    breaks becomes several ``data`` lines, which decode back to the same
    string. ``event=None`` omits the event line.
    Raises ``ValueError`` if the event name contains a line break, and
    ``UnicodeEncodeError`` (a ``ValueError``) for a lone surrogate in a string.
    """
    if event is not None and ("\n" in event or "\r" in event):
        raise ValueError(f"SSE event name contains a line break: {event!r}")
    if isinstance(data, str):
        return _frame(event, data)
    try:
        return _frame(event, _compact_json(data, ensure_ascii=False))
    except UnicodeEncodeError:
        return _frame(event, _compact_json(data, ensure_ascii=True))


def _compact_json(data: Mapping[str, Any], *, ensure_ascii: bool) -> str:
    return json.dumps(data, ensure_ascii=ensure_ascii, separators=(",", ":"))


def _frame(event: str | None, data: str) -> bytes:
    head = "" if event is None else f"event: {event}\n"
    body = "".join(f"data: {line}\n" for line in _NEWLINES.split(data))
    return f"{head}{body}\n".encode()
