"""The rewrite pipeline: client bytes in, the bytes to forward and what was learnt out.

    parse -> detect attribution -> apply policy -> serialise -> tool loads -> segment -> key

Pure: no sockets, no clock, no environment. The forwarded bytes are the
client's own bytes whenever the policy changed nothing; when it did, only the
``system`` value is re-encoded and spliced back in place, so every other byte
(key order, escapes, number formats, whitespace) stays as the client sent it.
The tool-load step (``core/toolload.py``) splices the same way: only the
``tools`` array and the ToolSearch results it rewrites are re-encoded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from prefixgate.core.attribution import Attribution, detect
from prefixgate.core.cachekey import ADAPTER_VERSION, PromptCacheKey, build_key
from prefixgate.core.errors import InvalidRequest
from prefixgate.core.knowntools import KNOWN_TOOLS, PLACEHOLDER_VALUE, SLOTS
from prefixgate.core.limits import DEFAULT_LIMITS, Limits, check_limits, depth_error, json_shape
from prefixgate.core.policy import (
    DEFAULT_NORMALIZE_KEEP,
    Policy,
    apply_policy,
    normalized_line,
)
from prefixgate.core.prompt import PromptView, prompt_view
from prefixgate.core.segments import Segments
from prefixgate.core.toolload import ToolLoadResult, ToolLoads, apply_tool_loads


@dataclass(frozen=True)
class RewriteOptions:
    policy: Policy = Policy.STRIP
    normalize_keep: tuple[str, ...] = DEFAULT_NORMALIZE_KEEP
    metadata_header: str | None = None
    provider: str = "anthropic"
    tenant: str = "default"
    require_max_tokens: bool = True
    adapter_version: str = ADAPTER_VERSION  # how the prompt is rendered for the upstream
    tool_loads: ToolLoads = ToolLoads.INLINE  # where ToolSearch-loaded definitions go


@dataclass(frozen=True)
class Rewrite:
    """The outcome of one rewrite."""

    body: bytes
    parsed: dict[str, Any]
    attribution: Attribution | None
    policy: Policy
    changed: bool  # the forwarded body differs from the client's (policy or tool loads)
    segments: Segments
    key: PromptCacheKey
    view: PromptView
    upstream_headers: Mapping[str, str] = field(default_factory=dict)
    tool_loads: ToolLoadResult | None = None  # what the tool-load step did

    @property
    def model(self) -> str:
        return str(self.parsed["model"])

    @property
    def stream(self) -> bool:
        return self.parsed.get("stream") is True


def rewrite(raw: bytes, options: RewriteOptions = RewriteOptions()) -> Rewrite:
    """Run the whole pipeline over one request body."""
    body = parse_request(raw, require_max_tokens=options.require_max_tokens)
    return rewrite_parsed(raw, body, options)


def rewrite_parsed(
    raw: bytes, body: dict[str, Any], options: RewriteOptions = RewriteOptions()
) -> Rewrite:
    """The pipeline after ``parse_request``, for callers that already hold ``body``."""
    found = detect(body)
    result = apply_policy(
        body,
        found,
        options.policy,
        normalize_keep=options.normalize_keep,
        metadata_header=options.metadata_header,
    )
    out = splice_system(raw, body, result.body) if result.changed else raw
    loads = apply_tool_loads(out, result.body, options.tool_loads)
    out = loads.body
    if loads.changed:  # the prompt pieces are those the upstream receives
        body = {**body, "tools": loads.parsed["tools"], "messages": loads.parsed["messages"]}
    stripped, kept = prompt_parts(body, found, result.policy)
    view = prompt_view(stripped, kept)  # the one walk over the prompt
    key = build_key(
        view,
        provider=options.provider,
        model=str(body["model"]),
        tenant=options.tenant,
        policy=options.policy.value,
        adapter_version=options.adapter_version,
    )
    return Rewrite(
        body=out,
        parsed=loads.parsed,
        attribution=found,
        policy=options.policy,
        changed=result.changed or loads.changed,
        segments=Segments(view),
        key=key,
        view=view,
        upstream_headers=result.upstream_headers,
        tool_loads=loads,
    )


def prompt_parts(
    body: Mapping[str, Any], found: Attribution | None, policy: Policy
) -> tuple[Mapping[str, Any], str | None]:
    """The request without its block, and what of the block the upstream sees.

    Segments and prompt views keep the block apart from the system prompt, so
    a changed fingerprint is never mistaken for a changed system prompt.
    """
    if found is None:
        return body, None
    stripped = apply_policy(body, found, Policy.STRIP).body
    if policy is Policy.PASSTHROUGH:
        return stripped, found.header
    if policy is Policy.NORMALIZE:
        return stripped, normalized_line(found)
    return stripped, None


def parse_request(
    raw: bytes, *, require_max_tokens: bool = True, limits: Limits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Parse and check the fields the gateway relies on and its limits; raise InvalidRequest."""
    try:
        body, depth = _loads(raw, limits.max_json_depth)
    except RecursionError:
        # The stdlib parser recurses once per level; thousands of levels exhaust the stack.
        raise depth_error(limits, "nesting too deep to parse") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    check_limits(body, limits, depth=depth)
    _check_fields(body, require_max_tokens=require_max_tokens)
    return body


