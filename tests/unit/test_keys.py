"""API keys: digests only, Bearer parsing, lookups, bounds on what a client sends."""

from __future__ import annotations

import hashlib

from ctxroute.router.core.keys import (
    MAX_KEY_CHARS,
    PREFIX,
    KeyRing,
    Tenant,
    bearer,
    digest,
    is_admin,
    new_key,
)
from ctxroute.router.core.ratelimit import Rate

ACME = Tenant("acme", frozenset({"m1"}), 1, Rate(60, 3.0), None, 1.0)
GLOBEX = Tenant("globex", None, 0, None, None, 2.0)


def test_new_keys_are_random_prefixed_and_long() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith(PREFIX) and len(k) >= len(PREFIX) + 43 for k in keys)


def test_digest_is_sha256_hex() -> None:
    assert digest("abc") == hashlib.sha256(b"abc").hexdigest()


def test_bearer_reads_only_the_bearer_scheme() -> None:
    assert bearer("Bearer sk-1") == "sk-1"
    assert bearer("bearer   sk-1  ") == "sk-1"
    assert bearer("Basic dXNlcjpwYXNz") is None
    assert bearer("Bearer ") is None
    assert bearer(None) is None
    assert bearer("Bearer " + "k" * (MAX_KEY_CHARS + 10)) is None  # not a key: never hashed


def test_the_ring_finds_tenants_by_key_and_nothing_else() -> None:
    k1, k2 = new_key(), new_key()
    ring = KeyRing([(digest(k1), ACME), (digest(k2), GLOBEX)])
    assert ring.tenant_of(k1) is ACME
    assert ring.tenant_of(k2) is GLOBEX
    assert ring.tenant_of(digest(k1)) is None  # the stored digest is not a key
    assert ring.tenant_of(k1[:-1]) is None
    assert ring.tenant_of(None) is None
    assert ring.tenant_of("x" * 100_000) is None
    assert ring.tenants() == {"acme", "globex"}


def test_keys_sharing_a_digest_prefix_are_told_apart() -> None:
    # the lookup probes by the first 8 hex digits, then compares whole digests
    k1 = new_key()
    fake = digest(k1)[:8] + "0" * 56
    ring = KeyRing([(fake, GLOBEX), (digest(k1), ACME)])
    assert ring.tenant_of(k1) is ACME


def test_tenant_models_and_limits() -> None:
    assert ACME.may_use("m1") and not ACME.may_use("m2")
    assert GLOBEX.may_use("anything")
    assert ACME.limited and not GLOBEX.limited


def test_admin_keys() -> None:
    key = new_key()
    digests = frozenset({digest(key)})
    assert is_admin(key, digests)
    assert not is_admin(new_key(), digests)
    assert not is_admin(None, digests)
    assert not is_admin(key, frozenset())
