"""Anthropic Messages request -> OpenAI chat completions request.

Pure: a parsed request body in, a new body out; nothing is read from the
environment and the input is never changed. The result depends on nothing but
the input and ``OpenAIRequestOptions``.

Cache safety comes first: every Anthropic message becomes a contiguous run of
OpenAI messages that depends on that message alone (and on the request's tool
names), in the same order, so a conversation one turn longer translates to the
same ``messages`` list with messages appended. Nothing is reordered or hoisted,
and ``cache_control`` (which Claude Code moves to the newest block every turn)
is dropped everywhere.

The choices made where the formats do not line up:

- ``system`` (a string or text blocks) becomes one leading system message; the
  blocks' texts are joined with ``"\\n\\n"``. The same joining applies to a
  ``role: "system"`` message inside ``messages``, which stays at its position,
  as a system or a user message (``OpenAIRequestOptions.system_messages``).
- A user message's ``tool_result`` blocks become ``role: "tool"`` messages,
  first and in block order; its other blocks become one user message after
  them. A user message whose content is a single text part is sent as a plain
  string, any other as a list of parts: a one-block ``[text]`` and the same
  text as a string translate identically.
- A tool result's text blocks are joined with ``"\\n"``; ``is_error: true``
  prefixes the text with ``"[tool error] "``. Images cannot go into a tool
  message: they go, in order, into the user message that follows, and the tool
  text gets ``"[image in the next user message]"`` in their place.
- Assistant text blocks are joined with ``"\\n\\n"`` into ``content`` (``None``
  when there is no text but there are tool calls), thinking blocks likewise
  into ``reasoning_content``. Tool call ids are kept exactly; arguments are the
  input as compact JSON in the client's key order.
- Documents: plain text becomes a text part (its ``title`` on the first line),
  base64 data a ``file`` part, a URL a text part ``"[document: URL]"`` (title on
  the first line) since chat completions cannot fetch it; ``content`` documents
  become their text and image parts.
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
- A ``tool_reference`` item becomes the text ``"[tool loaded: NAME]"`` where it
  stands (in the tool message, or in the user message for a block of its own):
  the model reads which tool it may now call; its definition is in ``tools``.
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
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from prefixgate.core.errors import InvalidRequest
from prefixgate.translate.names import ToolNames

SYSTEM_MESSAGES = ("system", "user")
EFFORTS = ("low", "medium", "high")
TOOL_IMAGE_NOTE = "[image in the next user message]"
TOOL_ERROR_PREFIX = "[tool error] "
TOOL_REFERENCE_TEXT = "[tool loaded: {name}]"

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

Json = dict[str, Any]


@dataclass(frozen=True)
class OpenAIRequestOptions:
    """How to render what chat completions has no single answer for."""

    system_messages: str = "system"
    user: str | None = None
    prompt_cache_key: str | None = None
    include_usage: bool = True
    reasoning: bool = True
    loaded_tools: tuple[str, ...] = ()  # deferred tools loaded beyond the references seen

    def __post_init__(self) -> None:
        if self.system_messages not in SYSTEM_MESSAGES:
            raise ValueError(f"system_messages must be one of {SYSTEM_MESSAGES}")


@dataclass(frozen=True)
class OpenAIRequest:
    """The chat completions body, the tool names to map back, and what was left out."""

    body: dict[str, Any]
    names: ToolNames
    dropped: tuple[str, ...] = ()


@dataclass
class _Context:
    """The state of one translation call (never shared between calls)."""

    names: ToolNames
    options: OpenAIRequestOptions
    dropped: set[str] = field(default_factory=set)

    def drop(self, what: str) -> None:
        self.dropped.add(what)


def to_openai(
    body: Mapping[str, Any], options: OpenAIRequestOptions = OpenAIRequestOptions()
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
    ctx = _Context(ToolNames.from_tools(body.get("tools")), options)
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


def _tools(tools: object, loaded: list[str], ctx: _Context) -> list[Json]:
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


def _tool_choice(choice: object, ctx: _Context, out: Json) -> None:
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


def _reasoning_and_format(body: Mapping[str, Any], ctx: _Context, out: Json) -> None:
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


def _effort(thinking: object, effort: object, ctx: _Context) -> tuple[str | None, bool]:
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


def _metadata(metadata: object, ctx: _Context) -> None:
    """metadata is never sent: the caller decides ``user`` and ``prompt_cache_key``."""
    if isinstance(metadata, dict):
        for key in metadata:
            ctx.drop(f"metadata.{key}")
    elif metadata is not None:
        ctx.drop("metadata")


# -- messages -----------------------------------------------------------------


def _messages(body: Mapping[str, Any], ctx: _Context) -> list[Json]:
    out: list[Json] = []
    system = body.get("system")
    if system is not None:
        text = _system_text(system, "system", ctx)
        if text:
            out.append({"role": "system", "content": text})
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages: field required (a list of messages)")
    for i, message in enumerate(messages):
        out.extend(_message(message, f"messages[{i}]", ctx))
    return out


def _message(message: object, path: str, ctx: _Context) -> list[Json]:
    """One Anthropic message -> its OpenAI messages (a function of this message alone)."""
    if not isinstance(message, dict):
        raise InvalidRequest(f"{path}: each message must be an object with a role")
    role = message.get("role")
    if role not in ("user", "assistant", "system"):
        raise InvalidRequest(f"{path}.role: must be user, assistant or system")
    content = message.get("content")
    if not isinstance(content, str | list):
        raise InvalidRequest(f"{path}.content: must be a string or a list of blocks")
    if role == "user":
        return _user(content, path, ctx)
    if role == "assistant":
        return [_assistant(content, path, ctx)]
    text = _system_text(content, f"{path}.content", ctx)
    return [{"role": ctx.options.system_messages, "content": text}]


def _system_text(value: object, path: str, ctx: _Context) -> str:
    """A string, or text blocks joined with a blank line."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise InvalidRequest(f"{path}: must be a string or a list of text blocks")
    texts = []
    for j, block in enumerate(value):
        where = f"{path}[{j}]"
        if _block_type(block, where) != "text":
            raise InvalidRequest(f"{where}: only text blocks are allowed here")
        texts.append(_text(block, where, ctx))
    return "\n\n".join(texts)


