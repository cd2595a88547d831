"""Every upstream kind by name: the one table the request path looks a kind up in.

A new kind is a module under ``upstreams/`` with a ``KIND`` (see ``kind.Kind``)
and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping

from prefixgate.upstreams import anthropic, openai
from prefixgate.upstreams.kind import Kind

KINDS: Mapping[str, Kind] = {
    anthropic.KIND.name: anthropic.KIND,
    openai.KIND.name: openai.KIND,
}
