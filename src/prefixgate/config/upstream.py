"""Upstreams: one ``[upstreams.NAME]`` table each, read into an ``UpstreamConfig``.

Settings every kind shares come first; a kind's own settings are read by the
kind (``Kind.read_settings``, kept as ``kind_settings``) and the replica
settings (``ReplicaSettings``) by a function of their own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict
from urllib.parse import unquote, urlsplit, urlunsplit

from prefixgate.config.presets import apply_preset
from prefixgate.config.values import (
    ConfigError,
    read_choice,
    read_factor,
    read_int,
    read_policy,
    read_seconds,
)
from prefixgate.core.affinity import AffinityHeaders
from prefixgate.core.policy import DEFAULT_NORMALIZE_KEEP, Policy
from prefixgate.core.routing import ROUTING_POLICIES
from prefixgate.core.secrets import secret_values
from prefixgate.core.toolload import ToolLoads

DEFAULT_MAX_ANSWER_BYTES = 64 * 1024 * 1024
FIRST_PARTY_HOSTS = ("api.anthropic.com",)
# What the runtime model (core/oracle.py) assumes an upstream holds, unless its
# table says ``cache_slots`` / ``cache_tokens``: llama-server's default of 4
# slots and no RAM prompt cache modelled; a first-party API keeps every recent
# prefix (many slots).
DEFAULT_CACHE_SLOTS = 4
FIRST_PARTY_CACHE_SLOTS = 1024
DEFAULT_CACHE_TOKENS = 0
TOKENIZERS = ("auto", "llama.cpp", "estimate")
SIDE_REQUESTS = ("forward", "local")
PRICE_KEYS = ("price_input", "price_cached", "price_output")
# an HTTP field name (RFC 9110 section 5.6.2, token)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# names an affinity header may not take: the request's framing and credentials
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "authorization",
        "x-api-key",
        "cookie",
    }
)


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
    # the kind's own settings, as its ``read_settings`` returns them (e.g. the
    # openai kind's ``OpenAISettings``); None: the kind has none
    kind_settings: object | None = None
    # several servers behind this name (``url`` is the first) and how to spread them
    replicas: tuple[str, ...] = ()
    routing: str = "prefix_affinity"
    load_factor: float = 1.25
    health_interval: float = 5.0
    pin_idle: float = 600.0
    side_requests: str = "forward"
    tool_loads: ToolLoads = ToolLoads.INLINE  # first-party: AS_SENT (the API expands them)
    replica: str | None = None  # set on the copy that stands for one replica
    # what the runtime can hold, for the expected cached tokens (core/oracle.py):
    # slots, each holding its last prompt, and a RAM prompt cache in tokens
    cache_slots: int = DEFAULT_CACHE_SLOTS
    cache_tokens: int = DEFAULT_CACHE_TOKENS
    # the most of a whole (not streamed) answer the gateway reads before a 502
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    # ``user:password@`` taken out of the configured URLs, by the URL without it:
    # URLs are shown in errors, logs, /healthz and audit rows, credentials never
    userinfo: tuple[tuple[str, str, str], ...] = field(default=(), repr=False)
    # the user's prices per million input, cached-read and output tokens (None:
    # not configured; the report shows money only where input and cached are set)
    price_input: float | None = None
    price_cached: float | None = None
    price_output: float | None = None
    # headers carrying the prefix key and the session to a cluster router in
    # front of the upstream (core/affinity.py); None: not sent
    affinity_headers: AffinityHeaders | None = None

    @property
    def urls(self) -> tuple[str, ...]:
        """Every replica's base URL (just ``url`` for a single server)."""
        return self.replicas or (self.url,)

    @property
    def target(self) -> str:
        """What the cache is tracked by: the upstream, or one replica of it."""
        return f"{self.name}@{self.replica}" if self.replica else self.name

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values never to relay, log or store: the API key, the URLs' passwords."""
        return secret_values((self.api_key, *(password for _, _, password in self.userinfo)))

    def basic_auth(self) -> tuple[str, str] | None:
        """The user and password the configured URL carried for ``url``, if any."""
        for url, user, password in self.userinfo:
            if url == self.url:
                return user, password
        return None

    def for_replica(self, url: str) -> UpstreamConfig:
        """This upstream narrowed to one of its replicas."""
        return replace(self, url=url, replica=url if len(self.urls) > 1 else None)


