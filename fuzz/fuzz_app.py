"""Fuzz the whole gateway app in-process: bodies, headers, paths and upstream faults.

Every input is one HTTP request handed to the ASGI app (no sockets), in front of
a fake upstream (``httpx.MockTransport``) of the app's kind (``anthropic``:
Anthropic messages; ``openai``: chat completions) that answers normally, with an
error status, with garbage, with a stream cut midway, or not at all. The inputs
mix the recorded Claude Code requests (``corpus/*.jsonl``) mutated (keys dropped,
types changed, bytes cut, lone surrogates, huge numbers, deep nesting), random
JSON, random bytes, and random or odd request headers (non-ASCII bytes, very long
values, duplicates, credential and attribution headers, content types).

For every input the run checks that

* no exception escapes the app and it sends a response;
* the status is never 500 (any other 5xx that the fake upstream did not cause is
  counted apart);
* the request leaves exactly one audit row (one ``request_id``) once the
  observer is drained, the one named by ``x-prefixgate-request-id``.

Apps are built once per kind and policy and reused. Inputs run one at a time, so
the rows written while one runs are that input's. A failing input is written as
JSON to ``--save-dir`` and replayed with ``--replay FILE``.

    .venv/bin/python fuzz/fuzz_app.py --inputs 200000 --seed 1 --kind both
    .venv/bin/python fuzz/fuzz_app.py --replay fuzz-failures/anthropic-000123.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from prefixgate.app.gateway import create_app
from prefixgate.config import build_settings
from prefixgate.store.audit import AuditRecord, MemoryAudit, OnCommit

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = REPO_ROOT / "corpus"
KINDS = ("anthropic", "openai")
POLICIES = ("strip", "normalize", "preserve_as_metadata", "passthrough")
UPSTREAM_KEY = "sk-upstream-fuzz-secret"
UPSTREAM_URL = "http://up.test"
REQUEST_ID_HEADER = "x-prefixgate-request-id"
ROUTES = {
    "/v1/messages": "POST",
    "/v1/messages/count_tokens": "POST",
    "/v1/models": "GET",
}
# the statuses the fake upstream answers when told to fail (never 500, so a 500
# seen by the client is the gateway's own)
UPSTREAM_ERRORS = (400, 401, 403, 404, 408, 413, 422, 429, 502, 503, 504, 529)
UPSTREAM_MODES = ("ok", "ok", "ok", "ok", "error", "garbage", "cut", "refused", "timeout")
KEEP_FAILURES = 50  # failing inputs kept (and saved) of each kind of failure
BILLING = "x-anthropic-billing-header: cc_version=2.1.197.{}; cc_entrypoint=cli;"


# -- the inputs ------------------------------------------------------------------------


@dataclass
class Case:
    """One request and how the upstream answers it; JSON-able (bytes as base64)."""

    kind: str
    policy: str
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes]  # the body, as the client's pieces
    upstream: str  # one of UPSTREAM_MODES
    upstream_seed: int
    client_leaves: bool = False  # disconnects after the first piece of the answer

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["query"] = b64(self.query)
        raw["headers"] = [[b64(k), b64(v)] for k, v in self.headers]
        raw["chunks"] = [b64(c) for c in self.chunks]
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Case:
        d = base64.b64decode
        return cls(
            **{
                **raw,
                "query": d(raw["query"]),
                "headers": [(d(k), d(v)) for k, v in raw["headers"]],
                "chunks": [d(c) for c in raw["chunks"]],
            }
        )

    @property
    def on_route(self) -> bool:
        return ROUTES.get(self.path) == self.method

    @property
    def audited(self) -> bool:
        """A request the gateway must write one row for: an exchange on ``/v1/messages``
        (``/v1/models`` is relayed without a row unless refused at the door)."""
        return self.on_route and self.path != "/v1/models"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def load_corpus(directory: Path = CORPUS_DIR) -> list[dict[str, Any]]:
    """The recorded requests (method, path, headers, body), smallest bodies first."""
    found: list[dict[str, Any]] = []
    for file in sorted(directory.glob("*.jsonl")):
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                found.append(json.loads(line))
    found.sort(key=lambda r: len(r.get("body") or ""))
    return found


class Generator:
    """Makes cases from a seeded ``random.Random`` and the corpus."""

    def __init__(self, rng: random.Random, corpus: list[dict[str, Any]]) -> None:
        self.rng = rng
        self.corpus = corpus or [{"headers": {}, "body": json.dumps(small_request(rng))}]
        self.parsed = [self._parse(r.get("body") or "") for r in self.corpus]

    @staticmethod
    def _parse(body: str) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            return None

    def recorded(self) -> int:
        """A corpus index, small bodies far more often than large ones (speed)."""
        n = len(self.corpus)
        return min(int(self.rng.paretovariate(1.2)) - 1, n - 1) if n else 0

    def case(self, kind: str) -> Case:
        rng = self.rng
        r = rng.random()
        if r < 0.86:
            method, path = "POST", "/v1/messages"
        elif r < 0.93:
            method, path = "POST", "/v1/messages/count_tokens"
        elif r < 0.98:
            method, path = "GET", "/v1/models"
        else:  # off the routes: wrong method, unknown path
            method, path = rng.choice(
                [
                    ("GET", "/v1/messages"),
                    ("PUT", "/v1/messages"),
                    ("POST", "/v1/models"),
                    ("POST", "/v1/messages/"),
                    ("POST", "/v1/complete"),
                    ("POST", "/v1/messages/batches"),
                    ("DELETE", "/v1/messages/count_tokens"),
                ]
            )
        query = rng.choice(
            [b"", b"beta=true", b"beta=true", b"", b"beta=%ff%fe", b"a=" + b"x" * 300]
        )
        index = self.recorded()
        body = self.body(index) if method != "GET" or rng.random() < 0.1 else b""
        return Case(
            kind=kind,
            policy=rng.choice(POLICIES),
            method=method,
            path=path,
            query=query,
            headers=self.headers(index, body),
            chunks=self.split(body),
            upstream=rng.choice(UPSTREAM_MODES),
            upstream_seed=rng.randrange(2**32),
            client_leaves=rng.random() < 0.03,
        )

    # bodies

    def body(self, index: int) -> bytes:
        rng = self.rng
        r = rng.random()
        original = (self.corpus[index].get("body") or "").encode("utf-8", "surrogatepass")
        parsed = self.parsed[index]
        if r < 0.25 and isinstance(parsed, dict):  # as recorded, streamed or not
            doc = json.loads(json.dumps(parsed))
            doc["stream"] = rng.random() < 0.5
            return dumps(doc)
        if r < 0.50 and isinstance(parsed, dict):
            return self.mutate_json(json.loads(json.dumps(parsed)))
        if r < 0.58:
            return self.mutate_bytes(original)
        if r < 0.68:
            return dumps(small_request(rng))
        if r < 0.80:
            return self.mutate_json(small_request(rng))
        if r < 0.90:
            return dumps(random_json(rng, 4))
        if r < 0.96:
            return rng.randbytes(rng.choice([1, 8, 64, 512, 4096]))
        return rng.choice([b"", b"{}", b"null", b"[]", b"\xef\xbb\xbf{}", b" ", b"{"])

    def mutate_json(self, doc: Any) -> bytes:
        rng = self.rng
        deep: str | None = None
        for _ in range(rng.choice([1, 1, 1, 2, 3, 4])):
            op = rng.random()
            parent, key = pick(rng, doc)
            if parent is None:
                continue
            if op < 0.25:
                if isinstance(parent, dict):
                    parent.pop(key, None)
                elif parent:
                    parent.pop(key)
            elif op < 0.55:
                parent[key] = odd_value(rng)
            elif op < 0.65:
                parent[key] = "\x00DEEP\x00"
                deep = rng.choice(["[", '{"a":', '{"content":['])
            elif op < 0.80 and isinstance(doc, dict):
                doc[rng.choice(FIELDS)] = odd_value(rng)
            else:
                target = doc if isinstance(doc, dict) else {}
                attribution(rng, target)
        text = dumps(doc)
        if deep is not None:
            n = rng.choice([50, 500, 5000, 100_000])
            close = {"[": "]", '{"a":': "}", '{"content":[': "]}"}[deep]
            text = text.replace(b'"\\u0000DEEP\\u0000"', (deep * n + "1" + close * n).encode())
        if rng.random() < 0.15:
            text = self.mutate_bytes(text)
        return text

    def mutate_bytes(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            at = rng.randrange(len(buf) + 1)
            if op < 0.3:
                del buf[at:]  # cut
            elif op < 0.5 and buf:
                buf[min(at, len(buf) - 1)] = rng.randrange(256)
            elif op < 0.7:
                buf[at:at] = rng.choice(
                    [b"\xff", b"\xc3", b"\xed\xa0\x80", b'\\ud800"', b"\x00", b"\xef\xbb\xbf", b'"']
                )
            elif op < 0.85:
                buf[at:at] = rng.randbytes(rng.randint(1, 16))
            else:
                buf = bytearray(b"\xef\xbb\xbf") + buf
        return bytes(buf)

    def split(self, body: bytes) -> list[bytes]:
        """The body as the client sends it: whole, in a few pieces, or a byte at a time."""
        rng = self.rng
        if not body or rng.random() < 0.8:
            return [body]
        if len(body) < 64 and rng.random() < 0.5:
            return [body[i : i + 1] for i in range(len(body))]
        cuts = sorted(rng.randrange(len(body)) for _ in range(rng.randint(1, 6)))
        pieces, last = [], 0
        for cut in [*cuts, len(body)]:
            pieces.append(body[last:cut])
            last = cut
        return pieces

    # headers

    def headers(self, index: int, body: bytes) -> list[tuple[bytes, bytes]]:
        rng = self.rng
        out: list[tuple[bytes, bytes]] = []
        if rng.random() < 0.5:  # the recorded client's headers
            for name, value in (self.corpus[index].get("headers") or {}).items():
                low = name.lower()
                if low in ("host", "content-length") or rng.random() < 0.1:
                    continue
                out.append((low.encode("latin-1"), str(value).encode("latin-1", "replace")))
        else:
            out.append((b"content-type", rng.choice(CONTENT_TYPES)))
            out.append((b"anthropic-version", b"2023-06-01"))
        host = rng.choices(HOSTS, weights=[90, 3, 3, 1, 1, 1, 1])[0]
        if host is not None:
            out.insert(0, (b"host", host))
        if rng.random() < 0.9:
            length = len(body) if rng.random() < 0.95 else rng.choice([0, len(body) + 7, 2**40])
            out.append((b"content-length", str(length).encode()))
        for _ in range(rng.choice([0, 0, 1, 2, 3, 6])):
            out.append(self.odd_header())
        if rng.random() < 0.1 and out:  # a duplicate
            out.append(rng.choice(out))
        rng.shuffle(out)
        return out

    def odd_header(self) -> tuple[bytes, bytes]:
        rng = self.rng
        r = rng.random()
        if r < 0.2:
            name = rng.choice(CREDENTIAL_HEADERS)
            return name, header_value(rng)
        if r < 0.35:
            value = rng.choice(
                [
                    BILLING.format("abc").split(": ", 1)[1].encode(),
                    header_value(rng),
                    "cc_version=2.1.197.ßé; cc_entrypoint=clï;".encode("latin-1", "replace"),
                    b"\xc3\xa9\xff\x80",
                    b"",
                ]
            )
            return b"x-anthropic-billing-header", value
        if r < 0.5:
            betas = [rng.choice(BETAS) for _ in range(rng.randint(0, 30))]
            value = b",".join(betas) if rng.random() < 0.8 else header_value(rng)
            return b"anthropic-beta", value
        if r < 0.6:
            return b"content-type", rng.choice(CONTENT_TYPES)
        if r < 0.7:
            return rng.choice(FORWARD_HEADERS), header_value(rng)
        if r < 0.73:
            return b"origin", rng.choice(ORIGINS)
        if r < 0.85:
            return b"x-claude-code-session-id", header_value(rng)
        return header_name(rng), header_value(rng)


FIELDS = (
    "model", "messages", "system", "tools", "stream", "max_tokens", "metadata",
    "thinking", "temperature", "tool_choice", "stop_sequences", "context_management",
    "output_config", "top_k", "top_p",
)  # fmt: skip
CONTENT_TYPES = (
    b"application/json",
    b"application/json; charset=utf-8",
    b"APPLICATION/JSON",
    b"text/plain",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=x",
    b"application/json; charset=latin-1",
    b"",
    b"\xff\xfe",
)
HOSTS = (
    b"localhost",
    b"127.0.0.1:8080",
    b"[::1]:8080",
    b"evil.example",
    b"localhost\xff",
    b"",
    None,
)
ORIGINS = (
    b"http://localhost",
    b"http://evil.example",
    b"null",
    b"\xff\xfe",
    b"http://127.0.0.1:8080",
)
CREDENTIAL_HEADERS = (
    b"x-api-key", b"authorization", b"api-key", b"x-goog-api-key", b"anthropic-api-key",
    b"proxy-authorization", b"cookie",
)  # fmt: skip
FORWARD_HEADERS = (
    b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"forwarded",
    b"connection", b"transfer-encoding", b"te", b"upgrade", b"expect", b"accept-encoding",
    b"x-stainless-retry-count", b"anthropic-version", b"user-agent", b"accept",
)  # fmt: skip
BETAS = (
    b"claude-code-20250219", b"context-1m-2025-08-07", b"prompt-caching-scope-2026-01-05",
    b"interleaved-thinking-2025-05-14", b"", b" ", b"\xc3\xa9t\xc3\xa9", b"x" * 200,
)  # fmt: skip
TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"


def header_name(rng: random.Random) -> bytes:
    """A header name HTTP/1.1 allows (a token; the server lower-cases it)."""
    return bytes(rng.choice(TOKEN) for _ in range(rng.randint(1, 40)))


def header_value(rng: random.Random) -> bytes:
    """A value an HTTP/1.1 server passes on: visible ASCII, latin-1 bytes, inner blanks."""
    r = rng.random()
    if r < 0.3:
        n = rng.randint(1, 60)
        return bytes(rng.choice(range(0x21, 0x7F)) for _ in range(n))
    if r < 0.55:
        n = rng.randint(1, 40)
        middle = bytes(
            rng.choice([*range(0x20, 0x7F), *range(0x80, 0x100), 0x09]) for _ in range(n)
        )
        return b"a" + middle + b"z"
    if r < 0.7:
        return "é漢字🙂".encode() * rng.randint(1, 5)
    if r < 0.8:
        return b"x" * rng.choice([1000, 8000, 70_000])
    if r < 0.9:
        return b"Bearer " + bytes(rng.choice(range(0x21, 0x7F)) for _ in range(30))
    return rng.choice([b"", b"0", b"-1", b"99999999999999999999999", b"true", b"null"])


def small_request(rng: random.Random) -> dict[str, Any]:
    system: Any = [
        {"type": "text", "text": BILLING.format(rng.choice(["abc", "3ab", "0"]))},
        {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}},
    ]
    return {
        "model": rng.choice(["claude-opus-4-8", "claude-haiku-4-5", "gemma", ""]),
        "max_tokens": rng.choice([1, 64, 4096]),
        "stream": rng.random() < 0.5,
        "system": system,
        "tools": [
            {
                "name": "Read",
                "description": "Read a file.",
                "input_schema": {"type": "object", "properties": {"p": {"type": "string"}}},
            }
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Read a.py"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "Read", "input": {"p": "a.py"}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "print(1)"}],
            },
        ],
        "metadata": {"user_id": json.dumps({"session_id": "s-1"})},
    }


def pick(rng: random.Random, doc: Any) -> tuple[Any, Any]:
    """A random (container, key) inside ``doc``, found by a short random walk."""
    parent: Any = None
    key: Any = None
    node = doc
    for _ in range(rng.randint(1, 6)):
        if isinstance(node, dict) and node:
            parent, key = node, rng.choice(list(node))
        elif isinstance(node, list) and node:
            parent, key = node, rng.randrange(len(node))
        else:
            break
        node = parent[key]
        if rng.random() < 0.3:
            break
    return parent, key


def odd_value(rng: random.Random) -> Any:
    return rng.choice(
        [
            None, True, False, 0, -1, 2**64, 10**400, -(10**400), 1e308, -0.0, math.inf, math.nan,
            1.5, "", "\ud800", "a\udfffb", "\x00\x1f\x7f", "é漢字🙂" * 10, "x" * 100_000,
            BILLING.format("zz"), BILLING.upper(), "\ufeff" + BILLING.format("bom"),
            [], {}, [None], {"type": "text"}, {"type": "text", "text": "\ud83d"},
            {"type": "image", "source": {}}, [{"type": "tool_use"}], {"": ""},
        ]
    )  # fmt: skip


def attribution(rng: random.Random, doc: dict[str, Any]) -> None:
    """Put the attribution line somewhere odd in ``doc``'s system."""
    line = rng.choice(
        [BILLING.format("x"), BILLING.format("\ud800"), BILLING.format("é" * 300), BILLING[:20]]
    )
    doc["system"] = rng.choice(
        [line, [{"type": "text", "text": line}], [{"type": "text", "text": line}] * 3, None, ""]
    )


