"""API keys: a key -> its tenant, by the key's SHA-256 (only hashes are ever stored).

Pure: the entries come from the configuration (``router/config``) or a keys file read at
the edge (``router/api/auth.py``); nothing here reads files, clocks or the network.

Why SHA-256 and no slow hash: keys are 256 random bits made by ``new_key``, not passwords;
nobody can search that space, salted or not. The lookup is a dict probe on the first 8
hex digits of the digest, then ``hmac.compare_digest`` on the whole stored digest (the
probe's timing can reveal at most those 32 bits of a SHA-256 output, which say nothing
about any key; the comparison that decides reveals nothing).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ctxroute.router.core.ratelimit import Rate

PREFIX = "sk-ctx-"
MAX_KEY_CHARS = 256  # longer Authorization values are not keys: refused before hashing


@dataclass(frozen=True, slots=True)
class Tenant:
    """What a key may do. ``max_tier``: the index of the highest tier it may ask for (0 is
    the highest); ``models``: None for every model; ``requests`` and ``tokens``: its limits
    per minute (None: none), made once when the keys are read."""

    name: str
    models: frozenset[str] | None
    max_tier: int
    requests: Rate | None
    tokens: Rate | None
    weight: float
    # a field, not a property: read on every keyed request
    limited: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limited", self.requests is not None or self.tokens is not None)

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    """A new client or admin key: 256 random bits, URL-safe, recognisable by its prefix
    (secret scanners and people can tell what leaked)."""
    return PREFIX + secrets.token_urlsafe(32)


def bearer(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None."""
    if authorization is None or len(authorization) > MAX_KEY_CHARS + 7:
        return None
    if authorization.startswith("Bearer "):  # as every OpenAI client writes it
        return authorization[7:].strip() or None
    scheme, _, key = authorization.partition(" ")  # the scheme is case-insensitive
    if scheme.lower() != "bearer":
        return None
    key = key.strip()
    return key or None


class KeyRing:
    """The keys in force: digest -> tenant. Replaced whole when the keys change."""

    __slots__ = ("buckets", "by_digest")

    def __init__(self, entries: Iterable[tuple[str, Tenant]]) -> None:
        self.by_digest: Mapping[str, Tenant] = dict(entries)
        # raw digests, by their first 4 bytes: the lookup hashes the key once and formats
        # nothing (hexdigest costs a sixth of a keyed request's lookup)
        buckets: dict[bytes, list[tuple[bytes, Tenant]]] = {}
        for d, tenant in self.by_digest.items():
            raw = bytes.fromhex(d)
            buckets.setdefault(raw[:4], []).append((raw, tenant))
        self.buckets = buckets

    def __len__(self) -> int:
        return len(self.by_digest)

    def tenant_of(self, key: str | None) -> Tenant | None:
        if key is None or len(key) > MAX_KEY_CHARS:
            return None
        wanted = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        for stored, tenant in self.buckets.get(wanted[:4], ()):
            if hmac.compare_digest(stored, wanted):
                return tenant
        return None

    def tenants(self) -> frozenset[str]:
        return frozenset(t.name for t in self.by_digest.values())


def is_admin(key: str | None, admin_digests: frozenset[str]) -> bool:
    if key is None or len(key) > MAX_KEY_CHARS:
        return False
    wanted = digest(key)
    return any(hmac.compare_digest(wanted, d) for d in admin_digests)
