"""Many interleaved sessions over 1, 2 and 4 llama-server replicas, per routing policy.

    python bench/scale.py [--sessions 16] [--replicas 1,2,4]
                          [--policies prefix_affinity,round_robin,least_busy]
                          [--router smg --smg PATH]
                          [--slots 2] [--slot-ctx 8192] [--concurrency 2] [--seed 0]
                          [--out results.json]

The corpus is generated from the recorded one (``prefixgate.corpusmix``): every
recorded session (main conversations, a subagent, title side requests) copied
under new session ids until there are ``--sessions`` of them, each shrunk to a
few thousand tokens so the runs fit 2 cores, then interleaved by a seeded
random choice that keeps each session's own order.

Per run, each replica is a fresh bundled llama-server (``-np --slots``, an empty
cache) and one prefixgate (``urls`` = the replicas, ``routing`` = POLICY) sits in front;
``--concurrency`` clients replay the stream, never two requests of one session
at once. With one replica every policy is the same, so it runs once.

Reported per run, from the gateway's audit log: the share of prompt tokens
served from cache (actual), the share an ideal prefix cache would have served
(expected), and the load of the busiest replica relative to the mean, in
requests and in prompt tokens it had to compute (not from cache). The
replicas' own ``/metrics`` (tokens computed, tokens from cache) are summed as
an independent check, and give the cached share of each replica.

``--router smg`` adds, for each replica count above one, two ways through SGLang's
model gateway (``smg launch``, default backend, the replicas as its workers) in
front of the same replicas, restarted cold as for every run:

``smg consistent_hashing, prefix key``  prefixgate (one upstream, kind anthropic,
    ``url`` = smg) hands the stable prefix key as ``X-SMG-Routing-Key``; smg hashes
    it onto a replica
``smg cache_aware, no key``  prefixgate hands no key; smg places each request by
    its own prefix matching of the prompt text (what the router alone does)

smg routes by model name and takes each llama-server's model name from its GGUF
path, so every model the corpus asks for is passed as ``--model-alias``.
Behind smg the audit log cannot say which replica answered: the split of
requests comes from smg's own ``/metrics``, that of tokens from the replicas'.
smg is not a dependency of prefixgate: install it into a virtual environment
of its own (``python -m venv /tmp/smg && /tmp/smg/bin/pip install smg``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from prefixgate.corpusmix import mixed_corpus
from prefixgate.demo import ManagedProcess, free_port, gateway_command
from prefixgate.replay import CaptureRecord, load_capture, replay_one
from prefixgate.runtime.local import LocalRuntime, default_spec
from prefixgate.store.sqlite import read_records

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
SOURCES = ("claude-code-2.1.197.jsonl", "claude-code-2.1.197-interactive.jsonl")


@dataclass(frozen=True)
class Way:
    """How the gateway reaches the replicas: its own ``routing`` over all of them,
    or one upstream at smg running ``router_policy``, handed the prefix key or not."""

    name: str
    routing: str = "prefix_affinity"
    router_policy: str | None = None
    key: bool = False


SMG_WAYS = (
    Way("smg consistent_hashing, prefix key", router_policy="consistent_hashing", key=True),
    Way("smg cache_aware, no key", router_policy="cache_aware"),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--policies", default="prefix_affinity,round_robin,least_busy")
    parser.add_argument("--router", choices=("none", "smg"), default="none")
    parser.add_argument("--smg", default=shutil.which("smg") or "smg", help="the smg executable")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--slot-ctx", type=int, default=8192)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def make_corpus(args: argparse.Namespace, path: Path) -> list[CaptureRecord]:
    lines = []
    for name in SOURCES:
        with (args.corpus / name).open(encoding="utf-8") as f:
            lines += [json.loads(x) for x in f if x.strip()]
    mixed = mixed_corpus(lines, args.sessions, seed=args.seed)
    path.write_text("".join(json.dumps(x) + "\n" for x in mixed), encoding="utf-8")
    return load_capture(path)


async def replay_all(records: Sequence[CaptureRecord], url: str, concurrency: int) -> float:
    """Replay with ``concurrency`` clients, one request per session at a time, in order."""
    pending = list(records)
    busy: set[str] = set()
    wake = asyncio.Condition()
    started = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            async with wake:
                while True:
                    if not pending:
                        return
                    pick = next((r for r in pending if r.session not in busy), None)
                    # the first request of each session not in flight, in stream order
                    if pick is not None and all(
                        p.session != pick.session for p in pending[: pending.index(pick)]
                    ):
                        break
                    await wake.wait()
                pending.remove(pick)
                busy.add(pick.session)
            try:
                await replay_one(pick, url, client=client)
            finally:
                async with wake:
                    busy.discard(pick.session)
                    wake.notify_all()

    timeout = httpx.Timeout(600.0, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return time.perf_counter() - started


def runtime_counters(url: str) -> tuple[int, int]:
    text = httpx.get(url + "/metrics", timeout=10.0).text
    values = {}
    for line in text.splitlines():
        if line.startswith("llamacpp:prompt_tokens"):
            name, value = line.split()[:2]
            values[name] = int(float(value))
    # llama-server counts the tokens it computed and those it took from cache apart
    computed = values.get("llamacpp:prompt_tokens_total", 0)
    return computed, values.get("llamacpp:prompt_tokens_cached_total", 0)


def gateway_config(way: Way, urls: Sequence[str], router_url: str | None) -> str:
    """The gateway's config: one upstream, ``local``, at the replicas or at the router."""
    if router_url is None:
        return (
            "[upstreams.local]\n"
            f"urls = {json.dumps(list(urls))}\n"
            f'routing = "{way.routing}"\n'
            'policy = "strip"\n'
        )
    text = f'[upstreams.local]\nurl = "{router_url}"\nkind = "anthropic"\npolicy = "strip"\n'
    if way.key:
        text += 'affinity_headers = { prefix = "X-SMG-Routing-Key", session = "x-session-id" }\n'
    return text


