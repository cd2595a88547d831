"""OpenAI chat completion -> Anthropic message, for answers that are not streamed.

    to_anthropic_message(payload, names, model=...)  the whole answer
    stop_reason(finish_reason, matched)               "stop" -> "end_turn", "length" -> ...
    anthropic_usage(payload)                          Anthropic usage from any usage shape
    openai_error(status, payload)                     (Anthropic error type, message)

The pieces ``stream.py`` shares with it (ids, tool input, reasoning and text of
a message or a delta) live here too, so both paths give the same message.

Choices made where the wire formats leave one:

- ``id``: the upstream's id, prefixed ``msg_`` unless it already starts so
  (``chatcmpl-1`` -> ``msg_chatcmpl-1``), so it still finds the upstream's
  logs; an answer without an id gets ``msg_`` plus 24 hex digits of the
  SHA-256 of its canonical JSON. Nothing is random.
- tool call ids are kept exactly (the client sends them back as
  ``tool_use_id``, which the request translator forwards unchanged); a call
  without one gets ``toolu_`` plus 24 hex digits of the SHA-256 of
  ``"<message id>/<call index>"``.
- tool arguments: a JSON object is the input; an object already decoded is
  taken as is; empty or blank arguments (llama.cpp sends ``""`` for tools
  without parameters), ``null``, JSON that is not an object and text that is
  not JSON at all all become ``{}``. The client validates the input against the
  tool's schema and tells the model what is missing, which is how a model
  recovers; an extra field holding the raw text would not help it more.
- reasoning comes from ``reasoning_content`` (llama.cpp, DeepSeek, vLLM) or
  ``reasoning`` (vLLM, Ollama, OpenRouter), as one ``thinking`` block with an
  empty signature, before the text.
- ``refusal`` becomes a text block after the content and the stop reason
  ``refusal``. Tool calls under a finish reason of ``stop`` (Ollama, some
  templates) make the stop reason ``tool_use``: that is what the model did.
- a stop sequence is known to have matched when the choice names it: vLLM's
  ``stop_reason``, SGLang's ``matched_stop`` or llama.cpp's ``stopping_word``,
  when it is a non-empty string and the finish reason is ``stop``.
- usage: ``input_tokens`` is the prompt less the cached tokens,
  ``cache_read_input_tokens`` appears only when the upstream reported a cached
  count (unknown is not 0), ``output_tokens`` is the completion count (llama.cpp
  ``timings.predicted_n``, Ollama ``eval_count`` when there is no ``usage``);
  unknown counts of the two required fields are 0.

A payload that is no chat completion raises ``UpstreamStatus`` with status 502
(``api_error``, or the error type its error body names); nothing else is raised.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

from prefixgate.core.errors import UpstreamStatus, error_type_for_status
from prefixgate.core.fold import Usage, token_count
from prefixgate.core.usage import cache_usage

__all__ = [
    "NameMap",
    "anthropic_usage",
    "matched_stop",
    "message_id",
    "openai_error",
    "reasoning_text",
    "stop_reason",
    "to_anthropic_message",
    "tool_input",
    "tool_use_id",
]

Json = dict[str, Any]

MAX_ERROR_MESSAGE = 2000
_HASH_HEX = 24

_STOP_REASONS = {
    "stop": "end_turn",
    "eos": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# Error types an error body may name, as the Anthropic type they mean. Generic
# ones ("server_error", "api_error") are not here: the status says more.
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "not_supported_error": "invalid_request_error",
    "exceed_context_size_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "request_too_large": "request_too_large",
    "rate_limit_error": "rate_limit_error",
    "timeout_error": "timeout_error",
    "overloaded_error": "overloaded_error",
    "unavailable_error": "overloaded_error",
}
_ERROR_CODES = {
    "context_length_exceeded": "invalid_request_error",
    "string_above_max_length": "invalid_request_error",
    "invalid_api_key": "authentication_error",
    "model_not_found": "not_found_error",
    "rate_limit_exceeded": "rate_limit_error",
}
_CONTEXT_OVERFLOW = {"context_length_exceeded", "exceed_context_size_error"}
# Claude Code recognises an overflowing prompt by this wording (and compacts).
_TOO_LONG = "prompt is too long"


class NameMap(Protocol):
    """Maps upstream (OpenAI) function names back to the client's tool names."""

    def to_anthropic(self, name: str) -> str: ...


