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


def check_limits(body: Mapping[str, Any], limits: Limits, *, depth: int | None = None) -> None:
    """Raise ``InvalidRequest`` when ``body`` is past one of ``limits``.

    Fields of the wrong type are not counted (the field checks report them).
    ``depth``: ``json_depth(body, stop_after=limits.max_json_depth)`` where the
    caller has it already.
    """
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > limits.max_messages:
        raise exceeded("max_messages", limits.max_messages, f"got {len(messages)} messages")
    blocks = count_blocks(body)
    if blocks > limits.max_blocks:
        raise exceeded("max_blocks", limits.max_blocks, f"got {blocks} content blocks")
    if depth is None:
        depth = json_depth(body, stop_after=limits.max_json_depth)
    if depth > limits.max_json_depth:
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
    ``stop_after + 1``, a lower bound).
    """
    return json_shape(value, stop_after=stop_after)[0]


def json_shape(value: Any, *, stop_after: int | None = None) -> tuple[int, bool]:
    """``json_depth(value)`` and whether a float occurs in ``value``, in one walk.

    The parser needs both for every request (``pipeline._loads``). When the walk
    stops early at ``stop_after``, the float answer covers the levels it saw.
    """
    if type(value) is float:
        return 0, True
    if isinstance(value, Mapping) and type(value) is not dict:
        value = dict(value)
    elif type(value) is not dict and not isinstance(value, list):
        return 0, False
    depth, floats = 0, False
    containers: list[Any] = [value]
    while containers:
        depth += 1
        if stop_after is not None and depth > stop_after:
            return depth, floats
        nested = []
        for node in containers:
            for v in node.values() if type(node) is dict else node:
                kind = type(v)
                if kind is dict or kind is list:
                    nested.append(v)
                elif kind is float:
                    floats = True
        containers = nested
    return depth, floats
