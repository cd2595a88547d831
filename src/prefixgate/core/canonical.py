"""Canonical JSON and digests: the same value always hashes the same way.

Keys are sorted, separators are compact and non-ASCII text is kept as UTF-8, so
the digest depends on the value only, never on how a client happened to order
or escape its JSON.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any, Final

import orjson


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` as canonical JSON bytes.

    orjson does it about twenty times faster than the standard library and
    writes the same bytes for every value a JSON request can carry; the few it
    refuses (integers beyond 64 bits, lone surrogates) take the slow path.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return _stdlib_canonical(value)


def _stdlib_canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8", "surrogatepass")


def digest(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value``, as 64 hex digits."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


#: Texts shorter than this are digested afresh: looking them up costs about as much.
TEXT_CACHE_MIN_CHARS: Final = 512
#: The remembered texts add up to at most this many characters (oldest forgotten first).
TEXT_CACHE_MAX_CHARS: Final = 16_000_000


class _TextDigests:
    """``digest`` of long texts, remembered: most of a prompt is the previous one's.

    The tools, the system prompt and the earlier turns come back with every
    request of a conversation; looking a text up costs one hash of it and one
    comparison, a fraction of encoding and hashing it again. Bounded by the
    characters it holds; safe from any thread.
    """

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.chars = 0
        self._known: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, text: str) -> str:
        found = self._known.get(text)
        if found is not None:
            return found
        value = digest(text)
        with self._lock:
            if text not in self._known and len(text) <= self.max_chars:
                self._known[text] = value
                self.chars += len(text)
                while self.chars > self.max_chars:
                    oldest = next(iter(self._known))
                    del self._known[oldest]
                    self.chars -= len(oldest)
        return value

    def clear(self) -> None:
        with self._lock:
            self._known.clear()
            self.chars = 0


_text_digests = _TextDigests(TEXT_CACHE_MAX_CHARS)


def text_digest(text: str) -> str:
    """``digest(text)`` for a string, remembered when it is long (see ``_TextDigests``)."""
    if len(text) < TEXT_CACHE_MIN_CHARS:
        return digest(text)
    return _text_digests(text)


def chain(parts: list[str]) -> str:
    """Hash an ordered list of digests into one (order matters, as in a prefix)."""
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
