"""Two tenants on one real ``prefixgate serve``: nothing of one reaches the other's rows,
report or metrics (issue: hostile clients, tenants and upstreams, defect 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from support.hostile import HostileUpstream, row_of, serve_config
from support.servers import ServerThread

from prefixgate.core.auth import hash_key

ALPHA, BETA = "pg-alpha-key-0001", "pg-beta-key-0002"
SECRET = "AlphaLedgerTool"


def request(system: str, tools: list[str]) -> dict[str, Any]:
    return {
        "model": "plain",
        "max_tokens": 8,
        "system": system,
        "tools": [
            {"name": name, "description": f"{name} does things", "input_schema": {"type": "object"}}
            for name in tools
        ],
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_a_tenants_miss_detail_never_shows_another_tenants_prompt(tmp_path: Path) -> None:
    """Defect 1: a tenant's first request of a session was compared with the upstream's
    last request, another tenant's, whose first differing system line and tool names
    then showed in this tenant's audit rows, report, dashboard and metrics labels."""
    upstream = HostileUpstream()
    with ServerThread(upstream.app) as server:
        audit = tmp_path / "audit.db"
        rest = (
            f'[upstreams.u]\nurl = "{server.url}"\n'
            f'[tenants.alpha]\nkeys = ["{hash_key(ALPHA)}"]\n'
            f'[tenants.beta]\nkeys = ["{hash_key(BETA)}"]\n'
        )
        with (
            serve_config(tmp_path, f'audit_path = "{audit}"\n', rest) as (port, _),
            httpx.Client(timeout=30, trust_env=False) as client,
        ):
            url = f"http://127.0.0.1:{port}"
            alpha_body = request("You help with the alpha ledger.\nLedger secret line.", [SECRET])
            beta_body = request("You help with the alpha ledger.\nBeta line.", ["BetaTool"])
            sent = client.post(f"{url}/v1/messages", json=alpha_body, headers={"x-api-key": ALPHA})
            assert sent.status_code == 200
            beta = client.post(f"{url}/v1/messages", json=beta_body, headers={"x-api-key": BETA})
            assert beta.status_code == 200
            row = row_of(audit, beta)
            metrics = client.get(f"{url}/metrics", headers={"x-api-key": BETA}).text
            dashboard = client.get(f"{url}/dashboard", headers={"x-api-key": BETA}).text
    shown = json.dumps(row)
    assert row["tenant"] == "beta"
    assert row["expected_cached_tokens"] in (0, None)
    assert row["changed_segment"] is None and row["cause_detail"] is None
    report = subprocess.run(
        [sys.executable, "-m", "prefixgate", "report", "--db", str(audit), "--tenant", "beta"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    for where, text in (("row", shown), ("report", report), ("metrics", metrics),
                        ("dashboard", dashboard)):  # fmt: skip
        assert SECRET not in text and "Ledger secret line" not in text, where
