"""Gateway API keys and the tenants they stand for (pure).

Keys are never stored: the config holds ``sha256:<hex>`` digests
(``prefixgate keygen`` prints a new key and its digest). A presented key is
hashed and compared with every configured digest in constant time
(``hmac.compare_digest``, no early exit), so neither the time taken nor the
order of the tenants says how close a guess was.

A key is read from ``x-api-key``, ``Authorization: Bearer <key>`` or, for a
browser opening the dashboard, ``Authorization: Basic`` (the key as the
password, any user name).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

KEY_DIGEST_PREFIX = "sha256:"
KEY_PREFIX = "pg-"


@dataclass(frozen=True)
class Tenant:
    """A team or user of the gateway, with the digests of its keys."""

    name: str
    key_digests: tuple[str, ...] = ()
    admin: bool = False  # may read every tenant's dashboard and metrics
    upstreams: tuple[str, ...] | None = None  # upstreams it may use (None: all)
    max_concurrent: int | None = None  # requests under way at once (None: the server's)

    def may_use(self, upstream: str) -> bool:
        return self.upstreams is None or upstream in self.upstreams


def hash_key(key: str) -> str:
    """The digest of ``key`` as written in the config."""
    return KEY_DIGEST_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A new random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def is_digest(value: str) -> bool:
    hexpart = value.removeprefix(KEY_DIGEST_PREFIX)
    return (
        value.startswith(KEY_DIGEST_PREFIX)
        and len(hexpart) == 64
        and all(c in "0123456789abcdef" for c in hexpart)
    )


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries, or None."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        password = decoded.partition(":")[2]
        return password or None
    return None


def authenticate(key: str | None, tenants: Sequence[Tenant]) -> Tenant | None:
    """The tenant whose digest matches ``key``, or None; constant time in the match."""
    if not key:
        return None
    presented = hash_key(key).encode("ascii")
    found: Tenant | None = None
    for tenant in tenants:
        for digest in tenant.key_digests:
            if hmac.compare_digest(presented, digest.encode("ascii")) and found is None:
                found = tenant
    return found
