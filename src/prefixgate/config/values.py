"""The typed readers every settings table goes through, and the one error they raise.

Each reader takes ``where`` (the setting's dotted name, as the operator wrote
it) so a bad value is refused with a message naming the setting and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefixgate.core.policy import Policy

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and why."""


def read_table(where: str, value: Any) -> dict[str, Any]:
    """``value`` as a (copied) TOML table."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: a table is required, got {value!r}")
    return dict(value)


def read_int(where: str, value: Any, low: int = 0, high: int | None = None) -> int:
    """An integer within ``low..high`` (no upper bound when ``high`` is None)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: an integer is required, got {value!r}") from None
    if number < low or (high is not None and number > high):
        raise ConfigError(f"{where}: {number} is out of range ({low}..{high or 'any'})")
    return number


def read_seconds(where: str, table: Mapping[str, Any], default: float) -> float:
    """A positive number of seconds, read from ``table`` under the last part of ``where``."""
    value = table.get(where.rsplit(".", 1)[1], default)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: a number of seconds is required, got {value!r}") from None
    if not seconds > 0:
        raise ConfigError(f"{where}: must be positive, got {value!r}")
    return seconds


def read_factor(where: str, value: Any) -> float:
    """A number of 1.0 or more."""
    try:
        factor = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: a number is required, got {value!r}") from None
    if not factor >= 1.0:
        raise ConfigError(f"{where}: must be 1.0 or more, got {value!r}")
    return factor


def read_flag(where: str, value: Any) -> bool:
    """A boolean, or one of the words an environment variable may carry."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def read_choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


def read_policy(where: str, value: Any, default: Policy) -> Policy:
    """An attribution policy by name; ``default`` when not given."""
    if value is None:
        return default
    try:
        return Policy.parse(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