def stop_reason(finish_reason: object, matched: str | None = None) -> str | None:
    """The Anthropic stop reason for an OpenAI ``finish_reason``.

    ``matched`` is the stop sequence the upstream says it stopped on (see
    ``matched_stop``): with ``"stop"`` it makes ``"stop_sequence"``. ``None``
    stays ``None`` (not finished); an unknown reason is ``"end_turn"``.
    """
    if finish_reason is None:
        return None
    if finish_reason == "stop" and matched:
        return "stop_sequence"
    if isinstance(finish_reason, str):
        return _STOP_REASONS.get(finish_reason, "end_turn")
    return "end_turn"


def matched_stop(choice: Mapping[str, Any]) -> str | None:
    """The stop sequence a choice says it stopped on, if it names one."""
    if choice.get("finish_reason") != "stop":
        return None
    for key in ("stop_reason", "matched_stop", "stopping_word"):
        value = choice.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def anthropic_usage(payload: Mapping[str, Any]) -> Json:
    """Anthropic ``usage`` from a completion or chunk in any usage shape (see module doc)."""
    raw = payload.get("usage")
    usage: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    if "input_tokens" in usage:  # already Anthropic-shaped: keep the fields as they are
        known = Usage.from_payload(usage)
        out: Json = {"input_tokens": known.input_tokens or 0}
        if known.cache_creation_input_tokens is not None:
            out["cache_creation_input_tokens"] = known.cache_creation_input_tokens
        if known.cache_read_input_tokens is not None:
            out["cache_read_input_tokens"] = known.cache_read_input_tokens
        out["output_tokens"] = known.output_tokens or 0
        return out
    counts = cache_usage(payload)
    prompt = counts.prompt_tokens
    cached = counts.cached_tokens
    out = {"input_tokens": max(prompt - (cached or 0), 0) if prompt is not None else 0}
    if cached is not None:
        out["cache_read_input_tokens"] = cached
    out["output_tokens"] = _output_tokens(payload, usage)
    return out


def _output_tokens(payload: Mapping[str, Any], usage: Mapping[str, Any]) -> int:
    count = token_count(usage.get("completion_tokens"))
    if count is None:
        count = token_count(usage.get("output_tokens"))
    timings = payload.get("timings")
    if count is None and isinstance(timings, Mapping):
        count = token_count(timings.get("predicted_n"))
    if count is None:
        count = token_count(payload.get("eval_count"))
    return count or 0


def message_id(upstream_id: object, fallback: object) -> str:
    """``msg_`` + the upstream's id, or a hash of ``fallback`` when it sent none."""
    if isinstance(upstream_id, str) and upstream_id:
        return upstream_id if upstream_id.startswith("msg_") else f"msg_{upstream_id}"
    return f"msg_{_digest(_canonical(fallback))}"


def tool_use_id(call_id: object, msg_id: str, index: int) -> str:
    """The call's own id, kept exactly, or one derived from the message id and call index."""
    if isinstance(call_id, str) and call_id:
        return call_id
    return f"toolu_{_digest(f'{msg_id}/{index}')}"


def tool_input(arguments: object) -> Json:
    """The ``input`` object of a tool call's ``arguments`` (see module doc for the rules)."""
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def reasoning_text(message: Mapping[str, Any]) -> str:
    """Reasoning of a message or delta: ``reasoning_content``, else ``reasoning``."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def content_text(content: object) -> str:
    """Text of a ``content`` field: a string, or the text of a list of parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") in ("text", None):
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
    return "".join(texts)


def first_choice(choices: object) -> Mapping[str, Any] | None:
    """The choice with index 0 (the only one a client asked for), else the first one."""
    if not isinstance(choices, list):
        return None
    candidates = [c for c in choices if isinstance(c, Mapping)]
    for choice in candidates:
        if choice.get("index", 0) == 0:
            return choice
    return candidates[0] if candidates else None


