"""Size limits on a request: far above any real Claude Code request, low enough to stop abuse.

    max_json_depth   levels of nested objects and arrays (the request object itself is level 1)
    max_messages     entries of ``messages``
    max_blocks       content blocks: ``system`` blocks, the blocks of every message whose
                     content is a list, and ``tools`` entries, added up

``check_limits`` raises ``InvalidRequest`` (400, ``invalid_request_error``) naming the
limit by its config key and its configured value. It is pure and walks the body
without recursion, stopping as soon as the depth limit is passed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefixgate.core.errors import InvalidRequest


@dataclass(frozen=True)
class Limits:
    max_json_depth: int = 64
    max_messages: int = 10_000
    max_blocks: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_json_depth", "max_messages", "max_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = Limits()


def exceeded(name: str, value: int, got: str) -> InvalidRequest:
    """The error for a request past the limit ``name`` (configured as ``value``)."""
    return InvalidRequest(f"request exceeds the gateway's limit {name}={value} ({got})")


def depth_error(limits: Limits, got: str | None = None) -> InvalidRequest:
    """The error for a request nested deeper than ``limits.max_json_depth``."""
    depth = limits.max_json_depth
    return exceeded("max_json_depth", depth, got or f"got more than {depth} levels of nesting")


def check_limits(body: Mapping[str, Any], limits: Limits) -> None:
    """Raise ``InvalidRequest`` when ``body`` is past one of ``limits``.

    Fields of the wrong type are not counted (the field checks report them).
    """
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > limits.max_messages:
        raise exceeded("max_messages", limits.max_messages, f"got {len(messages)} messages")
    blocks = count_blocks(body)
    if blocks > limits.max_blocks:
        raise exceeded("max_blocks", limits.max_blocks, f"got {blocks} content blocks")
    if json_depth(body, stop_after=limits.max_json_depth) > limits.max_json_depth:
        raise depth_error(limits)


def count_blocks(body: Mapping[str, Any]) -> int:
    """System blocks, list-content blocks of every message, and tools entries."""
    total = 0
    system = body.get("system")
    if isinstance(system, list):
        total += len(system)
    tools = body.get("tools")
    if isinstance(tools, list):
        total += len(tools)
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                content = message.get("content")
                if isinstance(content, list):
                    total += len(content)
    return total


def json_depth(value: Any, *, stop_after: int | None = None) -> int:
    """Levels of nested objects and arrays in ``value`` (a scalar is 0, ``{}`` is 1).

    Nested values are taken as ``json.loads`` gives them (``dict`` and ``list``).
    Breadth first and without recursion, so any depth is safe; with ``stop_after``
    it returns as soon as the depth found is greater than that (the result is then
    ``stop_after + 1``, a lower bound). About a tenth of the time ``json.loads``
    takes over the same request.
    """
    if isinstance(value, Mapping):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return 0
    depth = 1
    level = [v for v in children if type(v) is dict or type(v) is list]
    while level:
        depth += 1
        if stop_after is not None and depth > stop_after:
            return depth
        level = [
            v
            for node in level
            for v in (node.values() if type(node) is dict else node)
            if type(v) is dict or type(v) is list
        ]
    return depth
