"""The server: ``Settings`` (everything ``serve`` runs with) and the ``[server]`` table.

The ``[server]`` table holds where the gateway listens, where it writes its
audit records and the limits each request is checked against.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlsplit

from prefixgate.config.routing import Route
from prefixgate.config.upstream import UpstreamConfig, upstream_from_table
from prefixgate.config.values import ConfigError, read_flag, read_int, read_seconds
from prefixgate.core.auth import Tenant
from prefixgate.core.limits import Limits
from prefixgate.core.policy import Policy

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_MAX_BODY = 32 * 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
DEFAULT_MAX_CONCURRENT = 64
DEFAULT_MAX_ACTIVE = 64
DEFAULT_BODY_IDLE_TIMEOUT = 30.0
DEFAULT_BODY_TIMEOUT = 120.0
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 4096
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 256
#: The bundled runtime's saved prefixes on disk, at most (``server.saved_prefix_bytes``;
#: 0 turns saving and restoring off). A saved prefix of the bundled model is about
#: 3 KiB per token plus 7.5 MiB (a 1,649-token one: 12.4 MiB; 20,000 tokens: about 70 MB).
DEFAULT_SAVED_PREFIX_BYTES = 4 * 1024**3
LOOPBACK_NAMES = ("localhost",)
IN_MEMORY = ("memory", "none")


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_body_bytes: int = DEFAULT_MAX_BODY
    tenant: str = "default"
    audit_path: str | None = None  # None: records are kept in memory only
    capture_bodies: bool = False
    record_path: str | None = None
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    policy_override: Policy | None = None
    upstream_kind: str = "anthropic"  # of the bundled runtime, when serve starts it
    state_url: str | None = None  # Redis URL for routing state shared between gateways
    shutdown_grace: float = 30.0  # on SIGTERM: how long streams under way may still run
    tenants: tuple[Tenant, ...] = ()  # with any, every request needs a key
    allow_unauthenticated: bool = False  # serve without keys beyond loopback
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_json_depth: int = 64
    max_messages: int = 10_000
    max_blocks: int = 100_000
    max_concurrent: int = DEFAULT_MAX_CONCURRENT  # per tenant
    max_active: int = DEFAULT_MAX_ACTIVE  # handled at once, all tenants; more wait
    body_idle_timeout: float = DEFAULT_BODY_IDLE_TIMEOUT  # longest pause inside a body (408)
    body_timeout: float = DEFAULT_BODY_TIMEOUT  # a whole body, from its first read (408)
    header_timeout: float = DEFAULT_HEADER_TIMEOUT  # a request head, from its first byte
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # open client connections, all addresses
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT  # per address
    # the door against web pages (core/door.py): Host names beyond loopback, IP
    # literals and ``host``; browser origins beyond the gateway's own ("*": any)
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    # X-Forwarded-* / Forwarded from clients: believed and passed upstream only if set
    trust_forwarded: bool = False
    # the bundled runtime's saved prefixes (app/saved.py): their cap in bytes; 0: off
    saved_prefix_bytes: int = DEFAULT_SAVED_PREFIX_BYTES

    @property
    def limits(self) -> Limits:
        """The limits every request body is checked against."""
        return Limits(self.max_json_depth, self.max_messages, self.max_blocks)

    @property
    def keyed(self) -> bool:
        """True when requests must carry a tenant's key."""
        return bool(self.tenants)

    def concurrency(self, tenant: Tenant | None) -> int:
        """How many requests ``tenant`` may have under way at once."""
        if tenant is not None and tenant.max_concurrent is not None:
            return tenant.max_concurrent
        return self.max_concurrent

    @property
    def embedded(self) -> bool:
        """True when no upstream is configured: serve starts the bundled runtime."""
        return not self.upstreams

    def route(self, model: str) -> tuple[UpstreamConfig, Policy] | None:
        """The upstream and policy for ``model``, or None when no route matches."""
        for route in self.routes:
            if route.matches(model):
                upstream = self.upstreams[route.upstream]
                return upstream, route.policy or upstream.policy
        return None

    def warnings(self) -> list[str]:
        """Settings that work but are probably not what the operator wants."""
        out = []
        for up in self.upstreams.values():
            if up.policy is Policy.PASSTHROUGH and not up.first_party:
                out.append(
                    f"upstream {up.name!r} forwards the attribution block unchanged "
                    "(passthrough) but is not first-party: its prefix cache will miss "
                    "on every new conversation and subagent"
                )
            if up.first_party and up.policy is not Policy.PASSTHROUGH:
                out.append(
                    f"upstream {up.name!r} is first-party but its policy is "
                    f"{up.policy.value}: Anthropic's API may refuse requests without the block"
                )
        return out

    def with_upstream(
        self,
        url: str | Sequence[str],
        kind: str | None = None,
        cache: Mapping[str, int] | None = None,
    ) -> Settings:
        """These settings with every route sent to one upstream at ``url`` (or replicas).

        ``cache``: the upstream's ``cache_slots`` / ``cache_tokens`` (the
        bundled runtime's, from its launch spec)."""
        urls = [url] if isinstance(url, str) else list(url)
        table: dict[str, Any] = {"urls": urls, "kind": kind or self.upstream_kind, **(cache or {})}
        if self.policy_override is not None:
            table["policy"] = self.policy_override.value
        up = upstream_from_table("default", table)
        return replace(self, upstreams={"default": up}, routes=(Route("*", "default"),))


