"""Tests for the demo's pure parts: finding the corpus, choosing the slice."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from rich.console import Console

from prefixgate.demo import (
    CORPUS_ENV,
    DEFAULT_CORPUS,
    ManagedProcess,
    default_slice,
    find_corpus,
    free_port,
    gateway_command,
    run_demo,
)
from prefixgate.replay import load_capture

CORPUS_DIR = Path(__file__).resolve().parents[1] / "corpus"


def test_find_corpus_prefers_argument_then_environment_then_checkout(tmp_path: Path) -> None:
    explicit = tmp_path / "mine.jsonl"
    explicit.write_text("", encoding="utf-8")
    from_env = tmp_path / "env.jsonl"
    from_env.write_text("", encoding="utf-8")
    checkout = tmp_path / "repo"
    (checkout / DEFAULT_CORPUS).parent.mkdir(parents=True)
    (checkout / DEFAULT_CORPUS).write_text("", encoding="utf-8")
    env = {CORPUS_ENV: str(from_env)}
    assert find_corpus(explicit, environ=env, roots=[checkout]) == explicit
    assert find_corpus(None, environ=env, roots=[checkout]) == from_env
    assert (
        find_corpus(None, environ={}, roots=[tmp_path, checkout])
        == (checkout / DEFAULT_CORPUS).resolve()
    )
    assert find_corpus(None, environ={}, roots=[tmp_path]) is None
    assert find_corpus(tmp_path / "missing.jsonl", environ=env, roots=[checkout]) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("claude-code-2.1.197.jsonl", [0, 1, 4]),
        ("claude-code-2.1.197-cch-per-request.jsonl", [0, 1, 4]),
        ("claude-code-2.1.197-interactive.jsonl", [1, 2, 12]),
        ("claude-code-2.1.332.jsonl", [0, 1, 3]),
    ],
)
def test_default_slice_ends_with_a_new_session_on_the_same_prompt(
    name: str, expected: list[int]
) -> None:
    chosen = default_slice(load_capture(CORPUS_DIR / name))
    assert [r.index for r in chosen] == expected
    assert chosen[0].session == chosen[1].session != chosen[2].session


def test_the_default_corpus_is_the_current_clients() -> None:
    # package.json pins the current client as claude-code-current
    pinned = json.loads((CORPUS_DIR.parent / "package.json").read_text(encoding="utf-8"))
    version = pinned["devDependencies"]["claude-code-current"].rpartition("@")[2]
    assert DEFAULT_CORPUS.name == f"claude-code-{version}.jsonl"
    assert (CORPUS_DIR.parent / DEFAULT_CORPUS).is_file()


def test_default_slice_of_nothing_is_empty() -> None:
    assert default_slice([]) == []


def test_run_demo_says_what_to_pass_without_a_corpus(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    assert run_demo(corpus=tmp_path / "none.jsonl", console=console) == 2
    assert "No such corpus file" in console.export_text()


def test_gateway_command_runs_this_interpreter() -> None:
    command = gateway_command("http://127.0.0.1:1", 8080, "--policy", "strip")
    assert command[:4] == [sys.executable, "-m", "prefixgate", "serve"]
    assert command[4:] == [
        "--upstream",
        "http://127.0.0.1:1",
        "--port",
        "8080",
        "--policy",
        "strip",
    ]


def test_managed_process_reports_an_early_exit() -> None:
    process = ManagedProcess(
        "quitter",
        [sys.executable, "-c", "print('no luck'); raise SystemExit(3)"],
        "http://127.0.0.1:9/healthz",
        startup_timeout=20,
    )
    with pytest.raises(RuntimeError, match=r"exited with code 3:\n(.|\n)*no luck"):
        process.start()


def test_managed_process_starts_once_and_stops(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    server = ManagedProcess("http", [*command, "--directory", str(tmp_path)],
                            f"http://127.0.0.1:{port}/")  # fmt: skip
    with server:
        pid = server.pid
        server.start()
        assert server.pid == pid is not None
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
