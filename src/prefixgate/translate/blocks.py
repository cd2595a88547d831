"""One Anthropic message and its content blocks -> OpenAI chat completions messages.

Pure, like the rest of the translation: a parsed message in, new messages out,
the input never changed. ``translate_message`` turns one message into a
contiguous run of OpenAI messages that depends on that message alone (and on the
request's tool names, through ``Context``), which is what keeps a conversation
one turn longer translating to the same list with messages appended; the
request-level translation (``request``) puts the runs in order. ``cache_control``
is dropped on every block.

The choices made where the formats do not line up:

- A ``role: "system"`` message's text blocks are joined with ``"\\n\\n"``
  (``system_text``, also used for the request's ``system`` field); the message
  stays at its position, as a system or a user message
  (``OpenAIRequestOptions.system_messages``).
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
- A ``tool_reference`` item becomes the text ``"[tool loaded: NAME]"`` where it
  stands (in the tool message, or in the user message for a block of its own):
  the model reads which tool it may now call; its definition is in ``tools``.
- Blocks without an OpenAI equivalent are left out and named in the context's
  ``dropped``: ``"block:TYPE"`` (``"block:image.KIND"``,
  ``"block:document.KIND"`` for a source kind), ``"cache_control"``.

Shapes the translation cannot work with raise ``InvalidRequest`` naming the path
(``messages[3].content[1]: ...``).
"""

from __future__ import annotations

import json
from typing import Any

from prefixgate.core.errors import InvalidRequest
from prefixgate.translate.context import Context, Json

TOOL_IMAGE_NOTE = "[image in the next user message]"
TOOL_ERROR_PREFIX = "[tool error] "
TOOL_REFERENCE_TEXT = "[tool loaded: {name}]"


def translate_message(message: object, path: str, ctx: Context) -> list[Json]:
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
    text = system_text(content, f"{path}.content", ctx)
    return [{"role": ctx.options.system_messages, "content": text}]


def system_text(value: object, path: str, ctx: Context) -> str:
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


def _text(block: Json, path: str, ctx: Context) -> str:
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


def _user(content: str | list[Any], path: str, ctx: Context) -> list[Json]:
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


def _part(kind: str, block: Json, path: str, ctx: Context) -> list[Json]:
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


def _image(block: Json, path: str, ctx: Context) -> list[Json]:
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


def _document(block: Json, path: str, ctx: Context) -> list[Json]:
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
    content: object, path: str, ctx: Context, note: str | None = TOOL_IMAGE_NOTE
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


def _tool_result(block: Json, path: str, ctx: Context) -> tuple[Json, list[Json]]:
    if "cache_control" in block:
        ctx.drop("cache_control")
    tool_use_id = _string(block.get("tool_use_id"), f"{path}.tool_use_id")
    texts, images = _nested(block.get("content"), f"{path}.content", ctx)
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = TOOL_ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}, images


def _assistant(content: str | list[Any], path: str, ctx: Context) -> Json:
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


def _tool_call(block: Json, path: str, ctx: Context) -> Json:
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
