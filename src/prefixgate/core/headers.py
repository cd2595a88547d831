"""The attribution block as an HTTP request header, put through the block's policy.

Claude Code writes its attribution block into the system prompt; the same
fields can also reach the gateway as request headers: an
``x-anthropic-billing-header`` header, or the header a gateway in front of
this one set with ``preserve_as_metadata`` (``x-prefixgate-attribution``, or
the upstream's configured ``metadata_header``). Left alone they would go
upstream unnoticed, so they get the policy the body's block gets:

``strip``                 not forwarded
``normalize``             forwarded with the normalized value (the fields
                          ``normalize_keep`` names, ``cc_version`` without its
                          suffix), the same for every conversation
``preserve_as_metadata``  not forwarded; with ``metadata_header`` configured,
                          that header carries the fields (the body's block wins
                          when there is one)
``passthrough``           forwarded as sent

Whatever the policy, each header's form and fields go into the audit record.
Pure: headers in, what to drop and what to add out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefixgate.core.attribution import HEADER_NAME, HeaderAttribution, detect_headers
from prefixgate.core.policy import (
    DEFAULT_NORMALIZE_KEEP,
    METADATA_HEADER,
    Policy,
    metadata_value,
    normalized_line,
)


@dataclass(frozen=True)
class HeaderRewrite:
    """The attribution headers found, the names not to forward, the headers to add."""

    found: tuple[HeaderAttribution, ...] = ()
    drop: frozenset[str] = frozenset()
    add: Mapping[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any] | None:
        """``{header name: {"form", "fields"}}`` for the audit record; None when none came."""
        if not self.found:
            return None
        return {found.name: found.record() for found in self.found}


def attribution_header_names(metadata_header: str | None = None) -> tuple[str, ...]:
    """The request header names that carry attribution metadata (lower case)."""
    names = [HEADER_NAME, METADATA_HEADER]
    if metadata_header and metadata_header.lower() not in names:
        names.append(metadata_header.lower())
    return tuple(names)


def normalized_value(found: HeaderAttribution, keep: Sequence[str]) -> str:
    """The header value ``normalize`` forwards: the normalized line without its name."""
    line = normalized_line(found.as_attribution(), keep)
    return line[len(HEADER_NAME) + 1 :].lstrip()


def apply_header_policy(
    found: tuple[HeaderAttribution, ...],
    policy: Policy,
    *,
    normalize_keep: Sequence[str] = DEFAULT_NORMALIZE_KEEP,
    metadata_header: str | None = None,
) -> HeaderRewrite:
    """What ``policy`` does to the attribution headers ``found``."""
    if not found or policy is Policy.PASSTHROUGH:
        return HeaderRewrite(found)
    drop = frozenset(h.name for h in found)
    add: dict[str, str] = {}
    if policy is Policy.NORMALIZE:
        for header in found:
            add.setdefault(header.name, normalized_value(header, normalize_keep))
    elif policy is Policy.PRESERVE_AS_METADATA and metadata_header:
        add[metadata_header] = metadata_value(found[0].as_attribution())
    return HeaderRewrite(found, drop, add)


def rewrite_headers(
    headers: Iterable[tuple[str, str]],
    policy: Policy,
    *,
    normalize_keep: Sequence[str] = DEFAULT_NORMALIZE_KEEP,
    metadata_header: str | None = None,
) -> HeaderRewrite:
    """Detect the attribution headers among ``headers`` and apply ``policy`` to them."""
    found = detect_headers(headers, attribution_header_names(metadata_header))
    return apply_header_policy(
        found, policy, normalize_keep=normalize_keep, metadata_header=metadata_header
    )
