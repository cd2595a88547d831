"""An upstream that misbehaves the way a careless or hostile one does, on a real socket.

Run it with ``support.servers.ServerThread(HostileUpstream().app)``. Every request
is kept in ``seen`` (path, headers, body). What it answers is chosen by the
request's ``model``:

``echo-key``      a message whose text repeats every credential header it received
``echo-error``    a 400 error whose message repeats them
``echo-stream``   the same text as an SSE stream
``cookies``       a plain message with ``set-cookie``, ``access-control-*`` and
                  hop-by-hop headers on it
anything else     a plain message
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from prefixgate.demo import ManagedProcess

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
                Route("/health", self.health),
            ]
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def messages(self, request: Request) -> Response:
        body = await request.body()
        self.seen.append(Seen(request.url.path, dict(request.headers), body))
        try:
            model = json.loads(body).get("model", "")
        except ValueError:
            model = ""
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
