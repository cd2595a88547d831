"""Lone surrogates in requests and answers, through a real ``prefixgate serve`` on both
upstream kinds (issue: hostile clients, tenants and upstreams)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.hostile import HostileUpstream, row_of, serve_config
from support.servers import ServerThread

LONE = b'{"model":"%s","max_tokens":8,"messages":[{"role":"user","content":"hi \\ud800 x"}]}'
PAIR = b'{"model":"%s","max_tokens":8,"messages":[{"role":"user","content":"hi \\ud83d\\ude00"}]}'


@pytest.fixture(scope="module")
def two_kinds(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path, HostileUpstream]]:
    """One gateway: models ``oai-*`` go to the openai kind, the rest to anthropic."""
    folder = tmp_path_factory.mktemp("bodies")
    upstream = HostileUpstream()
    with ServerThread(upstream.app) as server:
        audit = folder / "audit.db"
        rest = (
            f'[upstreams.ant]\nurl = "{server.url}"\n'
            f'[upstreams.oai]\nurl = "{server.url}"\nkind = "openai"\n'
            '[[routes]]\nmodel = "oai-*"\nupstream = "oai"\n'
        )
        with serve_config(folder, f'audit_path = "{audit}"\n', rest) as (port, _):
            yield f"http://127.0.0.1:{port}", audit, upstream


@pytest.mark.parametrize("model", ["plain", "oai-plain"])
def test_a_request_with_a_lone_surrogate_is_forwarded_as_sent_with_a_row_on_both_kinds(
    two_kinds: tuple[str, Path, HostileUpstream], model: str
) -> None:
    """Defect 5: a body with an escaped lone surrogate was answered 200 with its audit
    row silently dropped (anthropic kind) or a 500 (openai kind). A client may well
    send one (a JavaScript string read from a broken file): it is forwarded as the
    same escape, on both kinds, and its row written."""
    url, audit, upstream = two_kinds
    with httpx.Client(timeout=30, trust_env=False) as client:
        headers = {"content-type": "application/json"}
        lone = client.post(f"{url}/v1/messages", content=LONE % model.encode(), headers=headers)
        paired = client.post(f"{url}/v1/messages", content=PAIR % model.encode(), headers=headers)
    assert lone.status_code == 200, lone.text
    assert paired.status_code == 200, paired.text
    sent = upstream.seen[-2].body
    assert b"hi \\ud800 x" in sent  # the escape itself, not bytes UTF-8 cannot carry
    assert json.loads(sent)["messages"][-1]["content"] in (
        "hi \ud800 x",
        [{"type": "text", "text": "hi \ud800 x"}],
    )
    assert row_of(audit, lone)["status"] == 200
    assert row_of(audit, paired)["status"] == 200


@pytest.mark.parametrize("model", ["surrogate", "oai-surrogate"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_with_a_lone_surrogate_is_relayed_as_sent_with_a_row(
    two_kinds: tuple[str, Path, HostileUpstream], model: str, stream: bool
) -> None:
    """Defect 5: the same escape in an upstream's answer was relayed with no audit row
    (anthropic kind) or gave a 500 (openai kind)."""
    url, audit, _ = two_kinds
    body = {"model": model, "max_tokens": 8, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    with httpx.Client(timeout=30, trust_env=False) as client:
        answer = client.post(f"{url}/v1/messages", json=body)
    assert answer.status_code == 200, answer.text
    assert b"bad \\ud800 x" in answer.content  # the escape as the upstream wrote it
    if stream:
        assert b"event: message_stop" in answer.content and b"event: error" not in answer.content
    else:
        assert json.loads(answer.content)["content"][0]["text"] == "bad \ud800 x"
    row = row_of(audit, answer)
    assert (row["status"], row["error"]) == (200, None)
