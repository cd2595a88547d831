"""Upstream kind ``openai``: any server speaking OpenAI chat completions,
translated both ways.

    rewritten Anthropic request -> translate.request.to_openai -> POST chat/completions
    JSON answer   -> translate.response.to_anthropic_message -> the client
    event stream  -> translate.stream.StreamTranslator, chunk by chunk -> Anthropic events

LM Studio, vLLM, llama.cpp's server, OpenRouter, DeepSeek, Groq and the rest
take ``POST {base}/chat/completions``. The base URL follows the OpenAI SDKs'
convention: it names the API version (``https://openrouter.ai/api/v1``); a
bare host (``http://127.0.0.1:8080``) gets ``/v1``. The translation is pure
(``prefixgate.translate``); this module decides the URL and the headers. The
audit record reads the cached tokens off the upstream's own usage
(``prompt_tokens_details``, llama.cpp ``timings``, DeepSeek's fields), so
"unknown" stays unknown. OpenAI servers have no ``count_tokens``: the gateway
answers it, without touching the upstream's slots.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from prefixgate.config import UpstreamConfig
from prefixgate.config.values import read_choice, read_flag
from prefixgate.core.affinity import affinity_headers
from prefixgate.core.errors import PrefixgateError, UpstreamStatus
from prefixgate.core.fold import MessageSummary, StreamFold, summarize_message
from prefixgate.core.pipeline import Rewrite
from prefixgate.core.sse import SSEEvent, encode_event
from prefixgate.core.usage import cache_usage
from prefixgate.translate.names import ToolNames
from prefixgate.translate.request import OpenAIRequestOptions, to_openai
from prefixgate.translate.response import to_anthropic_message
from prefixgate.translate.stream import Event, StreamTranslator
from prefixgate.upstreams.http import Outgoing, check_header_values, json_bytes, json_object
from prefixgate.upstreams.kind import Answer, Incoming, Streamed, event_stream

ADAPTER_VERSION = "openai-chat/1"
SYSTEM_MESSAGES = ("system", "user")
PROMPT_CACHE_KEYS = ("session", "prefix", "off")
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
JSON = "application/json"

# The only client headers that mean something to an OpenAI server; the rest
# (anthropic-version, anthropic-beta, x-claude-code-*, x-stainless-*) do not.
KEPT_HEADERS = ("user-agent", "accept")


def api_path(config: UpstreamConfig, endpoint: str) -> str:
    """``/v1/chat/completions`` under a bare host, ``/chat/completions`` under ``.../v1``."""
    has_version = urlsplit(config.url).path.strip("/") != ""
    return ("" if has_version else "/v1") + endpoint


def openai_headers(
    client_headers: Mapping[str, str],
    upstream: UpstreamConfig,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A fresh header set: JSON, the upstream's own key, never the client's credentials."""
    kept = {k.lower(): v for k, v in client_headers.items() if k.lower() in KEPT_HEADERS}
    check_header_values(kept)
    out = {**kept, "content-type": "application/json"}
    if upstream.api_key:
        out["authorization"] = f"Bearer {upstream.api_key}"
    out.update(extra or {})
    return out


def models_to_anthropic(payload: object) -> dict[str, Any]:
    """An OpenAI model list (``{"data": [{"id", "created"}]}``) in the Anthropic shape."""
    data = payload.get("data") if isinstance(payload, Mapping) else None
    models = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
            continue
        created = item.get("created")
        models.append(
            {
                "type": "model",
                "id": item["id"],
                "display_name": item["id"],
                "created_at": _iso(created) if isinstance(created, int) else None,
            }
        )
    return {
        "data": models,
        "has_more": False,
        "first_id": models[0]["id"] if models else None,
        "last_id": models[-1]["id"] if models else None,
    }