def _block_type(block: object, path: str) -> str:
    if not isinstance(block, dict):
        raise InvalidRequest(f"{path}: each block must be an object with a type")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise InvalidRequest(f"{path}.type: field required (a string)")
    return kind


def _text(block: Json, path: str, ctx: _Context) -> str:
    if "cache_control" in block:
        ctx.drop("cache_control")
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"{path}.text: field required (a string)")
    return text


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{path}: field required (a string)")
    return value


def _user(content: str | list[Any], path: str, ctx: _Context) -> list[Json]:
    """tool_result blocks -> tool messages first, then one user message of the rest."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[Json] = []
    parts: list[Json] = []
    for j, block in enumerate(content):
        where = f"{path}.content[{j}]"
        kind = _block_type(block, where)
        if kind == "tool_result":
            message, images = _tool_result(block, where, ctx)
            tool_messages.append(message)
            parts.extend(images)
        else:
            parts.extend(_part(kind, block, where, ctx))
    if not parts:
        return tool_messages
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tool_messages, {"role": "user", "content": parts[0]["text"]}]
    return [*tool_messages, {"role": "user", "content": parts}]


def _part(kind: str, block: Json, path: str, ctx: _Context) -> list[Json]:
    """A user content block -> chat completions content parts (none when dropped)."""
    if kind == "text":
        return [{"type": "text", "text": _text(block, path, ctx)}]
    if "cache_control" in block:
        ctx.drop("cache_control")
    if kind == "image":
        return _image(block, path, ctx)
    if kind == "document":
        return _document(block, path, ctx)
    if kind == "tool_reference":
        return [{"type": "text", "text": _tool_reference(block, path)}]
    ctx.drop(f"block:{kind}")
    return []


def _tool_reference(block: Json, path: str) -> str:
    """``{"type": "tool_reference", "tool_name": N}`` -> the text a chat model reads."""
    return TOOL_REFERENCE_TEXT.format(name=_string(block.get("tool_name"), f"{path}.tool_name"))


def _source(block: Json, path: str) -> tuple[Json, str]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"{path}.source: field required (an object)")
    return source, _string(source.get("type"), f"{path}.source.type")


def _image(block: Json, path: str, ctx: _Context) -> list[Json]:
    source, kind = _source(block, path)
    if kind == "base64":
        media_type = _string(source.get("media_type"), f"{path}.source.media_type")
        data = _string(source.get("data"), f"{path}.source.data")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        url = _string(source.get("url"), f"{path}.source.url")
    else:
        ctx.drop(f"block:image.{kind}")
        return []
    return [{"type": "image_url", "image_url": {"url": url}}]


def _document(block: Json, path: str, ctx: _Context) -> list[Json]:
    source, kind = _source(block, path)
    title = block.get("title")
    title = title if isinstance(title, str) and title else None
    lines = [title] if title else []
    if kind == "text":
        data = _string(source.get("data"), f"{path}.source.data")
        return [{"type": "text", "text": "\n".join([*lines, data])}]
    if kind == "url":
        url = _string(source.get("url"), f"{path}.source.url")
        return [{"type": "text", "text": "\n".join([*lines, f"[document: {url}]"])}]
    if kind == "base64":
        media_type = _string(source.get("media_type"), f"{path}.source.media_type")
        data = _string(source.get("data"), f"{path}.source.data")
        default = "document.pdf" if media_type == "application/pdf" else "document"
        file = {"filename": title or default, "file_data": f"data:{media_type};base64,{data}"}
        return [{"type": "file", "file": file}]
    if kind == "content":
        texts, images = _nested(source.get("content"), f"{path}.source.content", ctx, note=None)
        text = "\n".join([*lines, *texts])
        return [{"type": "text", "text": text}, *images] if text else images
    ctx.drop(f"block:document.{kind}")
    return []


def _nested(
    content: object, path: str, ctx: _Context, note: str | None = TOOL_IMAGE_NOTE
) -> tuple[list[str], list[Json]]:
    """Text and image blocks inside a tool result or a content document.

    Returns the texts (``note`` in the place of each image) and the image parts.
    """
    if content is None:
        return [], []
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}: must be a string or a list of blocks")
    texts: list[str] = []
    images: list[Json] = []
    for k, inner in enumerate(content):
        where = f"{path}[{k}]"
        kind = _block_type(inner, where)
        if kind == "text":
            texts.append(_text(inner, where, ctx))
        elif kind == "image":
            if "cache_control" in inner:
                ctx.drop("cache_control")
            found = _image(inner, where, ctx)
            if found and note is not None:
                texts.append(note)
            images.extend(found)
        elif kind == "tool_reference":
            texts.append(_tool_reference(inner, where))
        else:
            ctx.drop(f"block:{kind}")
    return texts, images


def _tool_result(block: Json, path: str, ctx: _Context) -> tuple[Json, list[Json]]:
    if "cache_control" in block:
        ctx.drop("cache_control")
    tool_use_id = _string(block.get("tool_use_id"), f"{path}.tool_use_id")
    texts, images = _nested(block.get("content"), f"{path}.content", ctx)
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = TOOL_ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}, images


def _assistant(content: str | list[Any], path: str, ctx: _Context) -> Json:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[Json] = []
    for j, block in enumerate(content):
        where = f"{path}.content[{j}]"
        kind = _block_type(block, where)
        if "cache_control" in block:
            ctx.drop("cache_control")
        if kind == "text":
            texts.append(_text(block, where, ctx))
        elif kind == "tool_use":
            calls.append(_tool_call(block, where, ctx))
        elif kind == "thinking" and ctx.options.reasoning:
            thinking.append(_string(block.get("thinking"), f"{where}.thinking"))
        else:
            ctx.drop(f"block:{kind}")
    message: Json = {"role": "assistant", "content": "\n\n".join(texts)}
    if not texts and calls:
        message["content"] = None
    if thinking:
        message["reasoning_content"] = "\n\n".join(thinking)
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_call(block: Json, path: str, ctx: _Context) -> Json:
    call_id = _string(block.get("id"), f"{path}.id")
    name = _string(block.get("name"), f"{path}.name")
    arguments = block.get("input")
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"{path}.input: field required (an object)")
    try:
        encoded = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(f"{path}.input: not valid JSON: {exc}") from None
    function = {"name": ctx.names.to_openai(name), "arguments": encoded}
    return {"id": call_id, "type": "function", "function": function}
