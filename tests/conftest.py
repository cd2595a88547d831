"""Shared fixtures: the recorded Claude Code corpus, a fake upstream, a running
server on a free port (the classes behind them are in ``tests/support``).

The corpus ships in the repository (``<repo>/corpus``) unless
``PREFIXGATE_CORPUS_DIR`` names another folder. Tests that need it fail, with a
message saying where it was looked for, when it is missing: they never skip.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from corpusfiles import (
    CCH_PER_REQUEST,
    CORPUS_FILES,
    CURRENT_PLAIN,
    CURRENT_REQUESTS,
    INTERACTIVE,
    PLAIN,
    REQUESTS_PER_FILE,
    CorpusRecord,
)
from support.servers import ServerThread
from support.upstream import FakeUpstream

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_ENV = "PREFIXGATE_CORPUS_DIR"


def corpus_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the corpus is: ``$PREFIXGATE_CORPUS_DIR``, else ``<repo>/corpus``."""
    env = os.environ if environ is None else environ
    configured = env.get(CORPUS_ENV)
    return Path(configured) if configured else REPO_ROOT / "corpus"


def load_corpus(
    directory: Path, requests: Mapping[str, int] | None = None
) -> dict[str, list[CorpusRecord]]:
    """Load corpus files (``requests``: name -> how many requests it holds; default
    the three 2.1.197 files); fail the test (never skip) when one is missing."""
    expected = requests if requests is not None else dict.fromkeys(CORPUS_FILES, REQUESTS_PER_FILE)
    missing = [name for name in expected if not (directory / name).is_file()]
    if missing:
        pytest.fail(
            f"corpus not found: {', '.join(missing)} missing from {directory} "
            f"(set {CORPUS_ENV} to the folder holding the recorded *.jsonl files)",
            pytrace=False,
        )
    out: dict[str, list[CorpusRecord]] = {}
    for name, count in expected.items():
        records = []
        with (directory / name).open("rb") as fh:
            for index, line in enumerate(fh):
                row = json.loads(line)
                records.append(
                    CorpusRecord(
                        file=name,
                        index=index,
                        method=row["method"],
                        path=row["path"],
                        headers=row["headers"],
                        raw=row["body"].encode("utf-8"),
                    )
                )
        if len(records) != count:
            pytest.fail(
                f"corpus file {directory / name} holds {len(records)} requests, expected {count}",
                pytrace=False,
            )
        out[name] = records
    return out


@pytest.fixture(scope="session")
def corpus_records() -> dict[str, list[CorpusRecord]]:
    """Every recorded request, by corpus file name, in recording order."""
    return load_corpus(corpus_dir())


@pytest.fixture(scope="session")
def plain_records(corpus_records: dict[str, list[CorpusRecord]]) -> list[CorpusRecord]:
    """``claude-code-2.1.197.jsonl``: 6 sessions of ``claude -p`` (no ``cch``)."""
    return corpus_records[PLAIN]


@pytest.fixture(scope="session")
def cch_records(corpus_records: dict[str, list[CorpusRecord]]) -> list[CorpusRecord]:
    """The same requests with a per-request ``cch`` in the block."""
    return corpus_records[CCH_PER_REQUEST]


@pytest.fixture(scope="session")
def interactive_records(corpus_records: dict[str, list[CorpusRecord]]) -> list[CorpusRecord]:
    """Two interactive sessions with a subagent and title side requests."""
    return corpus_records[INTERACTIVE]


@pytest.fixture(scope="session")
def all_records(corpus_records: dict[str, list[CorpusRecord]]) -> list[CorpusRecord]:
    """All 42 recorded requests."""
    return [record for name in CORPUS_FILES for record in corpus_records[name]]


@pytest.fixture(scope="session")
def current_records() -> dict[str, list[CorpusRecord]]:
    """The current client's recordings (``CURRENT_FILES``), by file name, in order."""
    return load_corpus(corpus_dir(), CURRENT_REQUESTS)


@pytest.fixture(scope="session")
def current_plain_records(current_records: dict[str, list[CorpusRecord]]) -> list[CorpusRecord]:
    """``claude-code-2.1.332.jsonl``: 8 ``claude -p`` sessions (see corpus/README.md)."""
    return current_records[CURRENT_PLAIN]


@pytest.fixture(scope="session")
def corpus_directory() -> Path:
    """The corpus directory (see ``corpus_dir``)."""
    return corpus_dir()


# -- the openai SDK as an independent judge of what prefixgate sends upstream ---------

# Sampling fields llama.cpp, vLLM and SGLang accept that the OpenAI API does not name.
OPENAI_EXTRA_BODY = frozenset({"top_k"})


def validate_openai_request(body: dict[str, Any]) -> None:
    """Fail unless the official ``openai`` SDK takes ``body`` as chat completions params.

    Three checks: every top-level key is one the SDK knows (or a known extra);
    pydantic validates the params against the SDK's own TypedDicts; and the SDK,
    called with them, sends exactly ``body`` on the wire.
    """
    import httpx
    import openai
    from openai.types.chat import completion_create_params as params_types
    from pydantic import TypeAdapter

    known = set(params_types.CompletionCreateParamsBase.__annotations__) | {"stream"}
    unknown = set(body) - known - OPENAI_EXTRA_BODY
    assert not unknown, f"keys the OpenAI API does not know: {sorted(unknown)}"
    params = {k: v for k, v in body.items() if k not in OPENAI_EXTRA_BODY}
    typed = (
        params_types.CompletionCreateParamsStreaming
        if body.get("stream")
        else params_types.CompletionCreateParamsNonStreaming
    )
    TypeAdapter(typed).validate_python(params)
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if body.get("stream"):
            headers = {"content-type": "text/event-stream"}
            return httpx.Response(200, headers=headers, content=b"data: [DONE]\n\n")
        return httpx.Response(200, json=OPENAI_COMPLETION)

    with httpx.Client(transport=httpx.MockTransport(answer)) as http:
        client = openai.OpenAI(
            api_key="sk-check", base_url="http://check.test/v1", http_client=http
        )
        extra = {k: body[k] for k in OPENAI_EXTRA_BODY if k in body}
        result = client.chat.completions.create(**params, extra_body=extra or None)
        if body.get("stream"):
            result.close()  # type: ignore[union-attr]
    assert len(sent) == 1 and sent[0].url.path == "/v1/chat/completions"
    assert json.loads(sent[0].content) == body


OPENAI_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-check",
    "object": "chat.completion",
    "created": 1_750_000_000,
    "model": "check",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "ok"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


@pytest.fixture(scope="session")
def openai_request_validator() -> Any:
    """``validate_openai_request``, for tests in any folder."""
    return validate_openai_request


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server for the whole test session (see ``tests/redisserver.py``)."""
    from redisserver import redis_server

    with redis_server() as url:
        yield url


# -- the gateway's surroundings ----------------------------------------------------------


@pytest.fixture
def fake_upstream() -> FakeUpstream:
    """An upstream in memory: records requests, answers a message, misbehaves on request."""
    return FakeUpstream()


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    """``serve(app[, server])``: the app under uvicorn on a free loopback port until
    the test ends (a ``ServerThread``: ``url``, ``port``, ``server``, ``thread``)."""
    with contextlib.ExitStack() as running:

        def start(app: Any, server: Any = None) -> ServerThread:
            return running.enter_context(ServerThread(app, server))

        yield start
