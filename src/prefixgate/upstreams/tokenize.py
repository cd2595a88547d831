"""Token counts for prompt pieces, from the upstream's own tokenizer where it has one.

llama.cpp's server tokenizes text at ``POST /tokenize`` (``{"content": ...}``
-> ``{"tokens": [...]}``) without touching any slot or cache. Elsewhere the
count is an estimate (a quarter of the text's length) and marked as such.

``tokenizer = "auto"`` (the default) asks ``/tokenize`` once: a token list
means llama.cpp; a 404 or any other answer means estimate from then on; a
connection failure decides nothing (the upstream may not be up yet) and that
request's count is an estimate. First-party upstreams are never asked.

Counts are cached by piece digest: a conversation's pieces repeat on every
turn, so after the first request only the new ones are tokenized.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable

import httpx

from prefixgate.config import UpstreamConfig
from prefixgate.core.prompt import Piece

log = logging.getLogger("prefixgate")

TOKENIZER = "tokenizer"
ESTIMATE = "estimate"
CHARS_PER_TOKEN = 4


def estimate(text: str) -> int:
    """A rough token count: a quarter of the length, at least one."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


class TokenCounter:
    """Counts tokens of pieces for one upstream, caching counts by digest."""

    def __init__(
        self,
        upstream: UpstreamConfig,
        client: httpx.AsyncClient,
        *,
        cache_size: int = 50_000,
        concurrency: int = 4,
        timeout: float = 30.0,
    ) -> None:
        self._upstream = upstream
        self._client = client
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size
        self._limit = asyncio.Semaphore(concurrency)
        self._timeout = timeout
        mode = upstream.tokenizer
        if mode == "auto" and upstream.first_party:
            mode = "estimate"
        self._mode: str | None = None if mode == "auto" else mode
        self._estimated: tuple[object, dict[str, int]] = (None, {})  # the last pieces estimated

    @property
    def source(self) -> str:
        """What counts come from: ``tokenizer`` or ``estimate`` (so far)."""
        return TOKENIZER if self._mode == "llama.cpp" else ESTIMATE

    def known(self, pieces: Iterable[Piece]) -> tuple[dict[str, int], str] | None:
        """The counts when no request is needed to get them, else ``None``."""
        if self._mode == "estimate":
            # the observer asks twice per request (the runtime model, then the record)
            if pieces is not self._estimated[0]:
                counts = {p.digest: estimate(p.text) for p in pieces}
                self._estimated = (pieces, counts)
            return dict(self._estimated[1]), ESTIMATE
        wanted = {p.digest: p.text for p in pieces}
        if self._mode == "llama.cpp" and all(d in self._cache for d in wanted):
            return {d: self._cache[d] for d in wanted}, TOKENIZER
        return None

    async def counts(self, pieces: Iterable[Piece]) -> tuple[dict[str, int], str]:
        """Token counts by digest for ``pieces``, and their source."""
        wanted = {p.digest: p.text for p in pieces}
        missing = {d: t for d, t in wanted.items() if d not in self._cache}
        if missing and self._mode is None:
            await self._probe(next(iter(missing.values())))
        if missing and self._mode == "llama.cpp":
            try:
                found = await asyncio.gather(*(self._tokenize(t) for t in missing.values()))
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("tokenizer of upstream %s failed: %s", self._upstream.name, exc)
                return {d: estimate(t) for d, t in wanted.items()}, ESTIMATE
            for d, n in zip(missing, found, strict=True):
                self._remember(d, n)
        elif missing:
            return {d: self._cache.get(d) or estimate(t) for d, t in wanted.items()}, ESTIMATE
        return {d: self._cache[d] for d in wanted}, self.source

    async def _probe(self, text: str) -> None:
        try:
            response = await self._post(text)
        except httpx.HTTPError:
            return  # not up yet: decide on a later request
        tokens = _tokens(response) if response.status_code == 200 else None
        self._mode = "llama.cpp" if tokens is not None else "estimate"
        log.info(
            "upstream %s: expected cached tokens are %s",
            self._upstream.name,
            "counted by its /tokenize" if tokens is not None else "estimated (no /tokenize)",
        )

    async def _tokenize(self, text: str) -> int:
        response = await self._post(text)
        response.raise_for_status()
        tokens = _tokens(response)
        if tokens is None:
            raise ValueError("/tokenize answered without a token list")
        return tokens

    async def _post(self, text: str) -> httpx.Response:
        url, payload = f"{self._upstream.url}/tokenize", {"content": text, "add_special": False}
        async with self._limit:
            try:
                return await self._client.post(
                    url,
                    json=payload,
                    timeout=self._timeout,
                    auth=self._upstream.basic_auth() or httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.RemoteProtocolError:
                # llama-server now and then closes a kept-alive connection just
                # as it is reused; tokenizing changes nothing, so ask again once
                return await self._client.post(
                    url,
                    json=payload,
                    timeout=self._timeout,
                    auth=self._upstream.basic_auth() or httpx.USE_CLIENT_DEFAULT,
                )

    def _remember(self, digest: str, count: int) -> None:
        self._cache[digest] = count
        self._cache.move_to_end(digest)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _tokens(response: httpx.Response) -> int | None:
    try:
        tokens = response.json().get("tokens")
    except (ValueError, AttributeError, RecursionError):  # RecursionError: nested too deep
        return None
    return len(tokens) if isinstance(tokens, list) else None
