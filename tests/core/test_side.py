"""The gateway's own answers to probes: a message with no text, the prompt's size."""

from __future__ import annotations

from prefixgate.core.fold import StreamFold
from prefixgate.core.side import probe_events, probe_message


def test_probe_message_shape() -> None:
    message = probe_message("claude-x", 321, "msg_1")
    assert message == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": 321, "output_tokens": 0},
    }
    assert probe_message("m", 1)["id"] != probe_message("m", 1)["id"]


def test_probe_events_fold_back_to_the_message() -> None:
    message = probe_message("claude-x", 321, "msg_1")
    fold = StreamFold()
    for name, data in probe_events(message):
        fold.feed(name, data)
    summary = fold.result()
    assert summary.error is None
    assert summary.stop_reason == "max_tokens"
    assert summary.usage.input_tokens == 321 and summary.usage.output_tokens == 0
    assert [name for name, _ in probe_events(message)] == [
        "message_start",
        "message_delta",
        "message_stop",
    ]