def _loads(raw: bytes, max_depth: int) -> tuple[Any, int]:
    """``raw`` parsed as the standard library parses it, through orjson when that
    is the same; with its nesting depth (``limits.json_shape``, stopped past
    ``max_depth``).

    orjson reads a body in about half the time. It gives the same values for
    every JSON text it accepts except numbers: integers past 64 bits come back
    as floats, and floats may round apart in the last digit. So a body with a
    float anywhere, or one orjson refuses (invalid UTF-8 or a lone surrogate the
    standard library passes, a UTF-16 body, too deep, not JSON), is parsed
    again by ``json.loads``, which also writes the error message.
    """
    known = _known_tools(raw, max_depth)
    if known is not None:
        return known
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        depth, floats = json_shape(body, stop_after=max_depth)
        if not floats or depth > max_depth:  # too deep is refused whatever its numbers
            if not floats and depth <= max_depth and isinstance(body, dict):
                KNOWN_TOOLS.remember(raw, body.get("tools"), max_depth)
            return body, depth
    body = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    return body, json_shape(body, stop_after=max_depth)[0]


def _known_tools(raw: bytes, max_depth: int) -> tuple[dict[str, Any], int] | None:
    """``raw`` parsed with its tools array taken from ``KNOWN_TOOLS`` (sent before,
    byte for byte), when it holds one and the rest parses as orjson alone may;
    else ``None`` (the caller parses it whole)."""
    split = KNOWN_TOOLS.split(raw)
    if split is None:
        return None
    rest, known = split
    try:
        body = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("tools") != PLACEHOLDER_VALUE:
        return None  # the copy was not the top-level value
    depth, floats = json_shape(body, stop_after=max_depth)
    if floats or depth > max_depth:
        return None  # the whole body takes the usual way, errors included
    body["tools"] = known.value
    depth = max(depth, 1 + known.depth)
    if depth > max_depth:
        return None
    KNOWN_TOOLS.found(known)
    return body, depth


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but no finite double: Python would read it as infinity,
    # which JSON cannot carry (NaN and Infinity are refused the same way above).
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _check_fields(body: Mapping[str, Any], *, require_max_tokens: bool) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: field required (a non-empty string)")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages: field required (a list of messages)")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages.{i}: each message must be an object with a role")
        if not isinstance(message.get("content"), str | list):
            raise InvalidRequest(f"messages.{i}.content: must be a string or a list of blocks")
    max_tokens = body.get("max_tokens")
    if require_max_tokens and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)):
        raise InvalidRequest("max_tokens: field required (an integer)")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens < 1:
        raise InvalidRequest("max_tokens: must be at least 1")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise InvalidRequest("system: must be a string or a list of text blocks")
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise InvalidRequest("tools: must be a list")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("stream: must be a boolean")


