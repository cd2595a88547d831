"""``prefixgate doctor`` against the real bundled llama-server (the session's
``local_runtime``, Gemma 3 270M with the packaged template and ``--swa-full``),
on both of its endpoints: every endpoint answers, the usage reports cached
tokens, the template renders the tools and keeps a mid-conversation system
message in place, a repeated prompt and one that shares only its first ~1,000
tokens are served from the cache (llama-server's own /metrics agree), the
model is named a sliding-window one, and its one slot and context are read."""

from __future__ import annotations

import re

import httpx
import pytest
from click.testing import CliRunner

from prefixgate.cli import main
from prefixgate.doctor import Findings, assess, probe_runtime
from prefixgate.runtime.local import LocalRuntime, LocalRuntimeSpec

pytestmark = pytest.mark.e2e
CACHED_TOTAL = re.compile(r"^llamacpp:prompt_tokens_cached_total (\d+)", re.MULTILINE)


GEMMA3_270M_TRAINING_CONTEXT = 32768


def cached_total(url: str) -> int:
    found = CACHED_TOTAL.search(httpx.get(f"{url}/metrics", timeout=30).text)
    assert found, "llama-server's /metrics has no prompt_tokens_cached_total"
    return int(found.group(1))


def check(findings: Findings, spec: LocalRuntimeSpec) -> dict[str, tuple[str, str]]:
    d = assess(findings)
    rows = {row.check: (row.found, row.status) for row in d.rows}
    for path in ("/v1/messages", "/v1/chat/completions", "/v1/models", "/tokenize", "/slots"):
        assert rows[path] == ("200", "ok"), path
    assert rows["/metrics"] == ("200", "ok")
    assert rows["tools in template"] == ("rendered (rendered prompt)", "ok")
    assert rows["system mid-conversation"] == ("in place (rendered prompt)", "ok")
    assert rows["repeated prompt"][1] == "ok"
    assert rows["same first ~1,000 tokens"][1] == "ok"
    assert rows["model"] == ("gemma-3-270m-q4_k_m.gguf: sliding-window attention", "warn")
    # with several slots the bundled runtime shares one KV cache (--kv-unified): each
    # slot may use all of it, up to the model's training context (llama-server caps it)
    slots = f"{spec.slots} slot{'s' if spec.slots != 1 else ''}"
    per_slot = min(spec.ctx_size, GEMMA3_270M_TRAINING_CONTEXT)
    assert rows["slots"] == (f"{slots}, {per_slot:,} tokens of context each", "ok")
    assert d.exit_code == 0 and d.verdict == "the runtime reuses shared prefixes"
    # the head was counted with the runtime's tokenizer, and nearly all of it reused
    assert findings.head_counted and findings.head_tokens is not None
    assert 800 <= findings.head_tokens <= 1400
    assert findings.repeat is not None and findings.diverged is not None
    repeat, diverged = findings.repeat.usage, findings.diverged.usage
    assert repeat.prompt_tokens is not None and repeat.cached_tokens is not None
    assert repeat.cached_tokens >= repeat.prompt_tokens - 1
    assert diverged.cached_tokens is not None
    assert findings.head_tokens <= diverged.cached_tokens < (diverged.prompt_tokens or 0)
    return rows


def test_doctor_on_the_bundled_runtimes_openai_endpoint(
    local_runtime: LocalRuntime, local_base_url: str
) -> None:
    before = cached_total(local_base_url)
    findings = probe_runtime(local_base_url, "openai")
    rows = check(findings, local_runtime.spec)
    assert rows["usage"] == ("usage.prompt_tokens_details.cached_tokens", "ok")
    assert findings.repeat is not None and findings.diverged is not None
    reported = (findings.repeat.usage.cached_tokens or 0) + (
        findings.diverged.usage.cached_tokens or 0
    )
    assert cached_total(local_base_url) - before >= reported


def test_doctor_command_on_the_bundled_runtimes_anthropic_endpoint(
    local_runtime: LocalRuntime, local_base_url: str
) -> None:
    result = CliRunner().invoke(main, ["doctor", local_base_url], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert f"prefixgate doctor: {local_base_url} (kind anthropic)" in result.output
    assert "usage.cache_read_input_tokens" in result.output
    assert "What the gateway does about it:" in result.output
    assert "verdict: the runtime reuses shared prefixes" in result.output
    findings = probe_runtime(local_base_url)  # the kind detected: /v1/messages answers
    assert findings.kind == "anthropic"
    check(findings, local_runtime.spec)
