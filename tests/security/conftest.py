"""One real ``prefixgate serve`` process per module, in front of a hostile upstream.

The gateway runs as users run it (``python -m prefixgate serve --config``),
with the upstream's credentials in its URL (``user:password@``) and an API key
from ``api_key_env``; its log and its JSON-lines audit file are read back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from support.hostile import (
    UPSTREAM_KEY,
    URL_PASSWORD,
    URL_USER,
    HostileUpstream,
    Running,
    serve_config,
)
from support.servers import ServerThread


@pytest.fixture(scope="module")
def hostile_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("security")
    upstream = HostileUpstream()
    audit = folder / "audit.jsonl"
    env = {**os.environ, "PG_TEST_UPSTREAM_KEY": UPSTREAM_KEY}
    with ServerThread(upstream.app) as server:
        upstreams = (
            "[upstreams.hostile]\n"
            f'url = "http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:{server.port}"\n'
            'api_key_env = "PG_TEST_UPSTREAM_KEY"\n'
            "max_answer_bytes = 1048576\n"
        )
        server_lines = f'audit_path = "{audit}"\n'
        with serve_config(folder, server_lines, upstreams, env=env, keep_log=True) as (port, gw):
            yield Running(f"http://127.0.0.1:{port}", upstream, audit, gw)
