"""Shared state of the fleet: breakers, memory pressure, drain flags, and the load view.

- ``loadboard.py``: per-backend load counters, one row per process (shared memory between
  the workers of one host); ``shared_load.py`` adds what other replicas published;
- ``memory.py``: the in-process store; ``redis.py`` (with ``redis_client.py`` and
  ``redis_scripts.py``): the same state shared through Redis.

``Store`` is the one interface; ``MemoryStore`` (memory.py) keeps everything in this
process, the embedded default; ``RedisStore`` (redis.py) shares it with every replica
through Redis and falls back to the local state when Redis is away. Both pass the same
contract suite (tests/integration/test_store.py).

The request path only ever calls the synchronous methods: they read and write the local
state, and the Redis store carries changes to and from Redis in the background, so no
request waits on Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ctxroute.router.core.breaker import Breaker
from ctxroute.router.model import Backend
from ctxroute.router.store.loadboard import LoadView


class Store(Protocol):
    kind: str  # "memory" or "redis"
    load: LoadView
    openings: list[int]  # breaker openings this process decided, per backend (a counter)

    @property
    def up(self) -> bool:
        """False while the shared state is out of reach (this process decides alone)."""
        ...

    def usable(self, backend: int, now: float) -> bool:
        """Would a new request be let through now (breakers, memory, drain)?"""
        ...

    def looks_usable(self, backend: int, now: float) -> bool:
        """``usable`` for a reader only (``/status``, ``/metrics``): no side effects (it
        never asks for a probe lease)."""
        ...

    def allow(self, backend: int, now: float) -> tuple[bool, bool]:
        """Take the right to send a request now: (allowed, as a half-open probe)."""
        ...

    def record(self, backend: int, failed: bool | None, probe: bool, now: float) -> None:
        """A granted request ended: a backend failure, a success, or neither (None)."""
        ...

    def breaker(self, backend: int) -> Breaker: ...

    def memory_open(self, backend: int) -> bool: ...

    def set_memory(self, backend: int, is_open: bool, why: str = "") -> None:
        """The probe's verdict on the memory breaker; ``why``: the rule that opened it."""
        ...

    def drained(self, backend: int) -> bool: ...

    async def set_drained(self, backend: int, drained: bool) -> None:
        """Operator's drain: no new requests, in-flight ones finish; every replica obeys."""
        ...

    def retry_after(self, backends: Sequence[Backend], now: float) -> float | None:
        """Seconds until the first of ``backends`` blocked by a breaker may take a probe;
        None when none of them is blocked by a breaker."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


__all__ = ["Store"]