class ReplicaSettings(TypedDict):
    """How an upstream with several servers spreads requests over them."""

    replicas: tuple[str, ...]
    routing: str
    load_factor: float
    health_interval: float
    pin_idle: float


def is_first_party(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in FIRST_PARTY_HOSTS


def upstream_from_table(
    name: str, table: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> UpstreamConfig:
    """Build one upstream from its TOML table (pure apart from the given env),
    over the defaults of the preset it names (``config/presets.py``)."""
    where = f"upstreams.{name}"
    table = apply_preset(where, table)
    urls, userinfo = _urls(name, table)
    url = urls[0]
    # imported here: the kinds' modules import this package
    from prefixgate.upstreams.registry import KINDS

    kind = str(table.get("kind", "anthropic"))
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: unknown kind {kind!r} ({tuple(KINDS)})")
    first_party = bool(table.get("first_party", is_first_party(url)))
    default_policy = Policy.PASSTHROUGH if first_party else Policy.STRIP
    default_loads = ToolLoads.AS_SENT if first_party else ToolLoads.INLINE
    return UpstreamConfig(
        name=name,
        url=url,
        userinfo=userinfo,
        kind=kind,
        api_key=_api_key(name, table, env or {}),
        first_party=first_party,
        policy=read_policy(f"{where}.policy", table.get("policy"), default_policy),
        normalize_keep=_names(f"{where}.normalize_keep", table),
        metadata_header=table.get("metadata_header"),
        connect_timeout=read_seconds(f"{where}.connect_timeout", table, 10.0),
        read_timeout=read_seconds(f"{where}.read_timeout", table, 600.0),
        stream_idle_timeout=read_seconds(f"{where}.stream_idle_timeout", table, 300.0),
        tokenizer=read_choice(f"{where}.tokenizer", table.get("tokenizer", "auto"), TOKENIZERS),
        kind_settings=KINDS[kind].read_settings(where, table),
        **replica_settings(where, table, urls),
        side_requests=read_choice(
            f"{where}.side_requests", table.get("side_requests", "forward"), SIDE_REQUESTS
        ),
        tool_loads=ToolLoads(
            read_choice(
                f"{where}.tool_loads",
                table.get("tool_loads", default_loads.value),
                tuple(m.value for m in ToolLoads),
            )
        ),
        cache_slots=read_int(
            f"{where}.cache_slots",
            table.get(
                "cache_slots", FIRST_PARTY_CACHE_SLOTS if first_party else DEFAULT_CACHE_SLOTS
            ),
            low=1,
        ),
        cache_tokens=read_int(
            f"{where}.cache_tokens", table.get("cache_tokens", DEFAULT_CACHE_TOKENS)
        ),
        max_answer_bytes=read_int(
            f"{where}.max_answer_bytes",
            table.get("max_answer_bytes", DEFAULT_MAX_ANSWER_BYTES),
            low=1024,
        ),
        **read_prices(where, table),
        affinity_headers=read_affinity_headers(
            f"{where}.affinity_headers", table.get("affinity_headers")
        ),
    )


def read_affinity_headers(where: str, value: Any) -> AffinityHeaders | None:
    """``affinity_headers``: absent or false sends none; true sends the default
    pair (``x-prefixgate-prefix-key``, ``x-session-id``); a table
    ``{prefix = NAME, session = NAME}`` names them, a key left out keeping its
    default name and an empty name leaving that header out."""
    if value is None or value is False:
        return None
    if value is True:
        return AffinityHeaders()
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where}: true, false or a table {{prefix = NAME, session = NAME}} "
            f"is required, got {value!r}"
        )
    unknown = sorted(set(value) - {"prefix", "session"})
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (prefix, session)")
    default = AffinityHeaders()
    prefix = _header_name(f"{where}.prefix", value.get("prefix", default.prefix))
    session = _header_name(f"{where}.session", value.get("session", default.session))
    if prefix is None and session is None:
        return None
    if prefix is not None and session is not None and prefix.lower() == session.lower():
        raise ConfigError(f"{where}: prefix and session name the same header {prefix!r}")
    return AffinityHeaders(prefix, session)


