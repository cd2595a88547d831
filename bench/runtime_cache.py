"""Which llama-server settings keep more of the prefix for Claude Code traffic?

    python bench/runtime_cache.py [--corpus FILE] [--slice SPEC] [--full]
                                  [--only NAME ...] [--out results.json]

Replays one recorded corpus (shrunk with ``prefixgate.corpusmix.shrink`` unless
``--full``, so a run takes minutes on 2 cores) through ``prefixgate serve
--policy strip`` to the bundled llama-server, once per configuration below,
each on a freshly started runtime, one after another in the same run. It prints,
per configuration, the prompt tokens of all requests, the tokens the runtime
reported as cached (``cache_read_input_tokens``, from llama-server's
``timings.cache_n``) and their share, plus each request's cached/prompt. Token
counts are what matters: timings on a shared machine are noise. It never asserts
anything; docs/runtime-cache.md explains the results.

The configurations (``BASE``: ``--swa-full``, one slot, llama-server's default
``--cache-ram 8192``; the bundled runtime was this until it took two kept slots,
the "2 slots, unified, kept" row):

  one slot                  BASE
  no RAM cache              ``--cache-ram 0``
  RAM cache 32 MiB          ``--cache-ram 32`` (a few entries only)
  cache-reuse 256           ``--cache-reuse 256``
  SWA + checkpoints         no ``--swa-full``: llama.cpp's context checkpoints
                            (``--ctx-checkpoints 32 -cms 8192``, its defaults)
  SWA + dense checkpoints   no ``--swa-full``, ``--ctx-checkpoints 64 -cms 256``
  2 slots, unified KV       ``-np 2 --kv-unified`` (idle slots go to the RAM cache)
  2 slots, unified, kept    ``-np 2 --kv-unified --no-cache-idle-slots``
  4 slots, unified, kept    ``-np 4 --kv-unified --no-cache-idle-slots``
  2 slots, own KV           ``-np 2 --no-kv-unified``, each slot its own half of
                            ``--ctx-size``
  4 slots, own KV           ``-np 4 --no-kv-unified``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

import prefixgate.runtime.local as local
from prefixgate.corpusmix import shrink
from prefixgate.demo import ManagedProcess, free_port, gateway_command, replay_with_progress
from prefixgate.replay import CaptureRecord, load_capture, select
from prefixgate.runtime.local import LocalRuntime, default_spec

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "claude-code-2.1.332-interactive.jsonl"
#: context per slot: enough for a shrunk request (a full 2.1.197 one is ~20,000 tokens)
SLOT_CTX = 8192


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    slots: int = 1
    ctx_size: int = 2 * SLOT_CTX
    cache_ram_mib: int | None = None
    swa_full: bool = True
    args: tuple[str, ...] = ()


#: llama-server's own defaults for several slots, which ``local.build_command`` turns off
_OWN_KV = ("--no-kv-unified", "--cache-idle-slots")

CONFIGS = [
    Config("one slot"),
    Config("no RAM cache", cache_ram_mib=0),
    Config("RAM cache 32 MiB", cache_ram_mib=32),
    Config("cache-reuse 256", args=("--cache-reuse", "256")),
    Config("SWA + checkpoints", swa_full=False),
    Config(
        "SWA + dense checkpoints",
        swa_full=False,
        args=("--ctx-checkpoints", "64", "--checkpoint-min-step", "256"),
    ),
    Config(
        "2 slots, unified KV",
        slots=2,
        ctx_size=4 * SLOT_CTX,
        args=("--kv-unified", "--cache-idle-slots"),
    ),
    Config(
        "2 slots, unified, kept",
        slots=2,
        ctx_size=4 * SLOT_CTX,
        args=("--kv-unified", "--no-cache-idle-slots"),
    ),
    Config(
        "4 slots, unified, kept",
        slots=4,
        ctx_size=4 * SLOT_CTX,
        args=("--kv-unified", "--no-cache-idle-slots"),
    ),
    Config("2 slots, own KV", slots=2, ctx_size=2 * 2 * SLOT_CTX, args=_OWN_KV),
    Config("4 slots, own KV", slots=4, ctx_size=4 * SLOT_CTX, args=_OWN_KV),
]


@contextlib.contextmanager
def swa_full(enabled: bool) -> Iterator[None]:
    """Start runtimes with or without ``--swa-full`` (the spec always adds it)."""
    if enabled:
        yield
        return
    original = local.build_command

    def without(spec: local.LocalRuntimeSpec, port: int) -> list[str]:
        return [arg for arg in original(spec, port) if arg != "--swa-full"]

    local.build_command = without
    try:
        yield
    finally:
        local.build_command = original


def run(console: Console, config: Config, corpus_file: Path) -> dict[str, Any]:
    spec = default_spec(
        slots=config.slots,
        ctx_size=config.ctx_size,
        cache_ram_mib=config.cache_ram_mib,
        extra_args=config.args,
    )
    records = load_capture(corpus_file)
    with swa_full(config.swa_full), LocalRuntime(spec) as runtime:
        command = [*local.build_command(runtime.active_spec, runtime.port)][1:]
        port = free_port()
        gateway = gateway_command(runtime.base_url, port, "--audit", "memory", "--policy", "strip")
        with ManagedProcess("prefixgate", gateway, f"http://127.0.0.1:{port}/healthz"):
            started = time.perf_counter()
            results = replay_with_progress(
                console, config.name, records, f"http://127.0.0.1:{port}"
            )
            seconds = time.perf_counter() - started
            counted = gateway_counts(f"http://127.0.0.1:{port}/metrics", len(records))
    rows = [
        {
            "index": record.index,
            "agent": record.agent,
            "prompt": result.prompt_tokens or 0,
            "cached": result.cached_tokens or 0,
            "error": result.error,
        }
        for record, result in zip(records, results, strict=True)
    ]
    return {
        "name": config.name,
        "config": dataclasses.asdict(config),
        "command": command,
        "seconds": seconds,
        "oracle": counted.get("oracle"),
        "lost": {k[5:]: v for k, v in counted.items() if k.startswith("lost:")},
        "requests": rows,
    }


_SAMPLE = re.compile(r"^(prefixgate_[a-z_]+)(\{[^}]*\})?\s+(\S+)$", re.M)


def gateway_counts(url: str, requests: int) -> dict[str, int]:
    """The gateway's own oracle and lost tokens by cause (``/metrics``), once it
    has recorded all ``requests`` (the records are written after the answers)."""
    counted: dict[str, int] = {}
    for _ in range(50):
        text = httpx.get(url, timeout=10.0, trust_env=False).text
        counted = {}
        seen = 0
        for name, labels, value in _SAMPLE.findall(text):
            if name == "prefixgate_requests_total":
                seen += int(float(value))
            elif name == "prefixgate_oracle_cached_tokens_total":
                counted["oracle"] = counted.get("oracle", 0) + int(float(value))
            elif name == "prefixgate_lost_tokens_total":
                cause = re.search(r'cause="([^"]*)"', labels or "")
                key = f"lost:{cause.group(1) if cause else '?'}"
                counted[key] = counted.get(key, 0) + int(float(value))
        if seen >= requests:
            break
        time.sleep(0.2)
    return counted


def totals(rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
    return sum(r["prompt"] for r in rows), sum(r["cached"] for r in rows)


def corpus_lines(corpus: Path, full: bool, spec: str | None) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in corpus.open(encoding="utf-8") if x.strip()]
    if spec:
        wanted = {r.index for r in select(load_lines(lines), spec)}
        lines = [line for i, line in enumerate(lines) if i in wanted]
    return lines if full else [shrink(x) for x in lines]


def load_lines(lines: Sequence[dict[str, Any]]) -> list[CaptureRecord]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lines.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
        return load_capture(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--slice", help="request indices such as 0-3,12 (default: all)")
    parser.add_argument("--full", action="store_true", help="replay the requests unshrunk")
    parser.add_argument("--only", action="append", help="run only this configuration")
    parser.add_argument(
        "--ctx-size", type=int, help="every configuration's --ctx-size (all slots together)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    lines = corpus_lines(args.corpus, args.full, args.slice)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus_file = Path(tmp) / args.corpus.name
        corpus_file.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
        agents = " ".join(r.agent or "?" for r in load_capture(corpus_file))
        console.print(f"{args.corpus.name}: {len(lines)} requests, agents in order: {agents}")
        for config in CONFIGS:
            if args.only and config.name not in args.only:
                continue
            if args.ctx_size:
                config = dataclasses.replace(config, ctx_size=args.ctx_size)
            runs.append(run(console, config, corpus_file))
            r = runs[-1]
            prompt, cached = totals(r["requests"])
            console.print(f"{r['name']}: {cached:,}/{prompt:,} cached ({r['seconds']:.0f} s)")
    columns = ["configuration", "prompt tokens", "cached", "share", "oracle", "of oracle"]
    table = Table(*columns, "lost by cause", "errors")
    for r in runs:
        prompt, cached = totals(r["requests"])
        errors = sum(1 for x in r["requests"] if x["error"])
        share = f"{cached / prompt:.1%}" if prompt else "-"
        oracle = r.get("oracle")
        reached = f"{cached / oracle:.1%}" if oracle else "-"
        lost = " ".join(f"{k} {v:,}" for k, v in sorted(r.get("lost", {}).items()) if v)
        row = [r["name"], f"{prompt:,}", f"{cached:,}", share, f"{oracle or 0:,}", reached]
        table.add_row(*row, lost or "-", str(errors))
    console.print(table)
    for r in runs:
        per = " ".join(f"{x['cached']}/{x['prompt']}" for x in r["requests"])
        console.print(f"[dim]{r['name']}: {per}[/dim]")
    out = args.out or Path(__file__).parent / "results" / f"runtime-cache-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"corpus": str(args.corpus), "shrunk": not args.full, "runs": runs}
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
