"""Two gateway revisions at concurrency 1, request by request in turns.

    python bench/interleaved.py --a c8351a6 --b HEAD [--requests 3000] [--corpus FILE]

``overhead.py`` compares a gateway with the stub in one run; comparing two
gateway revisions takes alternated runs, and on a busy 2-core machine single
runs of the same code differ by up to 0.5 ms at concurrency 1. This script
runs one stub (``stub_upstream.py``) and a gateway for each revision
(``--a``/``--b``: a committed revision, exported as ``overhead.py
--gateway-rev`` does, or ``tree`` for the working tree), then sends the corpus
bodies one at a time: for each body, straight to the stub and through each
gateway, the two gateways' order swapped every time, so a slow moment of the
machine hits all three sides of the same body. Each gateway writes its audit to
SQLite with metrics on, as in ``overhead.py``.

It prints per side the median and 90th percentile of the whole answer's time,
the added median (gateway minus direct), and the median over bodies of the
difference B minus A: the figure to read, steadier than two medians apart.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import (
    BENCH_DIR,
    HOST,
    REQUEST_TIMEOUT_S,
    Item,
    Server,
    _loop_factory,
    find_corpus,
    free_port,
    gateway_code,
    load_corpus,
    quantile,
    running,
)
from rawclient import RawClient

WARMUP = 50  # bodies, to every side, not counted


def gateway(rev: str, stub: str, tmp: Path, name: str) -> tuple[Server, str]:
    """The gateway of ``rev`` (``tree``: the working tree) in front of ``stub``."""
    folder = tmp / name
    folder.mkdir()
    env, _ = gateway_code(None if rev == "tree" else rev, folder)
    port = free_port()
    command = [sys.executable, "-m", "prefixgate", "serve", "--upstream", stub]
    command += ["--host", HOST, "--port", str(port), "--log-level", "warning"]
    command += ["--audit", str(folder / "audit.db")]
    url = f"http://{HOST}:{port}"
    return Server(f"prefixgate-{name}", command, f"{url}/healthz", env), url


async def interleave(
    items: Sequence[Item], sides: dict[str, str], requests: int
) -> dict[str, list[float]]:
    """Total ms of each answer per side; ``sides`` maps direct, a and b to base URLs."""
    clients = {side: RawClient(url, REQUEST_TIMEOUT_S) for side, url in sides.items()}
    totals: dict[str, list[float]] = {side: [] for side in sides}
    try:
        for i in range(WARMUP + requests):
            item = items[i % len(items)]
            order = ("direct", "a", "b") if i % 2 == 0 else ("direct", "b", "a")
            for side in order:
                _, total, status, tail = await clients[side].post(
                    item.path, item.headers, item.body
                )
                if status != 200 or b"message_stop" not in tail:
                    raise RuntimeError(f"{side}: HTTP {status}, {tail[-200:]!r}")
                if i >= WARMUP:
                    totals[side].append(total)
    finally:
        for client in clients.values():
            await client.aclose()
    return totals


def render(totals: dict[str, list[float]], labels: dict[str, str]) -> Table:
    direct = statistics.median(totals["direct"])
    table = Table(title="c=1, one body at a time to each side in turns (ms, whole answer)")
    for column in ("side", "code", "requests", "p50", "p90", "added p50"):
        table.add_column(column, justify="left" if column in ("side", "code") else "right")
    for side in ("direct", "a", "b"):
        values = sorted(totals[side])
        p50 = quantile(values, 0.5)
        added = "" if side == "direct" else f"{p50 - direct:+.3f}"
        table.add_row(
            side,
            labels[side],
            str(len(values)),
            f"{p50:.3f}",
            f"{quantile(values, 0.9):.3f}",
            added,
        )
    return table


def paired(totals: dict[str, list[float]]) -> float:
    """The median over bodies of B minus A (ms)."""
    return statistics.median(b - a for a, b in zip(totals["a"], totals["b"], strict=True))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", default="HEAD", help="a revision, or tree (default HEAD)")
    parser.add_argument("--b", default="tree", help="a revision, or tree (default tree)")
    parser.add_argument("--requests", type=int, default=3000, help="bodies counted, per side")
    parser.add_argument("--corpus", help="capture file (else $PREFIXGATE_CORPUS)")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000:
        parser.error("--requests must be between 1 and 100000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    items = load_corpus(find_corpus(args.corpus))
    stub_port = free_port()
    stub_url = f"http://{HOST}:{stub_port}"
    stub_cmd = [sys.executable, str(BENCH_DIR / "stub_upstream.py"), "--host", HOST]
    stub = Server("stub", [*stub_cmd, "--port", str(stub_port)], f"{stub_url}/healthz")
    with tempfile.TemporaryDirectory(prefix="prefixgate-interleaved-") as folder:
        tmp = Path(folder)
        gateway_a, url_a = gateway(args.a, stub_url, tmp, "a")
        gateway_b, url_b = gateway(args.b, stub_url, tmp, "b")
        with running(stub), running(gateway_a), running(gateway_b):
            sides = {"direct": stub_url, "a": url_a, "b": url_b}
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                totals = runner.run(interleave(items, sides, args.requests))
    console = Console(width=120)
    console.print(render(totals, {"direct": "stub", "a": args.a, "b": args.b}))
    console.print(f"B minus A, median over the same bodies: {paired(totals):+.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
