"""Does pinning agents to llama-server slots keep the main conversation cached?

    python bench/slots.py [--out results.json]

Replays one interactive Claude Code session (title side requests and a
subagent between the main turns) and one ``claude -p`` session with a subagent,
both shrunk (``prefixgate.corpusmix.shrink``) so a run takes minutes on 2
cores, through ``prefixgate serve --policy strip`` to the bundled llama-server,
six ways, each on a freshly started runtime:

  1 slot, no RAM cache    ``-np 1 --cache-ram 0``
  1 slot, RAM cache       ``-np 1`` (llama-server's default ``--cache-ram 8192``)
  2 slots, its own choice ``-np 2``: llama-server picks the slot by prompt similarity
  2 slots, pinned         ``-np 2``, each request carrying llama.cpp's ``id_slot``:
                          the main conversation on slot 0, subagents and side
                          requests on slot 1

and the two 2-slot runs again with ``--cache-ram 0``. This is the measurement
that decided against pinning slots in the gateway: the runtime's own RAM
prompt cache and its own slot choice already give the pinned figure.
and prints the share of prompt tokens served from cache, the main agent's
share alone, and the replay time. It never asserts anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from prefixgate.corpusmix import sessions, shrink
from prefixgate.demo import ManagedProcess, free_port, gateway_command, replay_with_progress
from prefixgate.replay import CaptureRecord, load_capture
from prefixgate.runtime.local import LocalRuntime, default_spec

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CONFIGS: dict[str, dict[str, Any]] = {
    "1 slot, no RAM cache": {"slots": 1, "cache_ram_mib": 0, "pin": False},
    "1 slot, RAM cache": {"slots": 1, "cache_ram_mib": None, "pin": False},
    "2 slots, its own choice": {"slots": 2, "cache_ram_mib": None, "pin": False},
    "2 slots, pinned": {"slots": 2, "cache_ram_mib": None, "pin": True},
    "2 slots, no RAM cache, its own choice": {"slots": 2, "cache_ram_mib": 0, "pin": False},
    "2 slots, no RAM cache, pinned": {"slots": 2, "cache_ram_mib": 0, "pin": True},
}
SLOT_CTX = 8192


def corpus_lines(corpus: Path) -> list[dict[str, Any]]:
    interactive = [json.loads(x) for x in (corpus / "claude-code-2.1.197-interactive.jsonl").open()]
    recorded = [json.loads(x) for x in (corpus / "claude-code-2.1.197.jsonl").open()]
    first = sessions(shrink(x) for x in interactive)[0]
    with_subagent = sessions(shrink(x) for x in recorded)[1]
    return first + with_subagent


def run(console: Console, name: str, config: dict[str, Any], corpus_file: Path) -> dict[str, Any]:
    spec = default_spec(
        slots=config["slots"],
        ctx_size=SLOT_CTX * config["slots"],
        cache_ram_mib=config["cache_ram_mib"],
    )
    records = load_capture(corpus_file)
    if config["pin"]:
        records = [pinned(r) for r in records]
    with LocalRuntime(spec) as runtime:
        port = free_port()
        command = gateway_command(runtime.base_url, port, "--audit", "memory", "--policy", "strip")
        with ManagedProcess("prefixgate", command, f"http://127.0.0.1:{port}/healthz"):
            started = time.perf_counter()
            results = replay_with_progress(console, name, records, f"http://127.0.0.1:{port}")
            seconds = time.perf_counter() - started
    rows = []
    for record, result in zip(records, results, strict=True):
        rows.append(
            {
                "agent": record.agent,
                "prompt": result.prompt_tokens or 0,
                "cached": result.cached_tokens or 0,
                "seconds": result.seconds,
                "error": result.error,
            }
        )
    return {"name": name, "config": config, "seconds": seconds, "requests": rows}


def pinned(record: CaptureRecord) -> CaptureRecord:
    """The request with ``id_slot``: 0 for the main conversation, 1 for anything else."""
    body = json.loads(record.body)
    body["id_slot"] = 0 if record.agent == "main" else 1
    return dataclasses.replace(record, body=json.dumps(body).encode())


def share(rows: Sequence[dict[str, Any]], agent: str | None = None) -> float:
    chosen = [r for r in rows if agent is None or r["agent"] == agent]
    prompt = sum(r["prompt"] for r in chosen)
    return sum(r["cached"] for r in chosen) / prompt if prompt else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", action="append", help="run only this configuration")
    args = parser.parse_args(argv)
    console = Console()
    lines = corpus_lines(args.corpus)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus_file = Path(tmp) / "slots.jsonl"
        corpus_file.write_text("".join(json.dumps(x) + "\n" for x in lines))
        for name, config in CONFIGS.items():
            if args.only and name not in args.only:
                continue
            runs.append(run(console, name, config, corpus_file))
    agents = " ".join(r["agent"] for r in runs[0]["requests"]) if runs else ""
    console.print(f"{len(lines)} requests, agents in order: {agents}")
    table = Table("runtime", "cached, all", "cached, main", "errors", "replay s")
    for r in runs:
        errors = sum(1 for x in r["requests"] if x["error"])
        table.add_row(
            r["name"],
            f"{share(r['requests']):.1%}",
            f"{share(r['requests'], 'main'):.1%}",
            str(errors),
            f"{r['seconds']:.1f}",
        )
    console.print(table)
    for r in runs:
        per = " ".join(f"{x['cached']}/{x['prompt']}" for x in r["requests"])
        console.print(f"[dim]{r['name']}: {per}[/dim]")
    out = args.out or Path(__file__).parent / "results" / f"slots-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(runs, indent=2))
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
