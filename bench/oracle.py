"""Memory and time of the oracle and the runtime model (``core/oracle.py``) per request.

    python bench/oracle.py [--prompts 1000 10000] [--slots 4] [--cache-mib 8192]

Prompts are built from the shipped corpus's pieces (every ``corpus/*.jsonl``
request through the gateway's own rewrite): each synthetic session takes the
head of one recorded request (system prompt, tools, context: what sessions of
a project share), its recorded messages, then grows by two new messages a
turn; every fourth turn a subagent (the head of another recorded request, a
short task of its own) comes in between, and sessions interleave in pairs.
Each prompt is compared (``prompt_chain`` + ``ReachTracker.reach``) and then
remembered (``ReachTracker.remember``) as the gateway does, on one upstream
replica modelled with ``--slots`` slots and a RAM cache of ``--cache-mib`` MiB
(the bundled runtime's estimate per token).

Memory is what ``tracemalloc`` sees allocated by the tracker (the oracle's
prefixes, the slots and the RAM cache's index), the prompts themselves not
counted: the gateway holds them anyway while a request is under way. Times are
per request, the mean over all of them, on this machine; nothing is asserted.

A second table replays each corpus file in its recorded order as the observer
would (``identify``, ``CacheTracker``, ``ReachTracker``; tokens estimated at 4
characters each, no runtime involved) and prints the old expected (the
session's previous request or the upstream's last), the oracle and the runtime
expected (the bundled runtime's defaults; and what it serves if it restores
from its RAM cache only a prompt the new one extends exactly) as shares of the
prompt tokens.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import random
import time
import tracemalloc
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from prefixgate.core.identity import AgentLabeller, identify
from prefixgate.core.misses import CacheTracker, Owner, expected_tokens, prefix_tokens
from prefixgate.core.oracle import (
    DEFAULT_ORACLE_NODES,
    Capacity,
    ReachTracker,
    prompt_chain,
    ram_cache_tokens,
)
from prefixgate.core.pipeline import Rewrite, rewrite
from prefixgate.core.prompt import Piece, PromptView
from prefixgate.core.side import UNCACHED_KINDS
from prefixgate.upstreams.tokenize import estimate

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS = REPO_ROOT / "corpus"
TARGET = "local"


def corpus_requests(path: Path) -> list[tuple[dict[str, str], Rewrite]]:
    """The ``POST /v1/messages`` requests of one corpus file, headers and rewrite."""
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        where = str(record.get("path", ""))
        if not where.startswith("/v1/messages") or "count_tokens" in where:
            continue
        try:
            rw = rewrite(str(record["body"]).encode())
        except Exception:  # a body the pipeline refuses is no prompt to count
            continue
        headers = {k.lower(): str(v) for k, v in record.get("headers", {}).items()}
        found.append((headers, rw))
    return found


def corpus_views() -> list[PromptView]:
    """Every ``POST /v1/messages`` request of the shipped corpus, as the gateway sees it."""
    views = [rw.view for path in sorted(CORPUS.glob("*.jsonl")) for _, rw in corpus_requests(path)]
    if not views:
        raise SystemExit(f"no requests found in {CORPUS}")
    return views


def replay_corpus(path: Path, capacity: Capacity) -> dict[str, Any]:
    """One corpus file in recorded order: old expected, oracle and runtime expected tokens."""
    tracker, reach_tracker, labeller = CacheTracker(), ReachTracker(), AgentLabeller()
    prompt = old = oracle = runtime = exact = 0
    for headers, rw in corpus_requests(path):
        who = identify(headers, "/v1/messages", rw, "bench", labeller)
        owner = Owner("bench", who.session, who.agent)
        view = rw.view
        cmp = tracker.compare(TARGET, owner, view)
        chain = prompt_chain(view)
        floor = max(cmp.session_common, cmp.upstream_common)
        reach = reach_tracker.reach(TARGET, chain, capacity, floor=floor)
        tokens = {p.digest: estimate(p.text) for p in view.pieces}
        total = sum(tokens[p.digest] for p in view.pieces)
        prompt += total
        old += expected_tokens(view, cmp, tokens, None)
        oracle += prefix_tokens(view, reach.oracle, tokens, None)
        runtime += prefix_tokens(view, reach.expected, tokens, None)
        exact += prefix_tokens(view, reach.exact, tokens, None)
        if who.kind not in UNCACHED_KINDS:
            tracker.remember(TARGET, owner, view)
            reach_tracker.remember(TARGET, chain, total, capacity)
    return {
        "corpus": path.name,
        "prompt": prompt,
        "old": old,
        "oracle": oracle,
        "runtime": runtime,
        "exact_restores_only": exact,
    }


def message(session: int, index: int, words: int = 60) -> Piece:
    """A new message piece: unique to its session and place, about ``words`` words long."""
    text = f"session {session} message {index} " + "lorem ipsum " * words
    return Piece("messages", f"messages[{index}]", hashlib.sha256(text.encode()).hexdigest(), text)


def synthetic(
    views: list[PromptView], count: int, seed: int = 1, turns: tuple[int, int] = (6, 20)
) -> list[PromptView]:
    """``count`` prompts: sessions grown from recorded requests, subagents between turns."""
    rng = random.Random(seed)
    out: list[PromptView] = []
    session = 0
    while len(out) < count:
        pair = []
        for _ in range(2):  # two sessions interleave
            base = rng.choice(views)
            head = [p for p in base.pieces if p.section != "messages"]
            recorded = [p for p in base.pieces if p.section == "messages"]
            pair.append((session, base.model, head + recorded, len(recorded)))
            session += 1
        for turn in range(rng.randint(*turns)):
            for sid, model, pieces, start in pair:
                grown = pieces + [message(sid, start + i) for i in range(2 * turn + 1)]
                out.append(PromptView(model, tuple(grown)))
                if turn % 4 == 3:  # a subagent: another head, a task of its own
                    other = rng.choice(views)
                    sub = [p for p in other.pieces if p.section != "messages"]
                    task = [message(sid * 1000 + turn, 0, words=30)]
                    out.append(PromptView(other.model, tuple(sub + task)))
    return out[:count]


def distinct(prompts: list[PromptView]) -> list[PromptView]:
    """The worst case for memory: each prompt shares nothing with any other."""
    return [
        PromptView(v.model, (message(-1 - i, 0, words=1), *v.pieces)) for i, v in enumerate(prompts)
    ]


def timed(
    prompts: list[PromptView], weights: list[int], capacity: Capacity, max_nodes: int
) -> tuple[float, float, float, int, int, int]:
    """One pass: seconds in chain, reach, remember; pieces of oracle and expected; prefixes."""
    tracker = ReachTracker(max_nodes=max_nodes)
    chain_s = reach_s = remember_s = 0.0
    oracle_pieces = expected_pieces = 0
    gc.collect()
    for view, tokens in zip(prompts, weights, strict=True):
        t0 = time.perf_counter()
        chain = prompt_chain(view)
        t1 = time.perf_counter()
        reach = tracker.reach(TARGET, chain, capacity)
        t2 = time.perf_counter()
        tracker.remember(TARGET, chain, tokens, capacity)
        t3 = time.perf_counter()
        chain_s, reach_s, remember_s = chain_s + t1 - t0, reach_s + t2 - t1, remember_s + t3 - t2
        oracle_pieces += reach.oracle
        expected_pieces += reach.expected
    return chain_s, reach_s, remember_s, oracle_pieces, expected_pieces, tracker.nodes(TARGET)


def run(
    prompts: list[PromptView], capacity: Capacity, max_nodes: int, repeat: int
) -> dict[str, float]:
    """Times: the best of ``repeat`` passes (each step on its own); memory over one more
    pass under ``tracemalloc`` (which slows allocation down, so it is kept out of
    the timed ones)."""
    weights = [sum(estimate(p.text) for p in v.pieces) for v in prompts]
    passes = [timed(prompts, weights, capacity, max_nodes) for _ in range(repeat)]
    chain_s, reach_s, remember_s = (min(p[i] for p in passes) for i in range(3))
    _, _, _, oracle_pieces, expected_pieces, nodes = passes[0]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracker = ReachTracker(max_nodes=max_nodes)
    for view, tokens in zip(prompts, weights, strict=True):
        chain = prompt_chain(view)
        tracker.reach(TARGET, chain, capacity)
        tracker.remember(TARGET, chain, tokens, capacity)
    del chain  # the gateway drops a request's chain once it is remembered
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    n = len(prompts)
    pieces = sum(len(v.pieces) for v in prompts)
    return {
        "prompts": n,
        "pieces": pieces / n,
        "nodes": nodes,
        "held_prompts": tracker.held_prompts(TARGET),
        "mb": held / 1e6,
        "chain_us": chain_s / n * 1e6,
        "reach_us": reach_s / n * 1e6,
        "remember_us": remember_s / n * 1e6,
        "oracle_share": oracle_pieces / max(1, pieces),
        "expected_share": expected_pieces / max(1, pieces),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--cache-mib", type=int, default=8192, help="RAM prompt cache, MiB")
    parser.add_argument("--max-nodes", type=int, default=DEFAULT_ORACLE_NODES)
    parser.add_argument("--repeat", type=int, default=3, help="timed passes (best kept)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    views = corpus_views()
    capacity = Capacity(slots=args.slots, tokens=ram_cache_tokens(args.cache_mib))
    rows: list[dict[str, Any]] = []
    for count in args.prompts:
        prompts = synthetic(views, count)
        long = synthetic(views, count, turns=(60, 120))
        batches = (
            ("sessions", prompts),
            ("all distinct", distinct(prompts)),
            ("long sessions", long),
        )
        for kind, batch in batches:
            rows.append({"kind": kind, **run(batch, capacity, args.max_nodes, args.repeat)})
    table = Table(
        title=f"Oracle and runtime model per request ({len(views)} corpus requests as seeds, "
        f"{capacity.slots} slots, RAM cache {capacity.tokens:,} tokens, "
        f"at most {args.max_nodes:,} prefixes)"
    )
    table.add_column("prompts built as")
    for name in ("prompts", "pieces / prompt", "prefixes held", "prompts in slots + RAM",
                 "memory MB", "chain µs", "reach µs", "remember µs", "total µs",
                 "oracle / expected (pieces)"):  # fmt: skip
        table.add_column(name, justify="right")
    for row in rows:
        total = row["chain_us"] + row["reach_us"] + row["remember_us"]
        table.add_row(
            str(row["kind"]),
            f"{row['prompts']:,.0f}",
            f"{row['pieces']:.0f}",
            f"{row['nodes']:,.0f}",
            f"{row['held_prompts']:,.0f}",
            f"{row['mb']:.1f}",
            f"{row['chain_us']:.1f}",
            f"{row['reach_us']:.1f}",
            f"{row['remember_us']:.1f}",
            f"{total:.1f}",
            f"{row['oracle_share']:.1%} / {row['expected_share']:.1%}",
        )
    console = Console(width=200)
    console.print(table)
    bundled = Capacity(slots=1, tokens=ram_cache_tokens(None))
    replayed = [replay_corpus(path, bundled) for path in sorted(CORPUS.glob("*.jsonl"))]
    shares = Table(
        title="Each corpus in recorded order, tokens estimated: shares of the prompt tokens "
        f"(runtime: the bundled runtime's defaults, 1 slot, RAM cache {bundled.tokens:,} tokens)"
    )
    columns = ("corpus", "prompt tokens", "old expected", "oracle", "runtime expected",
               "runtime, exact RAM restores only")  # fmt: skip
    for name in columns:
        shares.add_column(name, justify="right" if name != "corpus" else "left")
    for row in replayed:
        whole = max(1, row["prompt"])
        shares.add_row(
            row["corpus"],
            f"{row['prompt']:,}",
            f"{row['old'] / whole:.1%}",
            f"{row['oracle'] / whole:.1%}",
            f"{row['runtime'] / whole:.1%}",
            f"{row['exact_restores_only'] / whole:.1%}",
        )
    console.print(shares)
    if args.json:
        args.json.write_text(json.dumps({"bench": rows, "corpus": replayed}, indent=2) + "\n")


if __name__ == "__main__":
    main()
