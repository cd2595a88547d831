"""Settings, by noun: ``server`` (``Settings``, the ``[server]`` table and its
limits), ``upstream`` (``[upstreams.NAME]``), ``tenants``, ``routing``
(``[[routes]]``), ``values`` (the typed readers and ``ConfigError``) and ``load``,
the only module that reads files and the environment.

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
    body_idle_timeout = 30         # seconds of silence inside a request body (408)
    body_timeout = 120             # seconds for a whole request body (408)
    header_timeout = 10            # seconds for a request head; then the connection closes
    max_connections = 4096         # open client connections; more are refused (503)
    max_connections_per_client = 256  # from one address (429); raise it behind a proxy
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
    # preset = "llama.cpp"         # start from a runtime's defaults (presets.py);
                                   # the keys set here win
    # price_input = 3.0            # your prices per million tokens: report and
    # price_cached = 0.3           # dashboard show what the cache saved
    # price_output = 15.0

    [[routes]]
    model = "claude-haiku-*"       # glob over the request's model
    upstream = "local"
    # policy = "normalize"         # overrides the upstream's policy on this route
"""

from __future__ import annotations

from prefixgate.config.load import (
    CACHE_DIR_ENV,
    CONFIG_ENV,
    CORPUS_ENV,
    SERVER_FLAGS,
    build_settings,
    default_audit_path,
    env_path,
    environment,
    load_settings,
)
from prefixgate.config.routing import Route
from prefixgate.config.server import (
    DEFAULT_HOST,
    DEFAULT_MAX_ACTIVE,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_PORT,
    IN_MEMORY,
    LOOPBACK_NAMES,
    Settings,
    is_loopback,
)
from prefixgate.config.upstream import (
    FIRST_PARTY_HOSTS,
    SIDE_REQUESTS,
    TOKENIZERS,
    UpstreamConfig,
    is_first_party,
    upstream_from_table,
)
from prefixgate.config.values import ConfigError
from prefixgate.core.policy import METADATA_HEADER

__all__ = [
    "CACHE_DIR_ENV",
    "CONFIG_ENV",
    "CORPUS_ENV",
    "DEFAULT_HOST",
    "DEFAULT_MAX_ACTIVE",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_PORT",
    "FIRST_PARTY_HOSTS",
    "IN_MEMORY",
    "LOOPBACK_NAMES",
    "METADATA_HEADER",
    "SERVER_FLAGS",
    "SIDE_REQUESTS",
    "TOKENIZERS",
    "ConfigError",
    "Route",
    "Settings",
    "UpstreamConfig",
    "build_settings",
    "default_audit_path",
    "env_path",
    "environment",
    "is_first_party",
    "is_loopback",
    "load_settings",
    "upstream_from_table",
]
