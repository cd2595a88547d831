"""Canonical JSON and digests (``core/canonical.py``)."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from prefixgate.core.canonical import (
    TEXT_CACHE_MIN_CHARS,
    _TextDigests,
    canonical_json,
    digest,
    text_digest,
)


def test_digest_is_sha256_of_the_canonical_json() -> None:
    value = {"b": [1, "é"], "a": None}
    assert canonical_json(value) == '{"a":null,"b":[1,"é"]}'.encode()
    assert digest(value) == hashlib.sha256(canonical_json(value)).hexdigest()


@given(st.text(max_size=2 * TEXT_CACHE_MIN_CHARS))
@settings(max_examples=200, deadline=None)
def test_text_digest_is_digest(text: str) -> None:
    long = text * (1 + TEXT_CACHE_MIN_CHARS // max(1, len(text)))
    assert text_digest(text) == digest(text)
    assert text_digest(long) == digest(long)
    assert text_digest(long) == digest(long)  # the remembered one


def test_remembered_texts_stay_within_their_bound() -> None:
    cache = _TextDigests(max_size=3000)
    texts = [str(i) * 1000 for i in range(1, 6)]
    for text in texts:
        assert cache(text) == digest(text)
        assert cache.size <= 3000
    assert cache(texts[-1]) == digest(texts[-1])
    assert cache(texts[0]) == digest(texts[0])  # forgotten, worked out again
    assert cache("x" * 4000) == digest("x" * 4000)  # too long to keep: not kept
    assert cache.size <= 3000
    cache.clear()
    assert cache.size == 0