# (item separator, key separator, ensure_ascii): JavaScript's JSON.stringify
# first, then Python's json.dumps defaults; together they cover real clients.
_STYLES: tuple[tuple[str, str, bool], ...] = (
    (",", ":", False),
    (", ", ": ", False),
    (",", ":", True),
    (", ", ": ", True),
)


def _encode(value: Any, style: tuple[str, str, bool] = _STYLES[0]) -> bytes:
    if style is _STYLES[0] and _floatless(value):
        # orjson writes the same bytes as json.dumps in this style for strings
        # (every escape alike), 64-bit integers, booleans, null, lists and
        # string-keyed objects; floats (repr differs) and larger integers
        # (refused) go the stdlib way.
        try:
            return orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError):
            pass
    item, colon, ascii_only = style
    text = json.dumps(value, ensure_ascii=ascii_only, separators=(item, colon))
    # A lone surrogate (half an emoji from a JavaScript client) can only sit
    # inside a JSON string; "backslashreplace" writes it as the \uXXXX escape
    # JSON.stringify uses.
    return text.encode("utf-8", "backslashreplace")


def _floatless(value: Any) -> bool:
    """No float anywhere in ``value`` (a parsed JSON value)."""
    if type(value) is float:
        return False
    stack = [value] if type(value) is dict or type(value) is list else []
    while stack:
        node = stack.pop()
        for item in node.values() if type(node) is dict else node:
            kind = type(item)
            if kind is dict or kind is list:
                stack.append(item)
            elif kind is float:
                return False
    return True


# A quoted "system" followed by a colon is a key (a string value is never followed by one).
_SYSTEM_KEY = re.compile(rb'"system"\s*:')


def system_keys(raw: bytes, tools: object = None) -> list[int]:
    """Where ``"system":`` keys start in ``raw``, in order.

    When ``tools`` is a remembered array (``KNOWN_TOOLS``) parsed from its bytes
    in ``raw``, those bytes (most of a Claude Code body) are searched once per
    array, not once per request. No key straddles the array's brackets.
    """
    span = KNOWN_TOOLS.where(raw, tools) if tools is not None else None
    if span is None:
        return [m.start() for m in _SYSTEM_KEY.finditer(raw)]
    at, sent = span
    return [
        *(m.start() for m in _SYSTEM_KEY.finditer(raw, 0, at)),
        *(at + offset for offset in _keys_within(sent)),
        *(m.start() for m in _SYSTEM_KEY.finditer(raw, at + len(sent))),
    ]


@lru_cache(maxsize=SLOTS)  # by the remembered bytes: their hash is computed once
def _keys_within(sent: bytes) -> tuple[int, ...]:
    return tuple(m.start() for m in _SYSTEM_KEY.finditer(sent))


def splice_system(raw: bytes, old: Mapping[str, Any], new: Mapping[str, Any]) -> bytes:
    """Replace the encoded ``system`` value inside ``raw``, leaving other bytes alone.

    Looks for ``"system":`` followed by the encoding of the old value in one of
    the common JSON styles; when it occurs exactly once it is swapped for the
    new value encoded the same way. Otherwise (a client with unusual spacing)
    the whole body is re-encoded compactly, which keeps keys and their order.
    Only when ``system`` is the one key of that name in the body: a nested
    object may hold a ``system`` key too, even with the same value.
    """
    keys = system_keys(raw, old.get("tools"))
    if len(keys) != 1:
        return _encode(dict(new))
    at = keys[0]  # the one place a needle (it starts with the key) can be
    for style in _STYLES:
        key = b'"system"' + style[1].encode()
        needle = key + _encode(old["system"], style)
        if raw.startswith(needle, at):
            view = memoryview(raw)  # the parts are copied once, by the join
            return b"".join(
                (view[:at], key, _encode(new["system"], style), view[at + len(needle) :])
            )
    return _encode(dict(new))
