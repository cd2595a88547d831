"""The recorded corpus through both upstream kinds, side by side.

    replay -> prefixgate (kind anthropic) -> llama-server /v1/messages
    replay -> prefixgate (kind openai)    -> llama-server /v1/chat/completions

Each path starts on a cold runtime, one after the other (two replays at once
would share two CPU cores): the Anthropic side is the session's replay
(``replayed``, which test_cache_replay.py reads too), the OpenAI side replays the
same corpus on the session's runtime restarted. The translation must give the
runtime's prefix cache the same chances as llama-server's own Anthropic
endpoint: the cached shares must agree within 3 points, request by request the
same requests must hit. The table is kept under ``$PREFIXGATE_ARTIFACTS``
(default ``tests/artifacts/``) as ``openai-vs-anthropic.txt``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from corpusreplay import Replayed
from rich.console import Console
from rich.table import Table
from servers import gateway_in_front_of

from prefixgate.replay import CaptureRecord, replay
from prefixgate.runtime.local import LocalRuntime
from prefixgate.store.audit import AuditRecord

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
KINDS = ("anthropic", "openai")
FOLLOW_UPS = (1, 3, 6, 9, 11, 13)  # later turns of a conversation
SIXTH_OPENING = 12  # a new conversation: same system prompt and tools, another block


@dataclass(frozen=True)
class KindReplay:
    kind: str
    rows: list[AuditRecord]

    @property
    def prompt(self) -> int:
        return sum(r.prompt_tokens or 0 for r in self.rows)

    @property
    def cached(self) -> int:
        return sum(r.cached_tokens or 0 for r in self.rows)

    @property
    def share(self) -> float:
        return self.cached / self.prompt


def replay_openai(runtime: LocalRuntime, records: list[CaptureRecord]) -> KindReplay:
    runtime.restart()  # a cold cache, as the Anthropic side had
    with gateway_in_front_of(runtime.base_url, "openai") as gw:

        async def run() -> None:
            async with httpx.AsyncClient(timeout=1800, trust_env=False) as client:
                results = await replay(records, gw.url, client=client, max_tokens=2)
            failed = [r for r in results if r.error]
            assert not failed, failed

        asyncio.run(run())
        rows = gw.records(timeout=300, at_least=len(records))
    assert len(rows) == len(records)
    return KindReplay("openai", rows)


@pytest.fixture(scope="module")
def paths(replayed: Replayed, local_runtime: LocalRuntime) -> dict[str, KindReplay]:
    out = {
        "anthropic": KindReplay("anthropic", replayed.rows),
        "openai": replay_openai(local_runtime, replayed.records),
    }
    _keep_table(out)
    return out


def _keep_table(paths: dict[str, KindReplay]) -> None:
    table = Table(
        "#", *(f"{k} prompt / cached / cause" for k in KINDS),
        title="Corpus through prefixgate (strip): Anthropic vs OpenAI upstream kind",
    )  # fmt: skip
    a, o = paths["anthropic"].rows, paths["openai"].rows
    for i, (ra, ro) in enumerate(zip(a, o, strict=True)):
        table.add_row(
            str(i),
            *(f"{r.prompt_tokens:,} / {r.cached_tokens:,} / {r.cause}" for r in (ra, ro)),
        )
    table.add_row(
        "total",
        *(f"{p.prompt:,} / {p.cached:,} = {100 * p.share:.1f}%" for p in paths.values()),
    )
    where = Path(os.environ.get("PREFIXGATE_ARTIFACTS") or REPO_ROOT / "tests" / "artifacts")
    where.mkdir(parents=True, exist_ok=True)
    with open(where / "openai-vs-anthropic.txt", "w", encoding="utf-8") as file:
        Console(file=file, width=160).print(table)


def test_every_request_reports_its_cached_tokens(paths: dict[str, KindReplay]) -> None:
    for path in paths.values():
        for row in path.rows:
            assert row.status == 200 and row.error is None, (path.kind, row)
            assert row.prompt_tokens and row.prompt_tokens > 10_000, (path.kind, row)
            assert row.cached_tokens is not None, (path.kind, row)  # known, never guessed
            assert row.attribution_found and row.policy == "strip"


def test_the_cached_shares_agree_within_three_points(paths: dict[str, KindReplay]) -> None:
    anthropic, openai = paths["anthropic"], paths["openai"]
    assert abs(openai.share - anthropic.share) <= 0.03, (openai.share, anthropic.share)
    assert openai.share > 0.5


def test_the_same_requests_hit(paths: dict[str, KindReplay]) -> None:
    rows = paths["openai"].rows
    for i in FOLLOW_UPS:
        assert rows[i].cached_tokens > 0.9 * rows[i].prompt_tokens, (i, rows[i])  # type: ignore[operator]
    opening = rows[SIXTH_OPENING]  # only the block differed from the first session
    assert opening.cached_tokens > 0.8 * opening.prompt_tokens, opening  # type: ignore[operator]
    assert [r.cause for r in rows] == [r.cause for r in paths["anthropic"].rows]
