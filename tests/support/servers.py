"""Servers on loopback for tests: uvicorn in a daemon thread on a free port."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


def server_config(app: Any, **options: Any) -> uvicorn.Config:
    """uvicorn's config as the tests run it: h11, no websockets, no logging."""
    return uvicorn.Config(
        app, http="h11", ws="none", lifespan="on", log_config=None, access_log=False, **options
    )


class ServerThread:
    """uvicorn (or ``server``) for ``app`` on a free loopback port, in a daemon thread."""

    def __init__(self, app: Any, server: uvicorn.Server | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = server or uvicorn.Server(server_config(app))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "the server thread died while starting"
            assert time.monotonic() < deadline, "the server did not start in 30 s"
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def free_port() -> int:
    """A loopback port nothing listens on (free when this returns)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
