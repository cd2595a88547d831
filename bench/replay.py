"""Replay recorded Claude Code requests three ways and compare the prefix cache.

    python bench/replay.py [--corpus FILE] [--upstream URL] [--all | --slice SPEC]
                           [--out results.json] [--no-litellm] [--policy strip] [--openai]

Under the usual table, a second one puts each column against an ideal cache:
``oracle`` (per request, the longest prefix shared with any earlier prompt of
the column), ``expected`` (what a runtime of the upstream's capacity holds of
it: the bundled runtime's slots and RAM cache, or ``--cache-slots`` /
``--cache-tokens`` for another), ``actual`` (what it served), the share of the
oracle reached and ``lost_by_runtime`` by cause (``core/oracle.py``). Tokens
come from the runtime's own tokenizer (``/tokenize``), else an estimate;
``--per-request`` prints the three numbers per request.

Columns, in one run, each against the same upstream:

  direct      straight to the upstream
  prefixgate  through ``python -m prefixgate serve`` (attribution block removed)
  litellm     through LiteLLM's proxy, Anthropic ``/v1/messages`` to the same upstream

``--no-direct`` leaves out the first, ``--no-litellm`` the last. ``--shrink``
replays the corpus shrunk the way the test suite does (``corpusmix.shrink``: the
same requests and pieces, long texts cut, about a fifth of the tokens), so a
corpus takes minutes instead of half an hour on two cores.

With ``--openai`` the upstream is reached through its OpenAI chat completions
endpoint (``/v1/chat/completions``) instead, the set-up of a translating proxy in
front of an OpenAI-compatible server (the ``prefixgate`` column of a plain run is
the reference: after ``strip`` the two endpoints get the same conversation):

  pg-openai        prefixgate ``--upstream-kind openai`` (block removed, translated)
  pg-openai-pass   the same with ``--policy passthrough`` (block forwarded)
  litellm-openai   LiteLLM's Anthropic-to-OpenAI adapter (``openai/<model>``,
                   chat completions), which forwards the block as it is

The default upstream is the embedded runtime (bundled llama-server), restarted
with an empty cache before every column so no column inherits another's cache.
With ``--upstream URL`` nothing can be restarted: later columns may find prompts
an earlier column left in the cache, and the script says so.

LiteLLM runs from its own virtual environment (``bench/.venv-litellm``, created
from ``bench/requirements-litellm.txt`` on first use). Results are printed as a
table and written as JSON (default ``bench/results/replay-<timestamp>.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from prefixgate.core.oracle import Capacity, ram_cache_tokens
from prefixgate.demo import (
    ManagedProcess,
    default_slice,
    find_corpus,
    free_port,
    gateway_command,
    replay_with_progress,
)
from prefixgate.replay import (
    CaptureRecord,
    Column,
    load_capture,
    miss_reasons,
    render_report,
    select,
    summarize,
)
from prefixgate.replayreach import Reached, reach_column, reach_pieces
from prefixgate.upstreams.tokenize import estimate

BENCH = Path(__file__).resolve().parent
LITELLM_VENV = BENCH / ".venv-litellm"
LITELLM_REQUIREMENTS = BENCH / "requirements-litellm.txt"
RESULTS = BENCH / "results"
DUMMY_KEY = "sk-bench-dummy"
_METRIC = re.compile(r"^llamacpp:(prompt_tokens_total|prompt_tokens_cached_total)\s+(\S+)$", re.M)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="recorded .jsonl file")
    parser.add_argument("--upstream", help="an Anthropic-compatible base URL (default: embedded)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every request (the default)")
    which.add_argument("--slice", help="'demo', or request indices such as 0,1,12 or 0-3,12")
    parser.add_argument("--out", type=Path, help="JSON results file")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM column")
    parser.add_argument("--policy", default="strip", help="prefixgate policy (default: strip)")
    parser.add_argument("--max-tokens", type=int, default=1, help="max_tokens sent (default: 1)")
    parser.add_argument(
        "--per-request", action="store_true", help="print oracle/expected/actual per request"
    )
    parser.add_argument(
        "--cache-slots", type=int, default=4, help="an external upstream's slots (default 4)"
    )
    parser.add_argument(
        "--cache-tokens", type=int, default=0, help="an external upstream's RAM cache, tokens"
    )
    parser.add_argument(
        "--openai",
        action="store_true",
        help="compare paths to the upstream's /v1/chat/completions (see the docstring)",
    )
    parser.add_argument(
        "--shrink",
        action="store_true",
        help="replay the corpus shrunk (corpusmix.shrink, as the test suite does): same"
        " requests and pieces, about a fifth of the tokens",
    )
    parser.add_argument(
        "--no-direct", action="store_true", help="skip the direct column (prefixgate only)"
    )
    return parser.parse_args(argv)


# -- LiteLLM ----------------------------------------------------------------------------


def ensure_litellm(console: Console) -> Path:
    """The ``litellm`` executable of bench/.venv-litellm, creating the venv if needed."""
    executable = LITELLM_VENV / "bin" / "litellm"
    if executable.is_file():
        return executable
    console.print(f"Creating {LITELLM_VENV} from {LITELLM_REQUIREMENTS.name} (once)...")
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    (LITELLM_VENV / ".gitignore").write_text("*\n", encoding="utf-8")
    pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "-r", str(LITELLM_REQUIREMENTS)], check=True)
    return executable


def litellm_version() -> str:
    python = LITELLM_VENV / "bin" / "python"
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def litellm_config(models: Sequence[str], api_base: str, *, openai: bool = False) -> str:
    """A proxy config sending each model name to ``anthropic/<name>`` at ``api_base``,
    or with ``openai`` to ``openai/<name>`` at ``api_base/v1`` through LiteLLM's
    Anthropic-to-chat-completions adapter (not its Responses API bridge)."""
    provider, base = ("openai/", f"{api_base}/v1") if openai else ("anthropic/", api_base)
    lines = ["model_list:"]
    for model in models:
        lines += [
            f"  - model_name: {json.dumps(model)}",
            "    litellm_params:",
            f"      model: {json.dumps(provider + model)}",
            f"      api_base: {json.dumps(base)}",
            f"      api_key: {json.dumps(DUMMY_KEY)}",
        ]
    lines += [
        "litellm_settings:",
        "  telemetry: false",
        *(
            [
                "  drop_params: true  # else it refuses Claude Code's thinking/context fields",
                "  use_chat_completions_url_for_anthropic_messages: true",
            ]
            if openai
            else []
        ),
        "general_settings:",
        "  # loopback only, no keys to protect: the proxy refuses to start without this",
        "  dangerously_permit_weak_or_unset_master_key: true",
        "",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def litellm_proxy(
    console: Console, models: Sequence[str], api_base: str, workdir: Path, *, openai: bool = False
) -> Iterator[str]:
    """Run LiteLLM's proxy in front of ``api_base``; yield its base URL."""
    executable = ensure_litellm(console)
    config = workdir / "litellm_config.yaml"
    config.write_text(litellm_config(models, api_base, openai=openai), encoding="utf-8")
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "NO_PROXY": "127.0.0.1"}
    command = [str(executable), "--config", str(config), "--host", "127.0.0.1"]
    proxy = ManagedProcess(
        "litellm",
        [*command, "--port", str(port)],
        f"http://127.0.0.1:{port}/health/liveliness",
        startup_timeout=180.0,
        env=env,
    )
    with console.status("Starting LiteLLM's proxy..."):
        proxy.start()
    with proxy:
        yield f"http://127.0.0.1:{port}"


