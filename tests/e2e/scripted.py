"""A scripted model for end-to-end tests with the real client and the real runtime.

    prefixgate -> Recorder -> Scripter -> llama-server

A 270M model does not reliably call a tool, so the turns where a test wants a
call are scripted: the ``Scripter`` still sends the request to llama-server
(unchanged but for ``stream: false``), so the runtime processes the whole
prompt and its cache is real, then answers with the scripted ``tool_use`` (or
OpenAI ``tool_calls``) in the shape and mode the request asked for, carrying
the runtime's own usage. Every other request is relayed as it is.

A script is keyed by a marker in the prompt the user typed; its step is the
number of assistant turns since that prompt. A step is a ``Call`` or a ``Say``
(a short text: the real answer, cut at once by the test's logit bias, is empty,
and Claude Code 2.1.332 answers an empty answer with a retry request that
rewrites the user's message). A call is scripted only when the request offers
the tool it calls: a call to a tool the upstream was not given is never
invented, the real answer goes back instead (and the test sees no call).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

HOP = frozenset({"host", "content-length", "transfer-encoding", "connection"})
KEEP_ALIVE_S = 10.0


@dataclass(frozen=True)
class Call:
    """One scripted assistant turn: a call to ``name`` with ``input``."""

    name: str
    input: Mapping[str, Any]


@dataclass(frozen=True)
class Say:
    """One scripted assistant turn: a text that ends the turn."""

    text: str


Step = Call | Say


@dataclass(frozen=True)
class Answered:
    """A scripted answer that went out: which script, which step, which call."""

    marker: str
    step: int
    call: Step
    call_id: str
    path: str

    @property
    def name(self) -> str:
        """The tool called ("" for a text)."""
        return self.call.name if isinstance(self.call, Call) else ""


def offered_tools(body: Mapping[str, Any]) -> list[str]:
    """Tool names a request offers, Anthropic (``name``) or OpenAI (``function.name``)."""
    names = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("name")
            if isinstance(name, str):
                names.append(name)
    return names


def position(body: Mapping[str, Any], marker: str) -> int | None:
    """Assistant turns since the last user message holding ``marker`` (None: no such message)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    at = None
    for index, message in enumerate(messages):
        if (
            isinstance(message, dict)
            and message.get("role") == "user"
            and marker in json.dumps(message.get("content"))
        ):
            at = index
    if at is None:
        return None
    return sum(
        1 for m in messages[at + 1 :] if isinstance(m, dict) and m.get("role") == "assistant"
    )


class Scripter:
    """A reverse proxy to ``target`` that answers scripted turns itself."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.scripts: dict[str, Sequence[Step]] = {}
        self.answered: list[Answered] = []
        self.app = Starlette(
            routes=[Route("/{path:path}", self.forward, methods=["GET", "POST"])],
            lifespan=self.lifespan,
        )
        self._client: httpx.AsyncClient | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            base_url=self.target, timeout=600.0, trust_env=False
        ) as client:
            self._client = client
            yield

    def step(self, body: Mapping[str, Any]) -> tuple[str, int, Step] | None:
        """The scripted turn this request gets, if any."""
        for marker, calls in self.scripts.items():
            step = position(body, marker)
            if step is not None and step < len(calls):
                call = calls[step]
                if isinstance(call, Say) or call.name in offered_tools(body):
                    return marker, step, call
        return None

    def calls(self, since: int = 0) -> list[Answered]:
        """The scripted tool calls answered (texts left out), from ``since`` on."""
        return [a for a in self.answered[since:] if isinstance(a.call, Call)]

    async def forward(self, request: Request) -> Response:
        assert self._client is not None
        raw = await request.body()
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        anthropic = request.url.path == "/v1/messages"
        chat = request.url.path.endswith("/chat/completions")
        body = json.loads(raw) if request.method == "POST" and (anthropic or chat) else None
        found = self.step(body) if isinstance(body, dict) else None
        if body is None or found is None:
            return await self._relay(request, path, raw)
        marker, step, call = found
        call_id = f"toolu_e2e_{len(self.answered) + 1:02d}"
        self.answered.append(Answered(marker, step, call, call_id, request.url.path))
        model = str(body.get("model"))
        stream = body.get("stream") is True
        answer = anthropic_answer if anthropic else openai_answer
        processing = asyncio.create_task(
            self._client.post(
                path, json={**body, "stream": False}, headers={"content-type": "application/json"}
            )
        )
        if not stream:
            return answer(call, call_id, model, (await processing).json(), stream)

        async def events() -> AsyncIterator[bytes]:
            # The stream opens at once and stays alive while the runtime works
            # through a cold prompt (minutes on a busy CPU), as a real server's would.
            while not (await asyncio.wait({processing}, timeout=KEEP_ALIVE_S))[0]:
                yield b": keep-alive\n\n"
            yield bytes(answer(call, call_id, model, processing.result().json(), stream).body)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _relay(self, request: Request, path: str, raw: bytes) -> Response:
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k not in HOP}
        upstream = await self._client.send(
            self._client.build_request(request.method, path, content=raw, headers=headers),
            stream=True,
        )

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        kept = {
            k: v for k, v in upstream.headers.items() if k.lower() not in HOP | {"content-encoding"}
        }
        return StreamingResponse(relay(), status_code=upstream.status_code, headers=kept)


def _sse(events: Sequence[tuple[str | None, Any]]) -> bytes:
    out = []
    for name, data in events:
        payload = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + f"data: {payload}\n\n")
    return "".join(out).encode()


def anthropic_answer(
    call: Step, call_id: str, model: str, real: Mapping[str, Any], stream: bool
) -> Response:
    """A Messages API answer with ``call``, with the runtime's prompt usage."""
    usage = real.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    prompt = {k: v for k, v in usage.items() if k in ("input_tokens", "cache_read_input_tokens")}
    if isinstance(call, Say):
        return anthropic_text(call.text, call_id, model, prompt, stream)
    block = {"type": "tool_use", "id": call_id, "name": call.name, "input": dict(call.input)}
    delta = {"type": "input_json_delta", "partial_json": json.dumps(dict(call.input))}
    return _anthropic_message(
        block, {**block, "input": {}}, delta, "tool_use", 8, call_id, model, prompt, stream
    )


