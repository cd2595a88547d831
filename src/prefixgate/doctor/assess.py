"""``prefixgate doctor``, the pure half: the probe requests, and what came back
read into rows, a verdict and an exit code (``assess``), rendered as one table
(``render``). No I/O here; ``probe.py`` sends the requests."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from prefixgate.core.usage import CacheUsage, cache_usage

#: the endpoints whose answer the table shows, in this order
ENDPOINTS = (
    "/v1/messages",
    "/v1/chat/completions",
    "/v1/models",
    "/tokenize",
    "/slots",
    "/metrics",
)
CHAT_PATHS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}
TOOL_NAME = "prefixgate_probe_tool"
MID_SYSTEM = "prefixgate probe: this system message sits in the middle of the conversation"
EARLY_ANSWER = "prefixgate probe: the assistant's first answer"
LAST_TURN = "prefixgate probe: the user's last turn"
HEAD_TOKENS = 1000  # about how long the shared head of the divergence probe is
#: reused shares below this count as no reuse (a runtime may report its BOS token)
NO_REUSE_SHARE = 0.1
#: a prompt that shares its first ~1,000 tokens should get at least this share of them
PARTIAL_REUSE_SHARE = 0.8

# Families whose models keep a sliding window on some layers (or recurrent
# state): a prompt restored from a saved state is reused only when the new one
# extends it (about exactly: docs/runtime-cache.md); a live slot keeps partial
# matches only with --swa-full.
_SLIDING = re.compile(
    r"gemma[-_ ]?[234]|gpt[-_ ]?oss|mistral[-_ ]?7b[-_ ]?v0\.1|phi[-_ ]?3|command[-_ ]?(r7b|a)"
    r"|cohere2|llama[-_ ]?4",
    re.IGNORECASE,
)
_HYBRID = re.compile(
    r"qwen3[-_ ]?next|qwen3\.5|granite[-_ ]?4|jamba|falcon[-_ ]?h1|lfm2|mamba|rwkv|nemotron[-_ ]?h",
    re.IGNORECASE,
)


class Unreachable(Exception):
    """The runtime did not answer at all (refused, unknown host, bad URL): one line."""


@dataclass(frozen=True)
class Answer:
    """One exchange: the status (None: no answer), the JSON body (None: not JSON),
    the error that ended it, and how long it took."""

    status: int | None
    body: Any = None
    error: str | None = None
    seconds: float = 0.0
    #: False: it answered 2xx, but not in the shape the gateway reads
    shaped: bool = True

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and self.shaped

    @property
    def usage(self) -> CacheUsage:
        body = self.body if self.ok and isinstance(self.body, Mapping) else {}
        return cache_usage(body)

    def describe(self) -> str:
        if self.status is None:
            return f"no answer ({self.error or 'failed'})"
        if not self.shaped:
            return f"{self.status}, {self.error or 'another shape'}"
        return f"{self.status}" if self.ok else f"{self.status} (not served)"


@dataclass(frozen=True)
class Template:
    """What the chat template does with a tool definition and with a
    mid-conversation ``role: system`` message.

    ``tools``: True rendered, False left out, None unknown. ``mid_system``:
    ``in_place``, ``kept`` (rendered, place unknown), ``moved``, ``dropped``,
    ``refused`` (the request failed) or ``unknown``. ``how``: ``rendered prompt``
    or ``token counts``."""

    tools: bool | None = None
    mid_system: str = "unknown"
    how: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Findings:
    """Everything the probe saw."""

    url: str
    kind: str
    endpoints: Mapping[str, Answer] = field(default_factory=dict)
    cold: Answer | None = None
    repeat: Answer | None = None
    diverged: Answer | None = None
    head_tokens: int | None = None  # the shared head of the divergence probe
    head_counted: bool = False  # head_tokens from the runtime's tokenizer
    template: Template = Template()
    model: str | None = None
    slots: int | None = None
    slot_ctx: int | None = None
    configured_slots: int | None = None  # the gateway's cache_slots for it, when configured


@dataclass(frozen=True)
class Row:
    check: str
    found: str
    status: str  # ok | warn | fail | unknown
    action: str  # what the gateway does about it


@dataclass(frozen=True)
class Diagnosis:
    url: str
    kind: str
    rows: tuple[Row, ...]
    verdict: str
    exit_code: int


# --- pure: reading a rendered prompt or token counts -----------------------------


def template_from_render(with_tools: str | None, without_tools: str | None = None) -> Template:
    """The template's behaviour read from the prompt it rendered for the probe
    conversation (system, user, assistant, mid-conversation system, user, with
    ``TOOL_NAME`` among the tools); None: it refused to render it."""
    if with_tools is None:
        return Template(None, "refused", "rendered prompt", "the template refused the probe")
    tools = TOOL_NAME in with_tools
    answer, last = with_tools.find(EARLY_ANSWER), with_tools.rfind(LAST_TURN)
    where = with_tools.find(MID_SYSTEM)
    if where < 0:
        mid = "dropped"
    elif answer < 0 or last < 0:
        mid = "kept"
    elif answer < where < last:
        mid = "in_place"
    else:
        mid = "moved"
    detail = ""
    if without_tools is not None and tools and TOOL_NAME in without_tools:
        detail = "the tool's name is rendered even without tools"
    return Template(tools, mid, "rendered prompt", detail)


def template_from_counts(
    plain: int | None,
    with_tools: int | None,
    with_mid_system: int | None,
    *,
    mid_system_refused: bool = False,
) -> Template:
    """The template's behaviour read from the prompt token counts of the plain
    probe conversation, the same with a tool, and the same with a
    mid-conversation system message. The place of a kept message is unknown."""
    tools = None if plain is None or with_tools is None else with_tools > plain
    if mid_system_refused:
        mid = "refused"
    elif plain is None or with_mid_system is None:
        mid = "unknown"
    else:
        mid = "kept" if with_mid_system > plain else "dropped"
    return Template(tools, mid, "token counts")


def model_memory(model: str | None) -> str | None:
    """``sliding-window`` or ``hybrid`` for a model of a family known to keep
    only part of its attention state, else None."""
    if not model:
        return None
    if _HYBRID.search(model):
        return "hybrid"
    if _SLIDING.search(model):
        return "sliding-window"
    return None


def _share(part: int | None, whole: int | None) -> str:
    if part is None or not whole:
        return "unknown"
    return f"{part:,} of {whole:,} ({100 * part / whole:.0f}%)"


def _seconds(answer: Answer) -> str:
    return f"{answer.seconds:.1f} s"


# --- pure: the assessment -----------------------------------------------------------


def assess(f: Findings) -> Diagnosis:
    """The rows, the verdict and the exit code for what the probe saw."""
    rows = [*_endpoint_rows(f), _usage_row(f), *_template_rows(f)]
    reuse_rows, reuse = _reuse_rows(f)
    rows += reuse_rows
    rows += _memory_rows(f)
    chat = f.endpoints.get(CHAT_PATHS[f.kind])
    if chat is None or not chat.ok:
        verdict = (
            f"{CHAT_PATHS[f.kind]} does not answer: the gateway cannot use this runtime "
            f"as kind {f.kind}"
        )
        return Diagnosis(f.url, f.kind, tuple(rows), verdict, 1)
    if reuse == "none":
        verdict = "the runtime reused no prefix: every request is processed from scratch"
        return Diagnosis(f.url, f.kind, tuple(rows), verdict, 1)
    if reuse == "unknown":
        verdict = (
            "the runtime does not say what it served from cache: the gateway's report "
            "shows actual cached tokens as unknown"
        )
    elif reuse == "exact":
        verdict = "the runtime reuses repeated prompts, but not a shared head of different ones"
    else:
        verdict = "the runtime reuses shared prefixes"
    return Diagnosis(f.url, f.kind, tuple(rows), verdict, 0)


def _endpoint_rows(f: Findings) -> list[Row]:
    messages, chat = f.endpoints.get("/v1/messages"), f.endpoints.get("/v1/chat/completions")
    actions = {
        "/v1/messages": (
            "kind anthropic: requests are forwarded as Claude Code sent them"
            if messages and messages.ok
            else "use kind openai (--upstream-kind openai): the gateway translates"
        ),
        "/v1/chat/completions": (
            "kind openai works too: translated, no byte the cache depends on moved"
            if chat and chat.ok
            else "kind openai cannot be used"
        ),
        "/v1/models": "relayed to clients that list models",
        "/tokenize": "expected cached tokens counted with the runtime's own tokenizer",
        "/slots": "the slots and their context size (row slots)",
        "/metrics": "the runtime's own cached-token counters, to compare with the report",
    }
    missing = {
        "/v1/models": "a client listing models gets the runtime's error",
        "/tokenize": "expected cached tokens are estimated (expected_source: estimate)",
        "/slots": "slots read from /props where it answers (row slots)",
        "/metrics": "only the gateway's own /metrics",
    }
    rows = []
    for path in ENDPOINTS:
        answer = f.endpoints.get(path)
        if answer is None:
            rows.append(Row(path, "not probed", "unknown", ""))
            continue
        needed = path == CHAT_PATHS[f.kind]
        if answer.ok:
            status = "ok"
            action = actions[path]
        else:
            status = "fail" if needed else ("warn" if path in CHAT_PATHS.values() else "unknown")
            action = missing.get(path, actions[path])
        rows.append(Row(path, answer.describe(), status, action))
    return rows


def _usage_row(f: Findings) -> Row:
    answer = f.cold
    if answer is None or not answer.ok:
        return Row("usage", "no answer to read", "unknown", "")
    usage = answer.usage
    if usage.source is None:
        return Row(
            "usage",
            "no cached-token field"
            + (f" (prompt tokens: {usage.prompt_tokens:,})" if usage.prompt_tokens else ""),
            "warn",
            "actual cached tokens are unknown in the report, never 0; "
            "expected and oracle are still counted",
        )
    return Row("usage", _USAGE_FIELDS[usage.source], "ok", "actual cached tokens read from it")


_USAGE_FIELDS = {
    "anthropic": "usage.cache_read_input_tokens",
    "openai": "usage.prompt_tokens_details.cached_tokens",
    "deepseek": "usage.prompt_cache_hit_tokens",
    "llama.cpp": "timings.cache_n",
    "ollama": "prompt_eval_cached_count",
}


def _template_rows(f: Findings) -> list[Row]:
    t = f.template
    how = f" ({t.how})" if t.how else ""
    if t.tools is None:
        tools = Row("tools in template", "unknown" + how, "unknown", "")
    elif t.tools:
        tools = Row(
            "tools in template",
            "rendered" + how,
            "ok",
            "tools are part of the cached prefix; a ToolSearch load is placed "
            "where it was loaded (tool_loads inline)",
        )
    else:
        tools = Row(
            "tools in template",
            "left out" + how,
            "warn",
            "the model never sees the tool definitions: run the runtime with a template "
            "that renders them (the bundled runtime: templates/gemma3-tools.jinja)",
        )
    # the openai kind can send the message as a user message where it stands
    remedy = (
        '; or system_messages = "user" for this upstream (sent as a user message in place)'
        if f.kind == "openai"
        else '; or kind openai with system_messages = "user" (sent as a user message in place)'
    )
    mid = {
        "in_place": (
            "in place" + how,
            "ok",
            "Claude Code's environment message stays where it was sent",
        ),
        "kept": (
            "rendered, place unknown" + how,
            "ok",
            "Claude Code's environment message reaches the model",
        ),
        "moved": (
            "moved out of place" + how,
            "warn",
            "the environment and date move ahead of the conversation: a new date or "
            "directory changes the head of every prompt; use a template that keeps it in place"
            + remedy,
        ),
        "dropped": (
            "dropped" + how,
            "warn",
            "the model never sees Claude Code's environment message (2.1.332 sends one): "
            "use a template that keeps it" + remedy,
        ),
        "refused": (
            "refused" + how,
            "fail",
            "requests with a mid-conversation system message fail (Claude Code 2.1.332 "
            "sends one): use a template that accepts it" + remedy,
        ),
        "unknown": ("unknown" + how, "unknown", ""),
    }[t.mid_system]
    return [tools, Row("system mid-conversation", *mid)]


def _reuse_rows(f: Findings) -> tuple[list[Row], str]:
    """The two cache rows and what they add up to: ``prefix``, ``exact``, ``none``
    or ``unknown``."""
    if f.cold is None or f.repeat is None or not (f.cold.ok and f.repeat.ok):
        return [Row("repeated prompt", "not probed", "unknown", "")], "unknown"
    repeat = f.repeat.usage
    prompt = repeat.prompt_tokens or f.cold.usage.prompt_tokens
    times = f"; {_seconds(f.cold)} cold, {_seconds(f.repeat)} repeated"
    if repeat.cached_tokens is None:
        repeat_row = Row(
            "repeated prompt",
            "unknown (not reported)" + times,
            "unknown",
            "the report cannot show what it served",
        )
        repeated = None
    else:
        repeated = bool(prompt) and repeat.cached_tokens >= NO_REUSE_SHARE * (prompt or 0)
        repeat_row = Row(
            "repeated prompt",
            _share(repeat.cached_tokens, prompt) + times,
            "ok" if repeated else "fail",
            "a conversation's next turn reuses its previous prompt"
            if repeated
            else "nothing reused: check the runtime's prompt cache settings "
            "(llama-server: cache_prompt, --cache-ram)",
        )
    rows = [repeat_row]
    partial: bool | None = None
    if f.diverged is not None and f.diverged.ok:
        d = f.diverged.usage
        head = f"the first ~{f.head_tokens:,}" if f.head_tokens else "its head"
        found = _share(d.cached_tokens, d.prompt_tokens)
        if d.cached_tokens is None:
            rows.append(Row("same first ~1,000 tokens", "unknown", "unknown", ""))
        else:
            need = PARTIAL_REUSE_SHARE * (f.head_tokens or 0)
            partial = d.cached_tokens >= need and d.cached_tokens > 0
            rows.append(
                Row(
                    "same first ~1,000 tokens",
                    f"{found}, {head} shared",
                    "ok" if partial else "warn",
                    "a new session of the same project reuses the system prompt and tools "
                    "once the attribution block is stripped (policy strip)"
                    if partial
                    else "only exact repeats are reused: each new session and subagent is "
                    "processed from its first token; check the runtime's cache settings",
                )
            )
    elif f.diverged is not None:
        rows.append(Row("same first ~1,000 tokens", f.diverged.describe(), "unknown", ""))
    if repeated is None and partial is None:
        return rows, "unknown"
    if partial:
        return rows, "prefix"
    if repeated:
        return rows, "exact"
    return rows, "none"


def _memory_rows(f: Findings) -> list[Row]:
    rows = []
    memory = model_memory(f.model)
    name = (f.model or "unknown").rsplit("/", 1)[-1]
    if memory is None:
        rows.append(
            Row(
                "model",
                name,
                "ok" if f.model else "unknown",
                "no sliding-window family known by this name" if f.model else "",
            )
        )
    else:
        rows.append(
            Row(
                "model",
                f"{name}: {memory} attention",
                "warn",
                "a prompt restored from the RAM cache is reused only when the new one "
                "extends it exactly (docs/runtime-cache.md); llama-server needs --swa-full "
                "for partial matches in a live slot; the runtime model counts refused "
                "restores as partial_restore_refused",
            )
        )
    if f.slots is None:
        rows.append(
            Row("slots", "unknown", "unknown", "the runtime model assumes cache_slots (default 4)")
        )
    else:
        ctx = f", {f.slot_ctx:,} tokens of context each" if f.slot_ctx else ""
        plural = "slot" if f.slots == 1 else "slots"
        if f.configured_slots is not None and f.configured_slots != f.slots:
            action = (
                f"set cache_slots = {f.slots} for this upstream (configured: {f.configured_slots})"
            )
            status = "warn"
        else:
            action = (
                f"the runtime model holds {f.slots} prompt{'s' if f.slots != 1 else ''} "
                f"(cache_slots = {f.slots}); sessions beyond that evict each other"
            )
            status = "ok"
        rows.append(Row("slots", f"{f.slots} {plural}{ctx}", status, action))
    return rows


# --- pure: rendering ------------------------------------------------------------------

_MARKS = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]fail[/]", "unknown": "?"}


def render(d: Diagnosis) -> RenderableType:
    """One table of what was found, then what the gateway does about each row."""
    table = Table(title=f"prefixgate doctor: {d.url} (kind {d.kind})", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("found", overflow="fold")
    table.add_column("", no_wrap=True)
    for row in d.rows:
        table.add_row(row.check, row.found, _MARKS[row.status])
    actions = Table.grid(padding=(0, 1))
    actions.add_column(no_wrap=True, style="bold")
    actions.add_column(overflow="fold")
    for row in d.rows:
        if row.action:
            actions.add_row(row.check, row.action)
    heading = Text("What the gateway does about it:")
    mark = "red" if d.exit_code else "green"
    verdict = Text(f"verdict: {d.verdict}", style=mark)
    return Group(table, heading, actions, Text(), verdict)


# --- the probe requests -----------------------------------------------------------------


def probe_head(nonce: str, tokens: int = HEAD_TOKENS) -> str:
    """A system prompt of roughly ``tokens`` tokens, opening with ``nonce`` so an
    earlier probe's prompts are no prefix of it."""
    lines = [f"Probe {nonce}. You answer questions about a small project."]
    i = 0
    while sum(len(line) for line in lines) < tokens * 3:
        i += 1
        lines.append(f"Rule {i}: keep file {i % 17} unchanged unless task {i % 11} asks for it.")
    return "\n".join(lines)


