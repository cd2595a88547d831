"""prefixgate in front of a real cluster router: does the router keep the affinity it is handed?

    python bench/cluster_router.py [--smg PATH] [--sessions 8] [--prompts 4] [--turns 4]
                                   [--out results.json]

Two fake workers (``/v1/chat/completions`` and ``/v1/messages``, streamed or
not, and the health, load and model routes the router probes) stand behind
SGLang's model gateway, ``smg launch --policy consistent_hashing``, which
hashes the routing key it reads from ``X-SMG-Routing-Key`` onto its workers.
prefixgate (``url`` = the router) sits in front, once per way of handing the
router a key (the keys of its upstream table):

``prefix key``     kind openai, the stable prefix key as ``X-SMG-Routing-Key``
``session``        kind openai, the scoped session as ``X-SMG-Routing-Key``
``default pair``   kind openai, ``affinity_headers = true``
                   (``x-prefixgate-prefix-key``, ``x-session-id``), smg started
                   with ``--routing-key-headers x-prefixgate-prefix-key``
``sglang preset``  ``preset = "sglang"``: kind anthropic (smg routes
                   ``/v1/messages`` too), the prefix key as ``X-SMG-Routing-Key``
``none``           kind openai, no affinity headers (the router has no key)

A fresh router per way: each starts with no pins.

The client side is ``--sessions`` conversations over ``--prompts`` prompt heads
(system prompt and tools; sessions with the same head share a prefix key),
``--turns`` turns each, interleaved, half of them streamed. Each worker answers
with its own name, so the text of every answer says where the router sent it.

Reported per way: how many sessions and prompt heads stayed on one worker, how
the requests split over the workers, and the router's own count of requests it
placed by the routing key (``smg_consistent_hashing_policy_branch_total``),
and on how many requests a worker still received the gateway's ``x-session-id``
(smg routes on its key header and does not hand other headers on).
The fake workers have no cache, so no cached share is measured here.

smg is not a dependency of prefixgate: install it into a virtual environment of
its own (``python -m venv /tmp/smg && /tmp/smg/bin/pip install smg``) and pass
``--smg /tmp/smg/bin/smg``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.table import Table
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from prefixgate.demo import ManagedProcess, free_port

# each way: the keys of the gateway's upstream table besides ``url``
WAYS: dict[str, dict[str, Any]] = {
    "prefix key": {
        "kind": "openai",
        "affinity_headers": {"prefix": "X-SMG-Routing-Key", "session": "x-session-id"},
    },
    "session": {
        "kind": "openai",
        "affinity_headers": {"prefix": "", "session": "X-SMG-Routing-Key"},
    },
    "default pair": {"kind": "openai", "affinity_headers": True},
    "sglang preset": {"preset": "sglang"},  # kind anthropic: smg routes /v1/messages
    "none": {"kind": "openai"},
}
# smg's flags beyond the common ones, per way
ROUTER_FLAGS = {"default pair": ("--routing-key-headers", "x-prefixgate-prefix-key")}
WORKERS = ("worker-a", "worker-b")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smg", default=shutil.which("smg") or "smg", help="the smg executable")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4, help="distinct prompt heads")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    return parser.parse_args(argv)


# -- the fake workers ----------------------------------------------------------


def worker_app(name: str, seen: list[dict[str, Any]]) -> Starlette:
    """An OpenAI- and Anthropic-compatible server that answers every request with ``name``."""

    async def chat(request: Request) -> Response:
        body = await request.json()
        seen.append({"session": request.headers.get("x-session-id")})
        usage = {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
        if not body.get("stream"):
            message = {"role": "assistant", "content": name}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return JSONResponse(
                {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"]}
                | {"choices": [choice], "usage": usage}
            )

        async def chunks() -> AsyncIterator[bytes]:
            head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
            for delta, finish in (({"role": "assistant", "content": name}, None), ({}, "stop")):
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                yield f"data: {json.dumps(head | {'choices': [choice]})}\n\n".encode()
            yield f"data: {json.dumps(head | {'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def messages(request: Request) -> Response:  # the Anthropic Messages API
        body = await request.json()
        seen.append({"session": request.headers.get("x-session-id")})
        usage = {"input_tokens": 10, "output_tokens": 1}
        message = {"id": "msg", "type": "message", "role": "assistant", "model": body["model"]}
        message |= {"stop_reason": "end_turn", "stop_sequence": None, "usage": usage}
        if not body.get("stream"):
            return JSONResponse(message | {"content": [{"type": "text", "text": name}]})
        events = [
            ("message_start", {"type": "message_start", "message": message | {"content": []}}),
            ("content_block_start", {"type": "content_block_start", "index": 0}
             | {"content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0}
             | {"delta": {"type": "text_delta", "text": name}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 1}}
             | {"delta": {"stop_reason": "end_turn", "stop_sequence": None}}),
            ("message_stop", {"type": "message_stop"}),
        ]  # fmt: skip
        raw = "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events).encode()
        return Response(raw, media_type="text/event-stream")

    async def models(request: Request) -> Response:
        entry = {"id": "m", "object": "model", "created": 0, "owned_by": name}
        return JSONResponse({"object": "list", "data": [entry]})

    async def anything(request: Request) -> Response:  # /health, /loads, model info
        return JSONResponse({"status": "ok", "model_path": "m", "served_model_name": "m"})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/models", models),
            Route("/{path:path}", anything, methods=["GET", "POST"]),
        ]
    )


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """``app`` on a free loopback port in a daemon thread; its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("a fake worker did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# -- the client side -------------------------------------------------------------


def conversations(sessions: int, prompts: int, turns: int) -> list[dict[str, Any]]:
    """``sessions`` conversations, session ``i`` on prompt head ``i % prompts``."""
    out = []
    for i in range(sessions):
        head = i % prompts
        out.append(
            {
                "session": str(uuid.UUID(int=i + 1)),
                "head": head,
                "system": f"You are the coding agent of project {head}. " * 20,
                "tools": [
                    {
                        "name": f"tool_{head}_{t}",
                        "description": "does one thing",
                        "input_schema": {"type": "object"},
                    }
                    for t in range(3)
                ],
                "turns": turns,
            }
        )
    return out


async def one_request(
    client: httpx.AsyncClient, conv: dict[str, Any], turn: int, messages: list[dict[str, Any]]
) -> str:
    """Send turn ``turn`` of ``conv``; the worker that answered (the answer's text)."""
    messages.append({"role": "user", "content": f"turn {turn}: change file {turn}.py"})
    body = {
        "model": "m",
        "max_tokens": 16,
        "system": conv["system"],
        "tools": conv["tools"],
        "messages": messages,
        "stream": turn % 2 == 1,
    }
    headers = {"x-claude-code-session-id": conv["session"], "anthropic-version": "2023-06-01"}
    response = await client.post("/v1/messages", json=body, headers=headers)
    response.raise_for_status()
    if body["stream"]:
        text = "".join(
            json.loads(line[6:])["delta"].get("text", "")
            for line in response.text.splitlines()
            if line.startswith("data: ") and '"content_block_delta"' in line
        )
    else:
        text = "".join(block.get("text", "") for block in response.json()["content"])
    messages.append({"role": "assistant", "content": text})
    return text


async def drive(client: httpx.AsyncClient, convs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every conversation, turn by turn, interleaved; where each request went."""
    sent: list[dict[str, Any]] = []
    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for turn in range(max(c["turns"] for c in convs)):
        for conv in convs:
            worker = await one_request(client, conv, turn, history[conv["session"]])
            sent.append({"session": conv["session"], "head": conv["head"], "worker": worker})
    return sent


async def drive_url(base_url: str, convs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30, trust_env=False) as client:
        return await drive(client, convs)


def router_branches(metrics_url: str) -> dict[str, float]:
    """smg's count of consistent-hashing decisions, by branch."""
    out: dict[str, float] = {}
    text = httpx.get(metrics_url, timeout=5, trust_env=False).text
    for line in text.splitlines():
        if line.startswith("smg_consistent_hashing_policy_branch_total{"):
            branch = line.split('branch="', 1)[1].split('"', 1)[0]
            out[branch] = float(line.rsplit(" ", 1)[1])
    return out


def toml_value(value: Any) -> str:
    """A string, a boolean or a table of them as TOML (inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def config_toml(router_url: str, audit: Path, way: dict[str, Any]) -> str:
    """The gateway's config: one upstream, ``cluster``, at the router."""
    lines = ["[server]", f"audit_path = {toml_value(str(audit))}", "", "[upstreams.cluster]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in way.items()]
    lines += [f"url = {toml_value(router_url)}", "", "[[routes]]", 'model = "*"']
    lines += ['upstream = "cluster"', ""]
    return "\n".join(lines)


def summarise(sent: list[dict[str, Any]], branches: dict[str, float]) -> dict[str, Any]:
    by_session: dict[str, set[str]] = defaultdict(set)
    by_head: dict[int, set[str]] = defaultdict(set)
    for row in sent:
        by_session[row["session"]].add(row["worker"])
        by_head[row["head"]].add(row["worker"])
    return {
        "requests": len(sent),
        "per_worker": dict(sorted(Counter(row["worker"] for row in sent).items())),
        "sessions_on_one_worker": sum(len(w) == 1 for w in by_session.values()),
        "sessions": len(by_session),
        "heads_on_one_worker": sum(len(w) == 1 for w in by_head.values()),
        "heads": len(by_head),
        "head_workers": {str(h): sorted(w) for h, w in sorted(by_head.items())},
        "router_branches": branches,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    convs = conversations(args.sessions, args.prompts, args.turns)
    seen: dict[str, list[dict[str, Any]]] = {name: [] for name in WORKERS}
    results: dict[str, Any] = {}
    with (
        serving(worker_app(WORKERS[0], seen[WORKERS[0]])) as url_a,
        serving(worker_app(WORKERS[1], seen[WORKERS[1]])) as url_b,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for name, way in WAYS.items():
            for worker in seen.values():
                worker.clear()
            router_port, metrics_port = free_port(), free_port()
            router_url = f"http://127.0.0.1:{router_port}"
            router = [
                args.smg,
                "launch",
                "--host",
                "127.0.0.1",
                "--port",
                str(router_port),
                "--worker-urls",
                url_a,
                url_b,
                "--policy",
                "consistent_hashing",
                *ROUTER_FLAGS.get(name, ()),
                "--prometheus-host",
                "127.0.0.1",
                "--prometheus-port",
                str(metrics_port),
            ]
            config = Path(tmp) / f"{name.replace(' ', '_')}.toml"
            config.write_text(config_toml(router_url, Path(tmp) / "audit.db", way))
            port = free_port()
            gateway = [sys.executable, "-m", "prefixgate", "serve", "--config", str(config)]
            gateway += ["--port", str(port)]
            with (
                ManagedProcess("smg", router, f"{router_url}/health", startup_timeout=60),
                ManagedProcess("prefixgate", gateway, f"http://127.0.0.1:{port}/healthz"),
            ):
                sent = asyncio.run(drive_url(f"http://127.0.0.1:{port}", convs))
                branches = router_branches(f"http://127.0.0.1:{metrics_port}/metrics")
            result = summarise(sent, branches)
            result["router_command"] = " ".join(router)
            result["config"] = config.read_text()
            result["sessions_seen_by_workers"] = sum(
                row["session"] is not None for rows in seen.values() for row in rows
            )
            results[name] = result
    return results


def show(results: dict[str, Any], console: Console) -> None:
    table = Table(title="prefixgate -> smg (consistent_hashing) -> 2 fake workers")
    for column in (
        "key handed to smg",
        "requests",
        *WORKERS,
        "sessions on 1 worker",
        "prompt heads on 1 worker",
        "heads' workers",
        "smg branches",
        "x-session-id at workers",
    ):
        table.add_column(column)
    for name in WAYS:
        r = results[name]
        table.add_row(
            name,
            str(r["requests"]),
            *(str(r["per_worker"].get(w, 0)) for w in WORKERS),
            f"{r['sessions_on_one_worker']}/{r['sessions']}",
            f"{r['heads_on_one_worker']}/{r['heads']}",
            " ".join(f"{h}:{'+'.join(w[-1] for w in ws)}" for h, ws in r["head_workers"].items()),
            ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["router_branches"].items())),
            str(r["sessions_seen_by_workers"]),
        )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    show(results, Console(width=180))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
