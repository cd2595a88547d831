"""Canonical JSON and digests: the same value always hashes the same way.

Keys are sorted, separators are compact and non-ASCII text is kept as UTF-8, so
the digest depends on the value only, never on how a client happened to order
or escape its JSON.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any, Final, Generic, TypeVar

import orjson

K = TypeVar("K")
V = TypeVar("V")


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


class BoundedMemo(Generic[K, V]):
    """Values by key, kept while their sizes add up to at most ``max_size``
    (the oldest forgotten first); safe from any thread. The size of an entry
    is the caller's (characters of a text, bytes of a key)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0
        self._known: dict[K, tuple[V, int]] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        found = self._known.get(key)
        return None if found is None else found[0]

    def keep(self, key: K, value: V, size: int) -> None:
        """Remember ``value`` for ``key``, unless it is larger than the whole bound."""
        with self._lock:
            if key in self._known or size > self.max_size:
                return
            self._known[key] = (value, size)
            self.size += size
            while self.size > self.max_size:
                self.size -= self._known.pop(next(iter(self._known)))[1]

    def remembered(self) -> list[K]:
        return list(self._known)

    def clear(self) -> None:
        with self._lock:
            self._known.clear()
            self.size = 0


class _TextDigests(BoundedMemo[str, str]):
    """``digest`` of long texts, remembered: most of a prompt is the previous one's.

    The tools, the system prompt and the earlier turns come back with every
    request of a conversation; looking a text up costs one hash of it and one
    comparison, a fraction of encoding and hashing it again. Bounded by the
    characters it holds.
    """

    def __call__(self, text: str) -> str:
        found = self.get(text)
        if found is None:
            found = digest(text)
            self.keep(text, found, len(text))
        return found


_text_digests = _TextDigests(TEXT_CACHE_MAX_CHARS)


def text_digest(text: str) -> str:
    """``digest(text)`` for a string, remembered when it is long (see ``_TextDigests``)."""
    if len(text) < TEXT_CACHE_MIN_CHARS:
        return digest(text)
    return _text_digests(text)


def chain(parts: list[str]) -> str:
    """Hash an ordered list of digests into one (order matters, as in a prefix)."""
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
