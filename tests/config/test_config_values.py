"""The typed readers: each names the setting it refuses and says why."""

from __future__ import annotations

from typing import Any

import pytest

from prefixgate.config import ConfigError
from prefixgate.config.values import (
    read_choice,
    read_factor,
    read_flag,
    read_int,
    read_policy,
    read_seconds,
    read_table,
)
from prefixgate.core.policy import Policy


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("YES", True), ("on", True), ("0", False), ("Off", False)],
)
def test_read_flag(value: Any, expected: bool) -> None:
    assert read_flag("x.flag", value) is expected


@pytest.mark.parametrize("value", ["maybe", "", 1, None])
def test_read_flag_refuses_anything_else(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^x\.flag: expected true or false, got "):
        read_flag("x.flag", value)


def test_read_int_bounds() -> None:
    assert read_int("x.n", "7", 1, 10) == 7
    with pytest.raises(ConfigError, match=r"^x\.n: 11 is out of range \(1\.\.10\)$"):
        read_int("x.n", 11, 1, 10)
    with pytest.raises(ConfigError, match=r"^x\.n: 0 is out of range \(1\.\.any\)$"):
        read_int("x.n", 0, 1)
    with pytest.raises(ConfigError, match=r"^x\.n: an integer is required, got 'seven'$"):
        read_int("x.n", "seven")


def test_read_seconds_takes_the_key_from_the_last_part_of_where() -> None:
    assert read_seconds("upstreams.a.pin_idle", {"pin_idle": "2.5"}, 600.0) == 2.5
    assert read_seconds("upstreams.a.pin_idle", {}, 600.0) == 600.0
    with pytest.raises(ConfigError, match=r"^upstreams\.a\.pin_idle: must be positive, got 0$"):
        read_seconds("upstreams.a.pin_idle", {"pin_idle": 0}, 600.0)


def test_read_factor_is_at_least_one() -> None:
    assert read_factor("x.f", "1.5") == 1.5
    with pytest.raises(ConfigError, match=r"^x\.f: must be 1\.0 or more, got 0\.9$"):
        read_factor("x.f", 0.9)
    with pytest.raises(ConfigError, match=r"^x\.f: a number is required, got 'big'$"):
        read_factor("x.f", "big")


def test_read_choice_table_and_policy() -> None:
    assert read_choice("x.c", "b", ("a", "b")) == "b"
    with pytest.raises(ConfigError, match=r"^x\.c: expected one of a, b, got 'z'$"):
        read_choice("x.c", "z", ("a", "b"))
    table = {"k": 1}
    assert read_table("x", table) == table and read_table("x", table) is not table
    with pytest.raises(ConfigError, match=r"^x: a table is required, got \[\]$"):
        read_table("x", [])
    assert read_policy("x.p", None, Policy.STRIP) is Policy.STRIP
    assert read_policy("x.p", "normalize", Policy.STRIP) is Policy.NORMALIZE
    with pytest.raises(ConfigError, match=r"^x\.p: unknown policy"):
        read_policy("x.p", "bogus", Policy.STRIP)