# -- the runs ------------------------------------------------------------------------


@dataclasses.dataclass
class Upstream:
    """Where requests end up; ``reset`` empties its cache when it can."""

    url: str
    reset: Callable[[], None] | None = None
    capacity: Capacity = dataclasses.field(default_factory=Capacity)  # what it can hold

    def token_counts(self, pieces: Mapping[str, str]) -> tuple[dict[str, int], str]:
        """Tokens per piece digest from the upstream's ``/tokenize`` (llama-server's),
        else estimated; and which."""
        counts: dict[str, int] = {}
        with httpx.Client(timeout=60.0, trust_env=False) as client:
            for digest, text in pieces.items():
                try:
                    response = client.post(
                        f"{self.url}/tokenize", json={"content": text, "add_special": False}
                    )
                    response.raise_for_status()
                    counts[digest] = len(response.json()["tokens"])
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    return {d: estimate(t) for d, t in pieces.items()}, "estimate"
        return counts, "tokenizer"

    def metrics(self) -> dict[str, float]:
        """llama-server's prompt token counters since its start (empty if unavailable)."""
        try:
            text = httpx.get(f"{self.url}/metrics", timeout=5.0, trust_env=False).text
        except httpx.HTTPError:
            return {}
        return {name: float(value) for name, value in _METRIC.findall(text)}


