"""Who may knock: the ``Host`` a request names and the browser ``Origin`` it comes from.

A keyless gateway on loopback trusts whatever reaches it. Two kinds of web
page could reach it from the user's own browser:

- a page on another site that POSTs to ``http://127.0.0.1:8787`` (a
  ``text/plain`` body is a "simple" cross-origin request, sent without asking):
  the browser says where it comes from in ``Origin``;
- a DNS-rebinding page, whose own name now resolves to 127.0.0.1, and which
  can then read ``/report`` and the dashboard as same-origin: the browser
  names that site in ``Host``.

So ``host_allowed`` accepts a ``Host`` that is a loopback name, an IP literal
(a rebinding page cannot make the browser send one), the address the gateway
listens on, or a name in ``allowed_hosts`` (``"*"`` accepts any); a request with
no ``Host`` (HTTP/1.0) passes. ``origin_allowed`` accepts a request without
``Origin`` (Claude Code, the SDKs, curl: nothing legitimate sends one), an
``Origin`` that is the gateway's own (``scheme://`` + the request's ``Host``, as
the dashboard's own pages send), or one listed in ``allowed_origins``.
Pure functions over strings; the guard applies them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

FORWARDED = "forwarded"  # RFC 7239; and every ``x-forwarded-*``, and ``x-real-ip``
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
ANY = "*"


def host_name(host: str) -> str:
    """The name in a ``Host`` value, without its port or IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host: str | None, listen_host: str, allowed_hosts: tuple[str, ...]) -> bool:
    if host is None or ANY in allowed_hosts:
        return True
    name = host_name(host)
    if not name:
        return False
    if name in LOOPBACK_NAMES or name.endswith(".localhost") or _is_ip(name):
        return True
    return name == host_name(listen_host) or name in {h.lower() for h in allowed_hosts}


def origin_allowed(origin: str | None, host: str | None, allowed_origins: tuple[str, ...]) -> bool:
    if origin is None or ANY in allowed_origins:
        return True
    origin = origin.strip().rstrip("/")
    if origin.lower() in {o.lower().rstrip("/") for o in allowed_origins}:
        return True
    parts = urlsplit(origin)  # "null" (a sandboxed page, a file) has no host: refused
    if parts.scheme not in ("http", "https") or not parts.netloc or host is None:
        return False
    return parts.netloc.lower() == host.strip().lower()


def forwarded_names(names: Iterable[str]) -> frozenset[str]:
    """The (lower-case) header names among ``names`` that claim where a request came
    from through proxies: passed on only when ``trust_forwarded`` says they are ours."""
    lowered = (name.lower() for name in names)
    return frozenset(
        n for n in lowered if n in (FORWARDED, "x-real-ip") or n.startswith("x-forwarded-")
    )
