"""Header bytes from a client, through a real ``prefixgate serve`` (issue: hostile
clients, tenants and upstreams). Each test names the defect it guards against."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.hostile import HostileUpstream, row_of, serve_config
from support.servers import ServerThread

METADATA = "x-claude-attribution"
BLOCK = "x-anthropic-billing-header: cc_version=2.1.332.3ab; cc_entrypoint=clié; cch=0a1b2;"


@pytest.fixture(scope="module")
def metadata_gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[int, HostileUpstream, Path]]:
    folder = tmp_path_factory.mktemp("headers")
    upstream = HostileUpstream()
    with ServerThread(upstream.app) as server:
        audit = folder / "audit.jsonl"
        rest = (
            f'[upstreams.u]\nurl = "{server.url}"\npolicy = "preserve_as_metadata"\n'
            f'metadata_header = "{METADATA}"\n'
        )
        with serve_config(folder, f'audit_path = "{audit}"\n', rest) as (port, _):
            yield port, upstream, audit


def raw_post(port: int, extra_header: bytes, body: dict[str, object]) -> tuple[int, bytes, bytes]:
    """POST with one header written byte for byte; (status, head, body)."""
    payload = json.dumps(body).encode()
    request = (
        b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        + extra_header
        + b"\r\n"
        + f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
        + payload
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, rest


def message(system: str = "You are helpful.") -> dict[str, object]:
    return {
        "model": "plain",
        "max_tokens": 8,
        "system": system,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_header_bytes_are_forwarded_when_http_carries_them_and_refused_with_a_row_else(
    metadata_gateway: tuple[int, HostileUpstream, Path],
) -> None:
    """Defect 4: a non-ASCII byte in a forwarded header gave a 500 with no request id
    and no audit row."""
    port, upstream, audit = metadata_gateway
    status, _, _ = raw_post(port, "x-note: café ☕".encode(), message())
    assert status == 200
    assert upstream.seen[-1].headers["x-note"].encode("latin-1") == "café ☕".encode()
    status, head, body = raw_post(port, b"x-note: caf\xe9", message())  # latin-1, not UTF-8
    assert status == 400, body
    assert b"x-prefixgate-request-id:" in head.lower()
    error = json.loads(body)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "x-note" in error["error"]["message"] and "UTF-8" in error["error"]["message"]
    request_id = next(
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"x-prefixgate-request-id:")
    )
    assert row_of(audit, request_id)["status"] == 400
    # A control character never gets past the server's HTTP parser: a plain 400 there.
    status, _, body = raw_post(port, b"x-note: a\x01b", message())
    assert status == 400 and b"Traceback" not in body


def test_a_non_ascii_attribution_value_becomes_an_ascii_metadata_header(
    metadata_gateway: tuple[int, HostileUpstream, Path],
) -> None:
    """Defect 4: with ``preserve_as_metadata`` and ``metadata_header``, an attribution
    value with non-ASCII characters gave a 500."""
    port, upstream, _ = metadata_gateway
    status, _, body = raw_post(port, b"x-note: plain", message(BLOCK + "\nYou are helpful."))
    assert status == 200, body
    sent = upstream.seen[-1]
    value = sent.headers[METADATA]
    assert value.isascii() and "cli%C3%A9" in value
    assert b"x-anthropic-billing-header" not in sent.body


def test_a_refused_header_leaves_no_request_in_flight_on_its_replica(tmp_path: Path) -> None:
    """Defect 4: the 500 a non-ASCII header byte caused skipped the bookkeeping of the
    success path: the ``least_busy`` in-flight count of its replica never went back
    down, so that replica got no request again."""
    first, second = HostileUpstream(), HostileUpstream()
    with ServerThread(first.app) as one, ServerThread(second.app) as two:
        rest = f'[upstreams.u]\nurls = ["{one.url}", "{two.url}"]\nrouting = "least_busy"\n'
        with serve_config(tmp_path, 'audit_path = "memory"\n', rest) as (port, _):
            for _ in range(4):
                status, _, _ = raw_post(port, b"x-note: caf\xe9", message())
                assert status == 400
            for _ in range(6):
                status, _, _ = raw_post(port, b"x-note: plain", message())
                assert status == 200
    # with every count back at zero, least_busy takes turns between the two
    assert len(first.seen) >= 2 and len(second.seen) >= 2, (len(first.seen), len(second.seen))
