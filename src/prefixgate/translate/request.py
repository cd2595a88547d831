"""Anthropic Messages request -> OpenAI chat completions request.

Pure: a parsed request body in, a new body out; nothing is read from the
environment and the input is never changed. The result depends on nothing but
the input and ``OpenAIRequestOptions``.

This module holds the request-level translation: the top-level fields (sampling,
stream, tools, tool choice, thinking and output format, metadata) and the order
of the messages. Each message and its content blocks are translated by
``blocks``; the options and the per-call ``Context``, which both modules read,
live in ``context``. The names other modules import from here (``to_openai``,
``OpenAIRequest``, ``OpenAIRequestOptions``, ``loaded_tools`` and the texts the
translation writes) stay importable from here.

Cache safety comes first: every Anthropic message becomes a contiguous run of
OpenAI messages that depends on that message alone (and on the request's tool
names), in the same order, so a conversation one turn longer translates to the
same ``messages`` list with messages appended. Nothing is reordered or hoisted,
and ``cache_control`` (which Claude Code moves to the newest block every turn)
is dropped everywhere.

The choices made where the formats do not line up (those for message content
are listed in ``blocks``):

- ``system`` (a string or text blocks) becomes one leading system message; the
  blocks' texts are joined with ``"\\n\\n"``.
- Deferred tools (``defer_loading: true``, Claude Code's ``DeferredToolPlaceholder``
  and every tool it loads through ToolSearch) are sent as functions only once
  *loaded*: a tool is loaded in a request when a ``tool_reference`` naming it
  appears anywhere in that request's messages (in a ``tool_result``'s content,
  where ToolSearch puts it, or as a block of its own), which is what Anthropic's
  API does with them, or when ``OpenAIRequestOptions.loaded_tools`` names it (the
  gateway's tool-load step, which replaces the references by the definitions
  before translation, says which tools it expanded). Loaded deferred tools come
  after the other tools, in the order the conversation first referenced them,
  so a later load appends to the function list instead of moving tools that
  were there (the client inserts a loaded built-in tool in alphabetical order).
  A deferred tool not loaded is left out and named ``"deferred:NAME"`` in
  ``dropped``.
- Top-level fields: the ones chat completions has an equivalent for are
  translated; every other one (``safeguards``, ``context_management``,
  ``container``, ``mcp_servers``, and any field a later client adds) is never
  sent, since OpenAI servers refuse arguments they do not know, and is named in
  ``dropped``.
- Blocks, tools and fields without an OpenAI equivalent are left out and named
  in ``OpenAIRequest.dropped``: ``"block:TYPE"``, ``"tool:TYPE"``, ``"FIELD"`` or
  ``"FIELD.KEY"``, ``"cache_control"``.

Shapes the translation cannot work with raise ``InvalidRequest`` naming the path
(``messages[3].content[1]: ...``); no other exception escapes for JSON input.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from prefixgate.core.errors import InvalidRequest
from prefixgate.translate.blocks import (
    TOOL_ERROR_PREFIX,
    TOOL_IMAGE_NOTE,
    TOOL_REFERENCE_TEXT,
    system_text,
    translate_message,
)
from prefixgate.translate.context import SYSTEM_MESSAGES, Context, Json, OpenAIRequestOptions
from prefixgate.translate.names import ToolNames

__all__ = [
    "EFFORTS",
    "SYSTEM_MESSAGES",
    "TOOL_ERROR_PREFIX",
    "TOOL_IMAGE_NOTE",
    "TOOL_REFERENCE_TEXT",
    "Json",
    "OpenAIRequest",
    "OpenAIRequestOptions",
    "loaded_tools",
    "to_openai",
]

EFFORTS = ("low", "medium", "high")
_DEFAULT_OPTIONS = OpenAIRequestOptions()

# Top-level fields read by the translation; every other one is reported as dropped.
_KNOWN = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "metadata",
    }
)
_TOOL_KEYS = frozenset(
    {"name", "description", "input_schema", "type", "cache_control", "defer_loading"}
)


@dataclass(frozen=True)
class OpenAIRequest:
    """The chat completions body, the tool names to map back, and what was left out."""

    body: dict[str, Any]
    names: ToolNames
    dropped: tuple[str, ...] = ()


def to_openai(
    body: Mapping[str, Any], options: OpenAIRequestOptions = _DEFAULT_OPTIONS
) -> OpenAIRequest:
    """Translate an Anthropic Messages request body into a chat completions request.

    The body's keys come in one fixed order, each only when there is something to
    send: model, messages, max_tokens, temperature, top_p, top_k, stop, stream,
    stream_options, tools, tool_choice, parallel_tool_calls, reasoning_effort,
    response_format, user, prompt_cache_key.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: field required (a non-empty string)")
    ctx = Context(ToolNames.from_tools(body.get("tools")), options)
    for key in body:
        if key not in _KNOWN:
            ctx.drop(str(key))
    out: Json = {"model": model, "messages": _messages(body, ctx)}
    _sampling(body, out)
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise InvalidRequest("stream: must be a boolean")
        out["stream"] = stream
        if stream and options.include_usage:
            out["stream_options"] = {"include_usage": True}
    loaded = list(dict.fromkeys([*loaded_tools(body.get("messages")), *options.loaded_tools]))
    tools = _tools(body.get("tools"), loaded, ctx)
    if tools:
        out["tools"] = tools
    _tool_choice(body.get("tool_choice"), ctx, out)
    _reasoning_and_format(body, ctx, out)
    _metadata(body.get("metadata"), ctx)
    if options.user is not None:
        out["user"] = options.user
    if options.prompt_cache_key is not None:
        out["prompt_cache_key"] = options.prompt_cache_key
    return OpenAIRequest(out, ctx.names, tuple(sorted(ctx.dropped)))