def chat_body(
    kind: str,
    model: str,
    system: str | None,
    turns: Sequence[tuple[str, str]],
    *,
    tools: bool = False,
) -> dict[str, Any]:
    """A ``max_tokens: 1`` request of ``kind`` with ``system`` and ``turns``
    (role, text), a ``role: system`` turn kept where it stands, and the probe tool."""
    body: dict[str, Any] = {"model": model, "max_tokens": 1, "temperature": 0, "stream": False}
    messages: list[dict[str, Any]] = []
    if kind == "anthropic":
        if system is not None:
            body["system"] = system
        if tools:
            body["tools"] = [
                {
                    "name": TOOL_NAME,
                    "description": "Reads a note of the probe.",
                    "input_schema": {"type": "object", "properties": {"name": {"type": "string"}}},
                }
            ]
    else:
        if system is not None:
            messages.append({"role": "system", "content": system})
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": TOOL_NAME,
                        "description": "Reads a note of the probe.",
                        "parameters": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}},
                        },
                    },
                }
            ]
    messages += [{"role": role, "content": text} for role, text in turns]
    body["messages"] = messages
    return body


PROBE_TURNS: tuple[tuple[str, str], ...] = (
    ("user", "What does the probe check?"),
    ("assistant", EARLY_ANSWER),
    ("system", MID_SYSTEM),
    ("user", LAST_TURN),
)
