"""Side requests answered by the gateway itself: pure answer shapes.

With ``side_requests = "local"`` a token count (``/v1/messages/count_tokens``)
and a probe (``max_tokens: 1``) never reach the upstream, so they can never
evict a conversation from its cache. The count comes from the upstream's own
tokenizer where it has one, else an estimate; the answer says which.

A probe's answer is a message with no text, ``stop_reason: "max_tokens"`` and
the counted ``input_tokens``; streamed, the same message as Anthropic events.
"""

from __future__ import annotations

import uuid
from typing import Any

# Kinds recorded for requests the gateway answered without the upstream.
LOCAL_PROBE = "local_probe"
UNCACHED_KINDS = frozenset({"count_tokens", LOCAL_PROBE})


def probe_message(model: str, input_tokens: int, message_id: str | None = None) -> dict[str, Any]:
    """The answer to a ``max_tokens: 1`` probe: no output, the prompt's size."""
    return {
        "id": message_id or f"msg_local_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 0},
    }


def probe_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``message`` as the events of a stream: start, delta with the stop reason, stop."""
    usage = message["usage"]
    return [
        ("message_start", {"type": "message_start", "message": {**message, "stop_reason": None}}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
