"""Shared end-to-end fixtures: one real llama-server for the whole test session,
the corpus replayed through it once (``replayed``), and the gateway in front of
it behind a recording proxy:

    client -> prefixgate (uvicorn thread) -> Recorder (uvicorn thread) -> llama-server

The recorder forwards every request unchanged and keeps a copy, so tests can
prove what the upstream actually received. The runtime comes from the ``local``
extra; when it is missing the fixture raises RuntimeMissing, whose message says
what to install: e2e tests fail, never skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from corpusreplay import Replayed, replay_corpus
from servers import Gateway, gateway_in_front_of

from prefixgate.runtime.local import LocalRuntime, default_spec


@pytest.fixture(scope="session")
def local_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """A started LocalRuntime (bundled llama-server, Gemma 3 270M, one slot), with a
    slot-save folder of its own (``--slot-save-path``, for test_prefix_restore.py)."""
    spec = default_spec(slot_save_path=tmp_path_factory.mktemp("saved-prefixes"))
    log_path = tmp_path_factory.mktemp("local-runtime") / "llama-server.log"
    runtime = LocalRuntime(spec, log_path=log_path, startup_timeout=300.0)
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture(scope="session")
def local_base_url(local_runtime: LocalRuntime) -> str:
    """``http://127.0.0.1:PORT`` of the session's llama-server."""
    return local_runtime.base_url


@pytest.fixture(scope="module")
def gateway(local_runtime: LocalRuntime) -> Iterator[Gateway]:
    """prefixgate (strip) in front of a recorder in front of the real llama-server."""
    with gateway_in_front_of(local_runtime.base_url) as gw:
        yield gw


@pytest.fixture(scope="session")
def replayed(
    local_runtime: LocalRuntime, corpus_directory: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replayed]:
    """``claude-code-2.1.197.jsonl`` replayed once through prefixgate (kind anthropic,
    SQLite audit) to the session's runtime, restarted first so its cache is cold;
    read by test_cache_replay.py (test_openai_replay.py compares the two kinds on
    the corpus shrunk, replaying both itself)."""
    local_runtime.restart()
    db = tmp_path_factory.mktemp("audit") / "audit.db"
    with replay_corpus(local_runtime.base_url, corpus_directory, db) as out:
        yield out