def anthropic_text(
    text: str, call_id: str, model: str, prompt: Mapping[str, Any], stream: bool
) -> Response:
    block = {"type": "text", "text": text}
    delta = {"type": "text_delta", "text": text}
    return _anthropic_message(
        block, {"type": "text", "text": ""}, delta, "end_turn", 4, call_id, model, prompt, stream
    )


def _anthropic_message(
    block: dict[str, Any],
    empty_block: dict[str, Any],
    delta: dict[str, Any],
    stop_reason: str,
    output_tokens: int,
    call_id: str,
    model: str,
    prompt: Mapping[str, Any],
    stream: bool,
) -> Response:
    """One content block as a Messages API answer: JSON, or the SSE events that build it."""
    message = {
        "id": f"msg_{call_id}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [block],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {**prompt, "output_tokens": output_tokens},
    }
    if not stream:
        return JSONResponse(message)
    start = {**message, "content": [], "stop_reason": None, "usage": {**prompt, "output_tokens": 1}}
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": empty_block}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                           "usage": {"output_tokens": output_tokens}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    return Response(_sse(events), media_type="text/event-stream")


def openai_answer(
    call: Step, call_id: str, model: str, real: Mapping[str, Any], stream: bool
) -> Response:
    """A chat completions answer with ``call``, with the runtime's usage and timings."""
    extra = {k: real[k] for k in ("usage", "timings") if k in real}
    head = {"id": f"chatcmpl-{call_id}", "created": 0, "model": model}
    if isinstance(call, Say):
        return openai_text(call.text, head, extra, stream)
    tool_call = {
        "id": call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(dict(call.input))},
    }
    if not stream:
        message = {"role": "assistant", "content": None, "tool_calls": [tool_call]}
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
        return JSONResponse({**head, "object": "chat.completion", "choices": [choice], **extra})
    chunk = {**head, "object": "chat.completion.chunk"}
    delta = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **tool_call}]}
    events: list[tuple[str | None, Any]] = [
        (None, {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}),
        (None, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        (None, {**chunk, "choices": [], **extra}),
        (None, "[DONE]"),
    ]
    return Response(_sse(events), media_type="text/event-stream")


def openai_text(
    text: str, head: Mapping[str, Any], extra: Mapping[str, Any], stream: bool
) -> Response:
    if not stream:
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return JSONResponse({**head, "object": "chat.completion", "choices": [choice], **extra})
    chunk = {**head, "object": "chat.completion.chunk"}
    delta = {"role": "assistant", "content": text}
    events: list[tuple[str | None, Any]] = [
        (None, {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}),
        (None, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        (None, {**chunk, "choices": [], **extra}),
        (None, "[DONE]"),
    ]
    return Response(_sse(events), media_type="text/event-stream")


# -- a tiny stdio MCP server --------------------------------------------------------------

MCP_SERVER = "notes"
MCP_TOOL = "count_lines"
MCP_TOOL_DESCRIPTION = "Count the lines of a text file in the project."
MCP_PROPERTY_DESCRIPTION = "Path of the file, relative to the project"

_MCP_SOURCE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    TOOL = {
        "name": "count_lines",
        "description": "Count the lines of a text file in the project.",
        "inputSchema": {
            "type": "object",
            "properties": {"path": {"type": "string",
                                    "description": "Path of the file, relative to the project"}},
            "required": ["path"],
        },
    }

    def result(msg):
        method = msg.get("method")
        if method == "initialize":
            version = msg.get("params", {}).get("protocolVersion", "2025-06-18")
            return {"protocolVersion": version, "capabilities": {"tools": {}},
                    "serverInfo": {"name": "notes", "version": "1.0.0"}}
        if method == "tools/list":
            return {"tools": [TOOL]}
        if method == "tools/call":
            args = msg.get("params", {}).get("arguments") or {}
            try:
                lines = len(Path(args.get("path", "")).read_text().splitlines())
                return {"content": [{"type": "text", "text": f"{lines} lines counted"}]}
            except OSError as exc:
                return {"content": [{"type": "text", "text": str(exc)}], "isError": True}
        if method == "ping":
            return {}
        return None

    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        if "id" not in msg:
            continue
        found = result(msg)
        reply = {"jsonrpc": "2.0", "id": msg["id"]}
        if found is None:
            reply["error"] = {"code": -32601, "message": "method not found"}
        else:
            reply["result"] = found
        sys.stdout.write(json.dumps(reply) + "\\n")
        sys.stdout.flush()
    """
)


def write_mcp_config(folder: Path, python: str) -> Path:
    """The MCP server's script and a ``--mcp-config`` file naming it, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "notes_mcp.py"
    script.write_text(_MCP_SOURCE)
    config = folder / "mcp.json"
    servers = {MCP_SERVER: {"command": python, "args": [str(script)]}}
    config.write_text(json.dumps({"mcpServers": servers}))
    return config
