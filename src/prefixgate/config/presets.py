"""Presets: the settings of an ``[upstreams.NAME]`` table for the runtimes and
services people run Claude Code against, as plain data.

``serve --preset NAME`` (or ``preset = "NAME"`` in an upstream's table) starts
from ``PRESETS[NAME].table``; every key the table (or a flag) sets explicitly
wins over the preset's (``apply_preset``). A preset carries no prices: the
``price_*`` keys are the user's own numbers, never current list prices.

Where each default comes from (each runtime's or service's own documentation,
read when this table was written; the page for each is docs/runtimes/NAME.md):

``llama.cpp``   llama-server listens on 127.0.0.1:8080 (``--port`` default 8080
                in the bundled build's ``--help``) and serves the Anthropic
                Messages API at ``/v1/messages`` (ggml-org's announcement of the
                Messages API, PR #17570: ``curl http://localhost:8080/v1/messages``;
                ``ANTHROPIC_BASE_URL=http://127.0.0.1:8080 claude``). Its
                ``POST /tokenize`` gives exact counts; 4 slots is what the
                runtime model already assumes for it (``DEFAULT_CACHE_SLOTS``).
``ollama``      Ollama 0.14.0 and later speak the Anthropic Messages API at
                ``http://localhost:11434`` (Ollama's "Anthropic compatibility"
                page and its Claude Code announcement: ``ANTHROPIC_BASE_URL=
                http://localhost:11434``, no ``/v1``). Older versions: set
                ``kind = "openai"`` and ``url = "http://localhost:11434/v1"``.
                One slot: ``OLLAMA_NUM_PARALLEL`` unset means one request at a
                time per model (not found on Ollama's own pages; a published
                measurement on Ollama 0.20.3 logs the compiled default 1).
``lmstudio``    LM Studio's server defaults to port 1234 and has an
                Anthropic-compatible ``POST /v1/messages`` (LM Studio's
                "Anthropic Compatible Endpoints" and "Claude Code" pages:
                ``ANTHROPIC_BASE_URL=http://localhost:1234``).
``vllm``        ``vllm serve`` listens on port 8000 and implements the Anthropic
                Messages API (vLLM's "Claude Code" integration page). Sends the
                default affinity headers (``x-prefixgate-prefix-key``,
                ``x-session-id``): production-stack's router pins sessions by
                the header its ``--session-key`` names (docs/scaling.md).
``sglang``      SGLang's server listens on port 30000 and registers an
                Anthropic-compatible ``/v1/messages`` on every server with no
                extra flag (SGLang's "Anthropic-Compatible API" page). Sends
                the prefix key as ``X-SMG-Routing-Key``, the header SGLang's
                model gateway (``smg``) reads its routing key from by default
                (``--routing-key-headers``), and the session as
                ``x-session-id``; a lone SGLang server ignores both.
``openrouter``  ``https://openrouter.ai/api/v1``, OpenAI chat completions, key
                in ``OPENROUTER_API_KEY`` sent as ``Authorization: Bearer``.
                OpenRouter also has an Anthropic-compatible endpoint
                (``https://openrouter.ai/api``), but its Claude Code guide says
                that path is only guaranteed with the Anthropic first-party
                provider; the preset takes the path every model answers on.
``deepseek``    DeepSeek documents an Anthropic-format API at
                ``https://api.deepseek.com/anthropic`` (its "Using the
                Anthropic API" guide; ``x-api-key`` fully supported), besides
                the OpenAI-format ``https://api.deepseek.com``. Key in
                ``DEEPSEEK_API_KEY``.
``anthropic``   ``https://api.anthropic.com``: first party (by its host), so the
                policy is passthrough and the runtime model keeps every recent
                prefix. Key in ``ANTHROPIC_API_KEY`` (the gateway never forwards
                a client's credentials).

Not taken from any documentation: ``cache_slots = 1024`` for hosted services
(the same figure the runtime model uses for Anthropic's API: many prefixes kept,
the limit is the provider's); ``tokenizer = "estimate"`` wherever the runtime
has no ``POST /tokenize`` answering llama.cpp's shape (vLLM's ``/tokenize``
takes another body). ``usage`` names the usage shape each one is expected to
report (``core/usage.py`` reads every shape, so it configures nothing; the
runtime pages say what each was checked against).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from prefixgate.config.values import ConfigError
from prefixgate.core.affinity import DEFAULT_SESSION_HEADER, SMG_ROUTING_KEY_HEADER

HOSTED_CACHE_SLOTS = 1024


@dataclass(frozen=True)
class Preset:
    """One runtime's or service's defaults: ``table`` is merged under the user's."""

    name: str
    table: Mapping[str, Any]
    usage: str  # the usage shape it reports (core/usage.py's names)
    docs: str  # the page under docs/runtimes/