def _header_name(where: str, value: Any) -> str | None:
    """An HTTP header name the gateway may set, or None for an empty one (not sent)."""
    if value == "":
        return None
    if not isinstance(value, str) or _HEADER_NAME.fullmatch(value) is None:
        raise ConfigError(f"{where}: a header name is required, got {value!r}")
    if value.lower() in _RESERVED_HEADERS:
        raise ConfigError(f"{where}: {value!r} is not a header the gateway may set")
    return value


class PriceSettings(TypedDict):
    """The user's prices per million tokens (None: not set)."""

    price_input: float | None
    price_cached: float | None
    price_output: float | None


def read_prices(where: str, table: Mapping[str, Any]) -> PriceSettings:
    """``price_input``, ``price_cached``, ``price_output``: numbers of 0 or more per
    million tokens, each None when not set; input and cached go together."""
    prices: dict[str, float | None] = {}
    for key in PRICE_KEYS:
        value = table.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0
        ):
            raise ConfigError(f"{where}.{key}: a price of 0 or more is required, got {value!r}")
        prices[key] = None if value is None else float(value)
    if (prices["price_input"] is None) != (prices["price_cached"] is None):
        raise ConfigError(f"{where}: price_input and price_cached are set together")
    return PriceSettings(
        price_input=prices["price_input"],
        price_cached=prices["price_cached"],
        price_output=prices["price_output"],
    )


def replica_settings(where: str, table: Mapping[str, Any], urls: list[str]) -> ReplicaSettings:
    """The replicas (none for a single server), the routing policy and its knobs."""
    return ReplicaSettings(
        replicas=tuple(urls) if len(urls) > 1 else (),
        routing=read_choice(
            f"{where}.routing", table.get("routing", "prefix_affinity"), ROUTING_POLICIES
        ),
        load_factor=read_factor(f"{where}.load_factor", table.get("load_factor", 1.25)),
        health_interval=read_seconds(f"{where}.health_interval", table, 5.0),
        pin_idle=read_seconds(f"{where}.pin_idle", table, 600.0),
    )


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its ``user:password@`` part, and that part (percent-decoded)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    clean = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return clean, (unquote(parts.username or ""), unquote(parts.password or ""))


def shown_url(url: object) -> str:
    """A configured URL as it may be shown: ``user:password@`` replaced by ``***@``."""
    if not isinstance(url, str):
        return repr(url)
    parts = urlsplit(url) if "@" in url else None
    if parts is None or "@" not in parts.netloc:
        return repr(url)
    return repr(urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2])))


def _urls(
    name: str, table: Mapping[str, Any]
) -> tuple[list[str], tuple[tuple[str, str, str], ...]]:
    """``urls`` (replicas) or ``url``, each an http(s) URL without a trailing slash
    nor userinfo, and the userinfo taken out of them (by the URL without it)."""
    if "urls" in table:
        where, value = f"upstreams.{name}.urls", table["urls"]
        if not isinstance(value, list | tuple) or not value:
            raise ConfigError(
                f"{where}: a non-empty list of URLs is required, got {shown_url(value)}"
            )
    else:
        where, value = f"upstreams.{name}.url", [table.get("url")]
    urls: list[str] = []
    userinfo: list[tuple[str, str, str]] = []
    for given in value:
        if not isinstance(given, str) or not _is_http_url(given):
            raise ConfigError(f"{where}: an http(s) URL is required, got {shown_url(given)}")
        url, auth = split_userinfo(given.rstrip("/"))
        if url in urls:
            raise ConfigError(f"{where}: {url!r} is listed twice")
        urls.append(url)
        if auth is not None:
            userinfo.append((url, *auth))
    return urls, tuple(userinfo)


def _names(where: str, table: Mapping[str, Any]) -> tuple[str, ...]:
    value = table.get("normalize_keep", DEFAULT_NORMALIZE_KEEP)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: a list of field names is required, got {value!r}")
    return tuple(value)


def _api_key(name: str, table: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """``api_key``, or the variable ``api_key_env`` names, looked up in ``env``."""
    if "api_key_env" in table:
        var = str(table["api_key_env"])
        if var not in env:
            raise ConfigError(f"upstreams.{name}.api_key_env: variable {var} is not set")
        return env[var]
    key = table.get("api_key")
    return str(key) if key else None
