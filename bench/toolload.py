"""What a tool loaded through ToolSearch costs the prefix cache, per ``tool_loads`` setting.

    python bench/toolload.py [--corpus FILE ...] [--modes as_sent,inline,inline_only]
                             [--openai] [--upstream URL] [--out results.json]

For every load in the recorded sessions (a request whose ToolSearch results
reference a tool the session's previous request did not), the previous request
and the one after the load are rewritten by prefixgate's pipeline (attribution
``strip``, the given ``tool_loads``) and sent, one after the other, to the
runtime with ``max_tokens: 1``. The table shows how many tokens of the request
after the load the runtime served from its cache (``cache_read_input_tokens``)
out of the previous request's prompt. With ``--openai`` the rewritten bodies are
translated as the ``openai`` upstream kind translates them and sent to the
runtime's ``/v1/chat/completions`` (``prompt_tokens_details.cached_tokens``).

The default upstream is the bundled runtime (llama-server, Gemma 3 270M, one
slot, ``--swa-full``, the packaged chat template), started once. Results are
printed as a table and written as JSON (default
``bench/results/toolload-<timestamp>.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from prefixgate.core.pipeline import RewriteOptions, rewrite
from prefixgate.core.toolload import REFERENCE_TYPE, ToolLoads
from prefixgate.translate.request import OpenAIRequestOptions, to_openai

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ("claude-code-2.1.332*.jsonl",)


@dataclass(frozen=True)
class Load:
    """Two consecutive requests of one session; ``after`` references newly loaded tools."""

    corpus: str
    session: str
    index: int  # of ``after`` among the session's requests
    tools: tuple[str, ...]
    before: bytes
    after: bytes


@dataclass(frozen=True)
class Row:
    corpus: str
    session: str
    index: int
    tools: str
    mode: str
    prompt_before: int
    prompt_after: int
    reused: int

    @property
    def share(self) -> float:
        return self.reused / self.prompt_before if self.prompt_before else 0.0


def references(body: dict[str, Any]) -> list[str]:
    """The tool names referenced by ToolSearch results in ``body``, in order."""
    names: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            inner = block.get("content") if isinstance(block, dict) else None
            for item in inner if isinstance(inner, list) else []:
                if isinstance(item, dict) and item.get("type") == REFERENCE_TYPE:
                    name = item.get("tool_name")
                    if isinstance(name, str) and name not in names:
                        names.append(name)
    return names


def session_of(record: dict[str, Any], body: dict[str, Any]) -> str:
    headers = {k.lower(): v for k, v in (record.get("headers") or {}).items()}
    if headers.get("x-claude-code-session-id"):
        return str(headers["x-claude-code-session-id"])
    user = (body.get("metadata") or {}).get("user_id", "")
    try:
        return str(json.loads(user).get("session_id", "-"))
    except (ValueError, AttributeError):
        return str(user or "-")


def find_loads(path: Path) -> list[Load]:
    """Every tool load in the capture file at ``path``."""
    sessions: dict[str, list[tuple[bytes, dict[str, Any]]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("method") != "POST" or "/v1/messages" not in record.get("path", ""):
            continue
        if "count_tokens" in record.get("path", ""):
            continue
        raw = str(record["body"]).encode("utf-8")
        body = json.loads(raw)
        if not body.get("tools"):
            continue  # side requests (titles, summaries) carry no tools
        agent = "sub" if "cc_is_subagent" in json.dumps(body.get("system")) else "main"
        sessions.setdefault(f"{session_of(record, body)} {agent}", []).append((raw, body))
    loads = []
    for session, requests in sessions.items():
        for n in range(1, len(requests)):
            (raw_a, a), (raw_b, b) = requests[n - 1], requests[n]
            new = [name for name in references(b) if name not in references(a)]
            appended = len(b["messages"]) > len(a["messages"])
            if new and appended:
                loads.append(Load(path.name, session, n, tuple(new), raw_a, raw_b))
    return loads


def probe_body(raw: bytes, mode: ToolLoads, openai: bool = False) -> bytes:
    """The body prefixgate forwards for ``raw`` under ``mode``, asking for one token."""
    rw = rewrite(raw, RewriteOptions(tool_loads=mode))
    parsed = dict(rw.parsed)
    parsed["max_tokens"] = 1
    parsed["stream"] = False
    if openai:
        loaded = rw.tool_loads.loaded if rw.tool_loads is not None else ()
        parsed = to_openai(parsed, OpenAIRequestOptions(loaded_tools=loaded)).body
    return json.dumps(parsed, ensure_ascii=False).encode("utf-8")


def send(client: httpx.Client, base: str, body: bytes, openai: bool = False) -> tuple[int, int]:
    """(prompt tokens, tokens served from cache) for one request."""
    path = "/v1/chat/completions" if openai else "/v1/messages"
    response = client.post(
        f"{base}{path}",
        content=body,
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
    )
    response.raise_for_status()
    usage = response.json()["usage"]
    if openai:
        details = usage.get("prompt_tokens_details") or {}
        return int(usage["prompt_tokens"]), int(details.get("cached_tokens") or 0)
    cached = int(usage.get("cache_read_input_tokens") or 0)
    return int(usage.get("input_tokens") or 0) + cached, cached


def measure(
    base: str, loads: Sequence[Load], modes: Sequence[ToolLoads], openai: bool = False
) -> list[Row]:
    rows = []
    with httpx.Client(timeout=1800.0) as client:
        for load in loads:
            for mode in modes:
                before = probe_body(load.before, mode, openai)
                after = probe_body(load.after, mode, openai)
                prompt_before, _ = send(client, base, before, openai)
                prompt_after, reused = send(client, base, after, openai)
                rows.append(
                    Row(
                        load.corpus,
                        load.session[:8],
                        load.index,
                        ",".join(load.tools),
                        mode.value + (" (openai)" if openai else ""),
                        prompt_before,
                        prompt_after,
                        reused,
                    )
                )
                print(rows[-1], file=sys.stderr, flush=True)
    return rows


@contextlib.contextmanager
def bundled_runtime() -> Iterator[str]:
    from prefixgate.runtime.local import LocalRuntime, default_spec

    with tempfile.TemporaryDirectory(prefix="toolload-") as tmp:
        runtime = LocalRuntime(default_spec(), log_path=Path(tmp) / "llama-server.log")
        runtime.start()
        try:
            yield runtime.base_url
        finally:
            runtime.stop()


def table(rows: Sequence[Row]) -> Table:
    out = Table(title="Tokens reused by the request after a ToolSearch load")
    for name in ("corpus", "session", "req", "loaded", "tool_loads", "prev prompt", "prompt"):
        out.add_column(name)
    out.add_column("reused", justify="right")
    out.add_column("of prev", justify="right")
    for row in rows:
        out.add_row(
            row.corpus,
            row.session,
            str(row.index),
            row.tools,
            row.mode,
            str(row.prompt_before),
            str(row.prompt_after),
            str(row.reused),
            f"{row.share:.1%}",
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", help="capture file(s); default corpus/")
    parser.add_argument("--modes", default="as_sent,inline,inline_only")
    parser.add_argument("--openai", action="store_true", help="translate, /v1/chat/completions")
    parser.add_argument("--upstream", help="an Anthropic-compatible runtime already running")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    paths = (
        [Path(p) for p in args.corpus]
        if args.corpus
        else sorted(p for pattern in DEFAULT_CORPUS for p in (ROOT / "corpus").glob(pattern))
    )
    loads = [load for path in paths for load in find_loads(path)]
    if not loads:
        print(f"no ToolSearch load found in: {', '.join(map(str, paths)) or '(nothing)'}")
        return 1
    modes = [ToolLoads.parse(m) for m in args.modes.split(",")]
    if args.upstream:
        rows = measure(args.upstream.rstrip("/"), loads, modes, args.openai)
    else:
        with bundled_runtime() as base:
            rows = measure(base, loads, modes, args.openai)
    Console(width=160).print(table(rows))
    out = args.out or ROOT / "bench" / "results" / f"toolload-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps([dict(asdict(r), share=r.share) for r in rows], indent=1) + "\n",
        encoding="utf-8",
    )
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
