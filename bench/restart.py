"""The first request after a runtime restart: cold, and with its saved prefix restored.

    python bench/restart.py [--corpus FILE ...] [--out results.json]

For each corpus, the first main-agent request as Claude Code recorded it (full
size, ``max_tokens`` 1, not streamed), through prefixgate in front of the
bundled llama-server with saved prefixes (``app/saved.py``), in one run:

1. the runtime restarted cold; the request, cold: what a restart costs today;
2. the gateway saves the request's prefix (system prompt and tools) in the
   background: its tokens, size and time;
3. gateway and runtime restarted, the saved prefix still on disk; the same
   request again: the gateway restores the prefix into an idle slot first.

Printed per corpus: the prompt, the saved prefix, the tokens llama-server
reports as cached (``cache_read_input_tokens``, from ``timings.cache_n``) and the
wall time of the cold request and of the restored one, and the share of the
saved prefix served. Tokens are what counts; times on a shared machine are one
run each. It never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from prefixgate.app.gateway import create_app
from prefixgate.app.saved import SavedPrefixes
from prefixgate.config import Settings
from prefixgate.replay import load_capture
from prefixgate.runtime.local import LocalRuntime, default_spec
from prefixgate.runtime.prefixes import PrefixStore
from prefixgate.store.audit import MemoryAudit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_router import serving  # a sibling script, not a package

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ("claude-code-2.1.197.jsonl", "claude-code-2.1.332.jsonl")
CAP = 4 * 2**30
SESSION = "5a7e0000-0000-4000-8000-00000000beef"


def first_request(corpus: Path) -> dict[str, Any]:
    record = next(r for r in load_capture(corpus) if r.agent == "main")
    body: dict[str, Any] = json.loads(record.body)
    body.update(max_tokens=1, stream=False)
    return body


@contextmanager
def gateway(runtime: LocalRuntime, store: PrefixStore) -> Iterator[tuple[str, SavedPrefixes]]:
    spec = runtime.spec
    settings = Settings().with_upstream(runtime.base_url, cache={"cache_slots": spec.slots})
    prefixes = SavedPrefixes(runtime.base_url, store, spec.model, runtime)
    app = create_app(settings, audit=MemoryAudit(), prefixes=prefixes)
    with serving(app) as url:
        yield url, prefixes


def send(url: str, body: dict[str, Any]) -> tuple[int, int, float]:
    """(prompt tokens, cached tokens, seconds) of one request."""
    started = time.perf_counter()
    response = httpx.post(
        f"{url}/v1/messages",
        json=body,
        headers={"x-claude-code-session-id": SESSION},
        timeout=1800.0,
        trust_env=False,
    )
    seconds = time.perf_counter() - started
    response.raise_for_status()
    usage = response.json()["usage"]
    cached = int(usage.get("cache_read_input_tokens") or 0)
    return int(usage["input_tokens"]) + cached, cached, seconds


def measure(corpus: Path, runtime: LocalRuntime, store: PrefixStore) -> dict[str, Any]:
    body = first_request(corpus)
    for entry in store.entries():
        store.forget(entry.name)
    runtime.restart()
    with gateway(runtime, store) as (url, prefixes):
        prompt, cold_cached, cold_s = send(url, body)
        started = time.perf_counter()
        while prefixes.counts.saves + prefixes.counts.save_failures < 1:
            if time.perf_counter() - started > 1800:
                raise RuntimeError("the prefix was not saved in 30 min")
            time.sleep(0.1)
        save_s = time.perf_counter() - started
    entries = store.entries()
    if not entries:
        raise RuntimeError(f"{corpus.name}: the prefix could not be saved (see the log)")
    saved = entries[0]
    runtime.restart()
    with gateway(runtime, store) as (url, prefixes):
        _, cached, restored_s = send(url, body)
        restored = prefixes.counts.restored_tokens
    return {
        "corpus": corpus.name,
        "prompt_tokens": prompt,
        "saved_tokens": saved.tokens,
        "saved_bytes": saved.size,
        "save_seconds": round(save_s, 2),
        "cold_cached": cold_cached,
        "cold_seconds": round(cold_s, 2),
        "restored_tokens": restored,
        "restored_cached": cached,
        "restored_seconds": round(restored_s, 2),
        "share_of_saved": round(cached / saved.tokens, 4) if saved.tokens else None,
    }


def render(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="first request after a runtime restart (bundled llama-server)")
    for name in ("corpus", "prompt", "saved prefix", "cold: cached, s", "restored: cached, s"):
        table.add_column(name, justify="left" if name == "corpus" else "right")
    table.add_column("of the saved prefix", justify="right")
    for r in rows:
        share = r["share_of_saved"]
        table.add_row(
            r["corpus"].removeprefix("claude-code-").removesuffix(".jsonl"),
            f"{r['prompt_tokens']:,}",
            f"{r['saved_tokens']:,} ({r['saved_bytes'] / 2**20:.0f} MiB)",
            f"{r['cold_cached']:,}, {r['cold_seconds']:.1f} s",
            f"{r['restored_cached']:,}, {r['restored_seconds']:.1f} s",
            "-" if share is None else f"{share:.1%}",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", type=Path, help="recorded .jsonl file")
    parser.add_argument("--out", type=Path, help="JSON results file")
    args = parser.parse_args(argv)
    corpora = args.corpus or [ROOT / "corpus" / name for name in CORPORA]
    console = Console(width=None if sys.stdout.isatty() else 120)
    rows = []
    with tempfile.TemporaryDirectory(prefix="prefixgate-restart-") as folder:
        spec = default_spec(slot_save_path=Path(folder))
        with LocalRuntime(spec) as runtime:
            store = PrefixStore(Path(folder), CAP)
            for corpus in corpora:
                console.print(f"[bold]{corpus.name}[/]")
                rows.append(measure(corpus, runtime, store))
                console.print(rows[-1])
    console.print(render(rows))
    out = args.out or ROOT / "bench" / "results" / f"restart-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"slots": spec.slots, "rows": rows}, indent=2) + "\n")
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
