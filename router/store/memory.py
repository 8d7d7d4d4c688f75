"""The in-process store: breakers, memory pressure and drain flags of this process.

The embedded default, and the local half of the Redis store (which subclasses it: the
local state is what the request path reads, Redis or not). The load view is the
``LoadBoard`` (shared memory between the workers of one host under ``serve --workers``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

from ctxroute.router.aio.tasks import stop_tasks
from ctxroute.router.config import BreakersConfig
from ctxroute.router.core import breaker as br
from ctxroute.router.model import Backend
from ctxroute.router.store.loadboard import LoadBoard, LoadView

log = logging.getLogger("ctxroute.breakers")

_GO = (True, False)  # allowed, not a probe
_FOLLOW_S = 0.05


def breaker_settings(config: BreakersConfig) -> br.BreakerSettings:
    # the config's fields are the state machine's settings, by name (memory has its own)
    return br.BreakerSettings(**config.model_dump(exclude={"memory"}))


class MemoryStore:
    kind = "memory"

    def __init__(self, backends: Sequence[Backend], settings: br.BreakerSettings,
                 load: LoadView, jitter: Callable[[], float] = random.random) -> None:  # fmt: skip
        self.backends = tuple(backends)
        self.settings = settings
        self.load = load
        self.jitter = jitter
        count = len(self.backends)
        self.breakers: list[br.Breaker] = [br.CLOSED] * count
        self.memory: list[bool] = [False] * count
        self.drain: list[bool] = [False] * count
        # breaker openings this process decided (a counter: never reset, unlike the
        # breaker's own count, which is its backoff's exponent)
        self.openings: list[int] = [0] * count
        # with serve --workers, the drains every worker follows (LoadBoard.drains)
        self.shared_drains = load.drains if isinstance(load, LoadBoard) and load.rows > 1 else None
        self._follow: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return True

    # ---- the request path: synchronous, local ----------------------------------------

    def usable(self, backend: int, now: float) -> bool:
        if self.drain[backend] or self.memory[backend]:
            return False
        b = self.breakers[backend]
        return b.closed or br.usable(b, now, self.settings)

    def looks_usable(self, backend: int, now: float) -> bool:
        """``usable`` without its side effects, for what only reads (``/status``)."""
        return MemoryStore.usable(self, backend, now)

    def allow(self, backend: int, now: float) -> tuple[bool, bool]:
        if self.drain[backend] or self.memory[backend]:
            return False, False
        b = self.breakers[backend]
        if b.closed:
            return _GO  # the common case, without a call into the state machine
        allowed, probe, after = br.allow(b, now, self.settings)
        self._set(backend, after, now)
        return allowed, probe

    def record(self, backend: int, failed: bool | None, probe: bool, now: float) -> None:
        before = self.breakers[backend]
        if failed is None:
            after = br.release(before, probe)
        else:
            after = br.record(before, failed, probe, now, self.settings, self.jitter())
        if after is not before:
            if after.state is br.BreakerState.OPEN and before.state is not br.BreakerState.OPEN:
                self.openings[backend] += 1
            self._set(backend, after, now)

    def _set(self, backend: int, after: br.Breaker, now: float) -> None:
        before = self.breakers[backend]
        if after is before:
            return
        self.breakers[backend] = after
        if after.state is not before.state:
            self._transition(backend, before, after, now)

    def _transition(self, backend: int, before: br.Breaker, after: br.Breaker,
                    now: float) -> None:  # fmt: skip
        url = self.backends[backend].url
        if after.state is br.BreakerState.OPEN:
            log.warning("breaker of %s is open for %.1fs (opening %d)", url,
                        after.open_until - now, after.openings)  # fmt: skip
        elif after.state is br.BreakerState.CLOSED:
            log.warning("breaker of %s is closed: the probe succeeded", url)
        else:
            log.info("breaker of %s is half-open: probing", url)

    # ---- state read by /status, written by probes and operators ----------------------

    def breaker(self, backend: int) -> br.Breaker:
        return self.breakers[backend]

    def memory_open(self, backend: int) -> bool:
        return self.memory[backend]

    def set_memory(self, backend: int, is_open: bool, why: str = "") -> None:
        if self.memory[backend] != is_open:
            self.memory[backend] = is_open
            url = self.backends[backend].url
            if is_open:
                log.warning("memory breaker of %s is open (%s): no new requests", url,
                            why or "KV cache distress")  # fmt: skip
            else:
                log.warning("memory breaker of %s is closed", url)

    def drained(self, backend: int) -> bool:
        return self.drain[backend]

    async def set_drained(self, backend: int, drained: bool) -> None:
        if self.shared_drains is not None:
            self.shared_drains[backend] = 1 if drained else 0
        self._apply_drain(backend, drained)

    def _apply_drain(self, backend: int, drained: bool) -> None:
        if self.drain[backend] != drained:
            self.drain[backend] = drained
            what = "drained: no new requests" if drained else "back in service"
            log.warning("backend %s is %s", self.backends[backend].url, what)

    def retry_after(self, backends: Sequence[Backend], now: float) -> float | None:
        waits = [
            br.retry_after(self.breakers[b.index], now)
            for b in backends
            if self.breakers[b.index].state is not br.BreakerState.CLOSED
        ]
        return min(waits) if waits else None

    async def start(self) -> None:
        if self.shared_drains is not None:
            self._follow = asyncio.get_running_loop().create_task(self._follow_drains())

    async def close(self) -> None:
        if self._follow is not None:
            await stop_tasks([self._follow])

    async def _follow_drains(self) -> None:
        """Apply the drains other workers made (within _FOLLOW_S of the admin request)."""
        shared = self.shared_drains
        assert shared is not None
        while True:
            await asyncio.sleep(_FOLLOW_S)
            for i, flag in enumerate(shared):
                if bool(flag) != self.drain[i]:
                    self._apply_drain(i, bool(flag))
