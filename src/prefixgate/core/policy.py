"""What to do with an attribution block: the four policies, as pure functions.

``strip``                 remove the block (default for local and third-party upstreams)
``normalize``             replace it by one fixed line, identical for every
                          conversation, request and subagent of a client
``preserve_as_metadata``  remove it from the prompt; its fields travel in the audit
                          record and, if configured, to the upstream as one header
``passthrough``           leave it as sent (first-party Anthropic only)

Every function takes a parsed body and returns a new one; the input is never
mutated, and everything other than the block is left as it was (same keys in the
same order, same blocks, ``cache_control`` markers kept).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from prefixgate.core.attribution import HEADER_NAME, Attribution, render_fields


class Policy(StrEnum):
    STRIP = "strip"
    NORMALIZE = "normalize"
    PRESERVE_AS_METADATA = "preserve_as_metadata"
    PASSTHROUGH = "passthrough"

    @classmethod
    def parse(cls, value: str) -> Policy:
        """Parse a policy name, accepting ``-`` for ``_``; raise ValueError otherwise."""
        try:
            return cls(value.strip().lower().replace("-", "_"))
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown policy {value!r}; expected one of: {names}") from None


DEFAULT_NORMALIZE_KEEP: tuple[str, ...] = ("cc_entrypoint",)
_VERSION_SUFFIX = re.compile(r"^(\d+\.\d+\.\d+)\.[0-9a-fA-F]+$")


def normalized_line(found: Attribution, keep: Sequence[str] = DEFAULT_NORMALIZE_KEEP) -> str:
    """The fixed line ``normalize`` puts in place of ``found``.

    Only the fields named in ``keep`` survive. ``cc_version`` loses its
    per-conversation suffix (``2.1.197.3ab`` -> ``2.1.197``). The result never
    depends on ``cch``, ids, the subagent flag or anything else left out.
    """
    kept: dict[str, Any] = {}
    for key in keep:
        value = found.fields.get(key)
        if value is None:
            continue
        if key == "cc_version" and isinstance(value, str):
            match = _VERSION_SUFFIX.match(value)
            value = match.group(1) if match else value
        kept[key] = value
    rendered = render_fields(kept)
    return f"{HEADER_NAME}: {rendered}" if rendered else f"{HEADER_NAME}: normalized=true;"


@dataclass(frozen=True)
class PolicyResult:
    """The body to forward and what the policy did."""

    body: dict[str, Any]
    policy: Policy
    attribution: Attribution | None
    changed: bool
    upstream_headers: Mapping[str, str]


METADATA_HEADER = "x-prefixgate-attribution"


def apply_policy(
    body: Mapping[str, Any],
    found: Attribution | None,
    policy: Policy,
    *,
    normalize_keep: Sequence[str] = DEFAULT_NORMALIZE_KEEP,
    metadata_header: str | None = None,
) -> PolicyResult:
    """Apply ``policy`` to ``body`` given the block ``found`` in it (or ``None``)."""
    if found is None or policy is Policy.PASSTHROUGH:
        return PolicyResult(dict(body), policy, found, False, {})
    if policy is Policy.NORMALIZE:
        replacement = normalized_line(found, normalize_keep) + found.separator
        new_body = _replace_head(body, found, replacement)
        return PolicyResult(new_body, policy, found, new_body != body, {})
    headers: dict[str, str] = {}
    if policy is Policy.PRESERVE_AS_METADATA and metadata_header:
        headers[metadata_header] = metadata_value(found)
    return PolicyResult(_replace_head(body, found, ""), policy, found, True, headers)


def metadata_value(found: Attribution) -> str:
    """The block's fields as one header-safe ASCII line: no control characters,
    anything beyond ASCII percent-encoded (as UTF-8)."""
    value = render_fields(found.fields)
    return "".join(ch if ch <= "~" else quote(ch) for ch in value if ch.isprintable())


def _replace_head(body: Mapping[str, Any], found: Attribution, replacement: str) -> dict[str, Any]:
    """Return a copy of ``body`` with ``found.removed`` swapped for ``replacement``."""
    new_body = dict(body)
    system = body["system"]
    if isinstance(system, str):
        new_body["system"] = replacement + system[len(found.removed) :]
        return new_body
    blocks: list[Any] = list(system)
    first = blocks[0]
    rest = first["text"][len(found.removed) :]
    if found.whole_block and not replacement:
        del blocks[0]
    else:
        blocks[0] = {**first, "text": replacement + rest}
    new_body["system"] = blocks
    return new_body
