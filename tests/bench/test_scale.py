"""bench/scale.py without llama-server or smg: the gateway config and smg command
line of each way, smg's counts read from its metrics, and a run's summary."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from support.benchscripts import load_script

from prefixgate.config import build_settings
from prefixgate.core.affinity import AffinityHeaders

A, B = "http://127.0.0.1:8001", "http://127.0.0.1:8002"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("scale")


def test_the_plan_adds_the_smg_ways_per_replica_count_above_one(bench: ModuleType) -> None:
    plain = bench.plan([1, 2], ["prefix_affinity", "round_robin"], "none")
    assert [(n, w.name) for n, w in plain] == [
        (1, "prefix_affinity"),
        (2, "prefix_affinity"),
        (2, "round_robin"),
    ]
    assert all(w.router_policy is None for _, w in plain)
    routed = bench.plan([2], ["prefix_affinity"], "smg")
    assert [(w.name, w.router_policy, w.key) for _, w in routed] == [
        ("prefix_affinity", None, False),
        ("smg consistent_hashing, prefix key", "consistent_hashing", True),
        ("smg cache_aware, no key", "cache_aware", False),
    ]


def test_each_way_is_the_upstream_config_it_names(bench: ModuleType) -> None:
    built_in, keyed, unkeyed = (w for _, w in bench.plan([2], ["prefix_affinity"], "smg"))
    local = tomllib.loads(bench.gateway_config(built_in, [A, B], None))
    upstream = build_settings(local, {}, {}).upstreams["local"]
    assert (upstream.urls, upstream.routing) == ((A, B), "prefix_affinity")
    assert upstream.affinity_headers is None
    for way, headers in ((keyed, AffinityHeaders("X-SMG-Routing-Key", "x-session-id")),
                         (unkeyed, None)):  # fmt: skip
        file = tomllib.loads(bench.gateway_config(way, [A, B], "http://127.0.0.1:30000"))
        upstream = build_settings(file, {}, {}).upstreams["local"]
        assert (upstream.kind, upstream.url) == ("anthropic", "http://127.0.0.1:30000")
        assert upstream.affinity_headers == headers


def test_smg_gets_the_replicas_and_every_model_as_an_alias(bench: ModuleType) -> None:
    model = Path("/models/gemma.gguf")
    replicas = [
        SimpleNamespace(base_url=url, active_spec=SimpleNamespace(model=model)) for url in (A, B)
    ]
    way = bench.SMG_WAYS[0]
    command = bench.smg_command("smg", way, 30000, 30001, replicas, ["m2", "m1", "m2"])
    line = " ".join(command)
    assert line.startswith(f"smg launch --host 127.0.0.1 --port 30000 --worker-urls {A} {B} ")
    assert "--policy consistent_hashing" in line
    assert command.count("--model-alias") == 2
    assert f"--model-alias m1={model} --model-alias m2={model}" in line
    assert "--prometheus-port 30001" in line


def test_smg_counts_are_read_per_worker(bench: ModuleType) -> None:
    text = "\n".join(
        [
            "# TYPE smg_worker_requests_total counter",
            'smg_worker_selection_total{worker_type="regular",model="m",policy="x"} 32',
            f'smg_worker_requests_total{{worker="{A}",model="m"}} 20',
            f'smg_worker_requests_total{{worker="{B}",model="m"}} 12',
            'smg_worker_requests_total{worker="http://elsewhere:1",model="m"} 5',
            'smg_consistent_hashing_policy_branch_total{branch="routing_key_hit"} 30',
            'smg_consistent_hashing_policy_branch_total{branch="random_fallback"} 2',
            'smg_cache_aware_policy_branch_total{branch="tree_match"} 21',
            f'smg_worker_requests_active{{worker="{A}"}} 0',
        ]
    )
    requests, branches = bench.router_counts(text, [A, B])
    assert requests == [20, 12]
    assert branches == {"routing_key_hit": 30.0, "random_fallback": 2.0, "tree_match": 21.0}


def record(session: str, agent: str, replica: str | None, prompt: int, cached: int) -> object:
    return SimpleNamespace(
        status=200, error=None, session=session, agent=agent, replica=replica,
        prompt_tokens=prompt, cached_tokens=cached, expected_cached_tokens=cached,
        key=f"head of {session}",
    )  # fmt: skip


def test_the_summary_of_a_run_the_gateway_placed(bench: ModuleType) -> None:
    audited = [
        record("s1", "main", A, 1000, 0),
        record("s1", "main", A, 1200, 1000),
        record("s2", "main", B, 1000, 0),
        record("s2", "main", A, 1200, 0),  # moved
    ]
    counters = [(1400, 1000), (1000, 0)]  # (computed, cached) per replica
    r = bench.summarize("prefix_affinity", [A, B], audited, counters, 1.0)
    assert r["requests_per_replica"] == [3, 1]
    assert r["computed_tokens_per_replica"] == [2400, 1000]
    assert (r["conversations_on_one_replica"], r["conversations"]) == (1, 2)
    assert r["prefix_keys"] == 2
    assert r["runtime_share_per_replica"] == [1000 / 2400, 0.0]
    assert r["runtime_share"] == 1000 / 3400
    assert r["cached_share"] == 1000 / 4400


def test_the_summary_of_a_run_smg_placed(bench: ModuleType) -> None:
    audited = [record("s1", "main", None, 1000, 0), record("s1", "main", None, 1200, 1000)]
    counters = [(1200, 1000), (0, 0)]
    routed = ([2, 0], {"routing_key_hit": 2.0})
    r = bench.summarize("smg", [A, B], audited, counters, 1.0, routed)
    assert r["requests_per_replica"] == [2, 0]
    assert r["computed_tokens_per_replica"] == [1200, 0]
    assert r["conversations_on_one_replica"] is None  # smg does not say where each went
    assert r["runtime_share_per_replica"] == [1000 / 2200, 0.0]
    assert r["router_branches"] == {"routing_key_hit": 2.0}