def _iso(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class OpenAISettings:
    """The kind's own settings of an upstream (``[upstreams.NAME]`` keys)."""

    system_messages: str = "system"  # where mid-conversation system messages go
    prompt_cache_key: str = "session"  # what ``prompt_cache_key`` carries
    reasoning: bool = True  # thinking becomes ``reasoning_effort``


def read_settings(where: str, table: Mapping[str, Any]) -> OpenAISettings:
    """The kind's settings from an upstream's table; ``where`` names it in errors."""
    return OpenAISettings(
        system_messages=read_choice(
            f"{where}.system_messages", table.get("system_messages", "system"), SYSTEM_MESSAGES
        ),
        prompt_cache_key=read_choice(
            f"{where}.prompt_cache_key", table.get("prompt_cache_key", "session"), PROMPT_CACHE_KEYS
        ),
        reasoning=read_flag(f"{where}.reasoning", table.get("reasoning", True)),
    )


def settings_of(upstream: UpstreamConfig) -> OpenAISettings:
    """The upstream's ``kind_settings``, or the defaults where it has none."""
    own = upstream.kind_settings
    return own if isinstance(own, OpenAISettings) else OpenAISettings()


def request_options(
    upstream: UpstreamConfig, rw: Rewrite, session: str | None
) -> OpenAIRequestOptions:
    """What the translation needs to know about this upstream and request."""
    own = settings_of(upstream)
    cache_key = {"session": session, "prefix": rw.key.hex, "off": None}[own.prompt_cache_key]
    loads = rw.tool_loads  # references the tool-load step replaced by definitions
    return OpenAIRequestOptions(
        system_messages=own.system_messages,
        user=session,
        prompt_cache_key=cache_key,
        reasoning=own.reasoning,
        loaded_tools=loads.loaded if loads is not None else (),
    )


class OpenAIEvents:
    """OpenAI chunks in, Anthropic events out (see ``kind.EventStream``).

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


@dataclass(frozen=True)
class OpenAICall:
    """One rewritten request translated to a chat completion, and its answer back."""

    outgoing: Outgoing
    upstream: UpstreamConfig
    names: ToolNames
    model: str

    def answer(self, status: int, headers: httpx.Headers, content: bytes) -> Answer:
        payload = json_object(content)
        try:
            if payload is None:
                raise UpstreamStatus(502, "api_error", "upstream answered with no JSON object")
            message: dict[str, Any] = to_anthropic_message(payload, self.names, model=self.model)
        except PrefixgateError as exc:
            text = f"upstream {self.upstream.name!r}: {exc.message}"
            err = UpstreamStatus(502, "api_error", text)
            return Answer(502, json_bytes(err.to_body()), media_type=JSON, error=text)
        summary = summarize_message(message)
        return Answer(200, json_bytes(message), {}, JSON, summary, cache_usage(payload))

    def stream(self, status: int, headers: httpx.Headers) -> Streamed | None:
        if not event_stream(headers):
            return None
        return Streamed(200, dict(SSE_HEADERS), OpenAIEvents(self.names, self.model))


class OpenAIKind:
    """Translated both ways; the gateway answers ``count_tokens`` itself."""

    name = "openai"
    adapter_version = ADAPTER_VERSION
    counts_tokens = True

    def call(
        self, upstream: UpstreamConfig, incoming: Incoming, rw: Rewrite, session: str | None
    ) -> OpenAICall:
        translated = to_openai(rw.parsed, request_options(upstream, rw, session))
        body = json_bytes(translated.body)  # a client's lone surrogate stays a \\u escape
        # Client headers never reach an OpenAI server (user-agent and accept aside):
        # the attribution headers are gone under every policy, and only what the
        # policy adds (a normalized value, the metadata header) is sent.
        # and the affinity headers for a cluster router in front of the servers
        affinity = affinity_headers(upstream.affinity_headers, rw.key.hex, session)
        extra = {**incoming.added, **rw.upstream_headers, **affinity}
        headers = openai_headers(incoming.headers, upstream, extra)
        outgoing = Outgoing(api_path(upstream, "/chat/completions"), body, headers)
        return OpenAICall(outgoing, upstream, translated.names, rw.model)

    def read_settings(self, where: str, table: Mapping[str, Any]) -> OpenAISettings:
        return read_settings(where, table)

    def models(self, upstream: UpstreamConfig, incoming: Incoming) -> Outgoing:
        headers = openai_headers(incoming.headers, upstream)
        return Outgoing(api_path(upstream, "/models"), b"", headers, method="GET")

    def model_list(self, status: int, headers: httpx.Headers, content: bytes) -> Answer:
        listed = models_to_anthropic(json_object(content))
        return Answer(200, json_bytes(listed), media_type=JSON)


KIND = OpenAIKind()
