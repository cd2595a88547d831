"""Prompt and cached token counts from every usage shape upstreams report.

``cache_usage(response)`` reads a whole response object (or a final stream
chunk) and returns ``CacheUsage(prompt_tokens, cached_tokens, source)``; a
count the upstream did not report is ``None``, never 0. Shapes, first match
wins:

``anthropic``  ``usage.cache_read_input_tokens`` (+ ``input_tokens`` and
               ``cache_creation_input_tokens`` make the prompt)
``openai``     ``usage.prompt_tokens_details.cached_tokens``, ``usage.prompt_tokens``
``deepseek``   ``usage.prompt_cache_hit_tokens`` (+ ``prompt_cache_miss_tokens``)
``llama.cpp``  ``timings.cache_n`` (+ ``timings.prompt_n``)
``ollama``     ``prompt_eval_cached_count`` (+ ``prompt_eval_count``, the evaluated rest)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prefixgate.core.fold import Usage, token_count


@dataclass(frozen=True)
class CacheUsage:
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    source: str | None = None


def from_anthropic(usage: Usage) -> CacheUsage:
    """From folded Anthropic usage (``message_start`` and ``message_delta`` merged)."""
    if usage.cache_read_input_tokens is None:
        return CacheUsage(usage.prompt_tokens, None, None)
    return CacheUsage(usage.prompt_tokens, usage.cache_read_input_tokens, "anthropic")


def cache_usage(response: Mapping[str, object]) -> CacheUsage:
    """The cache counts of one response object in any of the shapes above."""
    usage = response.get("usage")
    usage = usage if isinstance(usage, Mapping) else {}
    if "cache_read_input_tokens" in usage or "input_tokens" in usage:
        return from_anthropic(Usage.from_payload(usage))
    prompt = token_count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    if isinstance(details, Mapping) and token_count(details.get("cached_tokens")) is not None:
        return CacheUsage(prompt, token_count(details.get("cached_tokens")), "openai")
    hit = token_count(usage.get("prompt_cache_hit_tokens"))
    if hit is not None:
        miss = token_count(usage.get("prompt_cache_miss_tokens"))
        if prompt is None and miss is not None:
            prompt = hit + miss
        return CacheUsage(prompt, hit, "deepseek")
    timings = response.get("timings")
    if isinstance(timings, Mapping) and token_count(timings.get("cache_n")) is not None:
        cache_n = token_count(timings.get("cache_n")) or 0
        prompt_n = token_count(timings.get("prompt_n"))
        if prompt is None and prompt_n is not None:
            prompt = cache_n + prompt_n
        return CacheUsage(prompt, cache_n, "llama.cpp")
    cached = token_count(response.get("prompt_eval_cached_count"))
    evaluated = token_count(response.get("prompt_eval_count"))
    if cached is not None:  # Ollama counts only the tokens it evaluated
        return CacheUsage(cached + evaluated if evaluated is not None else None, cached, "ollama")
    if prompt is None:  # a token count answers {"input_tokens": N}; Ollama counts evaluated
        prompt = token_count(response.get("input_tokens"))
    return CacheUsage(prompt if prompt is not None else evaluated, None, None)
