"""server.saved_prefix_bytes: the bundled runtime's saved prefixes, their cap on
disk (0 turns them off), from the file, the environment or --saved-prefix-bytes."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from prefixgate import cli
from prefixgate.config import ConfigError, build_settings
from prefixgate.config.server import DEFAULT_SAVED_PREFIX_BYTES


def test_on_by_default_with_a_cap() -> None:
    assert build_settings({}, {}, {}).saved_prefix_bytes == DEFAULT_SAVED_PREFIX_BYTES > 0


def test_the_file_the_environment_and_the_flag() -> None:
    file = {"server": {"saved_prefix_bytes": 1000}}
    assert build_settings(file, {}, {}).saved_prefix_bytes == 1000
    env = {"PREFIXGATE_SAVED_PREFIX_BYTES": "0"}
    assert build_settings(file, env, {}).saved_prefix_bytes == 0
    flags = {"saved_prefix_bytes": 5}
    assert build_settings(file, env, flags).saved_prefix_bytes == 5


def test_a_negative_cap_is_refused() -> None:
    with pytest.raises(ConfigError, match="saved_prefix_bytes"):
        build_settings({"server": {"saved_prefix_bytes": -1}}, {}, {})


def test_serve_passes_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def run(settings: object, *, log_level: str) -> None:
        seen["settings"] = settings

    monkeypatch.setattr("prefixgate.server.run", run)
    result = CliRunner().invoke(cli.main, ["serve", "--saved-prefix-bytes", "0"])
    assert result.exit_code == 0, result.output
    assert seen["settings"].saved_prefix_bytes == 0  # type: ignore[attr-defined]
    refused = CliRunner().invoke(cli.main, ["serve", "--saved-prefix-bytes", "-3"])
    assert refused.exit_code != 0
