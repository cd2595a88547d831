"""bench/cluster_router.py without the router: its gateway configs read as meant, and
its fake worker, driven through the gateway in memory, answers both shapes and sees
the affinity headers the gateway adds."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from support.app import running
from support.benchscripts import load_script

from prefixgate.app.gateway import create_app
from prefixgate.config import build_settings
from prefixgate.core.affinity import AffinityHeaders
from prefixgate.store.audit import MemoryAudit


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("cluster_router")


def test_each_way_is_the_upstream_config_it_names(bench: ModuleType) -> None:
    expected = {
        "prefix key": AffinityHeaders("X-SMG-Routing-Key", "x-session-id"),
        "session": AffinityHeaders(None, "X-SMG-Routing-Key"),
        "default pair": AffinityHeaders("x-prefixgate-prefix-key", "x-session-id"),
        "sglang preset": AffinityHeaders("X-SMG-Routing-Key", "x-session-id"),
        "none": None,
    }
    assert set(bench.WAYS) == set(expected)
    for name, way in bench.WAYS.items():
        file = tomllib.loads(bench.config_toml("http://router:1", Path("/tmp/a.db"), way))
        upstream = build_settings(file, {}, {}).upstreams["cluster"]
        kind = "anthropic" if name == "sglang preset" else "openai"
        assert (upstream.kind, upstream.url) == (kind, "http://router:1")
        assert upstream.affinity_headers == expected[name]


@pytest.mark.parametrize("way", ["prefix key", "sglang preset"])
async def test_the_worker_answers_with_its_name_and_sees_the_session(
    bench: ModuleType, way: str
) -> None:
    seen: list[dict[str, Any]] = []
    worker = httpx.ASGITransport(app=bench.worker_app("worker-a", seen))
    file = tomllib.loads(bench.config_toml("http://w.test", Path("x"), bench.WAYS[way]))
    file["server"] = {"audit_path": "memory"}
    app = create_app(build_settings(file, {}, {}), transport=worker, audit=MemoryAudit())
    convs = bench.conversations(sessions=4, prompts=2, turns=2)
    async with running(app) as client:
        sent = await bench.drive(client, convs)
    assert [row["worker"] for row in sent] == ["worker-a"] * 8  # streamed and whole answers
    assert [row["session"] for row in seen] == [c["session"] for c in convs] * 2
    summary = bench.summarise(sent, {"routing_key_hit": 8.0})
    assert summary["per_worker"] == {"worker-a": 8}
    assert (summary["sessions_on_one_worker"], summary["heads_on_one_worker"]) == (4, 2)
