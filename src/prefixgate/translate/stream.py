"""OpenAI ``chat.completion.chunk`` stream -> Anthropic stream events.

``StreamTranslator`` is a pure state machine: feed it each parsed chunk (the
JSON of one ``data:`` line), call ``done()`` on ``data: [DONE]`` or a clean end
of the stream and ``fail()`` when the transport breaks; every call returns the
``(event name, data)`` pairs to send, in order. ``feed_sse`` takes a decoded
``SSEEvent`` instead and handles ``[DONE]``, data that is not JSON and
llama.cpp's ``error: {...}`` lines; ``translate_sse`` runs a whole byte stream.

Events follow the Anthropic stream grammar::

    message_start ping (content_block_start content_block_delta* content_block_stop)*
    message_delta message_stop

or end in a single ``error`` event after any prefix of it (an error chunk, a
transport failure, or a stream that ended before any ``finish_reason``);
nothing comes after ``message_stop`` or ``error``. Blocks are numbered 0, 1, ...
and only one is open at a time.

What goes where:

- ``message_start`` on the first chunk, with ``usage`` 0/0 unless that chunk
  carries usage; the real counts go in ``message_delta`` at the end, from the
  ``usage`` and llama.cpp ``timings`` of all chunks merged (later values win),
  through ``response.anthropic_usage``.
- ``delta.reasoning_content`` (or ``reasoning``) -> ``thinking`` block, closed
  with an empty ``signature_delta`` as Anthropic does; ``delta.content`` and
  ``delta.refusal`` -> ``text`` block; ``delta.tool_calls[j]`` -> one
  ``tool_use`` block per call with its ``arguments`` fragments passed on as
  ``input_json_delta``. Within a delta: reasoning, then text, then tools.
- ``finish_reason`` is remembered, not acted on: the usage chunk
  (``choices: []``) and llama.cpp's ``timings`` follow it. ``done()`` closes
  the open block and sends ``message_delta`` and ``message_stop``.

Only one block may be open, yet OpenAI numbers parallel tool calls and may
interleave their fragments, so a tool block is closed only once it cannot get
more: when its arguments already form a complete JSON object (nothing but
whitespace can follow one) or at the end of the stream. Whatever arrives for
another block while a tool block is open and incomplete is held, in order of
arrival, and sent as soon as the open block completes, each held block opened
with everything it got so far in one delta and then continued live. In the
usual sequential stream (one call's fragments, then the next's) every block
goes out live; interleaved fragments are never lost or mixed up. Fragments
for a call that was closed complete are whitespace or would make its JSON
invalid, and are dropped. Text and thinking blocks close whenever another
kind of content arrives: a later run of text simply opens a new text block.

A tool call whose id differs from the one its index had starts a new call
(some upstreams reuse index 0); a fragment without an index belongs to the call
with its id, or the latest call. Ids are kept or derived as in ``response``;
tool arguments that are blank are never sent (the client's input stays
``{}``), others are passed on as they come: the client parses them, as it does
Anthropic's own, possibly cut, tool input.

Malformed chunks never raise: fields of the wrong type are ignored.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefixgate.core.sse import SSEDecoder, SSEEvent
from prefixgate.translate.response import (
    NameMap,
    anthropic_usage,
    content_text,
    matched_stop,
    message_id,
    openai_error,
    reasoning_text,
    stop_reason,
    tool_use_id,
)

__all__ = ["Event", "StreamTranslator", "translate_sse"]

Event = tuple[str, dict[str, Any]]

ENDED_EARLY = "upstream ended the stream before finishing the message"
ENDED_EMPTY = "upstream ended the stream without sending anything"
NOT_JSON = "upstream sent a chunk that is not JSON"

_EMPTY_BLOCKS: dict[str, dict[str, str]] = {
    "text": {"type": "text", "text": ""},
    "thinking": {"type": "thinking", "thinking": "", "signature": ""},
}
_DELTAS = {
    "text": ("text_delta", "text"),
    "thinking": ("thinking_delta", "thinking"),
    "tool_use": ("input_json_delta", "partial_json"),
}


@dataclass(eq=False)
class _Tool:
    position: int  # order of first appearance; names the call when the upstream gave no id
    call_id: str | None = None
    name: str | None = None
    fragments: list[str] = field(default_factory=list)
    unsent: list[str] = field(default_factory=list)
    content: bool = False  # a non-blank fragment was seen
    state: str = "held"  # held -> open -> closed
    _last: str = field(default="", init=False)  # last non-blank character so far
    _checked: int = field(default=-1, init=False)  # len(fragments) when last found incomplete

    def add(self, fragment: str) -> None:
        self.fragments.append(fragment)
        self.unsent.append(fragment)
        stripped = fragment.rstrip()
        if stripped:
            self.content = True
            self._last = stripped[-1]

    def complete(self) -> bool:
        """The arguments so far are a whole JSON object: nothing but whitespace can follow."""
        if self._last != "}" or self._checked == len(self.fragments):
            return False
        try:
            if isinstance(json.loads("".join(self.fragments)), dict):
                return True
        except (ValueError, RecursionError):
            pass
        self._checked = len(self.fragments)
        return False

    def take_unsent(self) -> str:
        """Arguments not sent yet, once there is more than whitespace to send."""
        if not self.content:
            return ""
        text = "".join(self.unsent)
        self.unsent = []
        return text


@dataclass(eq=False)
class _Run:
    kind: str  # "text" | "thinking"
    parts: list[str]


_Held = _Run | _Tool


@dataclass(frozen=True)
class _Open:
    kind: str  # "text" | "thinking" | "tool_use"
    index: int
    tool: _Tool | None = None


class StreamTranslator:
    """One stream's translation; see the module docstring."""

    def __init__(self, names: NameMap, *, model: str) -> None:
        self._names = names
        self._model = model
        self._id = ""
        self._started = False
        self._finished = False
        self._next_index = 0
        self._open: _Open | None = None
        self._held: deque[_Held] = deque()
        self._tools: list[_Tool] = []
        self._by_index: dict[int, _Tool] = {}
        self._finish_reason: object = None
        self._matched: str | None = None
        self._refused = False
        self._usage: dict[str, Any] = {}
        self._timings: dict[str, Any] = {}
        self._out: list[Event] = []

    @property
    def finished(self) -> bool:
        """``message_stop`` or ``error`` has been emitted; every call returns ``[]`` now."""
        return self._finished

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        """Translate one chunk."""
        if self._finished or not isinstance(chunk, Mapping):
            return []
        error = chunk.get("error")
        if error:
            return self._error(chunk)
        self._out = []
        if not self._started:
            self._start(chunk)
        self._merge_usage(chunk)
        choice = _our_choice(chunk.get("choices"))
        if choice is not None:
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                self._delta(delta)
            if choice.get("finish_reason") is not None:
                self._finish_reason = choice.get("finish_reason")
                self._matched = matched_stop(choice)
        return self._take()

    def done(self) -> list[Event]:
        """The stream ended: finish the message, or report that it was cut short."""
        if self._finished:
            return []
        if not self._started:
            return self.fail("api_error", ENDED_EMPTY)
        if self._finish_reason is None:
            return self.fail("api_error", ENDED_EARLY)
        self._out = []
        self._close()
        while self._held:
            self._open_held(self._held.popleft())
            self._close()
        if self._next_index == 0:  # like the JSON answer: never an empty content list
            self._open_block("text", dict(_EMPTY_BLOCKS["text"]))
            self._close()
        payload: dict[str, Any] = {"usage": self._usage}
        if self._timings:
            payload["timings"] = self._timings
        delta = {"stop_reason": self._stop_reason(), "stop_sequence": self._stop_sequence()}
        usage = anthropic_usage(payload)
        self._emit("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        self._emit("message_stop", {"type": "message_stop"})
        self._finished = True
        return self._take()

    def fail(self, error_type: str, message: str) -> list[Event]:
        """The transport failed (or the upstream reported an error): one ``error`` event."""
        if self._finished:
            return []
        self._finished = True
        error = {"type": error_type, "message": message}
        return [("error", {"type": "error", "error": error})]

    def feed_sse(self, event: SSEEvent) -> list[Event]:
        """Translate one decoded SSE event of the upstream's stream."""
        if self._finished:
            return []
        if event.comment:
            error = _error_line(event.raw)
            return self._error(error) if error is not None else []
        data = event.data.strip()
        if not data:
            return []
        if data == "[DONE]":
            return self.done()
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            chunk = None
        if not isinstance(chunk, dict):
            return self.fail("api_error", NOT_JSON)
        if event.event == "error":
            return self._error(chunk)
        return self.feed(chunk)

    # -- the message ------------------------------------------------------------

    def _start(self, chunk: Mapping[str, Any]) -> None:
        self._started = True
        self._id = message_id(chunk.get("id"), chunk)
        usage = {"input_tokens": 0, "output_tokens": 0}
        if isinstance(chunk.get("usage"), Mapping) or isinstance(chunk.get("timings"), Mapping):
            usage = anthropic_usage(chunk)
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        self._emit("message_start", {"type": "message_start", "message": message})
        self._emit("ping", {"type": "ping"})

    def _merge_usage(self, chunk: Mapping[str, Any]) -> None:
        for key, target in (("usage", self._usage), ("timings", self._timings)):
            value = chunk.get(key)
            if isinstance(value, Mapping):
                target.update({k: v for k, v in value.items() if v is not None})

    def _stop_reason(self) -> str:
        if self._refused:
            return "refusal"
        reason = stop_reason(self._finish_reason, self._matched)
        if self._tools and reason == "end_turn":
            return "tool_use"
        return reason or "end_turn"

    def _stop_sequence(self) -> str | None:
        return self._matched if self._stop_reason() == "stop_sequence" else None

    def _error(self, payload: Mapping[str, Any]) -> list[Event]:
        inner = payload.get("error")
        source = inner if isinstance(inner, Mapping) else payload
        code = source.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 500
        return self.fail(*openai_error(status, payload))

    # -- content ----------------------------------------------------------------

    def _delta(self, delta: Mapping[str, Any]) -> None:
        thinking = reasoning_text(delta)
        if thinking:
            self._run("thinking", thinking)
        text = content_text(delta.get("content"))
        if text:
            self._run("text", text)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._refused = True
            self._run("text", refusal)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, Mapping):
                    self._tool_fragment(call)

    def _run(self, kind: str, text: str) -> None:
        if self._open is not None and self._open.kind == kind:
            self._block_delta(kind, text)
            return
        last = self._held[-1] if self._held else None
        if isinstance(last, _Run) and last.kind == kind:
            last.parts.append(text)
        else:
            self._held.append(_Run(kind, [text]))
        self._drain()

    def _tool_fragment(self, call: Mapping[str, Any]) -> None:
        tool = self._tool_for(call)
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        name = function.get("name")
        if tool.name is None and isinstance(name, str) and name:
            tool.name = name
        arguments = function.get("arguments")
        if isinstance(arguments, Mapping):
            arguments = json.dumps(arguments, ensure_ascii=False, default=repr)
        if isinstance(arguments, str) and arguments and tool.state != "closed":
            tool.add(arguments)
            if tool.state == "open":
                self._send_arguments(tool)
        self._drain()

    def _tool_for(self, call: Mapping[str, Any]) -> _Tool:
        raw_id = call.get("id")
        call_id = raw_id if isinstance(raw_id, str) and raw_id else None
        index = call.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            tool = self._by_index.get(index)
            if tool is not None and (call_id is None or tool.call_id in (None, call_id)):
                tool.call_id = tool.call_id or call_id
                return tool
            tool = self._new_tool(call_id)
            self._by_index[index] = tool
            return tool
        for known in self._tools:
            if call_id is not None and known.call_id == call_id:
                return known
        if call_id is None and self._tools:
            return self._tools[-1]
        return self._new_tool(call_id)

    def _new_tool(self, call_id: str | None) -> _Tool:
        tool = _Tool(position=len(self._tools), call_id=call_id)
        self._tools.append(tool)
        self._held.append(tool)
        return tool

    def _drain(self) -> None:
        """Open held blocks, in order, while the open block can be closed."""
        while self._held and self._closable():
            head = self._held[0]
            if isinstance(head, _Tool) and head.name is None:
                return  # cannot start a tool_use block without its name yet
            self._close()
            self._open_held(self._held.popleft())

    def _closable(self) -> bool:
        if self._open is None or self._open.tool is None:
            return True
        return self._open.tool.complete()

    def _open_held(self, held: _Held) -> None:
        if isinstance(held, _Run):
            self._open_block(held.kind, dict(_EMPTY_BLOCKS[held.kind]))
            self._block_delta(held.kind, "".join(held.parts))
            return
        block = {
            "type": "tool_use",
            "id": tool_use_id(held.call_id, self._id, held.position),
            "name": self._names.to_anthropic(held.name or ""),
            "input": {},
        }
        self._open_block("tool_use", block, held)
        held.state = "open"
        self._send_arguments(held)

    def _open_block(self, kind: str, block: dict[str, Any], tool: _Tool | None = None) -> None:
        self._open = _Open(kind, self._next_index, tool)
        self._next_index += 1
        event = {"type": "content_block_start", "index": self._open.index, "content_block": block}
        self._emit("content_block_start", event)

    def _block_delta(self, kind: str, text: str) -> None:
        assert self._open is not None
        delta_type, key = _DELTAS[kind]
        event = {
            "type": "content_block_delta",
            "index": self._open.index,
            "delta": {"type": delta_type, key: text},
        }
        self._emit("content_block_delta", event)

    def _send_arguments(self, tool: _Tool) -> None:
        text = tool.take_unsent()
        if text:
            self._block_delta("tool_use", text)

    def _close(self) -> None:
        if self._open is None:
            return
        index = self._open.index
        if self._open.kind == "thinking":
            delta = {"type": "signature_delta", "signature": ""}
            self._emit(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        if self._open.tool is not None:
            self._open.tool.state = "closed"
        self._emit("content_block_stop", {"type": "content_block_stop", "index": index})
        self._open = None

    def _emit(self, name: str, data: dict[str, Any]) -> None:
        self._out.append((name, data))

    def _take(self) -> list[Event]:
        out, self._out = self._out, []
        return out


def _our_choice(choices: object) -> Mapping[str, Any] | None:
    """The choice with index 0 (or none given): the only one the client asked for."""
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
            return choice
    return None


def _error_line(raw: bytes) -> Mapping[str, Any] | None:
    """llama.cpp streams an error as an ``error: {...}`` line, which SSE sees as no field."""
    for line in raw.decode("utf-8", "replace").splitlines():
        if line.startswith("error:"):
            value = line[len("error:") :].strip()
            try:
                parsed = json.loads(value)
            except (ValueError, RecursionError):
                parsed = value
            if isinstance(parsed, Mapping):
                return parsed
            return {"message": str(parsed) if parsed else "upstream reported an error"}
    return None


def translate_sse(
    stream: bytes | str | Iterable[bytes], names: NameMap, *, model: str
) -> list[Event]:
    """All Anthropic events for a whole OpenAI SSE stream (given whole or in byte chunks)."""
    if isinstance(stream, str):
        stream = stream.encode()
    pieces: Iterable[bytes] = [stream] if isinstance(stream, bytes) else stream
    translator = StreamTranslator(names, model=model)
    decoder = SSEDecoder()
    out: list[Event] = []
    for piece in pieces:
        for event in decoder.decode(piece):
            out += translator.feed_sse(event)
    for event in decoder.flush():
        out += translator.feed_sse(event)
    out += translator.done()
    return out
