"""Routes: which upstream (and policy) a request's model goes to."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefixgate.config.upstream import UpstreamConfig
from prefixgate.config.values import ConfigError, read_policy, read_table
from prefixgate.core.policy import Policy


@dataclass(frozen=True)
class Route:
    model: str
    upstream: str
    policy: Policy | None = None

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.model)


def read_routes(
    tables: Any, upstreams: Mapping[str, UpstreamConfig], single: bool
) -> tuple[Route, ...]:
    """The ``[[routes]]`` tables in order, then a catch-all to the first upstream.

    ``single``: one upstream was given by flag or environment; it takes every model.
    """
    if single or not upstreams:
        return (Route("*", next(iter(upstreams))),) if upstreams else ()
    if not isinstance(tables, list):
        raise ConfigError(f"routes: a list of tables is required, got {tables!r}")
    routes = [_route(f"routes[{i}]", item, upstreams) for i, item in enumerate(tables)]
    routes.append(Route("*", next(iter(upstreams))))
    return tuple(routes)


def _route(where: str, item: Any, upstreams: Mapping[str, UpstreamConfig]) -> Route:
    table = read_table(where, item)
    name = table.get("upstream")
    if name not in upstreams:
        raise ConfigError(f"{where}.upstream: no upstream named {name!r}")
    policy = table.get("policy")
    return Route(
        model=str(table.get("model", "*")),
        upstream=str(name),
        policy=None if policy is None else read_policy(f"{where}.policy", policy, Policy.STRIP),
    )
