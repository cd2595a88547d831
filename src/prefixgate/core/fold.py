"""Fold an Anthropic Messages response into one final record.

``StreamFold`` is a pure left fold over stream events, in the spirit of the
Anthropic SDK's ``accumulate_event``: feed it each event's type and JSON
payload in order, then ask for ``result()``. ``summarize_message`` gives the
same record for a non-streamed JSON response, so usage accounting and audit do
not care how a response arrived.

Usage is merged field by field and later non-null values win: ``message_start``
carries the input side (llama.cpp sends ``input_tokens``,
``cache_read_input_tokens`` and ``output_tokens: 0`` there), and
``message_delta`` carries cumulative counts that may override any field
(Anthropic may repeat or revise the cache fields there). A field never
reported stays ``None``, meaning unknown, never a default of 0.

Upstream data is not trusted to be well formed: a missing field, a value of the
wrong type, a negative or boolean token count or an unknown event type is
ignored, never raised on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeGuard

from prefixgate.core.sse import SSEEvent

__all__ = ["MessageSummary", "StreamFold", "Usage", "summarize_message", "token_count"]


@dataclass(frozen=True)
class Usage:
    """Token counts as reported; ``None`` means the upstream did not say."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None

    @property
    def prompt_tokens(self) -> int | None:
        """Whole prompt size: input plus cache read and cache creation.

        ``None`` when ``input_tokens`` is unknown; unknown cache fields count 0.
        """
        if self.input_tokens is None:
            return None
        cached = (self.cache_read_input_tokens or 0) + (self.cache_creation_input_tokens or 0)
        return self.input_tokens + cached

    @classmethod
    def from_payload(cls, payload: object) -> Usage:
        """Read a wire ``usage`` object, keeping only usable token counts."""
        return cls().merged(payload)

    def merged(self, payload: object) -> Usage:
        """This usage updated by the usable counts in a wire ``usage`` object."""
        if not _is_mapping(payload):
            return self
        updates = {}
        for name in _USAGE_FIELDS:
            count = token_count(payload.get(name))
            if count is not None:
                updates[name] = count
        return replace(self, **updates) if updates else self


_USAGE_FIELDS = tuple(f.name for f in fields(Usage))


@dataclass(frozen=True)
class MessageSummary:
    """The final record of one response.

    ``error`` is the ``error`` object of an error event or error body (e.g.
    ``{"type": "overloaded_error", "message": "Overloaded"}``), or the whole
    payload when it has no such object. ``text`` joins all text content.
    """

    id: str | None = None
    model: str | None = None
    stop_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    error: dict[str, Any] | None = None
    text: str = ""


class StreamFold:
    """Accumulate stream events into a ``MessageSummary``.

    The event type is the payload's ``type`` when that is a string, otherwise
    ``event_type`` (the SSE event name), so data-only streams still fold.
    """

    def __init__(self) -> None:
        self._id: str | None = None
        self._model: str | None = None
        self._stop_reason: str | None = None
        self._usage = Usage()
        self._error: dict[str, Any] | None = None
        self._text: list[str] = []

    def feed(self, event_type: str | None, payload: Mapping[str, Any]) -> None:
        """Fold one event in; anything unusable is ignored."""
        if not _is_mapping(payload):
            return
        kind = payload.get("type")
        if not isinstance(kind, str):
            kind = event_type
        if kind == "message_start":
            self._on_message(payload.get("message"))
        elif kind == "content_block_start":
            self._text.append(_block_text(payload.get("content_block")))
        elif kind == "content_block_delta":
            self._on_delta(payload.get("delta"))
        elif kind == "message_delta":
            self._on_message_delta(payload)
        elif kind == "error":
            self._error = _error_of(payload)

    def feed_events(self, events: Iterable[SSEEvent]) -> None:
        """Fold decoded SSE events in, skipping comments and data that is not a JSON object."""
        for event in events:
            if event.comment or not event.data:
                continue
            try:
                payload = event.json()
            except (ValueError, RecursionError):  # nested past the parser's depth too
                continue
            if isinstance(payload, dict):
                self.feed(event.event, payload)

    def result(self) -> MessageSummary:
        """The record so far; feeding may continue afterwards."""
        return MessageSummary(
            id=self._id,
            model=self._model,
            stop_reason=self._stop_reason,
            usage=self._usage,
            error=self._error,
            text="".join(self._text),
        )

    def _on_message(self, message: object) -> None:
        if not _is_mapping(message):
            return
        self._id = _str_or(message.get("id"), self._id)
        self._model = _str_or(message.get("model"), self._model)
        self._stop_reason = _str_or(message.get("stop_reason"), self._stop_reason)
        self._usage = self._usage.merged(message.get("usage"))
        self._text.append(_content_text(message.get("content")))

    def _on_delta(self, delta: object) -> None:
        if _is_mapping(delta) and delta.get("type") == "text_delta":
            text = delta.get("text")
            if isinstance(text, str):
                self._text.append(text)

    def _on_message_delta(self, payload: Mapping[str, Any]) -> None:
        delta = payload.get("delta")
        if _is_mapping(delta):
            self._stop_reason = _str_or(delta.get("stop_reason"), self._stop_reason)
        self._usage = self._usage.merged(payload.get("usage"))


def summarize_message(message: Mapping[str, Any]) -> MessageSummary:
    """The record of a non-streamed JSON response (a message or an error body)."""
    if not _is_mapping(message):
        return MessageSummary()
    if message.get("type") == "error":
        return MessageSummary(error=_error_of(message))
    fold = StreamFold()
    fold.feed("message_start", {"type": "message_start", "message": message})
    return fold.result()


MAX_TOKEN_COUNT = 2**53 - 1  # JSON's largest exact integer; far beyond any real prompt


def token_count(value: object) -> int | None:
    """A usable token count from the wire, or None: a non-negative integer (an
    integral float too) up to ``MAX_TOKEN_COUNT``. A larger one (``1e308``, 400
    digits) is no count an upstream makes; kept, it would overflow the float
    arithmetic of the miss estimates and the audit database's integers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= MAX_TOKEN_COUNT:
        return value
    return None


def _is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    """``isinstance(value, Mapping)``, quick for the dicts a JSON parser makes (the
    ABC's own check costs more than the rest of folding an event)."""
    return isinstance(value, (dict, Mapping))  # a dict is found first, without the ABC


def _str_or(value: object, default: str | None) -> str | None:
    return value if isinstance(value, str) else default


def _block_text(block: object) -> str:
    if _is_mapping(block) and block.get("type") == "text":
        text = block.get("text")
        if isinstance(text, str):
            return text
    return ""


def _content_text(content: object) -> str:
    if not isinstance(content, list):
        return ""
    return "".join(_block_text(block) for block in content)


def _error_of(payload: Mapping[str, Any]) -> dict[str, Any]:
    error = payload.get("error")
    return dict(error) if _is_mapping(error) else dict(payload)
