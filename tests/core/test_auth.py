"""Keys, digests and tenants (pure)."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from prefixgate.core.auth import (
    Tenant,
    authenticate,
    hash_key,
    is_digest,
    new_key,
    presented_key,
)

ALPHA_KEY = "pg-alpha-secret"
BETA_KEY = "pg-beta-secret"
TENANTS = (
    Tenant("alpha", (hash_key(ALPHA_KEY),)),
    Tenant("beta", (hash_key("pg-old-beta"), hash_key(BETA_KEY)), admin=True),
)


def test_a_digest_is_what_the_config_holds_never_the_key() -> None:
    digest = hash_key(ALPHA_KEY)
    assert is_digest(digest)
    assert ALPHA_KEY not in digest
    assert not is_digest(ALPHA_KEY)
    assert not is_digest("sha256:" + "g" * 64)
    assert not is_digest("sha256:" + "a" * 63)


def test_new_keys_are_random_and_long() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(k.startswith("pg-") and len(k) >= 40 for k in keys)


def test_each_key_names_its_own_tenant() -> None:
    assert authenticate(ALPHA_KEY, TENANTS) == TENANTS[0]
    assert authenticate(BETA_KEY, TENANTS) == TENANTS[1]
    assert authenticate("pg-old-beta", TENANTS) == TENANTS[1]


def test_no_key_a_wrong_key_or_a_digest_as_the_key_is_nobody() -> None:
    assert authenticate(None, TENANTS) is None
    assert authenticate("", TENANTS) is None
    assert authenticate(ALPHA_KEY + "x", TENANTS) is None
    assert authenticate(hash_key(ALPHA_KEY), TENANTS) is None  # a leaked config is no key


@given(st.text(max_size=80))
def test_any_other_text_is_nobody(key: str) -> None:
    if key not in (ALPHA_KEY, BETA_KEY, "pg-old-beta"):
        assert authenticate(key, TENANTS) is None


def test_the_key_is_read_from_x_api_key_bearer_or_basic() -> None:
    assert presented_key({"x-api-key": " k1 "}) == "k1"
    assert presented_key({"authorization": "Bearer k2"}) == "k2"
    assert presented_key({"authorization": "bearer  k3"}) == "k3"
    basic = base64.b64encode(b"anyone:k4").decode()
    assert presented_key({"authorization": f"Basic {basic}"}) == "k4"
    assert presented_key({"authorization": "Basic !!!"}) is None
    assert presented_key({"authorization": "Token k5"}) is None
    assert presented_key({}) is None


def test_a_tenant_may_be_kept_to_some_upstreams() -> None:
    assert Tenant("a").may_use("local")
    kept = Tenant("a", upstreams=("local",))
    assert kept.may_use("local")
    assert not kept.may_use("anthropic")
