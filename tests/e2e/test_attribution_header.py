"""The attribution block as a request header, against the real llama-server.

    client -> prefixgate -> Recorder -> llama-server

The Recorder proves what reached the runtime: under ``strip`` neither the
``x-anthropic-billing-header`` request header nor the metadata header a gateway
in front of us set travels on; under ``normalize`` the header goes on with the
one fixed value. The runtime answers either way, and the audit record keeps the
header's form and fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from servers import Gateway, Seen, ServerThread, settle
from starlette.applications import Starlette

from prefixgate.app.gateway import create_app
from prefixgate.config import Settings
from prefixgate.core.attribution import HEADER_NAME
from prefixgate.core.policy import METADATA_HEADER, Policy
from prefixgate.store.audit import AuditRecord, MemoryAudit

pytestmark = pytest.mark.e2e

VALUE = "cc_version=2.1.332.0b8; cc_entrypoint=sdk-cli;"
BODY = {
    "model": "gemma-3-270m",
    "max_tokens": 4,
    "system": [
        {"type": "text", "text": f"{HEADER_NAME}: cc_version=2.1.332.0b8; cc_entrypoint=sdk-cli;"},
        {"type": "text", "text": "You answer in one word."},
    ],
    "messages": [{"role": "user", "content": "Say hi."}],
}


def messages(seen: list[Seen]) -> list[Seen]:
    """The forwarded Messages requests (the tokenizer's own requests left out)."""
    return [r for r in seen if r.path.split("?")[0] == "/v1/messages"]


def post(url: str, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=300.0, trust_env=False) as http:
        return http.post("/v1/messages", content=json.dumps(BODY), headers=headers)


def test_strip_keeps_both_headers_from_the_runtime(gateway: Gateway) -> None:
    seen_before = len(gateway.recorder.seen)
    audit_before = len(gateway.records())
    headers = {HEADER_NAME: VALUE, METADATA_HEADER: '{"cc_is_subagent":true}'}
    response = post(gateway.url, headers)
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "message"
    (sent,) = messages(gateway.recorder.seen[seen_before:])
    assert HEADER_NAME not in sent.headers and METADATA_HEADER not in sent.headers
    assert HEADER_NAME.encode() not in sent.body
    (rec,) = gateway.records(at_least=audit_before + 1)[audit_before:]
    assert rec.status == 200 and rec.attribution_found
    assert rec.attribution_headers == {
        HEADER_NAME: {"form": "kv", "fields": {"cc_version": "2.1.332.0b8",
                                               "cc_entrypoint": "sdk-cli"}},
        METADATA_HEADER: {"form": "json", "fields": {"cc_is_subagent": True}},
    }  # fmt: skip


@pytest.fixture(scope="module")
def normalizing(gateway: Gateway) -> Iterator[tuple[str, MemoryAudit, Starlette]]:
    """A second prefixgate, policy normalize, in front of the same recorder."""
    audit = MemoryAudit()
    settings = Settings(policy_override=Policy.NORMALIZE).with_upstream(gateway.recorder_url)
    app = create_app(settings, audit=audit)
    with ServerThread(app) as server:
        yield server.url, audit, app


def test_normalize_sends_the_fixed_value_to_the_runtime(
    gateway: Gateway, normalizing: tuple[str, MemoryAudit, Starlette]
) -> None:
    url, audit, app = normalizing
    seen_before = len(gateway.recorder.seen)
    response = post(url, {HEADER_NAME: VALUE})
    assert response.status_code == 200, response.text
    (sent,) = messages(gateway.recorder.seen[seen_before:])
    assert sent.headers[HEADER_NAME] == "cc_entrypoint=sdk-cli;"
    system = json.loads(sent.body)["system"]
    assert system[0]["text"] == f"{HEADER_NAME}: cc_entrypoint=sdk-cli;"
    settle(app)
    records: list[AuditRecord] = list(audit.records)
    assert records[-1].policy == "normalize"
    assert records[-1].attribution_headers is not None
    assert records[-1].attribution_headers[HEADER_NAME]["fields"]["cc_version"] == "2.1.332.0b8"
