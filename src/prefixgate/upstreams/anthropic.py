"""Upstream kind ``anthropic``: any server speaking the Anthropic Messages API.

llama.cpp's server, vLLM, SGLang, Ollama and Anthropic's own API all take the
request as it is; this module only decides which headers travel, opens the
request with an injected ``httpx.AsyncClient`` and turns transport failures and
error statuses into the gateway's typed errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import httpx

from prefixgate.config import UpstreamConfig
from prefixgate.core.errors import (
    InvalidRequest,
    PrefixgateError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_type_for_status,
)

# Hop-by-hop headers (RFC 9110 section 7.6.1) and headers the sender's HTTP
# stack computes itself (including Accept-Encoding: whoever asks must decode).
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)
# Upstream, client credentials are replaced by the upstream's own key.
DROPPED_REQUEST_HEADERS = HOP_BY_HOP_HEADERS | {"authorization", "x-api-key", "cookie"}
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "upgrade",
        "trailer",
        "server",
        "date",
    }
)


def forward_headers(
    client_headers: Mapping[str, str],
    upstream: UpstreamConfig,
    extra: Mapping[str, str] | None = None,
    drop: Iterable[str] = (),
) -> dict[str, str]:
    """The headers sent upstream: the client's, less dropped ones, plus our own.

    Headers named in the client's ``Connection`` header are hop-by-hop too
    (RFC 9110 section 7.6.1) and are dropped with the fixed list, and so are
    the (lower-case) names in ``drop`` (attribution headers the policy removes).
    """
    dropped = DROPPED_REQUEST_HEADERS | _connection_options(client_headers) | set(drop)
    out = {k: v for k, v in client_headers.items() if k.lower() not in dropped}
    check_header_values(out)
    if upstream.api_key:
        out["x-api-key"] = upstream.api_key
        if not upstream.first_party:
            out["authorization"] = f"Bearer {upstream.api_key}"
    for name, value in (extra or {}).items():
        out[name] = value
    return out


_UNSAFE = ("\r", "\n", "\0")


def check_header_values(headers: Mapping[str, str]) -> None:
    """Refuse a header that could become two upstream (CR, LF or NUL in it)."""
    for name, value in headers.items():
        if any(c in name or c in value for c in _UNSAFE):
            raise InvalidRequest(
                f"header {name[:40]!r} holds a line break or NUL; it is not forwarded"
            )


def _connection_options(headers: Mapping[str, str]) -> frozenset[str]:
    """The header names listed in ``Connection`` (lower case)."""
    names: set[str] = set()
    for key, value in headers.items():
        if key.lower() == "connection":
            names.update(part.strip().lower() for part in value.split(",") if part.strip())
    return frozenset(names)


def response_headers(headers: httpx.Headers) -> dict[str, str]:
    """The upstream answer's headers that are relayed to the client."""
    dropped = DROPPED_RESPONSE_HEADERS | _connection_options(headers)
    return {k: v for k, v in headers.items() if k.lower() not in dropped}


class AnthropicUpstream:
    """Sends Messages API requests to one configured upstream."""

    def __init__(self, config: UpstreamConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self._client = client

    async def open(
        self, path: str, body: bytes, headers: Mapping[str, str], *, method: str = "POST"
    ) -> httpx.Response:
        """Send the request and return the response with its body still unread.

        Raises a typed UpstreamError for refused connections, timeouts and
        error statuses (after reading the error body); the caller must close the
        returned response.
        """
        timeout = httpx.Timeout(self.config.read_timeout, connect=self.config.connect_timeout)
        request = self._client.build_request(
            method,
            self.config.url + path,
            content=body if method == "POST" else None,
            headers=dict(headers),
            timeout=timeout,
        )
        try:
            try:
                response = await self._client.send(request, stream=True)
            except httpx.RemoteProtocolError:
                # A kept-alive connection the server had just closed (llama-server
                # drops idle ones after a few seconds): nothing was answered, so
                # send once more on a fresh connection.
                response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(self.config, exc) from None
        if response.status_code >= 400:
            try:
                await response.aread()
            except httpx.HTTPError as exc:
                raise transport_error(self.config, exc) from None
            finally:
                await response.aclose()
            raise status_error(self.config, response.status_code, response.content)
        return response


def transport_error(config: UpstreamConfig, exc: httpx.HTTPError) -> PrefixgateError:
    """Map an httpx failure to the gateway's error, naming the upstream."""
    where = f"upstream {config.name!r} ({config.url})"
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{where} did not answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamUnavailable(f"{where} refused the connection or could not be reached")
    return UpstreamUnavailable(f"{where} failed: {type(exc).__name__}: {exc}")


def status_error(config: UpstreamConfig, status: int, content: bytes) -> UpstreamStatus:
    """An error status from the upstream, keeping its own message where it has one."""
    error_type = error_type_for_status(status)
    message = content.decode("utf-8", "replace").strip()[:2000] or f"HTTP {status}"
    try:
        payload = json.loads(content)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        message = str(error.get("message", message))
        if isinstance(error.get("type"), str) and payload.get("type") == "error":
            error_type = error["type"]
    return UpstreamStatus(status, error_type, f"upstream {config.name!r}: {message}")
