"""A tools array sent before, byte for byte, is not parsed again.

Claude Code sends the same tool definitions with every request of a
conversation, and they are most of its body (63 of 77 KB in the shipped
corpus). ``KnownTools`` remembers the last few tools arrays as they were sent,
with what they parsed to; ``split`` finds one of them in a new body and gives
back the body with that array swapped for a placeholder, which parses in a
fraction of the time; the caller puts the remembered value in its place.

Exact, never a guess:

* only a byte-for-byte copy of an array that parsed without a float is used
  (parsing the same bytes gives the same value; floats and long integers go
  the standard library's way, see ``pipeline._loads``);
* the placeholder holds a random token made at start, and the body's
  ``tools`` must parse to exactly that placeholder: the copy was the top-level
  ``tools`` value (not a nested one, not a duplicate key that lost), or the
  body is parsed whole as before.

The remembered value is shared by every request that sends those bytes: the
request path never mutates a parsed body (``core/toolload.py`` and the
translation build new values), and ``tests/core/test_knowntools.py`` runs the
pipeline and both upstream kinds over shared arrays to hold it to that.
Where to look is remembered too: the bytes after the array (``metadata``,
``max_tokens``, ...) keep their length between requests of one client, so one
``startswith`` per known array finds it; a body laid out otherwise is parsed
whole.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Any, Final

import orjson

from prefixgate.core.limits import json_shape

KEY: Final = b'"tools":'
#: What stands for a known array while the rest of the body is parsed.
PLACEHOLDER_VALUE: Final = [f"prefixgate-known-tools:{secrets.token_hex(16)}"]
PLACEHOLDER: Final = orjson.dumps(PLACEHOLDER_VALUE)
#: Arrays shorter than this are parsed with the body: finding them saves little.
MIN_BYTES: Final = 4096
#: How many arrays are remembered (most recently used first).
SLOTS: Final = 8


@dataclass(frozen=True)
class Known:
    """One remembered array: its bytes as sent, its value and its depth."""

    sent: bytes  # the array's bytes, as in the body
    value: list[Any]
    depth: int  # json_shape of the array (a flat list is 1)
    tail: int  # bytes after the array in the body it was last found in


class KnownTools:
    """The last ``slots`` tools arrays, with where they sat; safe from any thread."""

    def __init__(self, slots: int = SLOTS, min_bytes: int = MIN_BYTES) -> None:
        self.slots = slots
        self.min_bytes = min_bytes
        self._known: list[Known] = []
        self._lock = threading.Lock()

    def split(self, raw: bytes) -> tuple[bytes, Known] | None:
        """``raw`` with a known array swapped for ``PLACEHOLDER``, and that array."""
        for known in self._known:
            end = len(raw) - known.tail
            at = end - len(known.sent)
            if (
                at >= len(KEY)
                and raw.startswith(KEY, at - len(KEY))
                and raw.startswith(known.sent, at)
            ):
                return raw[:at] + PLACEHOLDER + raw[end:], known
        return None

    def encoded(self, value: object) -> bytes | None:
        """The bytes ``value`` was parsed from, if it is a remembered array."""
        for known in self._known:
            if known.value is value:
                return known.sent
        return None

    def where(self, raw: bytes, value: object) -> tuple[int, bytes] | None:
        """Where in ``raw`` the remembered array ``value`` sits (its offset, its bytes),
        if ``raw`` is a body it was found in."""
        for known in self._known:
            if known.value is value:
                at = len(raw) - known.tail - len(known.sent)
                return (at, known.sent) if at >= 0 and raw.startswith(known.sent, at) else None
        return None

    def found(self, known: Known) -> None:
        """``known`` was used: keep it first."""
        if self._known and self._known[0] is known:
            return
        with self._lock:
            if known in self._known:
                self._known.remove(known)
                self._known.insert(0, known)

    def remember(self, raw: bytes, tools: Any, max_depth: int) -> None:
        """Remember ``tools``, the top-level array just parsed from ``raw``,
        if it is long, float-free and sent as orjson writes it (compact, as
        JavaScript's ``JSON.stringify``)."""
        if not isinstance(tools, list) or not tools:
            return
        try:
            sent = orjson.dumps(tools)
        except (TypeError, orjson.JSONEncodeError):
            return
        if len(sent) < self.min_bytes:
            return
        at = raw.rfind(KEY)
        while at >= 0 and not raw.startswith(sent, at + len(KEY)):
            at = raw.rfind(KEY, 0, at)
        if at < 0:
            return  # sent in another style (spaces, escapes): not found again either
        depth, floats = json_shape(tools, stop_after=max_depth)
        if floats:
            return
        tail = len(raw) - (at + len(KEY) + len(sent))
        with self._lock:  # one entry per array and place (two clients may lay out apart)
            self._known = [k for k in self._known if k.tail != tail or k.sent != sent]
            self._known.insert(0, Known(sent, tools, depth, tail))
            del self._known[self.slots :]

    def clear(self) -> None:
        with self._lock:
            self._known = []


KNOWN_TOOLS = KnownTools()
