"""One real ``prefixgate serve`` process per module, in front of a hostile upstream.

The gateway runs as users run it (``python -m prefixgate serve --config``),
with the upstream's credentials in its URL (``user:password@``) and an API key
from ``api_key_env``; its log and its JSON-lines audit file are read back.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
from support.hostile import UPSTREAM_KEY, URL_PASSWORD, URL_USER, HostileUpstream, Running
from support.servers import ServerThread, free_port

from prefixgate.demo import ManagedProcess


@pytest.fixture(scope="module")
def hostile_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("security")
    upstream = HostileUpstream()
    with ServerThread(upstream.app) as server:
        port = free_port()
        audit = folder / "audit.jsonl"
        config = folder / "prefixgate.toml"
        config.write_text(
            f'[server]\nport = {port}\naudit_path = "{audit}"\n'
            f"[upstreams.hostile]\n"
            f'url = "http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:{server.port}"\n'
            f'api_key_env = "PG_TEST_UPSTREAM_KEY"\n'
            "max_answer_bytes = 1048576\n",
            encoding="utf-8",
        )
        env = {**os.environ, "PG_TEST_UPSTREAM_KEY": UPSTREAM_KEY}
        gateway = ManagedProcess(
            "gateway",
            [sys.executable, "-m", "prefixgate", "serve", "--config", str(config)],
            f"http://127.0.0.1:{port}/healthz",
            env=env,
            keep_log=True,
        )
        with gateway:
            yield Running(f"http://127.0.0.1:{port}", upstream, audit, gateway)
