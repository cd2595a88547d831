"""Upstream kind ``openai``: any server speaking OpenAI chat completions.

LM Studio, vLLM, llama.cpp's server, OpenRouter, DeepSeek, Groq and the rest
take ``POST {base}/chat/completions``. The base URL follows the OpenAI SDKs'
convention: it names the API version (``https://openrouter.ai/api/v1``); a
bare host (``http://127.0.0.1:8080``) gets ``/v1``. The translation itself is
pure (``prefixgate.translate``); this module decides the URL and the headers,
and reuses the Anthropic kind's error mapping (an OpenAI error body
``{"error": {"message": ...}}`` keeps its message).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from prefixgate.config import UpstreamConfig
from prefixgate.upstreams.anthropic import AnthropicUpstream, check_header_values

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


class OpenAIUpstream:
    """Sends chat completions requests to one configured upstream."""

    def __init__(self, config: UpstreamConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self._http = AnthropicUpstream(config, client)

    async def chat(self, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST the translated request; the body is still unread (see ``AnthropicUpstream``)."""
        return await self._http.open(api_path(self.config, "/chat/completions"), body, headers)

    async def models(self, headers: Mapping[str, str]) -> httpx.Response:
        return await self._http.open(api_path(self.config, "/models"), b"", headers, method="GET")