def random_json(rng: random.Random, depth: int) -> Any:
    r = rng.random()
    if depth <= 0 or r < 0.4:
        return odd_value(rng) if rng.random() < 0.5 else rng.choice([rng.random(), "msg", 7])
    if r < 0.7:
        keys = [*FIELDS, "role", "content", "type", "text", "x"]
        return {rng.choice(keys): random_json(rng, depth - 1) for _ in range(rng.randint(0, 6))}
    return [random_json(rng, depth - 1) for _ in range(rng.randint(0, 5))]


def dumps(doc: Any) -> bytes:
    """JSON bytes; lone surrogates as ``\\udXXX`` escapes, NaN/Infinity as Python writes them."""
    return json.dumps(doc, separators=(",", ":")).encode()


# -- the fake upstreams ------------------------------------------------------------------


class Cut(httpx.AsyncByteStream):
    """An answer body that stops with a read error after some pieces."""

    def __init__(self, pieces: list[bytes], error: Exception) -> None:
        self.pieces = pieces
        self.error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        raise self.error

    async def aclose(self) -> None:
        pass


class Upstream:
    """A fake upstream of one kind; ``mode`` and ``rng`` are set before each input."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.mode = "ok"
        self.rng = random.Random(0)
        self.statuses: list[int] = []  # what it answered for the current input
        self.transport = httpx.MockTransport(self.handle)

    def reset(self, mode: str, seed: int) -> None:
        self.mode = mode
        self.rng = random.Random(seed)
        self.statuses = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        rng = self.rng
        path = request.url.path
        if self.mode == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if self.mode == "timeout":
            raise httpx.ReadTimeout("read timed out", request=request)
        try:
            body = json.loads(await request.aread())
        except ValueError:
            body = None
        stream = isinstance(body, dict) and body.get("stream") is True
        if self.mode == "error":
            status = rng.choice(UPSTREAM_ERRORS)
            self.statuses.append(status)
            content = rng.choice(
                [
                    dumps(
                        {"type": "error", "error": {"type": "overloaded_error", "message": "no"}}
                    ),
                    dumps({"error": {"message": f"bad key {UPSTREAM_KEY}"}}),
                    b"<html>proxy error</html>",
                    b"",
                    b'{"error": "\\ud800"}',
                ]
            )
            return httpx.Response(status, content=content, headers=self._garbage_headers())
        if self.mode == "garbage":
            self.statuses.append(200)
            content_type = rng.choice(
                ["application/json", "text/event-stream", "text/plain", "application/octet-stream"]
            )
            return httpx.Response(
                200,
                content=self._garbage(stream),
                headers=[(b"content-type", content_type.encode()), *self._garbage_headers()],
            )
        self.statuses.append(200)
        pieces, content_type = self._answer(path, stream)
        if self.mode == "cut":
            keep = pieces[: rng.randint(0, max(len(pieces) - 1, 0))]
            if keep and rng.random() < 0.5:
                last = keep[-1]
                keep[-1] = last[: rng.randrange(len(last) + 1)]
            error = rng.choice(
                [
                    httpx.ReadError("connection reset"),
                    httpx.RemoteProtocolError("peer closed connection"),
                    httpx.ReadTimeout("read timed out"),
                ]
            )
            return httpx.Response(
                200, headers={"content-type": content_type}, stream=Cut(keep, error)
            )
        return httpx.Response(200, headers={"content-type": content_type}, content=b"".join(pieces))

    def _garbage_headers(self) -> list[tuple[bytes, bytes]]:
        rng = self.rng
        return rng.choice(
            [
                [],
                [(b"set-cookie", b"a=b"), (b"access-control-allow-origin", b"*")],
                [(b"connection", b"close"), (b"keep-alive", b"timeout=5")],
                [(b"x-upstream", "é".encode()), (b"x-latin", b"\xff\xfe")],
                [(b"retry-after", b"-1")],
                [(b"content-encoding", b"gzip")],
            ]
        )

    def _garbage(self, stream: bool) -> bytes:
        rng = self.rng
        good = b"".join(self._answer("/v1/messages", stream)[0])
        return rng.choice(
            [
                rng.randbytes(rng.randint(0, 300)),
                good[: rng.randrange(len(good) + 1)],
                good.replace(b"Hello", b"\\ud800").replace(b"Let me", b"\\udfff"),
                good.replace(b"12", b"1" * 400).replace(b"1000", b"-5"),
                good.replace(b"1000", b"9" * 400).replace(b"900", b"1e308"),
                good.replace(b'"usage"', b'"usage":null,"x"'),
                dumps(random_json(rng, 3)),
                b"data: {}\n\n" * 3,
                b"event: message_start\ndata: \xff\xfe\n\n",
                b"data: [DONE]\n\n",
                good.replace(b"Hello", UPSTREAM_KEY.encode()),
                b"\r\n".join(good.split(b"\n")),
                b'{"content": [' * 50_000,
                b"event: message_start\ndata: " + b'{"a":' * 50_000 + b"\n\n",
                b"data: " + b"[" * 50_000 + b"\n\n",
            ]
        )

    def _answer(self, path: str, stream: bool) -> tuple[list[bytes], str]:
        """A normal answer as pieces, and its content type."""
        if path.endswith("/tokenize"):
            return [dumps({"tokens": [1] * 50})], "application/json"
        if path.endswith("/models"):
            data = [{"id": "gemma", "object": "model", "created": 0, "type": "model"}]
            return [dumps({"object": "list", "data": data})], "application/json"
        if path.endswith("/count_tokens"):
            return [dumps({"input_tokens": 123})], "application/json"
        if self.kind == "openai":
            return (
                (OPENAI_SSE, "text/event-stream") if stream else ([OPENAI_JSON], "application/json")
            )
        return (
            (ANTHROPIC_SSE, "text/event-stream")
            if stream
            else ([ANTHROPIC_JSON], "application/json")
        )


ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "gemma",
    "content": [{"type": "text", "text": "Hello"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "cache_read_input_tokens": 1000, "output_tokens": 3},
}
ANTHROPIC_JSON = dumps(ANTHROPIC_MESSAGE)


def _sse(event: str | None, data: Any) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    payload = data if isinstance(data, bytes) else dumps(data)
    return head + b"data: " + payload + b"\n\n"


ANTHROPIC_SSE = [
    _sse(
        "message_start",
        {
            "type": "message_start",
            "message": {**ANTHROPIC_MESSAGE, "content": [], "stop_reason": None},
        },
    ),
    _sse(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    _sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Hello"},
        },
    ),
    _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 3},
        },
    ),
    _sse("message_stop", {"type": "message_stop"}),
]
OPENAI_JSON = dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_750_000_000,
        "model": "gemma",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "Read", "arguments": '{"p":"a.py"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 1000,
            "completion_tokens": 12,
            "total_tokens": 1012,
            "prompt_tokens_details": {"cached_tokens": 900},
        },
    }
)


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_750_000_000,
        "model": "gemma",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return _sse(None, body)


OPENAI_SSE = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Let me"}),
    _chunk({"content": " look."}),
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "Read", "arguments": ""},
                }
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"p":"a.py"}'}}]}),
    _chunk(
        {}, "tool_calls", {"prompt_tokens": 1000, "completion_tokens": 12, "total_tokens": 1012}
    ),
    b"data: [DONE]\n\n",
]


# -- the apps ----------------------------------------------------------------------------


class CountingAudit(MemoryAudit):
    """A ``MemoryAudit`` that also counts the records of each ``request_id``."""

    def __init__(self) -> None:
        super().__init__(limit=200)
        self.ids: list[str | None] = []  # every record's request id, in order

    def record(self, rec: AuditRecord, on_commit: OnCommit | None = None) -> None:
        self.ids.append(rec.request_id)
        super().record(rec, on_commit)


@dataclass
class Gateway:
    app: Starlette
    upstream: Upstream
    audit: CountingAudit


def make_gateway(kind: str, policy: str, upstream: Upstream | None = None) -> Gateway:
    upstream = upstream or Upstream(kind)
    table: dict[str, Any] = {
        "url": UPSTREAM_URL,
        "kind": kind,
        "api_key": UPSTREAM_KEY,
        "policy": policy,
    }
    if policy == "preserve_as_metadata":
        table["metadata_header"] = "x-attribution"
    settings = build_settings({"upstreams": {"up": table}}, {}, {})
    audit = CountingAudit()
    return Gateway(create_app(settings, transport=upstream.transport, audit=audit), upstream, audit)


# -- one input ---------------------------------------------------------------------------


@dataclass
class Outcome:
    status: int | None = None  # None: no response started
    crash: str | None = None  # the traceback of an exception that escaped the app
    rows: int = 0  # distinct request ids recorded while it ran
    id_matches: bool = True  # the response's request id is the recorded one
    upstream_statuses: list[int] = field(default_factory=list)


async def run_case(gateway: Gateway, case: Case) -> Outcome:
    """Hand ``case`` to the app as an ASGI server would; what came of it."""
    gateway.upstream.reset(case.upstream, case.upstream_seed)
    audit = gateway.audit
    before = len(audit.ids)
    outcome = Outcome()
    done = asyncio.Event()
    pieces = list(case.chunks) or [b""]
    headers: list[tuple[str, str]] = []
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": case.method,
        "scheme": "http",
        "path": case.path,
        "raw_path": case.path.encode(),
        "query_string": case.query,
        "root_path": "",
        "headers": list(case.headers),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }

    async def receive() -> MutableMapping[str, Any]:
        if pieces:
            piece = pieces.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(pieces)}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            outcome.status = message["status"]
            headers.extend(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]
            )
        elif message["type"] == "http.response.body" and (
            case.client_leaves or not message.get("more_body", False)
        ):
            done.set()

    try:
        await gateway.app(scope, receive, send)
    except Exception:
        outcome.crash = traceback.format_exc()
    done.set()
    await gateway.app.state.proxy.observer.drain()
    new = audit.ids[before:]
    outcome.rows = len(set(new))
    said = [v for k, v in headers if k.lower() == REQUEST_ID_HEADER]
    outcome.id_matches = not said or (len(said) == 1 and said[0] in new)
    outcome.upstream_statuses = list(gateway.upstream.statuses)
    return outcome


# -- the run -----------------------------------------------------------------------------


@dataclass
class KindStats:
    inputs: int = 0
    statuses: Counter[int | None] = field(default_factory=Counter)
    crashes: int = 0
    status_500: int = 0
    other_5xx: int = 0  # 5xx but 500 that the upstream did not cause
    rows_missing: int = 0  # on a route, no row
    rows_extra: int = 0  # on a route, more than one request id recorded
    id_mismatch: int = 0
    off_route: int = 0
    off_route_rows: int = 0
    seconds: float = 0.0


@dataclass
class Stats:
    kinds: dict[str, KindStats] = field(default_factory=dict)
    failures: list[tuple[str, Case, Outcome]] = field(default_factory=list)
    labels: Counter[str] = field(default_factory=Counter)  # every failure, by what was wrong

    @property
    def failed(self) -> bool:
        return any(
            s.crashes
            or s.status_500
            or s.other_5xx
            or s.rows_missing
            or s.rows_extra
            or s.id_mismatch
            for s in self.kinds.values()
        )


def judge(case: Case, outcome: Outcome) -> list[str]:
    """What is wrong with ``outcome``; empty when nothing."""
    wrong: list[str] = []
    if outcome.crash is not None:
        last = outcome.crash.strip().splitlines()[-1]
        wrong.append(f"crash ({last.split(':', 1)[0]})")  # with the exception's class
    elif outcome.status is None:
        wrong.append("no response")
    if outcome.status == 500:
        wrong.append("500")
    elif outcome.status is not None and outcome.status > 500:
        caused = outcome.status in (502, 503, 504) and case.upstream != "ok"
        if not caused and outcome.status not in outcome.upstream_statuses:
            wrong.append(f"{outcome.status} not from the upstream")
    if case.audited and outcome.rows == 0:
        wrong.append("no row")
    if case.on_route:
        if outcome.rows > 1:
            wrong.append(f"{outcome.rows} rows")
        if not outcome.id_matches:
            wrong.append("request id not the recorded one")
    return wrong


def tally(stats: KindStats, case: Case, outcome: Outcome, wrong: list[str]) -> None:
    stats.inputs += 1
    stats.statuses[outcome.status] += 1
    stats.crashes += any(w.startswith("crash") for w in wrong) or "no response" in wrong
    stats.status_500 += "500" in wrong
    stats.other_5xx += any(w.endswith("not from the upstream") for w in wrong)
    stats.rows_missing += "no row" in wrong
    stats.rows_extra += any(w.endswith(" rows") for w in wrong)
    stats.id_mismatch += "request id not the recorded one" in wrong
    if not case.on_route:
        stats.off_route += 1
        stats.off_route_rows += outcome.rows > 0


async def fuzz(
    inputs: int,
    seed: int = 1,
    kinds: tuple[str, ...] = KINDS,
    save_dir: Path | None = None,
    corpus_dir: Path = CORPUS_DIR,
    progress: bool = False,
) -> Stats:
    """Run ``inputs`` cases, shared out between ``kinds``; the tallies and failures."""
    rng = random.Random(seed)
    generator = Generator(rng, load_corpus(corpus_dir))
    stats = Stats({kind: KindStats() for kind in kinds})
    async with contextlib.AsyncExitStack() as stack:
        gateways: dict[tuple[str, str], Gateway] = {}
        for kind in kinds:
            for policy in POLICIES:
                gateway = make_gateway(kind, policy)
                await stack.enter_async_context(gateway.app.router.lifespan_context(gateway.app))
                gateways[kind, policy] = gateway
        started = time.monotonic()
        for n in range(inputs):
            kind = kinds[n % len(kinds)]
            case = generator.case(kind)
            t0 = time.monotonic()
            outcome = await run_case(gateways[kind, case.policy], case)
            kstats = stats.kinds[kind]
            kstats.seconds += time.monotonic() - t0
            wrong = judge(case, outcome)
            tally(kstats, case, outcome, wrong)
            if wrong:
                label = ",".join(wrong)
                stats.labels[label] += 1
                if stats.labels[label] <= KEEP_FAILURES:  # the first ones of each kind of failure
                    stats.failures.append((label, case, outcome))
                    if save_dir is not None:
                        save(save_dir, n, case, outcome, label)
            if progress and (n + 1) % 5000 == 0:
                rate = (n + 1) / (time.monotonic() - started)
                failed = sum(stats.labels.values())
                print(
                    f"{n + 1} inputs, {rate:.0f}/s, {failed} failing", file=sys.stderr, flush=True
                )
    return stats


def save(directory: Path, n: int, case: Case, outcome: Outcome, label: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{case.kind}-{n:06d}.json"
    raw = {"wrong": label, "status": outcome.status, "rows": outcome.rows, "crash": outcome.crash}
    path.write_text(json.dumps({**raw, "case": case.to_json()}, indent=1), encoding="utf-8")
    return path


async def replay(file: Path) -> int:
    raw = json.loads(file.read_text(encoding="utf-8"))
    case = Case.from_json(raw["case"])
    gateway = make_gateway(case.kind, case.policy)
    async with gateway.app.router.lifespan_context(gateway.app):
        outcome = await run_case(gateway, case)
    wrong = judge(case, outcome)
    print(f"kind={case.kind} policy={case.policy} {case.method} {case.path}")
    print(f"upstream mode={case.upstream}, answered {outcome.upstream_statuses}")
    print(f"status={outcome.status} rows={outcome.rows}")
    if outcome.crash:
        print(outcome.crash)
    print("wrong: " + (", ".join(wrong) if wrong else "nothing"))
    return 1 if wrong else 0


def show(stats: Stats, wall: float, command: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    table = Table(title=f"fuzz_app: {command}")
    for column in ("kind", "inputs", "500s", "crashes", "other 5xx", "rows missing",
                   "rows extra", "id mismatch", "off-route (with row)", "inputs/s"):  # fmt: skip
        table.add_column(column, justify="right")
    total = KindStats()
    for kind, s in stats.kinds.items():
        table.add_row(*_row(kind, s))
        total.inputs += s.inputs
        total.statuses.update(s.statuses)
        for name in ("crashes", "status_500", "other_5xx", "rows_missing", "rows_extra",
                     "off_route", "off_route_rows", "id_mismatch", "seconds"):  # fmt: skip
            setattr(total, name, getattr(total, name) + getattr(s, name))
    if len(stats.kinds) > 1:
        table.add_row(*_row("all", total))
    console.print(table)
    histogram = Table(title="statuses")
    histogram.add_column("status", justify="right")
    for kind in stats.kinds:
        histogram.add_column(kind, justify="right")
    codes = sorted(total.statuses, key=lambda c: (c is None, c or 0))
    for code in codes:
        counts = [str(s.statuses.get(code, 0)) for s in stats.kinds.values()]
        histogram.add_row("none" if code is None else str(code), *counts)
    console.print(histogram)
    console.print(
        f"{total.inputs} inputs in {wall:.0f} s wall ({total.inputs / max(wall, 1e-9):.0f}/s)"
    )
    for label, count in stats.labels.most_common():
        console.print(f"failing: {label}: {count}")


def _row(kind: str, s: KindStats) -> list[str]:
    return [
        kind, str(s.inputs), str(s.status_500), str(s.crashes), str(s.other_5xx),
        str(s.rows_missing), str(s.rows_extra), str(s.id_mismatch),
        f"{s.off_route} ({s.off_route_rows})", f"{s.inputs / max(s.seconds, 1e-9):.0f}",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kind", choices=(*KINDS, "both"), default="both")
    parser.add_argument("--save-dir", type=Path, default=Path("fuzz-failures"))
    parser.add_argument("--corpus", type=Path, default=CORPUS_DIR)
    parser.add_argument("--replay", type=Path, help="run one saved failing input again")
    args = parser.parse_args(argv)
    logging_quiet()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    if args.replay:
        return asyncio.run(replay(args.replay))
    kinds = KINDS if args.kind == "both" else (args.kind,)
    started = time.monotonic()
    stats = asyncio.run(
        fuzz(args.inputs, args.seed, kinds, args.save_dir, args.corpus, progress=True)
    )
    command = " ".join(["fuzz/fuzz_app.py", *(argv if argv is not None else sys.argv[1:])])
    show(stats, time.monotonic() - started, command)
    return 1 if stats.failed else 0


def logging_quiet() -> None:
    """The gateway logs every upstream fault; a fuzz run makes hundreds of thousands."""
    import logging

    logging.getLogger("prefixgate").setLevel(logging.CRITICAL)
    logging.getLogger("httpx").setLevel(logging.CRITICAL)


if __name__ == "__main__":
    sys.exit(main())
