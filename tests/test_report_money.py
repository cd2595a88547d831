"""Money the cache saved, at the user's prices: report, JSON, CLI and dashboard.

saved = cached tokens x (price_input - price_cached) / 1e6, per upstream and
model, over measured requests only; nothing at all when no prices are set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from prefixgate.app.dashboard import render_dashboard
from prefixgate.cli import main
from prefixgate.config import build_settings
from prefixgate.report import (
    MoneyRow,
    Prices,
    build_report,
    format_money,
    prices_of,
    render_report,
    report_json,
)
from prefixgate.store.audit import AuditRecord
from prefixgate.store.sinks import open_audit

T0 = 1_750_000_000.0
PRICES = {"paid": Prices(input=3.0, cached=0.3, output=15.0)}


def rec(**kw: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "time": T0,
        "route": "/v1/messages",
        "tenant": "acme",
        "session": "s1",
        "model": "m-large",
        "upstream": "paid",
        "policy": "strip",
        "status": 200,
        "agent": "main",
    }
    fields.update(kw)
    return AuditRecord(**fields)


def records() -> list[AuditRecord]:
    return [
        rec(prompt_tokens=10_000, cached_tokens=0),
        rec(prompt_tokens=12_000, cached_tokens=10_000),
        rec(prompt_tokens=12_000, cached_tokens=1_000_000, model="m-small", session="s2"),
        rec(prompt_tokens=12_000, cached_tokens=None),  # unknown: no money either
        rec(prompt_tokens=12_000, cached_tokens=5_000, status=502, error="no"),  # error
        rec(prompt_tokens=12_000, cached_tokens=7_000, upstream="free"),  # no prices
    ]


def show(renderable: Any) -> str:
    console = Console(record=True, width=240)
    console.print(renderable)
    return console.export_text()


def test_saved_is_cached_tokens_times_the_price_difference_per_million() -> None:
    assert Prices(3.0, 0.3).saved(1_000_000) == pytest.approx(2.7)
    report = build_report(records(), PRICES)
    assert report.totals.money_saved == pytest.approx((10_000 + 1_000_000) * 2.7 / 1e6)
    assert report.money == (
        MoneyRow("paid", "m-small", 1, 1_000_000, 3.0, 0.3, pytest.approx(2.7)),
        MoneyRow("paid", "m-large", 2, 10_000, 3.0, 0.3, pytest.approx(0.027)),
    )
    by_session = {row.session: row.totals.money_saved for row in report.sessions}
    assert by_session == {"s1": pytest.approx(0.027), "s2": pytest.approx(2.7)}


def test_no_prices_no_money() -> None:
    for report in (build_report(records()), build_report(records(), {"other": Prices(1, 0)})):
        assert report.totals.money_saved is None
        assert report.money == ()
        text = show(render_report(report))
        assert "money" not in text and "Saved at your prices" not in text
        assert report_json(report)["money"] == []
        assert report_json(report)["totals"]["money_saved"] is None


def test_a_priced_upstream_with_only_unknown_cache_shows_no_money() -> None:
    report = build_report([rec(prompt_tokens=100, cached_tokens=None)], PRICES)
    assert report.totals.money_saved is None and report.money == ()


def test_render_shows_money_beside_tokens_and_time() -> None:
    text = show(render_report(build_report(records(), PRICES)))
    assert "Saved at your prices (per million tokens)" in text
    assert "money" in text and "saved" in text
    assert "m-small" in text and "1,000,000" in text and "3 - 0.3" in text
    assert "2.70" in text and "0.03" in text
    assert text.rstrip().endswith("money saved 2.73")


def test_json_carries_the_money() -> None:
    data = report_json(build_report(records(), PRICES))
    assert data["totals"]["money_saved"] == pytest.approx(2.727)
    assert [(row["model"], row["cached_tokens"]) for row in data["money"]] == [
        ("m-small", 1_000_000),
        ("m-large", 10_000),
    ]
    json.dumps(data)


@pytest.mark.parametrize(
    ("value", "text"), [(None, "unknown"), (0.0, "0.00"), (0.0042, "0.0042"), (1234.5, "1,234.50")]
)
def test_format_money(value: float | None, text: str) -> None:
    assert format_money(value) == text


def test_prices_come_from_the_upstreams_config() -> None:
    file = {
        "upstreams": {
            "paid": {"preset": "deepseek", "api_key": "k", "price_input": 2, "price_cached": 0.5},
            "local": {"preset": "llama.cpp"},
        }
    }
    prices = prices_of(build_settings(file, {}, {}).upstreams)
    assert prices == {"paid": Prices(2.0, 0.5, None)}


def test_report_command_reads_prices_from_its_config(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    sink = open_audit(str(audit))
    for i, r in enumerate(records()):
        sink.record(r.__class__(**{**r.to_dict(), "request_id": f"r{i}"}))
    sink.close()
    config = tmp_path / "prefixgate.toml"
    config.write_text(
        "[upstreams.paid]\nurl = 'https://api.example.com'\n"
        "price_input = 3.0\nprice_cached = 0.3\nprice_output = 15.0\n",
        encoding="utf-8",
    )
    args = ["report", "--db", str(audit), "--tenant", "acme"]
    priced = CliRunner().invoke(main, [*args, "--config", str(config), "--json"])
    assert priced.exit_code == 0, priced.output
    assert json.loads(priced.stdout)["totals"]["money_saved"] == pytest.approx(2.727)
    plain = CliRunner().invoke(main, [*args, "--json"], env={"PREFIXGATE_CONFIG": ""})
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout)["totals"]["money_saved"] is None


def test_dashboard_shows_money_only_with_prices() -> None:
    page = render_dashboard(records(), prices=PRICES)
    assert 'data-total="money_saved"' in page and 'id="money"' in page
    assert "Saved at your prices" in page and "m-small" in page
    bare = render_dashboard(records())
    assert "money_saved" not in bare and 'id="money"' not in bare


async def test_the_gateways_report_and_dashboard_use_the_configured_prices() -> None:
    from support.app import running

    from prefixgate.app.gateway import create_app
    from prefixgate.store.audit import MemoryAudit

    file = {
        "upstreams": {
            "paid": {"url": "http://127.0.0.1:9", "price_input": 3.0, "price_cached": 0.3},
        }
    }
    settings = build_settings(file, {}, {"audit_path": "memory"})
    audit = MemoryAudit()
    for i, r in enumerate(records()):
        audit.record(
            r.__class__(**{**r.to_dict(), "tenant": settings.tenant, "request_id": f"r{i}"})
        )
    async with running(create_app(settings, audit=audit)) as client:
        report = (await client.get("/report")).json()
        page = (await client.get("/dashboard")).text
    assert report["totals"]["money_saved"] == pytest.approx(2.727)
    assert [row["model"] for row in report["money"]] == ["m-small", "m-large"]
    assert 'data-total="money_saved"' in page