def smg_command(
    smg: str, way: Way, port: int, metrics_port: int, runtimes: Sequence[LocalRuntime],
    models: Sequence[str],
) -> list[str]:  # fmt: skip
    """smg in front of ``runtimes``; each of ``models`` an alias of their model."""
    command = [smg, "launch", "--host", "127.0.0.1", "--port", str(port), "--worker-urls"]
    command += [r.base_url for r in runtimes]
    command += ["--policy", str(way.router_policy)]
    canonical = str(runtimes[0].active_spec.model)  # llama-server's model id: the GGUF path
    for model in sorted(set(models)):
        command += ["--model-alias", f"{model}={canonical}"]
    command += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port)]
    return command


# smg's counts of its policies' decisions, by branch
BRANCHES = (
    "smg_consistent_hashing_policy_branch_total{",
    "smg_cache_aware_policy_branch_total{",
)


def router_counts(text: str, urls: Sequence[str]) -> tuple[list[int], dict[str, float]]:
    """From smg's ``/metrics``: the requests it sent each worker (in the order of
    ``urls``; its ``smg_worker_requests_total``) and its consistent-hashing
    and cache-aware decisions by branch."""
    per_worker = dict.fromkeys(urls, 0.0)
    branches: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(BRANCHES):
            branch = line.split('branch="', 1)[1].split('"', 1)[0]
            branches[branch] = branches.get(branch, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("smg_worker_requests_total{"):
            worker = line.split('worker="', 1)[1].split('"', 1)[0]
            if worker in per_worker:
                per_worker[worker] += float(line.rsplit(" ", 1)[1])
    return [int(per_worker[u]) for u in urls], branches


def run(
    console: Console,
    records: Sequence[CaptureRecord],
    runtimes: Sequence[LocalRuntime],
    way: Way,
    concurrency: int,
    smg: str = "smg",
) -> dict[str, Any]:
    for runtime in runtimes:
        runtime.restart()  # an empty cache for every run
    urls = [r.base_url for r in runtimes]
    router: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        router_url = metrics_url = None
        if way.router_policy is not None:
            router_port, metrics_port = free_port(), free_port()
            router_url = f"http://127.0.0.1:{router_port}"
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            models = [r.model for r in records if r.model]
            router = smg_command(smg, way, router_port, metrics_port, runtimes, models)
            stack.enter_context(
                ManagedProcess("smg", router, f"{router_url}/health", startup_timeout=60)
            )
        db = Path(tmp) / "audit.db"
        config = Path(tmp) / "gateway.toml"
        config.write_text(gateway_config(way, urls, router_url))
        port = free_port()
        command = [*gateway_command(urls[0], port, "--audit", str(db))]
        command = [c for c in command if c not in ("--upstream", urls[0])] + [
            "--config",
            str(config),
        ]
        with ManagedProcess("prefixgate", command, f"http://127.0.0.1:{port}/healthz"):
            console.print(
                f"[bold]{len(urls)} replica(s), {way.name}[/bold]: {len(records)} requests"
            )
            seconds = asyncio.run(replay_all(records, f"http://127.0.0.1:{port}", concurrency))
            deadline = time.monotonic() + 30
            while len(read_records(db)) < len(records) and time.monotonic() < deadline:
                time.sleep(0.2)  # expected counts are finished off the request path
        audited = read_records(db)
        routed = None
        if metrics_url is not None:
            routed = router_counts(httpx.get(metrics_url, timeout=10.0).text, urls)
    counters = [runtime_counters(u) for u in urls]
    result = summarize(way.name, urls, audited, counters, seconds, routed)
    if router:
        result["router_command"] = " ".join(router)
    return result


def summarize(
    policy: str,
    urls: Sequence[str],
    audited: Sequence[Any],
    counters: Sequence[tuple[int, int]],
    seconds: float,
    routed: tuple[list[int], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """One run's numbers. ``routed``: smg's requests per replica and branch counts,
    when smg placed the requests (the audit log then names smg, not a replica)."""
    ok = [r for r in audited if r.status == 200 and not r.error]
    prompt = sum(r.prompt_tokens or 0 for r in ok)
    cached = sum(r.cached_tokens or 0 for r in ok)
    expected = sum(r.expected_cached_tokens or 0 for r in ok)
    on_one: int | None = None
    if routed is None:
        by_replica = {u: [r for r in ok if (r.replica or urls[0]) == u] for u in urls}
        requests = [len(v) for v in by_replica.values()]
        work = [
            sum((r.prompt_tokens or 0) - (r.cached_tokens or 0) for r in v)
            for v in by_replica.values()
        ]
        placed: dict[tuple[str, str], set[str]] = {}
        for r in ok:
            placed.setdefault((r.session or "", r.agent or ""), set()).add(r.replica or urls[0])
        on_one = sum(len(v) == 1 for v in placed.values())
    else:
        requests = list(routed[0])
        work = [c[0] for c in counters]  # behind smg: the tokens each replica computed
    return {
        "replicas": len(urls),
        "policy": policy,
        "requests": len(audited),
        "errors": len(audited) - len(ok),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "expected_cached_tokens": expected,
        "cached_share": cached / prompt if prompt else 0.0,
        "expected_share": expected / prompt if prompt else 0.0,
        "requests_per_replica": requests,
        "computed_tokens_per_replica": work,
        "busiest_requests": max(requests) / statistics.mean(requests) if any(requests) else 0.0,
        "busiest_computed": max(work) / statistics.mean(work) if any(work) else 0.0,
        "runtime_computed_tokens": sum(c[0] for c in counters),
        "runtime_cached_tokens": sum(c[1] for c in counters),
        "runtime_share_per_replica": [
            c[1] / (c[0] + c[1]) if c[0] + c[1] else 0.0 for c in counters
        ],
        "runtime_share": sum(c[1] for c in counters) / max(1, sum(c[0] + c[1] for c in counters)),
        "conversations_on_one_replica": on_one,
        "conversations": len({(r.session or "", r.agent or "") for r in ok}),
        "prefix_keys": len({r.key for r in ok}),
        "router_branches": routed[1] if routed is not None else {},
        "seconds": seconds,
        "failed": [
            {"session": r.session, "agent": r.agent, "status": r.status, "error": r.error}
            for r in audited
            if r not in ok
        ],
    }


def print_table(console: Console, runs: Sequence[dict[str, Any]]) -> None:
    table = Table(
        "replicas", "routing", "requests", "errors", "cached", "expected",
        "cached per replica (/metrics)", "conversations on 1 replica",
        "busiest/mean (requests)", "busiest/mean (computed tokens)", "replay s",
    )  # fmt: skip
    for r in runs:
        shares = r.get("runtime_share_per_replica", [])
        on_one = r.get("conversations_on_one_replica")
        table.add_row(
            str(r["replicas"]),
            r["policy"] if r["replicas"] > 1 else "(any)",
            str(r["requests"]),
            str(r["errors"]),
            f"{r['cached_share']:.1%}",
            f"{r['expected_share']:.1%}",
            " / ".join(f"{x:.1%}" for x in shares),
            f"{on_one}/{r['conversations']}" if on_one is not None else "(not seen)",
            f"{r['busiest_requests']:.2f}  {r['requests_per_replica']}",
            f"{r['busiest_computed']:.2f}",
            f"{r['seconds']:.1f}",
        )
    console.print(table)
    for r in runs:
        for failed in r.get("failed", []):
            console.print(f"[red]{r['replicas']} x {r['policy']}: failed {failed}[/red]")
        console.print(
            f"[dim]{r['replicas']} x {r['policy']}: the replicas' own /metrics say "
            f"{r['runtime_cached_tokens']:,} prompt tokens cached and "
            f"{r['runtime_computed_tokens']:,} computed; the audit log says "
            f"{r['cached_tokens']:,} of {r['prompt_tokens']:,} cached[/dim]"
        )
        if r.get("router_branches"):
            console.print(f"[dim]{r['policy']}: smg's branches {r['router_branches']}[/dim]")


def plan(counts: Sequence[int], policies: Sequence[str], router: str) -> list[tuple[int, Way]]:
    """(replicas, way) per run: one replica once, then each policy (and with
    ``router`` smg, each way through smg) per replica count above one."""
    out = [(1, Way(policies[0], policies[0]))] if 1 in counts else []
    for n in (n for n in counts if n > 1):
        out += [(n, Way(p, p)) for p in policies]
        out += [(n, way) for way in SMG_WAYS] if router == "smg" else []
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=170)
    counts = [int(x) for x in args.replicas.split(",")]
    policies = args.policies.split(",")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        records = make_corpus(args, Path(tmp) / "mixed.jsonl")
        sessions = len({r.session for r in records})
        console.print(f"{len(records)} requests in {sessions} sessions (seed {args.seed})")
        spec = default_spec(slots=args.slots, ctx_size=args.slot_ctx * args.slots)
        with contextlib.ExitStack() as stack:
            runtimes = [stack.enter_context(LocalRuntime(spec)) for _ in range(max(counts))]
            for count, way in plan(counts, policies, args.router):
                replicas = runtimes[:count]
                runs.append(run(console, records, replicas, way, args.concurrency, args.smg))
                print_table(console, runs[-1:])
    console.print()
    print_table(console, runs)
    out = args.out or Path(__file__).parent / "results" / f"scale-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out.write_text(json.dumps({"settings": settings, "runs": runs}, indent=2))
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
