"""The recorded corpus replayed once through prefixgate to the real llama-server,
for every test that reads the outcome (the session fixture ``replayed``):

    replay (httpx) -> prefixgate, tenant "default" (SQLite audit) -> llama-server
                   -> prefixgate, tenant "team-b" (same SQLite file) --^

A replay is the costliest thing the suite asks of the runtime (each prompt
change is a cold ~20,000-token prompt), so it runs once, for the tests of
test_cache_replay.py; test_openai_replay.py compares the two upstream kinds on
the corpus shrunk (``prefixgate.corpusmix.shrink``), replaying both kinds itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from servers import ServerThread, settle

from prefixgate.app.gateway import create_app
from prefixgate.config import Settings
from prefixgate.diagnose import Diagnosis, diagnose
from prefixgate.replay import CaptureRecord, load_capture, replay
from prefixgate.report import build_report, render_report
from prefixgate.store.audit import AuditRecord
from prefixgate.store.sqlite import SqliteAudit, read_records

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS_FILE = "claude-code-2.1.197.jsonl"
TENANT_B = "team-b"


@dataclass
class Replayed:
    records: list[CaptureRecord]
    predicted: list[Diagnosis]
    rows: list[AuditRecord]  # tenant "default", in request order
    db: Path
    url: str
    url_b: str
    metrics: str
    dashboard_html: str


def artifacts() -> Path:
    path = Path(os.environ.get("PREFIXGATE_ARTIFACTS") or REPO_ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def replay_corpus(runtime_url: str, corpus_directory: Path, db: Path) -> Iterator[Replayed]:
    """Replay ``CORPUS_FILE`` through a gateway (tenant default) to ``runtime_url``,
    then its sixth session again through tenant B's; both gateways stay up until
    the context ends, and the per-request table is kept as an artifact."""
    records = load_capture(corpus_directory / CORPUS_FILE)
    settings = Settings().with_upstream(runtime_url)
    app = create_app(settings, audit=SqliteAudit(db))
    app_b = create_app(replace(settings, tenant=TENANT_B), audit=SqliteAudit(db))
    with ServerThread(app) as gw, ServerThread(app_b) as gw_b:
        # max_tokens 2: the requests stay ordinary messages, not one-token probes
        asyncio.run(_replay(records, gw.url, max_tokens=2))
        # tenant B sends the sixth session again (its prefix is in the slot)
        asyncio.run(_replay(records[12:14], gw_b.url, max_tokens=2))
        for a in (app, app_b):
            settle(a, timeout=300)
            a.state.audit.flush(timeout=30)
        rows = read_records(db, tenant="default")
        metrics = httpx.get(f"{gw.url}/metrics", timeout=30).text
        html = httpx.get(f"{gw.url}/dashboard", timeout=30).text
        yield Replayed(records, diagnose(records), rows, db, gw.url, gw_b.url, metrics, html)
    _keep_tables(records, diagnose(records), rows)


async def _replay(records: list[CaptureRecord], url: str, *, max_tokens: int) -> None:
    async with httpx.AsyncClient(timeout=1800, trust_env=False) as client:
        results = await replay(records, url, client=client, max_tokens=max_tokens)
    failed = [r for r in results if r.error]
    assert not failed, failed


def _keep_tables(
    records: list[CaptureRecord], predicted: list[Diagnosis], rows: list[AuditRecord]
) -> None:
    title = "Corpus replayed through prefixgate (strip) to llama-server"
    columns = ["#", "session", "agent", "prompt", "cached", "expected", "predicted", "cause"]
    table = Table(*columns, "detail", title=title)
    for rec, d, row in zip(records, predicted, rows, strict=False):
        table.add_row(
            str(rec.index), (row.session or "")[:8], row.agent or "", f"{row.prompt_tokens:,}",
            f"{row.cached_tokens:,}", f"{row.expected_cached_tokens:,}", d.cause, row.cause or "",
            row.cause_detail or "",
        )  # fmt: skip
    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(table)
    console.print(render_report(build_report(rows)))
    (artifacts() / "cache-replay.txt").write_text(console.export_text(), encoding="utf-8")
    console.file.close()
