"""The recorded corpus through both upstream kinds, side by side.

    replay -> prefixgate (kind anthropic) -> llama-server /v1/messages
    replay -> prefixgate (kind openai)    -> llama-server /v1/chat/completions

Both kinds replay the same requests: ``claude-code-2.1.197.jsonl`` shrunk
(``prefixgate.corpusmix.shrink``: every long text cut to its head and tail, tool
schemas to their property names and types). A shrunk corpus keeps what the
comparison is about: the same sessions, agents, system prompts and tools, the
same conversations growing by appending, prefix changes at the same requests
(the cut names a hash of the text it shortened, so texts that differed still
differ; a changed environment section, cut, shows as a changed system prompt),
at about a sixth of the tokens (48,000 against 260,000); the full-size corpus is replayed
once, for the Anthropic kind only, by the session's ``replayed``
(test_cache_replay.py), and every full-size request's translation is checked
offline in tests/translate/test_request.py.

Each kind starts on a cold runtime (the session's, restarted), one after the
other (two replays at once would share two CPU cores). The translation must give
the runtime's prefix cache the same chances as llama-server's own Anthropic
endpoint: request by request the prompt and cached tokens agree within one
token, the same requests hit and the cached shares agree within 3 points. The
table is kept under ``$PREFIXGATE_ARTIFACTS`` (default ``tests/artifacts/``) as
``openai-vs-anthropic.txt``.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from corpusreplay import CORPUS_FILE
from rich.console import Console
from rich.table import Table
from servers import gateway_in_front_of

from prefixgate.corpusmix import shrink
from prefixgate.replay import CaptureRecord, load_capture, replay
from prefixgate.runtime.local import LocalRuntime
from prefixgate.store.audit import AuditRecord

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
KINDS = ("anthropic", "openai")
FOLLOW_UPS = (1, 3, 6, 9, 11, 13)  # later turns of a conversation, each right after its turn before
SIXTH_OPENING = 12  # a new conversation: same system prompt and tools, another block
SHRUNK_PROMPT = 2_000  # tokens at least in every shrunk request (the smallest has about 3,080)


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


@pytest.fixture(scope="module")
def shrunk(corpus_directory: Path, tmp_path_factory: pytest.TempPathFactory) -> list[CaptureRecord]:
    """``CORPUS_FILE`` with every line shrunk, read back as a capture."""
    path = tmp_path_factory.mktemp("shrunk-corpus") / CORPUS_FILE
    with (corpus_directory / CORPUS_FILE).open(encoding="utf-8") as source:
        lines = [shrink(json.loads(line)) for line in source if line.strip()]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return load_capture(path)


def replay_kind(runtime: LocalRuntime, records: list[CaptureRecord], kind: str) -> KindReplay:
    runtime.restart()  # a cold cache for each kind
    with gateway_in_front_of(runtime.base_url, kind) as gw:

        async def run() -> None:
            async with httpx.AsyncClient(timeout=1800, trust_env=False) as client:
                # max_tokens 2: the requests stay ordinary messages, not one-token probes
                results = await replay(records, gw.url, client=client, max_tokens=2)
            failed = [r for r in results if r.error]
            assert not failed, failed

        asyncio.run(run())
        rows = gw.records(timeout=300, at_least=len(records))
    assert len(rows) == len(records)
    return KindReplay(kind, rows)


@pytest.fixture(scope="module")
def paths(shrunk: list[CaptureRecord], local_runtime: LocalRuntime) -> dict[str, KindReplay]:
    out = {kind: replay_kind(local_runtime, shrunk, kind) for kind in KINDS}
    _keep_table(out)
    return out


def _keep_table(paths: dict[str, KindReplay]) -> None:
    table = Table(
        "#", *(f"{k} prompt / cached / cause" for k in KINDS),
        title="Corpus (shrunk) through prefixgate (strip): Anthropic vs OpenAI upstream kind",
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


def test_every_request_reports_its_cached_tokens(
    paths: dict[str, KindReplay], shrunk: list[CaptureRecord]
) -> None:
    """Every request of the corpus, through either kind, was answered and recorded
    with the runtime's own prompt and cached tokens (never guessed), its block
    found and stripped."""
    assert len(shrunk) == 14
    for path in paths.values():
        assert len(path.rows) == len(shrunk), path.kind
        for row in path.rows:
            assert row.status == 200 and row.error is None, (path.kind, row)
            assert row.prompt_tokens and row.prompt_tokens > SHRUNK_PROMPT, (path.kind, row)
            assert row.cached_tokens is not None, (path.kind, row)  # known, never guessed
            assert row.attribution_found and row.policy == "strip"


def test_the_kinds_agree_request_by_request(paths: dict[str, KindReplay]) -> None:
    """The translated request renders to the same prompt as llama-server's own
    Anthropic endpoint renders the original, within one token, and the runtime's
    cache serves the same part of it."""
    for i, (a, o) in enumerate(zip(paths["anthropic"].rows, paths["openai"].rows, strict=True)):
        assert abs(o.prompt_tokens - a.prompt_tokens) <= 1, (i, a, o)  # type: ignore[operator]
        assert abs(o.cached_tokens - a.cached_tokens) <= 1, (i, a, o)  # type: ignore[operator]


def test_the_cached_shares_agree_within_three_points(paths: dict[str, KindReplay]) -> None:
    """Over the whole corpus the OpenAI kind gets as much from the cache as the
    Anthropic kind, and more than half of the prompt tokens."""
    anthropic, openai = paths["anthropic"], paths["openai"]
    assert abs(openai.share - anthropic.share) <= 0.03, (openai.share, anthropic.share)
    assert openai.share > 0.5


def test_the_same_requests_hit(paths: dict[str, KindReplay]) -> None:
    """A follow-up turn finds the whole prompt of the turn before in the cache
    (through both kinds; the appended turn is all the runtime computes: on the
    full-size corpus that was over 90% of the prompt, a shrunk prompt is shorter
    while the appended turn is not), a new conversation with the first session's
    system prompt and tools reuses them, and every request gets the same cause
    through both kinds."""
    for path in paths.values():
        for i in FOLLOW_UPS:
            before, row = path.rows[i - 1], path.rows[i]
            assert row.cached_tokens >= before.prompt_tokens, (path.kind, i, before, row)  # type: ignore[operator]
    rows = paths["openai"].rows
    opening = rows[SIXTH_OPENING]  # only the block differed from the first session
    assert opening.cached_tokens > 0.8 * opening.prompt_tokens, opening  # type: ignore[operator]
    assert [r.cause for r in rows] == [r.cause for r in paths["anthropic"].rows]
