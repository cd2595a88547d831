"""Slow clients through a real ``prefixgate serve`` (issue: hostile clients, tenants
and upstreams): bodies sent a few bytes at a time, half-sent request heads, and
more connections from one address than it may hold. Each test names the defect
it guards against.

The gateway runs with short limits (a head within 2 s, a body pause of at most
2 s and a whole body within 8 s, 80 connections per client address), so the
module takes seconds. Other client addresses are ``127.0.0.2`` and ``127.0.0.3``
(all of 127.0.0.0/8 is loopback on Linux). No assertion is on a time: the socket
timeouts below only keep a failing test from hanging.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from support.hostile import HostileUpstream, serve_config
from support.servers import ServerThread

HEADER_TIMEOUT = 2
BODY_IDLE = 2
BODY_TOTAL = 8
PER_CLIENT = 80
SLOW_CLIENTS = 64
OTHER_ADDRESS = "127.0.0.3"
SLOW_ADDRESS = "127.0.0.2"
PATIENCE = 30.0  # how long a socket waits before the test calls it stuck


@dataclass(frozen=True)
class Gateway:
    port: int
    audit: Path

    def rows(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(x) for x in self.audit.read_text(encoding="utf-8").splitlines()]

    def row(self, request_id: str) -> dict[str, Any]:
        """The audit row of ``request_id``, once written (rows are committed in batches)."""
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            for row in self.rows():
                if row.get("request_id") == request_id:
                    return row
            time.sleep(0.05)
        raise AssertionError(f"no audit row for request {request_id}")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("slow")
    upstream = HostileUpstream()
    with ServerThread(upstream.app) as server:
        audit = folder / "audit.jsonl"
        server_lines = (
            f'audit_path = "{audit}"\n'
            f"header_timeout = {HEADER_TIMEOUT}\nbody_idle_timeout = {BODY_IDLE}\n"
            f"body_timeout = {BODY_TOTAL}\nmax_connections_per_client = {PER_CLIENT}\n"
            # one tenant (no keys): its own cap must not be what the slow clients hit
            "max_concurrent = 1000\n"
        )
        rest = f'[upstreams.u]\nurl = "{server.url}"\n'
        with serve_config(folder, server_lines, rest) as (port, _):
            yield Gateway(port, audit)


BODY = json.dumps(
    {"model": "plain", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
).encode()


def head(length: int = len(BODY), path: str = "/v1/messages") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\nconnection: close\r\n\r\n"
    ).encode()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=PATIENCE, source_address=(source, 0)
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The whole answer on ``sock`` (the server closes it): status, headers, body."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (EOF or reset); False if still open
    after ``PATIENCE`` seconds."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def post(port: int, source: str = "127.0.0.1") -> int:
    with connect(port, source) as sock:
        sock.sendall(head() + BODY)
        return read_answer(sock)[0]


def test_a_body_slower_than_its_deadline_gets_408_and_an_audit_row(gateway: Gateway) -> None:
    """Defect 2 (slow bodies hold the door): a body trickled a byte every half
    second was waited for without limit; now the whole-body deadline ends it with
    an Anthropic-shaped 408 and an audit row, and so does a body that stalls."""
    with connect(gateway.port) as trickled, connect(gateway.port) as stalled:
        trickled.sendall(head())
        stalled.sendall(head() + BODY[:10])
        trickled.settimeout(0.5)
        sent = 0
        while sent < len(BODY) - 1:  # never whole: the last byte is kept back
            trickled.sendall(BODY[sent : sent + 1])
            sent += 1
            try:
                if trickled.recv(1, socket.MSG_PEEK):
                    break  # the gateway answered
            except TimeoutError:
                continue
        trickled.settimeout(PATIENCE)
        answers = [read_answer(trickled), read_answer(stalled)]
    for (status, headers, body), limit in zip(
        answers, ("body_timeout", "body_idle_timeout"), strict=True
    ):
        assert status == 408, body
        error = json.loads(body)
        assert error["type"] == "error"
        assert error["error"]["type"] == "timeout_error"
        assert limit in error["error"]["message"]
        row = gateway.row(headers["x-prefixgate-request-id"])
        assert row["status"] == 408
        assert row["route"] == "/v1/messages"
        assert limit in row["error"]


def test_a_client_that_leaves_mid_body_still_gets_an_audit_row(gateway: Gateway) -> None:
    """Defect 2 (slow bodies hold the door): a client that hangs up while its body
    is still arriving ends its request; the request keeps its one audit row (499,
    saying so) instead of an internal error."""
    session = "left-mid-body"
    with connect(gateway.port) as sock:
        sock.sendall(
            head().replace(b"\r\n\r\n", f"\r\nx-claude-code-session-id: {session}\r\n\r\n".encode())
            + BODY[:20]
        )
        time.sleep(0.2)
    deadline = time.monotonic() + PATIENCE
    rows: list[dict[str, Any]] = []
    while not rows and time.monotonic() < deadline:
        rows = [r for r in gateway.rows() if r.get("session") == session]
        time.sleep(0.05)
    assert len(rows) == 1
    assert rows[0]["status"] == 499
    assert "before its body was whole" in rows[0]["error"]


def test_64_slow_bodies_do_not_keep_a_normal_client_waiting(gateway: Gateway) -> None:
    """Defect 2 (slow bodies hold the door): 64 clients sending their bodies a byte
    at a time held all 64 ``max_active`` turns and every other request waited
    behind them; now a body that is slow gives its turn back while it arrives."""
    slow = [connect(gateway.port, SLOW_ADDRESS) for _ in range(SLOW_CLIENTS)]
    try:
        for sock in slow:
            sock.sendall(head() + BODY[:1])
        for sock in slow:
            sock.sendall(BODY[1:2])
        with connect(gateway.port) as normal:
            normal.settimeout(BODY_IDLE * 0.75)  # less than the slow bodies may pause
            normal.sendall(head() + BODY)
            answer, sent = b"", 2
            while b"\r\n\r\n" not in answer:
                try:
                    chunk = normal.recv(65536)
                except TimeoutError:  # keep the slow ones alive meanwhile, never whole
                    sent += 1
                    waited = (sent - 2) * BODY_IDLE * 0.75
                    assert waited < PATIENCE, "the normal client waited behind the slow bodies"
                    for sock in slow:
                        sock.sendall(BODY[sent - 1 : sent])
                    assert not answered(slow), (
                        "the slow bodies were answered before the normal client"
                    )
                    continue
                assert chunk, "the gateway closed the normal client's connection"
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert not answered(slow)  # still arriving when the normal client was served
    finally:
        for sock in slow:
            sock.close()


def answered(socks: list[socket.socket]) -> bool:
    """True when the gateway has written anything to any of ``socks``."""
    for sock in socks:
        sock.setblocking(False)
        try:
            if sock.recv(1, socket.MSG_PEEK):
                return True
        except BlockingIOError:
            pass
        finally:
            sock.settimeout(PATIENCE)
    return False


def test_half_sent_heads_are_closed_and_real_clients_still_served(gateway: Gateway) -> None:
    """Defect 3 (slowloris before auth): half-sent request heads, and heads sent a
    line at a time, were held open for as long as the client liked, before any
    key was checked; now a head not whole within ``header_timeout`` closes its
    connection, and a real client is served all the while."""
    idle = [connect(gateway.port, OTHER_ADDRESS) for _ in range(10)]
    half = [connect(gateway.port, OTHER_ADDRESS) for _ in range(10)]
    for sock in half:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\n")
    with connect(gateway.port, OTHER_ADDRESS) as drip:
        drip.settimeout(0.2)
        drip.sendall(b"POST /v1/messages HTTP/1.1\r\n")
        assert post(gateway.port) == 200  # while the heads are held
        lines, gone = 0, False
        while not gone and lines < PATIENCE / 0.2:
            try:  # a header line every 0.2 s: never idle, never whole
                drip.sendall(f"x-drip-{lines}: 1\r\n".encode())
                gone = drip.recv(1) == b""
            except TimeoutError:
                lines += 1
            except (BrokenPipeError, ConnectionResetError):
                gone = True
        assert gone, "a head sent a line at a time was never closed"
    for sock in idle + half:
        with sock:
            assert closed_by_server(sock), "a connection with no whole head was never closed"
    assert post(gateway.port) == 200


def test_one_address_beyond_its_connection_cap_is_refused_while_another_is_served(
    gateway: Gateway,
) -> None:
    """Defect 3 (slowloris before auth): one address could open as many
    connections as it liked (3,000 were held); now beyond
    ``max_connections_per_client`` a new one is answered 429 and closed at once,
    while another address is still served. Connections that have closed, those
    that asked for a WebSocket upgrade included, no longer count."""
    upgrade = (
        b"GET /v1/models HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: upgrade\r\n"
        b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    for _ in range(PER_CLIENT + 1):  # one at a time: never more than one open
        with connect(gateway.port, OTHER_ADDRESS) as sock:
            sock.sendall(upgrade)
            answer = b""
            while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 "), answer
        assert not answer.startswith(b"HTTP/1.1 429"), answer
    held = [connect(gateway.port, OTHER_ADDRESS) for _ in range(PER_CLIENT)]
    try:
        with connect(gateway.port, OTHER_ADDRESS) as extra:
            status, _, body = read_answer(extra)  # answered without sending anything
        assert status == 429, body
        error = json.loads(body)["error"]
        assert error["type"] == "rate_limit_error"
        assert f"max_connections_per_client={PER_CLIENT}" in error["message"]
        assert post(gateway.port) == 200  # another address, at the same time
    finally:
        for sock in held:
            sock.close()


# -- the protocol on its own, both of uvicorn's parsers -------------------------------


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.fixture(params=["httptools", "h11"])
def small_door(request: pytest.FixtureRequest) -> Iterator[int]:
    """uvicorn with the door's protocol (4 connections in all, 2 s for a head)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from prefixgate.config import Settings
    from prefixgate.connections import Door, with_door

    base = {"httptools": HttpToolsProtocol, "h11": H11Protocol}[request.param]
    settings = Settings(header_timeout=HEADER_TIMEOUT, max_connections=4, max_header_bytes=1024)
    app = Starlette(routes=[Route("/", ok)])
    config = uvicorn.Config(
        app,
        http=with_door(base, Door.of(settings)),
        ws="none",
        log_config=None,
        lifespan="off",
        h11_max_incomplete_event_size=64 * 1024,  # as serve sets it: above the door's
    )
    with ServerThread(app, uvicorn.Server(config)) as server:
        yield server.port


def get(port: int) -> int:
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return read_answer(sock)[0]


def test_the_server_wide_connection_cap_and_the_head_limits(small_door: int) -> None:
    """Defect 3 (slowloris before auth): no cap on the connections held in all;
    with httptools a head of any size was read. Beyond ``max_connections`` a new
    connection is answered 503 at once; a head beyond the header limit gets 431;
    a connection closed for a slow head frees its place."""
    port = small_door
    held = [connect(port) for _ in range(4)]
    with connect(port) as extra:
        status, _, body = read_answer(extra)
    assert status == 503, body
    assert "max_connections=4" in json.loads(body)["error"]["message"]
    for sock in held:
        with sock:
            assert closed_by_server(sock)
    with connect(port) as big:
        big.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: " + b"p" * 40_000)
        assert read_answer(big)[0] == 431
    assert get(port) == 200


def test_a_kept_alive_connection_gets_the_head_deadline_again(small_door: int) -> None:
    """Defect 3 (slowloris before auth): after one answer on a kept-alive
    connection, the first byte of the next head stopped uvicorn's keep-alive
    timer and nothing else bounded the head."""
    with connect(small_door) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"ok"):
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        sock.sendall(b"G")
        assert closed_by_server(sock)
