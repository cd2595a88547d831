"""Tenants: the ``[tenants.NAME]`` tables, each with its key digests and limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefixgate.config.upstream import UpstreamConfig
from prefixgate.config.values import ConfigError, read_flag, read_int, read_table
from prefixgate.core.auth import Tenant, is_digest


def read_tenants(tables: Any, upstreams: Mapping[str, UpstreamConfig]) -> tuple[Tenant, ...]:
    """Every tenant in file order; no key digest may belong to two of them."""
    out: list[Tenant] = []
    seen: set[str] = set()
    for name, value in read_table("tenants", tables).items():
        where = f"tenants.{name}"
        table = read_table(where, value)
        keys = _keys(where, table, seen)
        allowed = table.get("upstreams")
        if allowed is not None:
            if not isinstance(allowed, list) or not all(a in upstreams for a in allowed):
                raise ConfigError(f"{where}.upstreams: a list of configured upstream names")
            allowed = tuple(allowed)
        limit = table.get("max_concurrent")
        out.append(
            Tenant(
                name=str(name),
                key_digests=keys,
                admin=read_flag(f"{where}.admin", table.get("admin", False)),
                upstreams=allowed,
                max_concurrent=None
                if limit is None
                else read_int(f"{where}.max_concurrent", limit, 1),
            )
        )
    return tuple(out)


def _keys(where: str, table: Mapping[str, Any], seen: set[str]) -> tuple[str, ...]:
    """The tenant's key digests; each is added to ``seen``."""
    keys = table.get("keys", [])
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"{where}.keys: a non-empty list of key digests is required")
    for key in keys:
        if not is_digest(key):
            raise ConfigError(
                f"{where}.keys: {key[:10]}... is not a key digest; write the "
                "sha256:... line `prefixgate keygen` prints, never the key itself"
            )
        if key in seen:
            raise ConfigError(f"{where}.keys: a key digest is given to two tenants")
        seen.add(key)
    return tuple(keys)
