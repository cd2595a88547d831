"""Settings: the only module that reads files and the environment.

Three sources, later ones winning: a TOML file, ``PREFIXGATE_*`` environment
variables, command-line flags. ``build_settings`` is pure (it takes the three as
plain mappings); ``load_settings`` reads the file and the environment and calls
it. Example file::

    [server]
    host = "127.0.0.1"
    port = 8787
    max_body_bytes = 33554432
    audit_path = "~/.local/state/prefixgate/audit.db"  # the default; ".jsonl": JSON
                                   # lines; "memory": keep records in memory only
    capture_bodies = false         # true: the audit log also keeps prompts and answers
    record_path = "capture.jsonl"  # append every request in the corpus format

    state_url = "redis://127.0.0.1:6379/0"  # share session pins between gateways
                                   # (default: kept in this process)

    # limits: each breach is refused with an error naming the limit
    max_header_bytes = 32768       # all request headers together (431)
    max_json_depth = 64            # nesting of the request body (400)
    max_messages = 10000           # messages in one request (400)
    max_blocks = 100000            # content blocks, system blocks and tools (400)
    max_concurrent = 64            # requests under way per tenant (429 + retry-after)
    max_active = 64                # handled at once, all tenants; more wait their turn
    shutdown_grace = 30            # on SIGTERM, seconds streams under way may finish
    allow_unauthenticated = false  # true: serve without keys on a non-loopback host

    [tenants.alpha]                # with any tenant, every request needs a key
    keys = ["sha256:..."]          # digests from `prefixgate keygen`, never keys
    # admin = false                # true: may read every tenant's dashboard and metrics
    # upstreams = ["local"]        # the upstreams it may use (403 otherwise)
    # max_concurrent = 16          # overrides the server's limit for this tenant

    [upstreams.local]
    kind = "anthropic"
    url = "http://127.0.0.1:8080"
    # urls = ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]  # replicas instead of url
    # routing = "prefix_affinity"  # | round_robin | least_busy, across the replicas
    # load_factor = 1.25           # prefix_affinity: most sessions on one replica,
                                   # as a multiple of the mean
    # health_interval = 5          # seconds between health checks of replicas
    # pin_idle = 600               # seconds after which an unused pin is released
    # side_requests = "forward"    # local: answer count_tokens with the upstream's
                                   # tokenizer, never touching its slots
    policy = "strip"               # default: strip, passthrough when first_party
    # tool_loads = "inline"        # inline | inline_only | as_sent: where tools loaded
                                   # through ToolSearch go (default: inline, as_sent
                                   # when first_party; see docs/upstreams.md)
    # connect_timeout = 10         # seconds; read_timeout = 600 (to the first byte)
    # stream_idle_timeout = 300    # longest silence inside a stream under way (504)
    # api_key_env = "LOCAL_KEY"    # or api_key = "..."; replaces client credentials
    # first_party = false          # true for Anthropic's own API
    # tokenizer = "auto"           # auto | llama.cpp | estimate: how expected
                                   # cached tokens are counted

    [[routes]]
    model = "claude-haiku-*"       # glob over the request's model
    upstream = "local"
    # policy = "normalize"         # overrides the upstream's policy on this route
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prefixgate.core.auth import Tenant, is_digest
from prefixgate.core.limits import Limits
from prefixgate.core.policy import DEFAULT_NORMALIZE_KEEP, METADATA_HEADER, Policy
from prefixgate.core.routing import ROUTING_POLICIES
from prefixgate.core.toolload import ToolLoads

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_MAX_BODY = 32 * 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
DEFAULT_MAX_CONCURRENT = 64
DEFAULT_MAX_ACTIVE = 64
LOOPBACK_NAMES = ("localhost",)
FIRST_PARTY_HOSTS = ("api.anthropic.com",)
UPSTREAM_KINDS = ("anthropic", "openai")
SYSTEM_MESSAGES = ("system", "user")
PROMPT_CACHE_KEYS = ("session", "prefix", "off")
TOKENIZERS = ("auto", "llama.cpp", "estimate")
SIDE_REQUESTS = ("forward", "local")
IN_MEMORY = ("memory", "none")
SERVER_FLAGS = ("host", "port", "audit_path", "allow_unauthenticated")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and why."""


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    url: str
    kind: str = "anthropic"
    api_key: str | None = field(default=None, repr=False)
    first_party: bool = False
    policy: Policy = Policy.STRIP
    normalize_keep: tuple[str, ...] = DEFAULT_NORMALIZE_KEEP
    metadata_header: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    stream_idle_timeout: float = 300.0  # longest silence inside a stream under way
    tokenizer: str = "auto"
    # kind "openai" only: where mid-conversation system messages go, what
    # `prompt_cache_key` carries, whether thinking becomes `reasoning_effort`
    system_messages: str = "system"
    prompt_cache_key: str = "session"
    reasoning: bool = True
    # several servers behind this name (``url`` is the first) and how to spread them
    replicas: tuple[str, ...] = ()
    routing: str = "prefix_affinity"
    load_factor: float = 1.25
    health_interval: float = 5.0
    pin_idle: float = 600.0
    side_requests: str = "forward"
    tool_loads: ToolLoads = ToolLoads.INLINE  # first-party: AS_SENT (the API expands them)
    replica: str | None = None  # set on the copy that stands for one replica

    @property
    def urls(self) -> tuple[str, ...]:
        """Every replica's base URL (just ``url`` for a single server)."""
        return self.replicas or (self.url,)

    @property
    def target(self) -> str:
        """What the cache is tracked by: the upstream, or one replica of it."""
        return f"{self.name}@{self.replica}" if self.replica else self.name

    def for_replica(self, url: str) -> UpstreamConfig:
        """This upstream narrowed to one of its replicas."""
        return replace(self, url=url, replica=url if len(self.urls) > 1 else None)