def _preset(name: str, usage: str, **table: Any) -> Preset:
    return Preset(name, MappingProxyType(table), usage, f"docs/runtimes/{name}.md")


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        p.name: p
        for p in (
            _preset(
                "llama.cpp",
                "anthropic",
                kind="anthropic",
                url="http://127.0.0.1:8080",
                tokenizer="llama.cpp",
                policy="strip",
                cache_slots=4,
            ),
            _preset(
                "ollama",
                "anthropic",
                kind="anthropic",
                url="http://127.0.0.1:11434",
                tokenizer="estimate",
                policy="strip",
                cache_slots=1,
            ),
            _preset(
                "lmstudio",
                "anthropic",
                kind="anthropic",
                url="http://127.0.0.1:1234",
                tokenizer="estimate",
                policy="strip",
            ),
            _preset(
                "vllm",
                "anthropic",
                kind="anthropic",
                url="http://127.0.0.1:8000",
                tokenizer="estimate",
                policy="strip",
                affinity_headers=True,
            ),
            _preset(
                "sglang",
                "anthropic",
                kind="anthropic",
                url="http://127.0.0.1:30000",
                tokenizer="estimate",
                policy="strip",
                affinity_headers=MappingProxyType(
                    {"prefix": SMG_ROUTING_KEY_HEADER, "session": DEFAULT_SESSION_HEADER}
                ),
            ),
            _preset(
                "openrouter",
                "openai",
                kind="openai",
                url="https://openrouter.ai/api/v1",
                api_key_env="OPENROUTER_API_KEY",
                tokenizer="estimate",
                policy="strip",
                cache_slots=HOSTED_CACHE_SLOTS,
            ),
            _preset(
                "deepseek",
                "anthropic",
                kind="anthropic",
                url="https://api.deepseek.com/anthropic",
                api_key_env="DEEPSEEK_API_KEY",
                tokenizer="estimate",
                policy="strip",
                cache_slots=HOSTED_CACHE_SLOTS,
            ),
            _preset(
                "anthropic",
                "anthropic",
                kind="anthropic",
                url="https://api.anthropic.com",
                api_key_env="ANTHROPIC_API_KEY",
                tokenizer="estimate",
                policy="passthrough",
                cache_slots=HOSTED_CACHE_SLOTS,
            ),
        )
    }
)

# a key the user sets makes these preset keys moot: they name the same thing
_SUPERSEDES = {"api_key": ("api_key_env",), "urls": ("url",)}


def preset(where: str, name: object) -> Preset:
    """The preset called ``name``; a ConfigError naming the choices otherwise."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"{where}: unknown preset {name!r} (one of {', '.join(PRESETS)})")
    return PRESETS[name]


def apply_preset(where: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """``table`` over the defaults of the preset it names (``preset`` key), if any.

    Explicit keys win; one that names the same thing as a preset key (``api_key``
    for ``api_key_env``, ``urls`` for ``url``) drops the preset's."""
    if "preset" not in table:
        return dict(table)
    defaults = dict(preset(f"{where}.preset", table["preset"]).table)
    for key, dropped in _SUPERSEDES.items():
        if key in table:
            for name in dropped:
                defaults.pop(name, None)
    return {**defaults, **table}
