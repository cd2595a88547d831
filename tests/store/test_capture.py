"""Record mode: every request the gateway receives is appended to a capture file in
the corpus format, without credentials, and the file reads back with
``load_capture`` and ``diagnose``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from inmemory import running
from starlette.applications import Starlette
from starlette.datastructures import URL

from prefixgate.app.gateway import create_app
from prefixgate.config import build_settings
from prefixgate.diagnose import diagnose
from prefixgate.replay import load_capture
from prefixgate.store.audit import MemoryAudit
from prefixgate.store.capture import CREDENTIAL_HEADERS, CaptureLog, capture_line

UPSTREAM = "http://runtime.test:8080"
SECRETS = {
    "x-api-key": "sk-client-secret-1",
    "Authorization": "Bearer sk-client-secret-2",
    "Proxy-Authorization": "Basic c2VjcmV0LTM=",
    "Cookie": "session=client-secret-4",
    "api-key": "client-secret-5",
    "X-Goog-Api-Key": "client-secret-6",
}
MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "Hello"}],
    "usage": {"input_tokens": 10, "cache_read_input_tokens": 0, "output_tokens": 1},
}


def answer(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/count_tokens"):
        return httpx.Response(200, json={"input_tokens": 10})
    return httpx.Response(200, json=MESSAGE)


def recording(path: Path) -> Starlette:
    table = {"url": UPSTREAM, "tokenizer": "estimate"}
    settings = build_settings({"upstreams": {"local": table}}, {}, {})
    return create_app(
        settings,
        transport=httpx.MockTransport(answer),
        audit=MemoryAudit(),
        capture=CaptureLog(path),
    )


def client_headers(record: Any) -> dict[str, str]:
    """The recorded headers less the ones httpx sets itself and the recorded key."""
    skip = {"host", "content-length", "x-api-key"}
    return {k: v for k, v in record.headers.items() if k.lower() not in skip}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_every_request_is_appended_without_credentials(
    tmp_path: Path, plain_records: list[Any]
) -> None:
    path = tmp_path / "captures" / "nested" / "capture.jsonl"  # folders are made
    sent = plain_records[:3]
    app = recording(path)
    async with running(app) as client:
        for record in sent:
            response = await client.post(
                record.path, content=record.raw, headers={**client_headers(record), **SECRETS}
            )
            assert response.status_code == 200
        counted = {k: v for k, v in sent[0].body.items() if k != "max_tokens"}
        count = await client.post("/v1/messages/count_tokens?beta=true", json=counted)
        assert count.status_code == 200
        bad = await client.post("/v1/messages", content=b"{not json", headers=SECRETS)
        assert bad.status_code == 400
        assert len(lines(path)) == 5  # written as they arrive, not at shutdown
    written = lines(path)
    assert [(w["method"], w["path"]) for w in written] == [
        ("POST", "/v1/messages?beta=true"),
        ("POST", "/v1/messages?beta=true"),
        ("POST", "/v1/messages?beta=true"),
        ("POST", "/v1/messages/count_tokens?beta=true"),
        ("POST", "/v1/messages"),
    ]
    for line, record in zip(written, sent, strict=False):
        assert line["body"] == record.raw.decode("utf-8")  # exactly as received
        assert set(line) == {"method", "path", "headers", "body", "t"}
        assert isinstance(line["t"], float)
        kept = {k.lower(): v for k, v in line["headers"].items()}
        assert kept["x-claude-code-session-id"] == record.headers["X-Claude-Code-Session-Id"]
        assert kept["anthropic-version"] == "2023-06-01"
    assert written[-1]["body"] == "{not json"
    text = path.read_text(encoding="utf-8")
    for name, secret in SECRETS.items():
        assert secret not in text
        for line in written:
            assert name.lower() not in {k.lower() for k in line["headers"]}
    assert app.state.proxy.capture is not None


async def test_the_capture_loads_and_diagnoses(tmp_path: Path, plain_records: list[Any]) -> None:
    path = tmp_path / "capture.jsonl"
    sent = plain_records[:3]
    async with running(recording(path)) as client:
        for record in sent:
            await client.post(record.path, content=record.raw, headers=client_headers(record))
        await client.post("/v1/messages", content=b"{not json")
    loaded = load_capture(path)
    assert [r.index for r in loaded] == [0, 1, 2, 3]
    assert [r.body for r in loaded[:3]] == [r.raw for r in sent]
    assert [r.session for r in loaded[:3]] == [r.headers["X-Claude-Code-Session-Id"] for r in sent]
    assert loaded[3].body == b"{not json"
    found = diagnose(loaded)
    assert len(found) == 4
    assert [d.session for d in found[:3]] == [r.session for r in loaded[:3]]
    assert all(d.error is None for d in found[:3])
    assert found[3].error is not None and "JSON" in found[3].error


async def test_a_second_run_appends_to_the_same_file(
    tmp_path: Path, plain_records: list[Any]
) -> None:
    path = tmp_path / "capture.jsonl"
    for record in plain_records[:2]:
        async with running(recording(path)) as client:
            await client.post(record.path, content=record.raw, headers=client_headers(record))
    assert [line["body"] for line in lines(path)] == [r.raw.decode() for r in plain_records[:2]]


# -- the line itself -------------------------------------------------------------


def test_capture_line_drops_every_credential_header_in_any_case() -> None:
    headers = [(name.upper(), "secret") for name in CREDENTIAL_HEADERS]
    headers += [("Content-Type", "application/json"), ("X-Claude-Code-Session-Id", "s1")]
    line = json.loads(capture_line("POST", "/v1/messages", headers, b"{}", 12.5))
    assert line == {
        "method": "POST",
        "path": "/v1/messages",
        "headers": {"Content-Type": "application/json", "X-Claude-Code-Session-Id": "s1"},
        "body": "{}",
        "t": 12.5,
    }
    assert {"authorization", "x-api-key", "proxy-authorization", "cookie"} <= CREDENTIAL_HEADERS


def test_capture_line_keeps_undecodable_bytes_as_replacement_characters() -> None:
    line = json.loads(capture_line("POST", "/v1/messages", [], b'{"a": "\xff"}', 0.0))
    assert line["body"] == '{"a": "\ufffd"}'


def test_capture_log_writes_whole_lines_and_keeps_the_query(tmp_path: Path) -> None:
    path = tmp_path / "capture.jsonl"
    log = CaptureLog(path)
    log.append("POST", URL("http://gw/v1/messages?beta=true"), {"x-api-key": "k"}, b"{}")
    log.append("POST", URL("http://gw/v1/messages"), {}, "é".encode())
    log.close()
    first, second = lines(path)
    assert (first["path"], first["headers"]) == ("/v1/messages?beta=true", {})
    assert (second["path"], second["body"]) == ("/v1/messages", "é")
    assert path.read_text(encoding="utf-8").endswith("\n")


def test_a_captured_body_that_is_not_a_json_object_loads_and_diagnoses(tmp_path: Path) -> None:
    path = tmp_path / "capture.jsonl"
    path.write_text(
        capture_line("POST", "/v1/messages", [], b"[1, 2]", 1.0) + "\n", encoding="utf-8"
    )
    (record,) = load_capture(path)
    assert (record.body, record.model, record.agent) == (b"[1, 2]", "", "side")
    (found,) = diagnose([record])
    assert found.error is not None