@dataclass(frozen=True)
class Route:
    model: str
    upstream: str
    policy: Policy | None = None

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.model)


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

    def with_upstream(self, url: str | Sequence[str], kind: str | None = None) -> Settings:
        """These settings with every route sent to one upstream at ``url`` (or replicas)."""
        urls = [url] if isinstance(url, str) else list(url)
        table: dict[str, Any] = {"urls": urls, "kind": kind or self.upstream_kind}
        if self.policy_override is not None:
            table["policy"] = self.policy_override.value
        up = upstream_from_table("default", table)
        return replace(self, upstreams={"default": up}, routes=(Route("*", "default"),))


def is_first_party(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in FIRST_PARTY_HOSTS


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def upstream_from_table(
    name: str, table: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> UpstreamConfig:
    """Build one upstream from its TOML table (pure apart from the given env)."""
    urls = _urls(name, table)
    url = urls[0]
    kind = str(table.get("kind", "anthropic"))
    if kind not in UPSTREAM_KINDS:
        raise ConfigError(f"upstreams.{name}.kind: unknown kind {kind!r} ({UPSTREAM_KINDS})")
    first_party = bool(table.get("first_party", is_first_party(url)))
    default_policy = Policy.PASSTHROUGH if first_party else Policy.STRIP
    default_loads = ToolLoads.AS_SENT if first_party else ToolLoads.INLINE
    return UpstreamConfig(
        name=name,
        url=url.rstrip("/"),
        kind=kind,
        api_key=_api_key(name, table, env or {}),
        first_party=first_party,
        policy=_policy(f"upstreams.{name}.policy", table.get("policy"), default_policy),
        normalize_keep=_names(f"upstreams.{name}.normalize_keep", table),
        metadata_header=table.get("metadata_header"),
        connect_timeout=_seconds(f"upstreams.{name}.connect_timeout", table, 10.0),
        read_timeout=_seconds(f"upstreams.{name}.read_timeout", table, 600.0),
        stream_idle_timeout=_seconds(f"upstreams.{name}.stream_idle_timeout", table, 300.0),
        tokenizer=_choice(
            f"upstreams.{name}.tokenizer", table.get("tokenizer", "auto"), TOKENIZERS
        ),
        system_messages=_choice(
            f"upstreams.{name}.system_messages",
            table.get("system_messages", "system"),
            SYSTEM_MESSAGES,
        ),
        prompt_cache_key=_choice(
            f"upstreams.{name}.prompt_cache_key",
            table.get("prompt_cache_key", "session"),
            PROMPT_CACHE_KEYS,
        ),
        reasoning=_flag(f"upstreams.{name}.reasoning", table.get("reasoning", True)),
        replicas=tuple(urls) if len(urls) > 1 else (),
        routing=_choice(
            f"upstreams.{name}.routing", table.get("routing", "prefix_affinity"), ROUTING_POLICIES
        ),
        load_factor=_factor(f"upstreams.{name}.load_factor", table.get("load_factor", 1.25)),
        health_interval=_seconds(f"upstreams.{name}.health_interval", table, 5.0),
        pin_idle=_seconds(f"upstreams.{name}.pin_idle", table, 600.0),
        side_requests=_choice(
            f"upstreams.{name}.side_requests",
            table.get("side_requests", "forward"),
            SIDE_REQUESTS,
        ),
        tool_loads=ToolLoads(
            _choice(
                f"upstreams.{name}.tool_loads",
                table.get("tool_loads", default_loads.value),
                tuple(m.value for m in ToolLoads),
            )
        ),
    )


def _urls(name: str, table: Mapping[str, Any]) -> list[str]:
    """``urls`` (replicas) or ``url``, each an http(s) URL without a trailing slash."""
    if "urls" in table:
        where, value = f"upstreams.{name}.urls", table["urls"]
        if not isinstance(value, list | tuple) or not value:
            raise ConfigError(f"{where}: a non-empty list of URLs is required, got {value!r}")
    else:
        where, value = f"upstreams.{name}.url", [table.get("url")]
    urls: list[str] = []
    for url in value:
        if not isinstance(url, str) or not _is_http_url(url):
            raise ConfigError(f"{where}: an http(s) URL is required, got {url!r}")
        if url.rstrip("/") in urls:
            raise ConfigError(f"{where}: {url!r} is listed twice")
        urls.append(url.rstrip("/"))
    return urls


def _factor(where: str, value: Any) -> float:
    try:
        factor = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: a number is required, got {value!r}") from None
    if not factor >= 1.0:
        raise ConfigError(f"{where}: must be 1.0 or more, got {value!r}")
    return factor


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


def default_audit_path(env: Mapping[str, str]) -> str | None:
    """``$XDG_STATE_HOME/prefixgate/audit.db`` (``~/.local/state`` when unset)."""
    state = env.get("XDG_STATE_HOME") or (
        str(Path(env["HOME"]) / ".local" / "state") if env.get("HOME") else None
    )
    return str(Path(state) / "prefixgate" / "audit.db") if state else None


def _audit_path(server: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    path = server.get("audit_path") or env.get("PREFIXGATE_AUDIT_PATH")
    if path is None:
        return default_audit_path(env)
    path = str(path)
    if path.lower() in IN_MEMORY:
        return None
    return str(Path(path).expanduser()) if path.startswith("~") else path


def _flag(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return value.lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _names(where: str, table: Mapping[str, Any]) -> tuple[str, ...]:
    value = table.get("normalize_keep", DEFAULT_NORMALIZE_KEEP)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: a list of field names is required, got {value!r}")
    return tuple(value)


def _seconds(where: str, table: Mapping[str, Any], default: float) -> float:
    value = table.get(where.rsplit(".", 1)[1], default)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: a number of seconds is required, got {value!r}") from None
    if not seconds > 0:
        raise ConfigError(f"{where}: must be positive, got {value!r}")
    return seconds


def _api_key(name: str, table: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    if "api_key_env" in table:
        var = str(table["api_key_env"])
        if var not in env:
            raise ConfigError(f"upstreams.{name}.api_key_env: variable {var} is not set")
        return env[var]
    key = table.get("api_key")
    return str(key) if key else None


def _policy(where: str, value: Any, default: Policy) -> Policy:
    if value is None:
        return default
    try:
        return Policy.parse(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _int(where: str, value: Any, low: int = 0, high: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: an integer is required, got {value!r}") from None
    if number < low or (high is not None and number > high):
        raise ConfigError(f"{where}: {number} is out of range ({low}..{high or 'any'})")
    return number


def _table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: a table is required, got {value!r}")
    return dict(value)


def build_settings(
    file: Mapping[str, Any], env: Mapping[str, str], flags: Mapping[str, Any]
) -> Settings:
    """Merge the file, the environment and the flags (later wins) into Settings.

    A policy given by flag or environment applies to every upstream and route.
    """
    server = _table("server", file.get("server", {}))
    for key, var in (
        ("host", "HOST"),
        ("port", "PORT"),
        ("max_body_bytes", "MAX_BODY_BYTES"),
        ("audit_path", "AUDIT_PATH"),
        ("capture_bodies", "CAPTURE_BODIES"),
        ("allow_unauthenticated", "ALLOW_UNAUTHENTICATED"),
    ):
        if f"PREFIXGATE_{var}" in env:
            server[key] = env[f"PREFIXGATE_{var}"]
    server.update({k: v for k, v in flags.items() if k in SERVER_FLAGS and v is not None})
    tables = {
        name: _table(f"upstreams.{name}", t)
        for name, t in _table("upstreams", file.get("upstreams", {})).items()
    }
    upstream_url = _flag_urls(flags.get("upstream")) or _flag_urls(env.get("PREFIXGATE_UPSTREAM"))
    upstream_kind = flags.get("upstream_kind") or env.get("PREFIXGATE_UPSTREAM_KIND")
    if upstream_url:
        default = {k: v for k, v in tables.get("default", {}).items() if k not in ("url", "urls")}
        tables = {"default": {**default, "urls": upstream_url}}
        if upstream_kind:
            tables["default"]["kind"] = upstream_kind
        if flags.get("routing"):
            tables["default"]["routing"] = flags["routing"]
        if env.get("PREFIXGATE_UPSTREAM_API_KEY"):
            tables["default"]["api_key"] = env["PREFIXGATE_UPSTREAM_API_KEY"]
    where, override = ("--policy", flags.get("policy"))
    if not override:
        where, override = ("PREFIXGATE_POLICY", env.get("PREFIXGATE_POLICY"))
    policy = None if not override else _policy(where, override, Policy.STRIP)
    if policy is not None:
        tables = {name: {**table, "policy": policy.value} for name, table in tables.items()}
    upstreams = {name: upstream_from_table(name, t, env) for name, t in tables.items()}
    routes = _routes(file.get("routes", []), upstreams, bool(upstream_url))
    if policy is not None:
        routes = tuple(replace(r, policy=None) for r in routes)
    settings = Settings(
        host=str(server.get("host", DEFAULT_HOST)),
        port=_int("server.port", server.get("port", DEFAULT_PORT), 1, 65535),
        max_body_bytes=_int(
            "server.max_body_bytes", server.get("max_body_bytes", DEFAULT_MAX_BODY), 1
        ),
        tenant=str(server.get("tenant", "default")),
        audit_path=_audit_path(server, env),
        capture_bodies=_flag("server.capture_bodies", server.get("capture_bodies", False)),
        record_path=flags.get("record") or server.get("record_path") or None,
        upstreams=upstreams,
        routes=routes,
        policy_override=policy,
        upstream_kind=_choice("--upstream-kind", upstream_kind or "anthropic", UPSTREAM_KINDS),
        state_url=_state_url(
            flags.get("state") or env.get("PREFIXGATE_STATE_URL") or server.get("state_url")
        ),
        shutdown_grace=_seconds("server.shutdown_grace", server, 30.0),
        tenants=_tenants(file.get("tenants", {}), upstreams),
        allow_unauthenticated=_flag(
            "server.allow_unauthenticated", server.get("allow_unauthenticated", False)
        ),
        max_header_bytes=_int(
            "server.max_header_bytes",
            server.get("max_header_bytes", DEFAULT_MAX_HEADER_BYTES),
            1024,
        ),
        max_json_depth=_int("server.max_json_depth", server.get("max_json_depth", 64), 2),
        max_messages=_int("server.max_messages", server.get("max_messages", 10_000), 1),
        max_blocks=_int("server.max_blocks", server.get("max_blocks", 100_000), 1),
        max_concurrent=_int(
            "server.max_concurrent", server.get("max_concurrent", DEFAULT_MAX_CONCURRENT), 1
        ),
        max_active=_int("server.max_active", server.get("max_active", DEFAULT_MAX_ACTIVE), 1),
    )
    _check_exposure(settings)
    return settings


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_exposure(settings: Settings) -> None:
    """Without keys the gateway only listens on loopback, unless told otherwise."""
    if settings.keyed or settings.allow_unauthenticated or is_loopback(settings.host):
        return
    raise ConfigError(
        f"server.host: {settings.host!r} is reachable from other machines and no "
        "tenant keys are configured; add [tenants.NAME] keys (see `prefixgate keygen`) "
        "or set server.allow_unauthenticated = true (--allow-unauthenticated) to "
        "serve anyone who can reach it"
    )


def _tenants(tables: Any, upstreams: Mapping[str, UpstreamConfig]) -> tuple[Tenant, ...]:
    out: list[Tenant] = []
    seen: set[str] = set()
    for name, value in _table("tenants", tables).items():
        where = f"tenants.{name}"
        table = _table(where, value)
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
        allowed = table.get("upstreams")
        if allowed is not None:
            if not isinstance(allowed, list) or not all(a in upstreams for a in allowed):
                raise ConfigError(f"{where}.upstreams: a list of configured upstream names")
            allowed = tuple(allowed)
        limit = table.get("max_concurrent")
        out.append(
            Tenant(
                name=str(name),
                key_digests=tuple(keys),
                admin=_flag(f"{where}.admin", table.get("admin", False)),
                upstreams=allowed,
                max_concurrent=None if limit is None else _int(f"{where}.max_concurrent", limit, 1),
            )
        )
    return tuple(out)


def _flag_urls(value: Any) -> list[str]:
    """``--upstream`` given once or more, or a comma-separated environment value."""
    if not value:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def _state_url(value: Any) -> str | None:
    if not value:
        return None
    url = str(value)
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"server.state_url: a redis:// URL is required, got {url!r}")
    return url


def _routes(
    tables: Any, upstreams: Mapping[str, UpstreamConfig], single: bool
) -> tuple[Route, ...]:
    if single or not upstreams:
        return (Route("*", next(iter(upstreams))),) if upstreams else ()
    if not isinstance(tables, list):
        raise ConfigError(f"routes: a list of tables is required, got {tables!r}")
    routes = []
    for i, item in enumerate(tables):
        table = _table(f"routes[{i}]", item)
        name = table.get("upstream")
        if name not in upstreams:
            raise ConfigError(f"routes[{i}].upstream: no upstream named {name!r}")
        policy = table.get("policy")
        routes.append(
            Route(
                model=str(table.get("model", "*")),
                upstream=str(name),
                policy=None
                if policy is None
                else _policy(f"routes[{i}].policy", policy, Policy.STRIP),
            )
        )
    routes.append(Route("*", next(iter(upstreams))))
    return tuple(routes)


def load_settings(
    config_path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the config file (flag, else ``PREFIXGATE_CONFIG``) and the environment."""
    env = dict(os.environ if environ is None else environ)
    path = config_path or env.get("PREFIXGATE_CONFIG")
    file: dict[str, Any] = {}
    if path:
        try:
            file = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return build_settings(file, env, flags or {})


__all__ = [
    "METADATA_HEADER",
    "ConfigError",
    "Route",
    "Settings",
    "UpstreamConfig",
    "build_settings",
    "load_settings",
]