# -- top-level fields ---------------------------------------------------------


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sampling(body: Mapping[str, Any], out: Json) -> None:
    """max_tokens, temperature, top_p, top_k, stop_sequences -> stop (null means absent)."""
    for key, check, kind in (
        ("max_tokens", _is_int, "an integer"),
        ("temperature", _is_number, "a number"),
        ("top_p", _is_number, "a number"),
        ("top_k", _is_int, "an integer"),
    ):
        value = body.get(key)
        if value is None:
            continue
        if not check(value):
            raise InvalidRequest(f"{key}: must be {kind}")
        out[key] = value
    stop = body.get("stop_sequences")
    if stop is None:
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("stop_sequences: must be a list of strings")
    if stop:
        out["stop"] = list(stop)


def loaded_tools(messages: object) -> list[str]:
    """The tool names ``tool_reference`` items name in ``messages``, in first-seen order.

    Looked for in user messages: as blocks of their own and inside the content of
    ``tool_result`` blocks. Anything malformed is skipped (the translation reports it).
    """
    names: dict[str, None] = {}
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            inner = block.get("content") if block.get("type") == "tool_result" else [block]
            for item in inner if isinstance(inner, list) else []:
                if isinstance(item, dict) and item.get("type") == "tool_reference":
                    name = item.get("tool_name")
                    if isinstance(name, str) and name:
                        names.setdefault(name, None)
    return list(names)


