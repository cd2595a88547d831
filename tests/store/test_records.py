"""The one function that makes an audit record from what a request learnt."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from prefixgate.config import UpstreamConfig
from prefixgate.core.fold import summarize_message
from prefixgate.core.headers import HeaderRewrite
from prefixgate.core.identity import Identity
from prefixgate.core.pipeline import Rewrite, rewrite
from prefixgate.store.audit import AuditRecord
from prefixgate.store.records import Outcome, audit_record

BODY = b'{"model":"m","max_tokens":1,"stream":true,"messages":[{"role":"user","content":"hi"}]}'


@dataclass
class Facts:
    route: str = "/v1/messages"
    tenant: str = "default"
    session: str | None = "s-1"
    request_id: str = "r-1"
    started: float = 0.0
    ttfb: float | None = None
    raw: bytes | None = None
    rewrite: Rewrite | None = None
    upstream: UpstreamConfig | None = None
    headers: HeaderRewrite = field(default_factory=HeaderRewrite)
    identity: Identity | None = None


def test_a_refusal_has_only_what_the_door_knew() -> None:
    rec = audit_record(Facts(), Outcome(429, error="busy", at_door=True), capture_bodies=True)
    expected = AuditRecord(
        time=rec.time,
        route="/v1/messages",
        tenant="default",
        session="s-1",
        model=None,
        upstream=None,
        policy=None,
        status=429,
        error="busy",
        request_id="r-1",
    )
    assert rec == expected


def test_an_answered_request_has_its_rewrite_upstream_identity_and_usage() -> None:
    rw = rewrite(BODY)
    up = UpstreamConfig(name="local", url="http://a", replicas=("http://a", "http://b"))
    who = Identity("s-9", "header", "main", "message")
    facts = Facts(ttfb=0.001, raw=BODY, rewrite=rw, upstream=up.for_replica("http://b"))
    facts.identity = who
    usage = {"input_tokens": 7, "cache_read_input_tokens": 5}
    message = {"content": [{"type": "text", "text": "ok"}], "usage": usage}
    rec = audit_record(facts, Outcome(200, summarize_message(message)), capture_bodies=True)
    assert (rec.prompt_tokens, rec.cached_tokens) == (12, 5)  # read off the usage
    assert (rec.model, rec.key, rec.policy, rec.stream) == ("m", rw.key.hex, "strip", True)
    assert (rec.upstream, rec.replica) == ("local", "http://b")
    assert (rec.session, rec.session_source, rec.agent) == ("s-9", "header", "main")
    assert rec.input_tokens == 7 and rec.output_tokens is None
    assert rec.ttfb_ms is not None and rec.total_ms is not None and rec.ttfb_ms <= rec.total_ms
    assert rec.request_body == BODY.decode() and rec.response_text == "ok"
    plain = audit_record(facts, Outcome(200, summarize_message(message)), capture_bodies=False)
    assert plain.request_body is None and plain.response_text is None
    assert dataclasses.replace(plain, time=0, total_ms=0) == dataclasses.replace(
        rec, time=0, total_ms=0, request_body=None, response_text=None
    )
