"""The HTTP/1.1 transport under the upstream client: aiohttp behind httpx's interface.

The gateway speaks to upstreams through ``httpx.AsyncClient`` (its requests,
responses, timeouts and errors are what the rest of the code and the tests
use), but httpx's own connection pool costs more CPU per request than all of
the gateway's prompt analysis: on the overhead bench it scans every pooled
connection for every request and parses with pure-Python h11, about 1.3 ms of
CPU per proxied request out of the 2.4 ms a bare Starlette + httpx relay
spends (see bench/README.md). ``AioHTTPTransport`` hands the wire work to
aiohttp (C-accelerated parser, a pool that picks a free connection in constant
time) and keeps httpx's contract at the edge:

- the request goes out with exactly the headers httpx built (aiohttp adds none
  of its own) and the response body comes back as sent (no decompression:
  httpx decodes ``Content-Encoding`` itself);
- aiohttp's failures become the httpx exceptions httpx's transport raises for
  the same event, so ``upstreams/http.py`` maps them to the gateway's errors as
  before: a refused connection is ``ConnectError``, a kept-alive connection the
  server had closed is ``RemoteProtocolError`` (``send`` retries that once),
  a silent upstream is ``ReadTimeout``, a body cut short is ``RemoteProtocolError``;
- no cookie is kept between requests (one upstream serves many clients).

The same approach, with a different error mapping, is the ``httpx-aiohttp``
package the OpenAI Python SDK offers as its faster client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import yarl

#: Connections kept per transport, and how long an idle one is kept (httpx's defaults).
MAX_CONNECTIONS = 100
KEEPALIVE_S = 5.0


def _mapped(exc: BaseException, *, before_answer: bool = False) -> httpx.TransportError | None:
    """The httpx exception httpx's own transport would raise for ``exc``; None if foreign.

    ``before_answer``: no byte of an answer had come. A connection that breaks
    then (reset, a body that cannot be written: a kept-alive connection the
    server had just closed) is ``RemoteProtocolError``, as httpx reports a
    server that hung up without answering, so a caller may send once more on a
    fresh connection (``http.send`` and the tokenizer do).
    """
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.ClientResponseError):  # a malformed status line or header
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message)
    if isinstance(exc, aiohttp.ClientError):  # reset, broken pipe, ...
        return httpx.RemoteProtocolError(message) if before_answer else httpx.ReadError(message)
    return None


@contextlib.contextmanager
def _as_httpx(*, before_answer: bool = False) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        mapped = _mapped(exc, before_answer=before_answer)
        if mapped is None:
            raise
        raise mapped from exc


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
    return timeouts


class _Body(httpx.AsyncByteStream):
    """An aiohttp response body as httpx reads it; closing gives the connection back.

    Each read waits at most the request's ``read`` timeout, looked up afresh
    before every read as httpx's transport does (a relay lifts it once a stream
    has begun).
    """

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        with _as_httpx():
            while True:
                async with asyncio.timeout(_timeouts(self._request).get("read")):
                    chunk = await content.readany()
                if not chunk:
                    return
                yield chunk

    async def aclose(self) -> None:
        # Back to the pool when the body was read to its end, closed otherwise.
        self._response.release()


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:  # not sent by the gateway (it refuses such values)
        return value.decode("latin-1")


class AioHTTPTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncBaseTransport`` over one ``aiohttp.ClientSession``, made on first use."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, yarl.URL] = {}  # parsed once: a few distinct URLs per upstream

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=KEEPALIVE_S
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=False,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        body: Any = await request.aread() or None
        # httpx already set Host, Accept, Accept-Encoding, User-Agent and the length:
        # send its headers as they are, and let aiohttp add nothing. aiohttp writes
        # header text as UTF-8, so a UTF-8 value goes out as the bytes it came in.
        headers = [(k.decode("latin-1"), _text(v)) for k, v in request.headers.raw]
        timeouts = _timeouts(request)
        # The head waits at most ``read`` (httpx's meaning); the body's reads are
        # bounded in ``_Body``, so aiohttp's own read timeout stays off.
        limits = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.get("connect"))
        with _as_httpx(before_answer=True):
            async with asyncio.timeout(timeouts.get("read")):
                response = await session.request(
                    request.method,
                    self._url(str(request.url)),
                    data=body,
                    headers=headers,
                    skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
                    allow_redirects=False,
                    compress=None,
                    timeout=limits,
                )
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    def _url(self, text: str) -> yarl.URL:
        url = self._urls.get(text)
        if url is None:
            if len(self._urls) >= 1024:
                self._urls.clear()
            url = self._urls[text] = yarl.URL(text, encoded=True)  # httpx encoded it
        return url

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
