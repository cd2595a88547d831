"""The one place that reads the config file and the environment.

``build_settings`` is pure: it merges the file, the environment and the flags,
each given as a plain mapping (later ones win). ``load_settings`` reads the
TOML file and ``os.environ`` and calls it. ``env_path`` serves the few
variables read outside ``Settings`` (the demo's corpus, the runtime's cache).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefixgate.config.routing import read_routes
from prefixgate.config.server import (
    Settings,
    check_exposure,
    read_audit_path,
    read_state_url,
    server_settings,
)
from prefixgate.config.tenants import read_tenants
from prefixgate.config.upstream import upstream_from_table
from prefixgate.config.values import ConfigError, read_choice, read_policy, read_table
from prefixgate.core.policy import Policy

ENV_PREFIX = "PREFIXGATE_"
CONFIG_ENV = "PREFIXGATE_CONFIG"
CORPUS_ENV = "PREFIXGATE_CORPUS"  # the recorded session file the demo replays
CACHE_DIR_ENV = "PREFIXGATE_CACHE_DIR"  # where the bundled runtime's model is assembled
# ``[server]`` keys an environment variable (PREFIXGATE_ + the upper-case key) may set
SERVER_ENV = (
    "host",
    "port",
    "max_body_bytes",
    "audit_path",
    "capture_bodies",
    "allow_unauthenticated",
    "saved_prefix_bytes",
)
SERVER_FLAGS = (
    "host",
    "port",
    "audit_path",
    "allow_unauthenticated",
    "allowed_hosts",
    "saved_prefix_bytes",
)


def environment() -> Mapping[str, str]:
    """The process environment; nothing else in the package reads ``os.environ``."""
    return os.environ


def env_path(var: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """The path ``var`` names (``~`` expanded), or None when it is unset or blank."""
    value = (environment() if environ is None else environ).get(var, "").strip()
    return Path(value).expanduser() if value else None


def default_audit_path(env: Mapping[str, str]) -> str | None:
    """``$XDG_STATE_HOME/prefixgate/audit.db`` (``~/.local/state`` when unset)."""
    state = env.get("XDG_STATE_HOME") or (
        str(Path(env["HOME"]) / ".local" / "state") if env.get("HOME") else None
    )
    return str(Path(state) / "prefixgate" / "audit.db") if state else None


def load_settings(
    config_path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the config file (flag, else ``PREFIXGATE_CONFIG``) and the environment."""
    env = dict(environment() if environ is None else environ)
    path = config_path or env.get(CONFIG_ENV)
    file: dict[str, Any] = {}
    if path:
        try:
            file = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return build_settings(file, env, flags or {})


def build_settings(
    file: Mapping[str, Any], env: Mapping[str, str], flags: Mapping[str, Any]
) -> Settings:
    """Merge the file, the environment and the flags (later wins) into Settings.

    A policy given by flag or environment applies to every upstream and route.
    """
    server = _server_table(file, env, flags)
    tables, single = _upstream_tables(file, env, flags)
    policy = _policy_override(env, flags)
    if policy is not None:
        tables = {name: {**table, "policy": policy.value} for name, table in tables.items()}
    upstreams = {name: upstream_from_table(name, t, env) for name, t in tables.items()}
    routes = read_routes(file.get("routes", []), upstreams, single)
    if policy is not None:
        routes = tuple(replace(r, policy=None) for r in routes)
    upstream_kind = flags.get("upstream_kind") or env.get("PREFIXGATE_UPSTREAM_KIND")
    settings = Settings(
        **server_settings(server),
        audit_path=read_audit_path(
            server.get("audit_path") or env.get("PREFIXGATE_AUDIT_PATH"),
            default_audit_path(env),
        ),
        record_path=flags.get("record") or server.get("record_path") or None,
        upstreams=upstreams,
        routes=routes,
        policy_override=policy,
        upstream_kind=read_choice("--upstream-kind", upstream_kind or "anthropic", _kinds()),
        state_url=read_state_url(
            flags.get("state") or env.get("PREFIXGATE_STATE_URL") or server.get("state_url")
        ),
        tenants=read_tenants(file.get("tenants", {}), upstreams),
    )
    check_exposure(settings)
    return settings


def _server_table(
    file: Mapping[str, Any], env: Mapping[str, str], flags: Mapping[str, Any]
) -> dict[str, Any]:
    """``[server]`` with the ``PREFIXGATE_*`` variables, then the flags, over it."""
    server = read_table("server", file.get("server", {}))
    for key in SERVER_ENV:
        var = ENV_PREFIX + key.upper()
        if var in env:
            server[key] = env[var]
    server.update({k: v for k, v in flags.items() if k in SERVER_FLAGS and v is not None})
    return server


def _upstream_tables(
    file: Mapping[str, Any], env: Mapping[str, str], flags: Mapping[str, Any]
) -> tuple[dict[str, dict[str, Any]], bool]:
    """The ``[upstreams.*]`` tables, or the one ``--upstream`` / ``PREFIXGATE_UPSTREAM``
    names, or ``--preset`` / ``PREFIXGATE_PRESET`` starts from (keeping the file's
    ``[upstreams.default]`` settings); True for the latter."""
    tables = {
        name: read_table(f"upstreams.{name}", t)
        for name, t in read_table("upstreams", file.get("upstreams", {})).items()
    }
    urls = _flag_urls(flags.get("upstream")) or _flag_urls(env.get("PREFIXGATE_UPSTREAM"))
    preset = flags.get("preset") or env.get("PREFIXGATE_PRESET")
    if not urls and not preset:
        return tables, False
    if urls:
        default = {k: v for k, v in tables.get("default", {}).items() if k not in ("url", "urls")}
        table = {**default, "urls": urls}
    else:  # the preset's URL, unless the file's [upstreams.default] names one
        table = dict(tables.get("default", {}))
    if preset:
        table["preset"] = preset
    kind = flags.get("upstream_kind") or env.get("PREFIXGATE_UPSTREAM_KIND")
    if kind:
        table["kind"] = kind
    if flags.get("routing"):
        table["routing"] = flags["routing"]
    if env.get("PREFIXGATE_UPSTREAM_API_KEY"):
        table["api_key"] = env["PREFIXGATE_UPSTREAM_API_KEY"]
    return {"default": table}, True


def _policy_override(env: Mapping[str, str], flags: Mapping[str, Any]) -> Policy | None:
    """The policy ``--policy`` (else ``PREFIXGATE_POLICY``) sets for every upstream."""
    where, override = ("--policy", flags.get("policy"))
    if not override:
        where, override = ("PREFIXGATE_POLICY", env.get("PREFIXGATE_POLICY"))
    return None if not override else read_policy(where, override, Policy.STRIP)


def _flag_urls(value: Any) -> list[str]:
    """``--upstream`` given once or more, or a comma-separated environment value."""
    if not value:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def _kinds() -> tuple[str, ...]:
    """The upstream kinds' names (imported here: the kinds import the config)."""
    from prefixgate.upstreams.registry import KINDS

    return tuple(KINDS)