class LimitSettings(TypedDict):
    """The request limits of ``Settings``: each breach is refused naming the limit."""

    max_header_bytes: int
    max_json_depth: int
    max_messages: int
    max_blocks: int
    max_concurrent: int
    max_active: int
    body_idle_timeout: float
    body_timeout: float
    header_timeout: float
    max_connections: int
    max_connections_per_client: int


class ServerSettings(LimitSettings):
    """The fields of ``Settings`` read from the ``[server]`` table alone (limits included)."""

    host: str
    port: int
    max_body_bytes: int
    tenant: str
    capture_bodies: bool
    shutdown_grace: float
    allow_unauthenticated: bool
    allowed_hosts: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    trust_forwarded: bool
    saved_prefix_bytes: int


def server_settings(server: Mapping[str, Any]) -> ServerSettings:
    """Listening address, body capture, shutdown and the limits, from ``[server]``."""
    return ServerSettings(
        host=str(server.get("host", DEFAULT_HOST)),
        port=read_int("server.port", server.get("port", DEFAULT_PORT), 1, 65535),
        max_body_bytes=read_int(
            "server.max_body_bytes", server.get("max_body_bytes", DEFAULT_MAX_BODY), 1
        ),
        tenant=str(server.get("tenant", "default")),
        capture_bodies=read_flag("server.capture_bodies", server.get("capture_bodies", False)),
        shutdown_grace=read_seconds("server.shutdown_grace", server, 30.0),
        allow_unauthenticated=read_flag(
            "server.allow_unauthenticated", server.get("allow_unauthenticated", False)
        ),
        allowed_hosts=read_names("server.allowed_hosts", server.get("allowed_hosts", [])),
        allowed_origins=read_names("server.allowed_origins", server.get("allowed_origins", [])),
        trust_forwarded=read_flag("server.trust_forwarded", server.get("trust_forwarded", False)),
        saved_prefix_bytes=read_int(
            "server.saved_prefix_bytes",
            server.get("saved_prefix_bytes", DEFAULT_SAVED_PREFIX_BYTES),
            0,
        ),
        **limit_settings(server),
    )


def limit_settings(server: Mapping[str, Any]) -> LimitSettings:
    """Header bytes, body shape, concurrency, slow-client and connection limits,
    from ``[server]``."""
    return LimitSettings(
        max_header_bytes=read_int(
            "server.max_header_bytes",
            server.get("max_header_bytes", DEFAULT_MAX_HEADER_BYTES),
            1024,
        ),
        max_json_depth=read_int("server.max_json_depth", server.get("max_json_depth", 64), 2),
        max_messages=read_int("server.max_messages", server.get("max_messages", 10_000), 1),
        max_blocks=read_int("server.max_blocks", server.get("max_blocks", 100_000), 1),
        max_concurrent=read_int(
            "server.max_concurrent", server.get("max_concurrent", DEFAULT_MAX_CONCURRENT), 1
        ),
        max_active=read_int("server.max_active", server.get("max_active", DEFAULT_MAX_ACTIVE), 1),
        body_idle_timeout=read_seconds(
            "server.body_idle_timeout", server, DEFAULT_BODY_IDLE_TIMEOUT
        ),
        body_timeout=read_seconds("server.body_timeout", server, DEFAULT_BODY_TIMEOUT),
        header_timeout=read_seconds("server.header_timeout", server, DEFAULT_HEADER_TIMEOUT),
        max_connections=read_int(
            "server.max_connections", server.get("max_connections", DEFAULT_MAX_CONNECTIONS), 1
        ),
        max_connections_per_client=read_int(
            "server.max_connections_per_client",
            server.get("max_connections_per_client", DEFAULT_MAX_CONNECTIONS_PER_CLIENT),
            1,
        ),
    )


def read_names(where: str, value: Any) -> tuple[str, ...]:
    """A list of host names or origins."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: a list of names is required, got {value!r}")
    return tuple(value)


def read_audit_path(value: Any, default: str | None) -> str | None:
    """Where audit records go: a path (``~`` expanded), or None for memory only."""
    if value is None:
        return default
    path = str(value)
    if path.lower() in IN_MEMORY:
        return None
    return str(Path(path).expanduser()) if path.startswith("~") else path


def read_state_url(value: Any) -> str | None:
    """The Redis URL routing state is shared through, or None to keep it in process."""
    if not value:
        return None
    url = str(value)
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"server.state_url: a redis:// URL is required, got {url!r}")
    return url


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Without keys the gateway only listens on loopback, unless told otherwise."""
    if settings.keyed or settings.allow_unauthenticated or is_loopback(settings.host):
        return
    raise ConfigError(
        f"server.host: {settings.host!r} is reachable from other machines and no "
        "tenant keys are configured; add [tenants.NAME] keys (see `prefixgate keygen`) "
        "or set server.allow_unauthenticated = true (--allow-unauthenticated) to "
        "serve anyone who can reach it"
    )