def _tools(tools: object, loaded: list[str], ctx: Context) -> list[Json]:
    """Client tools as functions, in order; server tools (no input_schema) are dropped.

    Deferred tools follow the others, only when ``loaded``, in the order loaded.
    """
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list")
    out: list[Json] = []
    deferred: dict[str, Json] = {}
    for i, tool in enumerate(tools):
        path = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"{path}: must be an object")
        kind = tool.get("type")
        if "input_schema" not in tool and isinstance(kind, str) and kind != "custom":
            ctx.drop(f"tool:{kind}")
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{path}.name: field required (a non-empty string)")
        description = tool.get("description", "")
        if not isinstance(description, str):
            raise InvalidRequest(f"{path}.description: must be a string")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{path}.input_schema: field required (an object)")
        for key in tool:
            if key == "cache_control":
                ctx.drop("cache_control")
            elif key not in _TOOL_KEYS:
                ctx.drop(f"tools.{key}")
        function = {
            "name": ctx.names.to_openai(name),
            "description": description,
            "parameters": copy.deepcopy(schema),
        }
        if tool.get("defer_loading") is True:
            deferred.setdefault(name, {"type": "function", "function": function})
        else:
            out.append({"type": "function", "function": function})
    out += [deferred[name] for name in loaded if name in deferred]
    for name in deferred.keys() - set(loaded):
        ctx.drop(f"deferred:{name}")
    return out


def _tool_choice(choice: object, ctx: Context, out: Json) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict):
        raise InvalidRequest("tool_choice: must be an object")
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("tool_choice.name: field required (a non-empty string)")
        out["tool_choice"] = {"type": "function", "function": {"name": ctx.names.to_openai(name)}}
    else:
        raise InvalidRequest("tool_choice.type: must be one of auto, any, tool, none")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _reasoning_and_format(body: Mapping[str, Any], ctx: Context, out: Json) -> None:
    """thinking (+ output_config.effort) -> reasoning_effort; output_config.format."""
    config = body.get("output_config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise InvalidRequest("output_config: must be an object")
    used = {"format"}
    effort, adaptive = _effort(body.get("thinking"), config.get("effort"), ctx)
    if effort is not None:
        out["reasoning_effort"] = effort
        if adaptive:
            used.add("effort")
    fmt = config.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("output_config.format.schema: field required (an object)")
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": copy.deepcopy(schema), "strict": True},
        }
    elif fmt is not None:
        ctx.drop("output_config.format")
    for key in config:
        if key not in used:
            ctx.drop(f"output_config.{key}")


def _effort(thinking: object, effort: object, ctx: Context) -> tuple[str | None, bool]:
    """The reasoning effort, and whether it came from ``output_config.effort``.

    ``enabled``: by ``budget_tokens`` (< 4096 low, < 16384 medium, else high);
    ``adaptive``: ``output_config.effort`` when low, medium or high, else medium
    (``"max"`` included).
    """
    if thinking is None:
        return None, False
    if not isinstance(thinking, dict):
        raise InvalidRequest("thinking: must be an object")
    kind = thinking.get("type")
    if kind == "disabled":
        return None, False
    if kind not in ("enabled", "adaptive") or not ctx.options.reasoning:
        ctx.drop("thinking")
        return None, False
    if kind == "adaptive":
        return (effort if isinstance(effort, str) and effort in EFFORTS else "medium"), True
    budget = thinking.get("budget_tokens")
    if not _is_int(budget):
        raise InvalidRequest("thinking.budget_tokens: field required (an integer)")
    return ("low" if budget < 4096 else "medium" if budget < 16384 else "high"), False


def _metadata(metadata: object, ctx: Context) -> None:
    """metadata is never sent: the caller decides ``user`` and ``prompt_cache_key``."""
    if isinstance(metadata, dict):
        for key in metadata:
            ctx.drop(f"metadata.{key}")
    elif metadata is not None:
        ctx.drop("metadata")


# -- messages -----------------------------------------------------------------


def _messages(body: Mapping[str, Any], ctx: Context) -> list[Json]:
    """The ``system`` field as one leading system message, then each message's run."""
    out: list[Json] = []
    system = body.get("system")
    if system is not None:
        text = system_text(system, "system", ctx)
        if text:
            out.append({"role": "system", "content": text})
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages: field required (a list of messages)")
    for i, message in enumerate(messages):
        out.extend(translate_message(message, f"messages[{i}]", ctx))
    return out
