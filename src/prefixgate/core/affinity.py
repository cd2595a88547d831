"""Headers that hand a request's affinity to a cluster router in front of the upstream.

A cache-aware router (SGLang's model gateway ``smg``, vLLM production-stack's
router, NVIDIA Dynamo's frontend) keeps a conversation on the worker that
holds its prefix when each request carries a key it can hash or pin. The
gateway knows two: the stable prefix key (``PromptCacheKey.hex``: model,
system prompt, tools, project context; never ids, timestamps or the current
turn), shared by every conversation with the same prompt head, and the
session (``Exchange.scoped_session``: one conversation, never another
tenant's). With ``affinity_headers`` configured for an upstream, each request
to it carries one header with each; which names a router reads is the
router's choice (docs/scaling.md).

Pure: the names configured, the key and the session in, the headers out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX_HEADER = "x-prefixgate-prefix-key"
DEFAULT_SESSION_HEADER = "x-session-id"
# the header SGLang's model gateway (smg) reads its routing key from by default
# (``--routing-key-headers``, default ``x-smg-routing-key``)
SMG_ROUTING_KEY_HEADER = "X-SMG-Routing-Key"

# a session is sent only as visible ASCII (a session id from ``metadata.user_id``
# may hold anything) and no longer than the gateway keeps of one
_SESSION_VALUE = re.compile(r"[\x21-\x7e]{1,128}")


@dataclass(frozen=True)
class AffinityHeaders:
    """The header names that carry the prefix key and the session (None: not sent)."""

    prefix: str | None = DEFAULT_PREFIX_HEADER
    session: str | None = DEFAULT_SESSION_HEADER

    def names(self) -> frozenset[str]:
        """The names set, lower case (a client's header of the same name is replaced)."""
        return frozenset(name.lower() for name in (self.prefix, self.session) if name)


def affinity_headers(
    names: AffinityHeaders | None, prefix_key: str, session: str | None
) -> dict[str, str]:
    """The headers to add to one upstream request: none when ``names`` is None.

    ``prefix_key`` is the request's stable prefix key (64 hex digits); ``session``
    the scoped session id, left out when there is none or it is not plain
    visible ASCII."""
    if names is None:
        return {}
    out: dict[str, str] = {}
    if names.prefix:
        out[names.prefix] = prefix_key
    if names.session and session is not None and _SESSION_VALUE.fullmatch(session):
        out[names.session] = session
    return out
