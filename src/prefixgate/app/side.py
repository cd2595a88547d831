"""Token counts and probes answered by the gateway (``side_requests = "local"``,
and token counts for upstream kinds that have no such route, ``Kind.counts_tokens``).

The answer shapes are ``core/side.py``'s; the count is the upstream's tokenizer
(llama.cpp ``/tokenize``) or an estimate, and the ``x-prefixgate-token-count``
header says which.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.responses import JSONResponse, Response

from prefixgate.app.exchange import Exchange
from prefixgate.core.pipeline import Rewrite
from prefixgate.core.side import probe_events, probe_message
from prefixgate.core.sse import encode_event
from prefixgate.core.usage import CacheUsage
from prefixgate.upstreams.tokenize import TokenCounter

TOKEN_COUNT_HEADER = "x-prefixgate-token-count"
ANSWERED_HEADER = "x-prefixgate-answered-by"
Answer = Callable[[Exchange, Rewrite, TokenCounter], Awaitable[Response]]


async def count_tokens(ex: Exchange, rw: Rewrite, counter: TokenCounter) -> Response:
    tokens, source = await counter.counts(rw.view.pieces)
    count = sum(tokens.values())
    ex.answered(200, None, CacheUsage(count, None, None))
    return JSONResponse({"input_tokens": count}, headers={TOKEN_COUNT_HEADER: source})


async def probe(ex: Exchange, rw: Rewrite, counter: TokenCounter) -> Response:
    tokens, source = await counter.counts(rw.view.pieces)
    message = probe_message(rw.model, sum(tokens.values()))
    ex.answered(200, None, CacheUsage(message["usage"]["input_tokens"], None, None))
    headers = {TOKEN_COUNT_HEADER: source, ANSWERED_HEADER: "gateway"}
    if not rw.stream:
        return JSONResponse(message, headers=headers)
    body = b"".join(encode_event(name, data) for name, data in probe_events(message))
    return Response(body, media_type="text/event-stream", headers=headers)
