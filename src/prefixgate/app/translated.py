"""The request path for upstreams of kind ``openai``: translate, forward, translate back.

    rewritten Anthropic request -> translate.request.to_openai -> POST chat/completions
    JSON answer   -> translate.response.to_anthropic_message -> the client
    event stream  -> translate.stream.StreamTranslator, chunk by chunk -> Anthropic events

The translation is pure; this module only moves bytes. The audit record reads
the cached tokens off the upstream's own usage (``prompt_tokens_details``,
llama.cpp ``timings``, DeepSeek's fields), so "unknown" stays unknown.

OpenAI servers have no ``count_tokens``: the gateway answers it (``side.py``),
without touching the upstream's slots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from prefixgate.app.exchange import Answered, Exchange, Finish, error_response, json_object
from prefixgate.app.relay import Relay, RelayResponse, Streams
from prefixgate.config import UpstreamConfig
from prefixgate.core.errors import PrefixgateError, UpstreamStatus
from prefixgate.core.fold import MessageSummary, StreamFold, summarize_message
from prefixgate.core.pipeline import Rewrite
from prefixgate.core.sse import SSEEvent, encode_event
from prefixgate.core.usage import cache_usage
from prefixgate.translate.names import ToolNames
from prefixgate.translate.request import OpenAIRequestOptions, to_openai
from prefixgate.translate.response import to_anthropic_message
from prefixgate.translate.stream import Event, StreamTranslator
from prefixgate.upstreams.anthropic import transport_error
from prefixgate.upstreams.openai import OpenAIUpstream, models_to_anthropic, openai_headers
from prefixgate.upstreams.tokenize import TokenCounter

ADAPTER_VERSION = "openai-chat/1"
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


def request_options(
    upstream: UpstreamConfig, rw: Rewrite, session: str | None
) -> OpenAIRequestOptions:
    """What the translation needs to know about this upstream and request."""
    cache_key = {"session": session, "prefix": rw.key.hex, "off": None}[upstream.prompt_cache_key]
    loads = rw.tool_loads  # references the tool-load step replaced by definitions
    return OpenAIRequestOptions(
        system_messages=upstream.system_messages,
        user=session,
        prompt_cache_key=cache_key,
        reasoning=upstream.reasoning,
        loaded_tools=loads.loaded if loads is not None else (),
    )


class OpenAIEvents:
    """OpenAI chunks in, Anthropic events out (see ``relay.EventStream``).

    The audit record reads the usage off the translated ``message_delta``, which
    carries the upstream's own prompt and cached counts (cached only if reported).
    """

    def __init__(self, names: ToolNames, model: str) -> None:
        self._translator = StreamTranslator(names, model=model)
        self._fold = StreamFold()

    def feed(self, events: Sequence[SSEEvent]) -> bytes:
        out: list[Event] = []
        for event in events:
            out += self._translator.feed_sse(event)  # [DONE], error lines, bad JSON included
        return self._encode(out)

    def end(self) -> bytes:
        return self._encode(self._translator.done())

    def fail(self, error: PrefixgateError) -> bytes:
        return self._encode(self._translator.fail(error.error_type, error.message))

    def summary(self) -> MessageSummary:
        return self._fold.result()

    def _encode(self, events: list[Event]) -> bytes:
        for name, data in events:
            self._fold.feed(name, data)
        return b"".join(encode_event(name, data) for name, data in events)


class OpenAIForward:
    """Forwards rewritten requests to one kind of upstream: OpenAI chat completions."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        finish: Finish,
        answered: Answered,
        counter: TokenCounter,
        streams: Streams | None = None,
    ) -> None:
        self._client = client
        self._streams = streams
        self._finish = finish
        self._answered = answered
        self._counter = counter

    async def messages(self, request: Request, ex: Exchange, rw: Rewrite) -> Response:
        """Raises ``PrefixgateError`` only before the request has been finished."""
        assert ex.upstream is not None
        session = ex.seen.identity.session if ex.seen else None
        if session is not None and ex.principal is not None:  # never another tenant's
            session = f"{ex.tenant}:{session}"
        translated = to_openai(rw.parsed, request_options(ex.upstream, rw, session))
        body = json.dumps(translated.body, ensure_ascii=False, separators=(",", ":")).encode()
        # Client headers never reach an OpenAI server (user-agent and accept aside):
        # the attribution headers are gone under every policy, and only what the
        # policy adds (a normalized value, the metadata header) is sent.
        extra = {**ex.headers.add, **rw.upstream_headers}
        headers = openai_headers(request.headers, ex.upstream, extra)
        response = await OpenAIUpstream(ex.upstream, self._client).chat(body, headers)
        ex.ttfb = time.perf_counter()
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            stream = OpenAIEvents(translated.names, rw.model)
            relay = Relay(self._finish, ex, response, stream, self._answered, self._streams)
            return RelayResponse(relay.events(), relay.close, status_code=200, headers=SSE_HEADERS)
        return await self._whole(ex, response, translated.names, rw.model)

    async def models(self, upstream: UpstreamConfig, request: Request) -> Response:
        """The upstream's model list in the Anthropic shape; raises ``PrefixgateError``."""
        response = await OpenAIUpstream(upstream, self._client).models(
            openai_headers(request.headers, upstream)
        )
        try:
            content = await response.aread()
        except httpx.HTTPError as exc:
            raise transport_error(upstream, exc) from None
        finally:
            await response.aclose()
        return JSONResponse(models_to_anthropic(json_object(content)))

    async def _whole(
        self, ex: Exchange, response: httpx.Response, names: ToolNames, model: str
    ) -> Response:
        assert ex.upstream is not None
        try:
            content = await response.aread()
        except httpx.HTTPError as exc:  # nothing sent yet: the next replica may answer
            raise transport_error(ex.upstream, exc) from None
        finally:
            await response.aclose()
        payload = json_object(content)
        try:
            if payload is None:
                raise UpstreamStatus(502, "api_error", "upstream answered with no JSON object")
            message: dict[str, Any] = to_anthropic_message(payload, names, model=model)
        except PrefixgateError as exc:
            message_text = f"upstream {ex.upstream.name!r}: {exc.message}"
            err: PrefixgateError = UpstreamStatus(502, "api_error", message_text)
            self._finish(ex, 502, None, message_text, None)
            return error_response(err)
        self._finish(ex, 200, summarize_message(message), None, cache_usage(payload))
        return JSONResponse(message)
