"""``prefixgate doctor``, the shell: the probe requests sent with httpx
(``probe_runtime``), kept as ``Findings`` for ``assess.py``, and the command
(``run_doctor``: a URL, the configured upstreams, or the bundled runtime started
for the probe and stopped after)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from rich.console import Console

from prefixgate.doctor.assess import (
    CHAT_PATHS,
    PROBE_TURNS,
    Answer,
    Findings,
    Template,
    Unreachable,
    assess,
    chat_body,
    probe_head,
    render,
    template_from_counts,
    template_from_render,
)

# --- the shell: HTTP ------------------------------------------------------------------------


class _Client:
    """Sends each probe where the gateway would: ``/v1/messages`` under the URL,
    chat completions and the model list as the openai kind does (``/v1/...``
    under a bare host, right under a URL with a path such as ``.../api/v1``),
    llama-server's own endpoints (``/tokenize``, ``/slots``, ``/props``, ...) at
    the root of the host."""

    def __init__(self, client: httpx.Client, url: str) -> None:
        self.client = client
        self.base = url.rstrip("/")
        parts = urlsplit(self.base)
        self.root = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        self.versioned = parts.path.strip("/") != ""  # upstreams/openai.py api_path

    def where(self, path: str) -> str:
        if path in ("/v1/chat/completions", "/v1/models"):
            return self.base + (path.removeprefix("/v1") if self.versioned else path)
        if path.startswith("/v1/"):
            return self.base + path
        return self.root + path

    def call(self, method: str, path: str, body: Any = None) -> Answer:
        start = time.monotonic()
        try:
            response = self.client.request(method, self.where(path), json=body)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            return Answer(None, error=_reason(exc), seconds=time.monotonic() - start)
        elapsed = time.monotonic() - start
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        return Answer(response.status_code, parsed, None, elapsed)


def _reason(exc: Exception) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {str(exc) or 'refused'}"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__


def probe_runtime(
    url: str,
    kind: str | None = None,
    *,
    model: str | None = None,
    headers: Mapping[str, str] | None = None,
    configured_slots: int | None = None,
    auth: tuple[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
    timeout: float = 300.0,
) -> Findings:
    """Probe the runtime at ``url``; ``kind`` None: anthropic when ``/v1/messages``
    answers, else openai. Raises ``Unreachable`` when nothing answers."""
    client = httpx.Client(
        headers=dict(headers or {}),
        auth=auth,
        timeout=httpx.Timeout(timeout, connect=10.0),
        transport=transport,
        trust_env=False,
    )
    with client:
        try:
            c = _Client(client, url)
        except ValueError as exc:
            raise Unreachable(f"{url} is not a URL prefixgate can reach: {exc}") from None
        return _probe(c, url, kind, model, configured_slots)


def _probe(
    c: _Client, url: str, kind: str | None, model: str | None, configured: int | None
) -> Findings:
    models = c.call("GET", "/v1/models")
    if models.status is None:
        raise Unreachable(f"cannot reach {url}: {models.error}")
    props = c.call("GET", "/props")
    model = model or _model_name(models, props)
    name = model or "default"
    tiny = (("user", "Say hi."),)
    endpoints = {
        "/v1/messages": c.call("POST", "/v1/messages", chat_body("anthropic", name, None, tiny)),
        "/v1/chat/completions": c.call(
            "POST", "/v1/chat/completions", chat_body("openai", name, None, tiny)
        ),
        "/v1/models": models,
        "/tokenize": c.call("POST", "/tokenize", {"content": "hello"}),
        "/slots": c.call("GET", "/slots"),
        "/metrics": c.call("GET", "/metrics"),
    }
    if endpoints["/tokenize"].ok and not _tokens(endpoints["/tokenize"].body):
        endpoints["/tokenize"] = Answer(
            endpoints["/tokenize"].status, None, "not llama.cpp's token list", shaped=False
        )
    if kind is None:
        kind = "anthropic" if endpoints["/v1/messages"].ok else "openai"
    if not model:
        model = _answer_model(endpoints[CHAT_PATHS[kind]])
    slots, slot_ctx = _slots(endpoints["/slots"], props)
    findings = Findings(
        url=url,
        kind=kind,
        endpoints=endpoints,
        model=model,
        slots=slots,
        slot_ctx=slot_ctx,
        configured_slots=configured,
    )
    if not endpoints[CHAT_PATHS[kind]].ok:
        return findings
    path = CHAT_PATHS[kind]
    template = _probe_template(c, kind, name, path)
    nonce = secrets.token_hex(6)
    head = probe_head(nonce)
    first = (("user", f"Task A {nonce}: list the rules about file 3, then stop. " * 4),)
    other = (("user", f"Task B {nonce}: which rules name task 5? Answer briefly. " * 4),)
    cold = c.call("POST", path, chat_body(kind, name, head, first))
    repeat = c.call("POST", path, chat_body(kind, name, head, first))
    diverged = c.call("POST", path, chat_body(kind, name, head, other))
    head_tokens, counted = _count(c, head, endpoints["/tokenize"].ok)
    return Findings(
        url=url,
        kind=kind,
        endpoints=endpoints,
        cold=cold,
        repeat=repeat,
        diverged=diverged,
        head_tokens=head_tokens,
        head_counted=counted,
        template=template,
        model=model,
        slots=slots,
        slot_ctx=slot_ctx,
        configured_slots=configured,
    )


def _probe_template(c: _Client, kind: str, model: str, path: str) -> Template:
    openai = chat_body("openai", model, "You are a probe.", PROBE_TURNS, tools=True)
    rendered = c.call("POST", "/apply-template", {k: openai[k] for k in ("messages", "tools")})
    if rendered.ok and isinstance(rendered.body, Mapping) and "prompt" in rendered.body:
        return template_from_render(str(rendered.body["prompt"]))
    if rendered.status == 400 or rendered.status == 500:
        # llama-server answers a template error so; check the chat endpoint too
        again = c.call("POST", path, chat_body(kind, model, "You are a probe.", PROBE_TURNS))
        if not again.ok:
            return template_from_render(None)
    plain_turns = tuple(t for t in PROBE_TURNS if t[0] != "system")
    plain = c.call("POST", path, chat_body(kind, model, "You are a probe.", plain_turns))
    tools = c.call(
        "POST", path, chat_body(kind, model, "You are a probe.", plain_turns, tools=True)
    )
    mid = c.call("POST", path, chat_body(kind, model, "You are a probe.", PROBE_TURNS))
    return template_from_counts(
        plain.usage.prompt_tokens if plain.ok else None,
        tools.usage.prompt_tokens if tools.ok else None,
        mid.usage.prompt_tokens if mid.ok else None,
        mid_system_refused=plain.ok and mid.status is not None and 400 <= mid.status < 500,
    )


def _count(c: _Client, text: str, tokenize: bool) -> tuple[int, bool]:
    if tokenize:
        answer = c.call("POST", "/tokenize", {"content": text})
        tokens = _tokens(answer.body) if answer.ok else None
        if tokens is not None:
            return len(tokens), True
    return len(text) // 4, False


def _tokens(body: Any) -> list[Any] | None:
    if isinstance(body, Mapping) and isinstance(body.get("tokens"), list):
        return list(body["tokens"])
    return None


def _model_name(models: Answer, props: Answer) -> str | None:
    if props.ok and isinstance(props.body, Mapping):
        for key in ("model_alias", "model_path"):
            value = props.body.get(key)
            if isinstance(value, str) and value:
                return value
    if models.ok and isinstance(models.body, Mapping):
        data = models.body.get("data") or models.body.get("models")
        if isinstance(data, list) and data and isinstance(data[0], Mapping):
            value = data[0].get("id") or data[0].get("name") or data[0].get("model")
            if isinstance(value, str) and value:
                return value
    return None


def _answer_model(answer: Answer) -> str | None:
    if answer.ok and isinstance(answer.body, Mapping):
        value = answer.body.get("model")
        if isinstance(value, str) and value:
            return value
    return None


def _slots(slots: Answer, props: Answer) -> tuple[int | None, int | None]:
    if slots.ok and isinstance(slots.body, list) and slots.body:
        ctx = [s.get("n_ctx") for s in slots.body if isinstance(s, Mapping)]
        sizes = [n for n in ctx if isinstance(n, int)]
        return len(slots.body), (sizes[0] if sizes else None)
    if props.ok and isinstance(props.body, Mapping):
        total = props.body.get("total_slots")
        settings = props.body.get("default_generation_settings")
        n_ctx = settings.get("n_ctx") if isinstance(settings, Mapping) else None
        if isinstance(total, int) and total > 0:
            return total, n_ctx if isinstance(n_ctx, int) else None
    return None, None


# --- the command ----------------------------------------------------------------------------


def run_doctor(
    url: str | None,
    kind: str | None,
    *,
    config_path: str | None = None,
    model: str | None = None,
    console: Console,
) -> int:
    """Probe ``url``, or with none whatever ``serve`` would use: each configured
    upstream (its first replica), or the bundled runtime started for the probe and
    stopped after. Prints the tables; returns the exit code (the worst one)."""
    if url is not None:
        return _print(probe_runtime(url, kind, model=model), console)
    from prefixgate.config import ConfigError, load_settings

    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        raise Unreachable(str(exc)) from None
    if settings.embedded:
        return _bundled(kind or settings.upstream_kind, model, console)
    code = 0
    for up in settings.upstreams.values():
        headers = {}
        if up.api_key:
            headers = {"x-api-key": up.api_key, "authorization": f"Bearer {up.api_key}"}
        findings = probe_runtime(
            up.url,
            kind or up.kind,
            model=model,
            headers=headers,
            configured_slots=up.cache_slots,
            auth=up.basic_auth(),
        )
        code = max(code, _print(findings, console))
    return code


def _bundled(kind: str, model: str | None, console: Console) -> int:
    from prefixgate.runtime.local import LocalRuntime, RuntimeMissing, default_spec

    try:
        spec = default_spec()
    except RuntimeMissing as exc:
        raise Unreachable(
            f"no upstream configured and the bundled runtime is not installed: {exc.detail}; "
            "or probe a running server: prefixgate doctor URL"
        ) from None
    console.print(f"starting the bundled llama-server (model {spec.model.name}) for the probe")
    with LocalRuntime(spec) as runtime:
        findings = probe_runtime(runtime.base_url, kind, model=model, configured_slots=spec.slots)
    return _print(findings, console)


def _print(findings: Findings, console: Console) -> int:
    diagnosis = assess(findings)
    console.print(render(diagnosis))
    return diagnosis.exit_code