@dataclasses.dataclass
class Run:
    column: Column
    metrics: dict[str, float]
    reached: list[Reached] = dataclasses.field(default_factory=list)
    tokens_from: str = ""  # "tokenizer" (the runtime's /tokenize) or "estimate"
    capacity: Capacity = dataclasses.field(default_factory=Capacity)


def run_column(
    console: Console,
    name: str,
    upstream: Upstream,
    records: Sequence[CaptureRecord],
    base_url: Callable[[], contextlib.AbstractContextManager[str]],
    *,
    attribution_removed: bool = False,
    max_tokens: int = 1,
) -> Run:
    """Start the path to the upstream, warm it with one small request, empty
    the upstream's cache, then replay ``records`` through it.

    The warm-up keeps one-off start-up costs of a proxy (lazy imports, first
    connection) out of the first measured request; it is skipped when the
    upstream's cache cannot be emptied afterwards.
    """
    with base_url() as url:
        if upstream.reset is not None:
            with console.status(f"{name}: warm-up request, then an empty runtime cache..."):
                warm_up(console, name, url, records[0].model if records else "")
                upstream.reset()
        results = replay_with_progress(console, name, records, url, max_tokens=max_tokens)
    metrics = upstream.metrics() if upstream.reset is not None else {}
    pieces = reach_pieces(records, attribution_removed=attribution_removed)
    with console.status(f"{name}: counting the tokens of {len(pieces)} prompt pieces..."):
        tokens, source = upstream.token_counts(pieces)
    reached = reach_column(
        records, results, upstream.capacity, tokens, attribution_removed=attribution_removed
    )
    column = Column(name, results, attribution_removed=attribution_removed)
    return Run(column, metrics, reached, source, upstream.capacity)


def warm_up(console: Console, name: str, url: str, model: str) -> None:
    """One tiny request through ``url``; a failure is reported, not fatal."""
    body = {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"anthropic-version": "2023-06-01", "x-api-key": DUMMY_KEY}
    try:
        response = httpx.post(
            f"{url}/v1/messages", json=body, headers=headers, timeout=120.0, trust_env=False
        )
    except httpx.HTTPError as exc:
        console.print(f"[yellow]{name}: warm-up failed: {exc}[/yellow]")
        return
    if response.status_code != 200:
        console.print(f"[yellow]{name}: warm-up answered {response.status_code}[/yellow]")


def run_all(
    console: Console, args: argparse.Namespace, upstream: Upstream, records: Sequence[CaptureRecord]
) -> list[Run]:
    """The three columns, one after another, against the same upstream."""
    models = sorted({r.model for r in records if r.model})

    @contextlib.contextmanager
    def direct() -> Iterator[str]:
        yield upstream.url

    def gateway(*flags: str) -> Callable[[], contextlib.AbstractContextManager[str]]:
        @contextlib.contextmanager
        def run() -> Iterator[str]:
            port = free_port()
            command = gateway_command(upstream.url, port, *flags)
            with ManagedProcess("prefixgate", command, f"http://127.0.0.1:{port}/healthz"):
                yield f"http://127.0.0.1:{port}"

        return run

    def litellm(openai: bool) -> Callable[[], contextlib.AbstractContextManager[str]]:
        @contextlib.contextmanager
        def run() -> Iterator[str]:
            with (
                tempfile.TemporaryDirectory(prefix="bench-litellm-") as workdir,
                litellm_proxy(console, models, upstream.url, Path(workdir), openai=openai) as url,
            ):
                yield url

        return run

    policy = ("--policy", args.policy)
    plan: list[tuple[str, Callable[[], contextlib.AbstractContextManager[str]], bool]]
    if args.openai:
        openai = ("--upstream-kind", "openai")
        plan = [
            ("pg-openai", gateway(*openai, *policy), _removes(args)),
            ("pg-openai-pass", gateway(*openai, "--policy", "passthrough"), False),
        ]
        if not args.no_litellm:
            plan.append(("litellm-openai", litellm(True), False))
    else:
        plan = [("direct", direct, False), ("prefixgate", gateway(*policy), _removes(args))]
        if args.no_direct:
            plan = plan[1:]
        if not args.no_litellm:
            plan.append(("litellm", litellm(False), False))
    return [
        run_column(
            console,
            name,
            upstream,
            records,
            factory,
            attribution_removed=removed,
            max_tokens=args.max_tokens,
        )
        for name, factory, removed in plan
    ]


