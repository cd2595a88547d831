"""An upstream that misbehaves the way a careless or hostile one does, on a real socket.

Run it with ``support.servers.ServerThread(HostileUpstream().app)``. Every request
is kept in ``seen`` (path, headers, body). What it answers is chosen by the
request's ``model``:

``echo-key``      a message whose text repeats every credential header it received
``echo-error``    a 400 error whose message repeats them
``echo-stream``   the same text as an SSE stream
``cookies``       a plain message with ``set-cookie``, ``access-control-*`` and
                  hop-by-hop headers on it
``huge``          a 4 MiB message (more than the security tests let the gateway buffer)
``*surrogate``    a message whose text holds a lone surrogate escape (``\\ud800``),
                  whole or streamed as the request asks
anything else     a plain message

``POST /v1/chat/completions`` answers in the OpenAI shape: a chat completion
(a lone surrogate in its text for a ``*surrogate`` model), whole or streamed.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from prefixgate.demo import ManagedProcess
from support.servers import free_port

# Request headers that carry a credential (its own list: the gateway's is under test).
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "x-api-key", "api-key", "anthropic-api-key", "x-goog-api-key", "cookie"}
    | {"ocp-apim-subscription-key"}
)


UPSTREAM_KEY = "sk-upstream-KEY-0123456789abcdef"
URL_USER = "gatewayuser"
URL_PASSWORD = "url-PASSWORD-s3cret"
SECRETS = (UPSTREAM_KEY, URL_PASSWORD)
REDACTED = "[redacted]"  # what the gateway writes in a secret's place


@dataclass(frozen=True)
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


def message(text: str) -> dict[str, Any]:
    return {
        "id": "msg_hostile",
        "type": "message",
        "role": "assistant",
        "model": "hostile",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 3},
    }


def sse(text: str) -> bytes:
    start = {**message(""), "content": []}
    block = {"type": "text", "text": ""}
    delta = {"type": "text_delta", "text": text}
    events = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": block},
        {"type": "content_block_delta", "index": 0, "delta": delta},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 3},
        },
        {"type": "message_stop"},
    ]
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


class HostileUpstream:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.app = Starlette(
            routes=[
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/health", self.health),
            ]
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _read(self, request: Request) -> tuple[str, bool]:
        body = await request.body()
        self.seen.append(Seen(request.url.path, dict(request.headers), body))
        try:
            parsed = json.loads(body)
        except ValueError:
            return "", False
        return str(parsed.get("model", "")), parsed.get("stream") is True

    async def chat(self, request: Request) -> Response:
        model, stream = await self._read(request)
        text = "bad \\ud800 x" if model.endswith("surrogate") else "hello"
        if stream:
            chunk = (
                '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
                '"choices":[{"index":0,"delta":{"role":"assistant","content":"%s"},'
                '"finish_reason":null}]}'
            ).replace("%s", text)
            end = (
                '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
                '[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,'
                '"completion_tokens":1,"total_tokens":2}}'
            )
            events = f"data: {chunk}\n\ndata: {end}\n\ndata: [DONE]\n\n"
            return Response(events.encode(), media_type="text/event-stream")
        whole = (
            '{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
            '"message":{"role":"assistant","content":"%s"},"finish_reason":"stop"}],'
            '"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
        ).replace("%s", text)
        return Response(whole.encode(), media_type="application/json")

    async def messages(self, request: Request) -> Response:
        model, stream = await self._read(request)
        if model.endswith("surrogate"):
            if stream:
                raw = sse("@@").replace(b"@@", b"bad \\ud800 x")
                return Response(raw, media_type="text/event-stream")
            whole = json.dumps(message("@@")).replace("@@", "bad \\ud800 x")
            return Response(whole.encode(), media_type="application/json")
        creds = "; ".join(
            f"{k}={v}" for k, v in request.headers.items() if k.lower() in CREDENTIAL_HEADERS
        )
        if model == "echo-key":
            return JSONResponse(message(f"you sent me {creds}"))
        if model == "echo-error":
            error = {"type": "invalid_request_error", "message": f"bad credentials: {creds}"}
            return JSONResponse({"type": "error", "error": error}, status_code=400)
        if model == "echo-stream":
            return StreamingResponse(
                iter([sse(f"you sent me {creds}")]), media_type="text/event-stream"
            )
        if model == "huge":
            return JSONResponse(message("x" * (4 * 1024 * 1024)))
        if model == "cookies":
            headers = {
                "set-cookie": "upstream_session=abc123; Path=/",
                "access-control-allow-origin": "*",
                "access-control-allow-credentials": "true",
                "keep-alive": "timeout=5",
                "x-upstream-note": "kept",
            }
            return JSONResponse(message("have a cookie"), headers=headers)
        return JSONResponse(message("hello"))


@contextlib.contextmanager
def serve_config(
    folder: Path,
    server: str,
    rest: str,
    *,
    env: dict[str, str] | None = None,
    keep_log: bool = False,
) -> Iterator[tuple[int, ManagedProcess]]:
    """``prefixgate serve --config`` as users run it, on a free port: the file holds
    ``[server]`` with the port and the lines ``server``, then ``rest`` (upstreams,
    tenants, routes). Yields the port and the process; stopped on the way out."""
    port = free_port()
    config = folder / "prefixgate.toml"
    config.write_text(f"[server]\nport = {port}\n{server}{rest}", encoding="utf-8")
    command = [sys.executable, "-m", "prefixgate", "serve", "--config", str(config)]
    health = f"http://127.0.0.1:{port}/healthz"
    with ManagedProcess("gateway", command, health, env=env, keep_log=keep_log) as process:
        yield port, process


@dataclass
class Running:
    """A ``prefixgate serve`` process in front of a ``HostileUpstream``."""

    url: str
    upstream: HostileUpstream
    audit: Path
    process: ManagedProcess

    def log(self) -> str:
        path = self.process.log_path
        return path.read_text(encoding="utf-8", errors="replace") if path else ""

    def stored(self) -> str:
        return self.audit.read_text(encoding="utf-8") if self.audit.exists() else ""


def row_of(audit: Path, answer: httpx.Response | str) -> dict[str, object]:
    """The audit row of ``answer`` (or of a request id) in a JSON-lines or SQLite
    audit file, once written (within 10 s)."""
    request_id = answer if isinstance(answer, str) else answer.headers["x-prefixgate-request-id"]
    deadline = time.monotonic() + 10
    while True:
        for row in _rows(audit):
            if row["request_id"] == request_id:
                return row
        assert time.monotonic() < deadline, f"no audit row for {request_id}"
        time.sleep(0.05)


def _rows(audit: Path) -> list[dict[str, object]]:
    if not audit.exists():
        return []
    if audit.suffix == ".db":
        with contextlib.closing(sqlite3.connect(audit)) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM requests")]
    lines = audit.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]
