"""Sending to an upstream, whatever its kind: one httpx client, typed errors.

The client's wire work is done by the event loop's connections and httptools
underneath (``wire.py``), for CPU; tests give the client an
``httpx.MockTransport`` instead.

``UpstreamClient`` is made with the app and opened while it runs (its
lifespan); ``send`` opens one request with it and turns refused connections,
timeouts and error statuses into the gateway's typed errors, naming the
upstream. An error body in either API's shape (``{"error": {"message"}}``)
keeps its message.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

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
from prefixgate.core.secrets import redact_text
from prefixgate.upstreams.wire import ON_SENT, WireTransport


@dataclass(frozen=True)
class Outgoing:
    """One request to an upstream: ``path`` (with its query) under its base URL."""

    path: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = "POST"


_NOT_STARTED = (
    "the gateway has not been started: its upstream client is opened by the "
    "app's lifespan, which the ASGI server must run"
)


class UpstreamClient:
    """The one httpx client to every upstream, open while the app runs.

    Requests to upstreams (``send``) go to its transport directly, with the
    client's default headers: the client's own layers (cookies, which it must
    never keep here, redirects, which it never follows, auth flows, URL and
    header merging) cost a third of the gateway's upstream work per request.
    Health probes and the tokenizer use the client itself (``http``).
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._given = transport
        self._client: httpx.AsyncClient | None = None
        self._transport: httpx.AsyncBaseTransport | None = None
        self._defaults: tuple[tuple[bytes, bytes, bytes], ...] = ()  # (lower name, name, value)
        self._urls: dict[str, httpx.URL] = {}

    @property
    def started(self) -> bool:
        return self._client is not None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(_NOT_STARTED)
        return self._client

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[httpx.AsyncClient]:
        """Open the client for the app's lifetime; closed however it ends."""
        transport = self._given or WireTransport()
        client = httpx.AsyncClient(
            transport=transport, timeout=None, trust_env=False, cookies=_no_cookies()
        )
        self._client, self._transport = client, transport
        self._defaults = tuple((name.lower(), name, value) for name, value in client.headers.raw)
        try:
            yield client
        finally:
            self._client = self._transport = None
            await client.aclose()

    def request(
        self, config: UpstreamConfig, outgoing: Outgoing, timeout: httpx.Timeout
    ) -> httpx.Request:
        """``outgoing`` as the client's ``build_request`` would make it: the client's
        default headers, each replaced in place by a given one of the same name, then
        the other given headers in their order; Basic auth from the URL's user info."""
        given: dict[bytes, tuple[bytes, bytes]] = {}
        for key, value in outgoing.headers.items():
            name = key.encode("latin-1")
            given[name.lower()] = (name, wire_value(value))
        auth = config.basic_auth()
        if auth is not None:
            given[b"authorization"] = (b"Authorization", basic_auth_value(*auth))
        headers = [given.pop(lower, (name, value)) for lower, name, value in self._defaults]
        headers += given.values()
        return httpx.Request(
            outgoing.method,
            self._url(config.url + outgoing.path),
            headers=headers,
            content=outgoing.body if outgoing.method == "POST" else None,
            extensions={"timeout": timeout.as_dict()},
        )

    def _url(self, text: str) -> httpx.URL:
        """Parsed once per URL (a few distinct ones per upstream), not per request."""
        url = self._urls.get(text)
        if url is None:
            if len(self._urls) >= 1024:
                self._urls.clear()
            url = self._urls[text] = httpx.URL(text)
        return url

    async def send(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            raise RuntimeError(_NOT_STARTED)
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response


class _Once:
    """Calls ``fn`` (if any) the first time it is called."""

    def __init__(self, fn: Callable[[], None] | None) -> None:
        self._fn = fn

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()


def basic_auth_value(user: str, password: str) -> bytes:
    """The ``Authorization`` value httpx's ``BasicAuth`` sends."""
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def _no_cookies() -> CookieJar:
    """A jar that keeps nothing: one upstream serves many clients, and a cookie
    set for one of them must never be sent on another's request."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


async def send(
    upstreams: UpstreamClient,
    config: UpstreamConfig,
    outgoing: Outgoing,
    on_sent: Callable[[], None] | None = None,
) -> httpx.Response:
    """Send ``outgoing`` to ``config`` and return the response, its body unread.

    Raises a typed ``PrefixgateError`` for refused connections, timeouts and
    error statuses (after reading the error body); the caller must close the
    returned response.

    ``on_sent`` is called once: as soon as the request is written (``WireTransport``
    calls it, so that the caller's work overlaps the upstream's), else when the
    answer begins or the sending fails.
    """
    timeout = httpx.Timeout(config.read_timeout, connect=config.connect_timeout)
    request = upstreams.request(config, outgoing, timeout)
    once = _Once(on_sent)
    if on_sent is not None:
        request.extensions[ON_SENT] = once
    try:
        try:
            response = await upstreams.send(request)
        except httpx.RemoteProtocolError:
            # A kept-alive connection the server had just closed (llama-server
            # drops idle ones after a few seconds): nothing was answered, so
            # send once more on a fresh connection.
            response = await upstreams.send(request)
    except httpx.HTTPError as exc:
        raise transport_error(config, exc) from None
    finally:
        once()
    if response.status_code >= 400:
        raise status_error(config, response.status_code, await read_all(config, response))
    return response


async def read_all(config: UpstreamConfig, response: httpx.Response) -> bytes:
    """The whole body of ``response``, which is closed; failures named after ``config``.

    A body beyond ``config.max_answer_bytes`` is not buffered further: 502.
    """
    limit = config.max_answer_bytes
    pieces: list[bytes] = []
    size = 0
    try:
        async for piece in response.aiter_bytes():
            size += len(piece)
            if size > limit:
                raise UpstreamStatus(
                    502,
                    "api_error",
                    f"upstream {config.name!r} ({config.url}) answered more than "
                    f"max_answer_bytes={limit} bytes; the answer is not relayed",
                )
            pieces.append(piece)
    except httpx.HTTPError as exc:  # nothing sent yet: the next replica may answer
        raise transport_error(config, exc) from None
    finally:
        await response.aclose()
    return b"".join(pieces)


def transport_error(config: UpstreamConfig, exc: httpx.HTTPError) -> PrefixgateError:
    """Map an httpx failure to the gateway's error, naming the upstream."""
    where = f"upstream {config.name!r} ({config.url})"
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{where} did not answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamUnavailable(f"{where} refused the connection or could not be reached")
    detail = redact_text(str(exc), config.secrets)
    return UpstreamUnavailable(f"{where} failed: {type(exc).__name__}: {detail}")


def status_error(config: UpstreamConfig, status: int, content: bytes) -> UpstreamStatus:
    """An error status from the upstream, keeping its own message where it has one."""
    error_type = error_type_for_status(status)
    message = content.decode("utf-8", "replace").strip()[:2000] or f"HTTP {status}"
    try:
        payload = json.loads(content)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        message = str(error.get("message", message))
        if isinstance(error.get("type"), str) and payload.get("type") == "error":
            error_type = error["type"]
    message = redact_text(message, config.secrets)  # an upstream may echo its own key
    return UpstreamStatus(status, error_type, f"upstream {config.name!r}: {message}")


#: Bytes no header value may hold: controls but the tab, and DEL.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def check_header_values(headers: Mapping[str, str]) -> None:
    """Refuse a header value HTTP does not carry, before anything is sent.

    Values arrive as the server read them (each byte one character, latin-1).
    Control characters (CR, LF and NUL would split the request) are refused,
    and so are bytes that are not UTF-8: obsolete ``obs-text`` that the client
    library underneath cannot send unchanged. UTF-8 text is forwarded byte for
    byte (``wire_value``).
    """
    for name, value in headers.items():
        raw = wire_value(value)
        if _CONTROL.search(raw) is not None:
            raise InvalidRequest(
                f"header {name[:40]!r} holds a control character (a line break, NUL, ...); "
                "it is not forwarded"
            )
        if raw.isascii():
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"header {name[:40]!r} holds bytes that are not UTF-8; it is not forwarded"
            ) from None


def wire_value(value: str) -> bytes:
    """A header value as bytes on the wire: the bytes the client sent (the server
    decoded them as latin-1); a value the gateway made beyond latin-1 as UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def json_object(content: bytes) -> dict[str, Any] | None:
    """``content`` as a JSON object; None when it is not one."""
    try:
        payload = json.loads(content)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    return payload if isinstance(payload, dict) else None


def json_bytes(content: object) -> bytes:
    """JSON as the gateway writes it to clients (as Starlette's ``JSONResponse`` does);
    ASCII ``\\u`` escapes when a lone surrogate (from an upstream) cannot be UTF-8."""
    text = json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")
