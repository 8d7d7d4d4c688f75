"""Consistent hashing (uhashring, ketama) with a per-key cache of the ring walk. Pure.

``walk(key)`` lists every backend of the pool, distinct, in ring order from the key's
point: the first is the key's owner, the rest are where it spills. Removing a backend
moves only the keys it owned (tests/property/test_hashring.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from uhashring import HashRing

_CACHE_LIMIT = 65_536


class PoolRing:
    def __init__(self, members: Iterable[tuple[str, int]], vnodes: int = 160) -> None:
        nodes = {name: {"weight": weight, "vnodes": vnodes} for name, weight in members}
        if not nodes:
            raise ValueError("a ring needs at least one member")
        self._ring = HashRing(nodes=nodes, hash_fn="ketama")
        self._size = len(nodes)
        self._cache: dict[str, tuple[str, ...]] = {}

    def walk(self, key: str) -> tuple[str, ...]:
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        order = tuple(self._ring.iterate_nodes(key))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()  # keys are digests: a cold start costs one walk each
        self._cache[key] = order
        return order

    def owner(self, key: str) -> str:
        return self.walk(key)[0]

    def __len__(self) -> int:
        return self._size
