"""The upstream leg alone: what the gateway's client costs per request, against a bare one.

    python bench/upstream_leg.py [--requests 1500] [--rounds 3] [--corpus FILE]

Starts the overhead bench's stub upstream (``stub_upstream.py``) and posts the
first corpus body to it, one request at a time, reading each streamed answer to
its end, from two clients in the same process, round after round in turns:

``gateway``  the gateway's own path: ``upstreams/http.py:send`` through the
             httpx client over ``upstreams/wire.py``, the body read with
             ``aiter_bytes`` and the response closed, as the relay does;
``bare``     ``rawclient.py``, the overhead bench's load generator: asyncio
             protocols and httptools, the request bytes built once.

It prints, per client, the median wall time of a request and this process's
CPU time per request (user and system). Their difference is what the gateway's
client adds over the least a Python client does: the next place to look for
latency at concurrency 1 (``bench/README.md``). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import (
    BENCH_DIR,
    HOST,
    Server,
    _loop_factory,
    find_corpus,
    free_port,
    load_corpus,
    running,
)
from rawclient import RawClient

from prefixgate.config import build_settings
from prefixgate.upstreams.http import Outgoing, UpstreamClient, send

PATH = "/v1/messages"


async def timed(post: Callable[[], Awaitable[None]], requests: int) -> tuple[float, float]:
    """(median wall ms, CPU ms per request) of ``requests`` posts in a row."""
    walls = []
    cpu = time.process_time()
    for _ in range(requests):
        start = time.perf_counter()
        await post()
        walls.append(time.perf_counter() - start)
    per = (time.process_time() - cpu) / requests
    return statistics.median(walls) * 1000, per * 1000


async def measure(base: str, body: bytes, headers: dict[str, str], args: Any) -> dict[str, Any]:
    config = build_settings({}, {}, {"upstream": base}).route("m")
    assert config is not None
    upstream = config[0]
    bare = RawClient(base)
    gateway = UpstreamClient()
    async with gateway.opened():

        async def through_gateway() -> None:
            response = await send(gateway, upstream, Outgoing(PATH, body, headers))
            async for _ in response.aiter_bytes():
                pass
            await response.aclose()

        async def through_bare() -> None:
            await bare.post(PATH, headers, body)

        clients = {"gateway": through_gateway, "bare": through_bare}
        for post in clients.values():  # warm-up: connections open, caches filled
            await timed(post, 100)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, post in clients.items():
                runs[name].append(await timed(post, args.requests))
    await bare.aclose()
    return {
        name: {
            "wall_ms": statistics.median(w for w, _ in found),
            "cpu_ms": statistics.median(c for _, c in found),
        }
        for name, found in runs.items()
    }


def render(results: dict[str, dict[str, float]]) -> Table:
    table = Table(title="One post of the corpus body to the stub, read to its end (medians)")
    table.add_column("client")
    table.add_column("wall ms", justify="right")
    table.add_column("CPU ms", justify="right")
    for name, row in results.items():
        table.add_row(name, f"{row['wall_ms']:.3f}", f"{row['cpu_ms']:.3f}")
    gap = results["gateway"]["cpu_ms"] - results["bare"]["cpu_ms"]
    table.caption = f"the gateway's client adds {gap:.3f} ms of CPU a request"
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500, help="per client and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", default=None)
    args = parser.parse_args(argv)
    item = load_corpus(find_corpus(args.corpus))[0]
    headers = {k.lower(): v for k, v in item.headers.items()}
    port = free_port()
    command = [sys.executable, str(BENCH_DIR / "stub_upstream.py"), "--host", HOST]
    command += ["--port", str(port)]
    base = f"http://{HOST}:{port}"
    with (
        running(Server("stub", command, f"{base}/healthz")),
        asyncio.Runner(loop_factory=_loop_factory()) as runner,  # uvloop, as the gateway
    ):
        results = runner.run(measure(base, item.body, headers, args))
    Console().print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