def to_anthropic_message(payload: Mapping[str, Any], names: NameMap, *, model: str) -> Json:
    """The Anthropic message for a whole OpenAI chat completion.

    ``model`` is the model the client asked for, which is what it expects back.
    Raises ``UpstreamStatus`` (502) for anything that is not a chat completion.
    """
    if not isinstance(payload, Mapping):
        raise UpstreamStatus(502, "api_error", "upstream answer is not a JSON object")
    if "error" in payload and not payload.get("choices"):
        error_type, text = openai_error(502, payload)
        raise UpstreamStatus(502, error_type, text)
    choice = first_choice(payload.get("choices"))
    if choice is None:
        raise UpstreamStatus(502, "api_error", "upstream answer has no choices")
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise UpstreamStatus(502, "api_error", "upstream answer has no message in its choice")
    msg_id = message_id(payload.get("id"), payload)
    content: list[Json] = []
    thinking = reasoning_text(message)
    if thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = content_text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    refused = isinstance(refusal, str) and bool(refusal)
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    tools = _tool_uses(message, names, msg_id)
    content += tools
    if not content:
        content.append({"type": "text", "text": ""})
    stop = matched_stop(choice)
    reason = stop_reason(choice.get("finish_reason"), stop)
    if refused:
        reason = "refusal"
    elif tools and reason in (None, "end_turn"):
        reason = "tool_use"
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason if reason is not None else "end_turn",
        "stop_sequence": stop if reason == "stop_sequence" else None,
        "usage": anthropic_usage(payload),
    }


def _tool_uses(message: Mapping[str, Any], names: NameMap, msg_id: str) -> list[Json]:
    calls = message.get("tool_calls")
    calls = [c for c in calls if isinstance(c, Mapping)] if isinstance(calls, list) else []
    legacy = message.get("function_call")
    if not calls and isinstance(legacy, Mapping):
        calls = [{"function": legacy}]
    blocks = []
    for index, call in enumerate(calls):
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        name = function.get("name")
        blocks.append(
            {
                "type": "tool_use",
                "id": tool_use_id(call.get("id"), msg_id, index),
                "name": names.to_anthropic(name if isinstance(name, str) else ""),
                "input": tool_input(function.get("arguments")),
            }
        )
    return blocks


def openai_error(status: int, payload: object) -> tuple[str, str]:
    """The Anthropic error type and message for an upstream error body.

    Reads OpenAI's ``{"error": {"message", "type", "code"}}``, llama.cpp's
    ``{"error": {"code", "message", "type"}}`` (also unwrapped, as its stream
    sends it), ``{"error": "text"}`` (Ollama), a top-level ``message`` or
    ``detail`` (vLLM, FastAPI), an Anthropic error body, or plain text. The type
    comes from ``error_type_for_status(status)`` unless the body names a more
    specific one. A prompt over the context size keeps the upstream's message
    after Claude Code's wording: ``prompt is too long: N tokens > M maximum``.
    """
    if isinstance(payload, bytes | bytearray):
        payload = bytes(payload).decode("utf-8", "replace")
    error: Mapping[str, Any] = {}
    message = ""
    if isinstance(payload, str):
        message = payload.strip()
    elif isinstance(payload, Mapping):
        inner = payload.get("error")
        if isinstance(inner, Mapping):
            error = inner
        elif isinstance(inner, str):
            message = inner
        else:
            error = payload
    if not message:
        message = _first_text(error, "message", "detail", "msg")
    kind = _type_of(error)
    error_type = kind if kind is not None else error_type_for_status(status)
    if _is_overflow(error) and _TOO_LONG not in message.lower():
        n_prompt, n_ctx = token_count(error.get("n_prompt_tokens")), token_count(error.get("n_ctx"))
        counts = f" {n_prompt} tokens > {n_ctx} maximum" if n_prompt and n_ctx else ""
        message = f"{_TOO_LONG}:{counts} ({message})" if message else f"{_TOO_LONG}:{counts}"
    if not message:
        message = f"upstream answered HTTP {status}"
    return error_type, message[:MAX_ERROR_MESSAGE]


def _type_of(error: Mapping[str, Any]) -> str | None:
    code = error.get("code")
    if isinstance(code, str) and code in _ERROR_CODES:
        return _ERROR_CODES[code]
    kind = error.get("type")
    if isinstance(kind, str) and kind in _ERROR_TYPES:
        return _ERROR_TYPES[kind]
    return None


def _is_overflow(error: Mapping[str, Any]) -> bool:
    return any(
        isinstance(error.get(key), str) and error.get(key) in _CONTEXT_OVERFLOW
        for key in ("code", "type")
    )


def _first_text(error: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = error.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def _canonical(value: object) -> str:
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):  # keys that do not sort, cycles
        return repr(value)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