def _removes(args: argparse.Namespace) -> bool:
    return str(args.policy).replace("-", "_") in ("strip", "preserve_as_metadata")


# -- output --------------------------------------------------------------------------


def write_results(
    path: Path,
    args: argparse.Namespace,
    corpus: Path,
    records: Sequence[CaptureRecord],
    runs: Sequence[Run],
    extra: dict[str, Any],
) -> None:
    columns = []
    for run in runs:
        summary = summarize(run.column.results)
        columns.append(
            {
                "name": run.column.name,
                "attribution_removed": run.column.attribution_removed,
                "summary": {**dataclasses.asdict(summary), "cached_share": summary.cached_share},
                "runtime_metrics": run.metrics,
                "reasons": miss_reasons(
                    records, run.column.results, attribution_removed=run.column.attribution_removed
                ),
                "results": [dataclasses.asdict(r) for r in run.column.results],
                "reach": {
                    "capacity": dataclasses.asdict(run.capacity),
                    "tokens_from": run.tokens_from,
                    "totals": reach_totals(run.reached),
                    "requests": [dataclasses.asdict(r) for r in run.reached],
                },
            }
        )
    document = {
        "corpus": str(corpus),
        "requests": [r.index for r in records],
        "upstream": args.upstream or "embedded",
        "max_tokens": args.max_tokens,
        "policy": args.policy,
        "shrunk": args.shrink,
        **extra,
        "columns": columns,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def reach_totals(reached: Sequence[Reached]) -> dict[str, Any]:
    """Sums over a column: prompt, oracle, expected and actual tokens, lost by cause."""

    def total(field: str) -> int:
        return sum(getattr(r, field) or 0 for r in reached)

    lost: dict[str, int] = {}
    for r in reached:
        if r.lost:
            lost[r.cause] = lost.get(r.cause, 0) + r.lost
    capacity = sum(
        (r.oracle or 0) - (r.expected or 0)
        for r in reached
        if r.oracle is not None and r.expected is not None and r.oracle > r.expected
    )
    return {
        "prompt": total("prompt_tokens"),
        "oracle": total("oracle"),
        "expected": total("expected"),
        "actual": total("actual"),
        "lost_by_runtime": lost,
        "oracle_minus_expected": capacity,
    }


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def reach_table(runs: Sequence[Run]) -> Table:
    """Per column: what an ideal cache would serve, what the runtime should, what it did."""
    table = Table(title="Oracle, runtime expected and actual cached tokens, per column")
    for name in ("column", "prompt", "oracle", "expected", "actual", "actual/oracle",
                 "lost by runtime (cause)", "oracle-expected", "tokens"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("column", "tokens") else "right")
    for run in runs:
        t = reach_totals(run.reached)
        lost = ", ".join(f"{n:,} {c}" for c, n in sorted(t["lost_by_runtime"].items())) or "0"
        table.add_row(
            run.column.name,
            f"{t['prompt']:,}",
            f"{t['oracle']:,} ({_share(t['oracle'], t['prompt'])})",
            f"{t['expected']:,} ({_share(t['expected'], t['prompt'])})",
            f"{t['actual']:,} ({_share(t['actual'], t['prompt'])})",
            _share(t["actual"], t["oracle"]),
            lost,
            f"{t['oracle_minus_expected']:,}",
            run.tokens_from,
        )
    return table


def reach_rows(run: Run) -> Table:
    table = Table(title=f"{run.column.name}: per request")
    for name in ("#", "prompt", "oracle", "expected", "actual", "lost", "cause"):
        table.add_column(name, justify="right" if name != "cause" else "left")
    for r in run.reached:
        table.add_row(
            str(r.index), *(f"{v:,}" if v is not None else "?" for v in
                            (r.prompt_tokens, r.oracle, r.expected, r.actual)),
            f"{r.lost:,}", r.cause,
        )  # fmt: skip
    return table


def print_metrics(console: Console, runs: Sequence[Run]) -> None:
    """What the runtime itself counted per column: proof the requests reached it."""
    for run in runs:
        if not run.metrics:
            continue
        processed = run.metrics.get("prompt_tokens_total", 0.0)
        cached = run.metrics.get("prompt_tokens_cached_total", 0.0)
        console.print(
            f"runtime /metrics after {run.column.name}: {processed:,.0f} prompt tokens"
            f" processed, {cached:,.0f} cached"
        )


# -- main ----------------------------------------------------------------------------


def choose(records: list[CaptureRecord], args: argparse.Namespace) -> list[CaptureRecord]:
    if args.slice is None or args.all:
        return records
    if args.slice == "demo":
        return default_slice(records)
    return select(records, args.slice)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    corpus = find_corpus(args.corpus)
    if corpus is None:
        console.print("[red]No corpus found: pass --corpus FILE (a recorded .jsonl file).[/red]")
        return 2
    records = choose(load_records(corpus, shrunk=args.shrink), args)
    shrunk = " (shrunk)" if args.shrink else ""
    indices = ", ".join(str(r.index) for r in records)
    console.print(f"{corpus.name}{shrunk}: replaying requests {indices}")
    started = time.strftime("%Y%m%d-%H%M%S")
    extra: dict[str, Any] = {"started": started}
    try:
        with upstream_for(console, args, extra) as upstream:
            runs = run_all(console, args, upstream, records)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted; servers stopped.[/yellow]")
        return 130
    if not args.no_litellm:
        extra["litellm_version"] = litellm_version()
    console.print(render_report(records, [run.column for run in runs]))
    console.print(reach_table(runs))
    if args.per_request:
        for run in runs:
            console.print(reach_rows(run))
    print_metrics(console, runs)
    out = args.out or RESULTS / f"replay-{started}.json"
    write_results(out, args, corpus, records, runs, extra)
    console.print(f"results: {out}")
    return 0


def load_records(corpus: Path, *, shrunk: bool) -> list[CaptureRecord]:
    """The corpus's requests, each shrunk (``corpusmix.shrink``) when ``shrunk``."""
    if not shrunk:
        return load_capture(corpus)
    from prefixgate.corpusmix import shrink

    with tempfile.TemporaryDirectory(prefix="bench-replay-") as folder:
        lines = [json.loads(x) for x in corpus.read_text(encoding="utf-8").splitlines() if x]
        path = Path(folder) / corpus.name
        path.write_text("".join(json.dumps(shrink(x)) + "\n" for x in lines), encoding="utf-8")
        return load_capture(path)


@contextlib.contextmanager
def upstream_for(
    console: Console, args: argparse.Namespace, extra: dict[str, Any]
) -> Iterator[Upstream]:
    """The given upstream, or the embedded runtime (started, stopped at the end)."""
    if args.upstream:
        console.print(
            "[yellow]External upstream: its cache cannot be emptied between columns,"
            " so later columns may reuse prompts cached by earlier ones.[/yellow]"
        )
        capacity = Capacity(args.cache_slots, args.cache_tokens)
        yield Upstream(args.upstream.rstrip("/"), capacity=capacity)
        return
    from prefixgate.runtime.local import LocalRuntime, default_spec

    spec = default_spec()
    extra["runtime"] = {k: str(v) for k, v in dataclasses.asdict(spec).items()}
    runtime = LocalRuntime(spec)
    try:
        with console.status("Starting the local runtime (llama-server)..."):
            runtime.start()
        capacity = Capacity(spec.slots, ram_cache_tokens(spec.cache_ram_mib))
        yield Upstream(runtime.base_url, reset=runtime.restart, capacity=capacity)
    finally:
        runtime.stop()


if __name__ == "__main__":
    sys.exit(main())
