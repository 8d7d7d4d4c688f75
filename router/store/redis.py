"""The store shared by every replica through Redis (redis.asyncio, hiredis).

What the request path reads is always the local state of ``MemoryStore``: this class
carries it to and from Redis in the background, so no request ever waits on Redis.

The keys and what each holds: ``redis_scripts.py``.

Every breaker transition is one Lua script that reads ``redis.call('TIME')``, so the
replicas' clocks never have to agree; the latest open-until wins. Pub/sub pushes a change
to every replica at once; a full re-read every ``resync_s`` covers lost messages, a flushed
or restarted Redis (the replicas write back what they know), and the return of Redis after
an outage.

Redis unreachable or slower than ``timeout_ms``: ``up`` turns false, every replica
decides on its local breakers and its local load alone, keeps serving and keeps trying;
local transitions made meanwhile are written back when Redis returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ctxroute.router.aio.tasks import stop_tasks
from ctxroute.router.config import StoreConfig
from ctxroute.router.core import breaker as br
from ctxroute.router.model import Backend
from ctxroute.router.store import redis_scripts as scripts
from ctxroute.router.store.loadboard import LoadView
from ctxroute.router.store.memory import MemoryStore
from ctxroute.router.store.redis_client import make_client
from ctxroute.router.store.shared_load import SharedLoad
from redis.exceptions import RedisError

log = logging.getLogger("ctxroute.store")

T = TypeVar("T")

_RETRY_S = 0.2  # while Redis is away, how often to try again


class RedisStore(MemoryStore):
    kind = "redis"

    def __init__(
        self,
        backends: Sequence[Backend],
        settings: br.BreakerSettings,
        board: LoadView,
        config: StoreConfig,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.shared = SharedLoad(board, [b.url for b in backends], self._announce_load)
        super().__init__(backends, settings, self.shared, jitter)
        assert config.redis_url is not None
        self.config = config
        self.timeout_s = config.timeout_ms / 1000.0
        self.client = make_client(config.redis_url, self.timeout_s)
        tag = "{" + config.key_prefix + "}"
        self.channel = f"{tag}:events"
        self.load_key = f"{tag}:load"
        self.drained_key = f"{tag}:drained"
        self.breaker_keys = [f"{tag}:breaker:{b.url}" for b in self.backends]
        self.lease_keys = [
            [f"{tag}:probe:{b.url}:{n}" for n in range(settings.half_open_probes)]
            for b in self.backends
        ]
        self.index_of = {b.url: b.index for b in self.backends}
        self.process_id = uuid.uuid4().hex[:16]
        self.probe_grace_ms = int(max(30.0, settings.max_open_s) * 1000)
        self.lease_ms = int(max(10.0, settings.open_s * 5) * 1000)
        self._up = False
        self._ever_up = False
        self.leases = [0] * len(self.backends)  # probe leases this process holds
        # when each expires in Redis (px): past it the lease is no longer this process's
        self.lease_until = [0.0] * len(self.backends)
        self._want_lease: set[int] = set()
        self._dirty: set[int] = set()  # local transitions not yet written to Redis
        self._drain_dirty: dict[int, bool] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._scripts: dict[str, Any] = {}
        self._closing = False
        self._announce = False  # a long prefill started or ended: tell the others now

    # ---- state -------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self._up

    def _set_up(self, up: bool, why: str = "") -> None:
        if up == self._up:
            return
        self._up = up
        if up:
            log.warning("redis is reachable: breakers and load are shared again")
            self._ever_up = True
        else:
            log.warning("redis is unreachable (%s): deciding on local breakers and load", why)
            self.shared.forget_others()
            self.leases = [0] * len(self.backends)

    # ---- the request path: synchronous, local ------------------------------------------

    def _needs_lease(self, backend: int, now: float) -> bool:
        """With Redis up, a half-open probe needs one of the fleet's probe leases."""
        if not self._up:
            return False
        b = self.breakers[backend]
        if b.state is br.BreakerState.CLOSED:
            return False
        if b.state is br.BreakerState.OPEN and now < b.open_until:
            return False  # refused anyway
        taken = b.probes_out + b.probes_ok if b.state is br.BreakerState.HALF_OPEN else 0
        held = self.leases[backend] if now < self.lease_until[backend] else 0
        return taken >= held

    def usable(self, backend: int, now: float) -> bool:
        if self._needs_lease(backend, now):
            self._ask_lease(backend)
            return False
        return super().usable(backend, now)

    def looks_usable(self, backend: int, now: float) -> bool:
        # for /status and /metrics: never asks for the probe lease (a replica that is only
        # scraped would take it, and hold up the one that has a request to probe with)
        if self._needs_lease(backend, now):
            return False
        return super().usable(backend, now)

    def allow(self, backend: int, now: float) -> tuple[bool, bool]:
        if not self.drain[backend] and not self.memory[backend] and self._needs_lease(backend, now):
            self._ask_lease(backend)
            return False, False
        return super().allow(backend, now)

    def _ask_lease(self, backend: int) -> None:
        if backend not in self._want_lease:
            self._want_lease.add(backend)
            self._wake.set()

    def _transition(self, backend: int, before: br.Breaker, after: br.Breaker, now: float) -> None:
        super()._transition(backend, before, after, now)
        if after.state is br.BreakerState.HALF_OPEN:
            return  # half-open is read from the open key's time: nothing to write
        self._dirty.add(backend)
        self._wake.set()

    async def set_drained(self, backend: int, drained: bool) -> None:
        self._apply_drain(backend, drained)
        self._drain_dirty[backend] = drained
        if self._up:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await self._push_drain(backend, drained)
                return
        self._wake.set()

    # ---- background ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._sync_forever(), name="ctxroute-store-sync"),
            loop.create_task(self._listen_forever(), name="ctxroute-store-events"),
        ]

    async def close(self) -> None:
        # redis-py may turn a cancellation in the middle of a command into a connection
        # error, which the loops survive by design: they also stop on this flag
        self._closing = True
        await stop_tasks(self._tasks, 1.0 + 2 * self.timeout_s)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self.timeout_s):
                await self.client.hdel(self.load_key, self.process_id)
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        async with asyncio.timeout(self.timeout_s):
            return await make()

    def _script(self, name: str, text: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self.client.register_script(text)
            self._scripts[name] = script
        return script

    async def _sync_forever(self) -> None:
        publish_s = self.config.load_publish_ms / 1000.0
        next_resync = 0.0
        while not self._closing:
            # cleared before the work, not after: a wake-up that comes while this round
            # awaits Redis (a long prefill announced, a breaker transition) must start the
            # next round at once, not wait for the next periodic one
            self._wake.clear()
            now = time.monotonic()
            try:
                if now >= next_resync or not self._up:
                    await self._resync()
                    next_resync = now + self.config.resync_s
                await self._publish_load()
                await self._flush()
                self._set_up(True)
            except (RedisError, OSError, TimeoutError) as exc:
                self._set_up(False, str(exc) or type(exc).__name__)
                next_resync = 0.0
            except Exception:
                log.exception("store sync failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(publish_s if self._up else _RETRY_S):
                    await self._wake.wait()

    def _announce_load(self) -> None:
        self._announce = True
        self._wake.set()

    async def _publish_load(self) -> None:
        ttl_ms = int(max(1000.0, 10 * self.config.load_publish_ms))
        script = self._script("load", scripts.LOAD)
        announce, self._announce = self._announce, False
        args = [self.process_id, self.shared.packed(), ttl_ms, self.channel, int(announce)]
        try:
            reply = await self._call(lambda: script(keys=[self.load_key], args=args))
        except BaseException:
            self._announce = self._announce or announce
            raise
        self.shared.merge(reply)

    async def _flush(self) -> None:
        """Write local transitions and drains; take probe leases asked for."""
        while self._dirty:
            backend = self._dirty.pop()
            try:
                await self._push_breaker(backend)
            except BaseException:
                self._dirty.add(backend)
                raise
        for backend, drained in list(self._drain_dirty.items()):
            await self._push_drain(backend, drained)
        while self._want_lease:
            backend = self._want_lease.pop()
            await self._take_lease(backend)

    async def _push_breaker(self, backend: int) -> None:
        b = self.breakers[backend]
        url = self.backends[backend].url
        keys = [self.breaker_keys[backend], *self.lease_keys[backend]]
        if b.state is br.BreakerState.OPEN:
            left_ms = max(1, int((b.open_until - time.monotonic()) * 1000))
            script = self._script("open", scripts.OPEN)
            left, openings = await self._call(
                lambda: script(
                    keys=keys, args=[left_ms, b.openings, self.probe_grace_ms, self.channel, url]
                )
            )
            self._adopt_open(backend, int(left), int(openings))
        elif b.state is br.BreakerState.CLOSED:
            script = self._script("close", scripts.CLOSE)
            await self._call(lambda: script(keys=keys, args=[self.channel, url]))
        self.leases[backend] = 0

    async def _push_drain(self, backend: int, drained: bool) -> None:
        url = self.backends[backend].url
        client = self.client

        async def write() -> None:
            if drained:
                await client.sadd(self.drained_key, url)
            else:
                await client.srem(self.drained_key, url)
            await client.publish(self.channel, ("drain " if drained else "undrain ") + url)

        await self._call(write)
        if self._drain_dirty.get(backend) is drained:
            del self._drain_dirty[backend]

    async def _take_lease(self, backend: int) -> None:
        b = self.breakers[backend]
        if b.state is br.BreakerState.CLOSED or self.leases[backend] > 0:
            return
        for key in self.lease_keys[backend]:
            got = await self._call(
                lambda k=key: self.client.set(  # type: ignore[misc]
                    k, self.process_id, nx=True, px=self.lease_ms
                )
            )
            if got:
                self.leases[backend] = 1
                self.lease_until[backend] = time.monotonic() + self.lease_ms / 1000.0
                log.info(
                    "probe lease %s taken: this process probes %s", key, self.backends[backend].url
                )
                return

    def _adopt_open(self, backend: int, left_ms: int, openings: int) -> None:
        """Another replica (or Redis) says the breaker is open for ``left_ms`` more: the
        latest open-until wins."""
        now = time.monotonic()
        until = now + max(0, left_ms) / 1000.0
        b = self.breakers[backend]
        if b.state is br.BreakerState.OPEN and b.open_until >= until - 0.001:
            return
        if b.state is br.BreakerState.HALF_OPEN and left_ms <= 0:
            return  # the same episode, already probing
        self.breakers[backend] = br.Breaker(
            br.BreakerState.OPEN, (), 0, max(openings, b.openings), until
        )
        self.leases[backend] = 0
        if b.state is br.BreakerState.CLOSED:
            log.warning(
                "breaker of %s is open for %.1fs (shared)",
                self.backends[backend].url,
                left_ms / 1000,
            )

    def _adopt_close(self, backend: int) -> None:
        if self.breakers[backend].state is not br.BreakerState.CLOSED:
            self.breakers[backend] = br.CLOSED
            log.warning("breaker of %s is closed (shared)", self.backends[backend].url)
        self.leases[backend] = 0

    async def _resync(self) -> None:
        keys = [*self.breaker_keys, self.drained_key]
        script = self._script("read", scripts.READ)
        reply = await self._call(lambda: script(keys=keys, args=[]))
        now_ms = int(reply[0])
        values, drained = reply[1:-1], set(reply[-1])
        mono = time.monotonic()
        for backend, value in enumerate(values):
            b = self.breakers[backend]
            if value:
                until_ms, openings = (int(x) for x in value.split())
                left_ms = until_ms - now_ms
                local_left_ms = (b.open_until - mono) * 1000
                if b.state is br.BreakerState.OPEN and local_left_ms > left_ms + 50:
                    self._dirty.add(backend)  # ours opened later: it wins, write it back
                else:
                    self._adopt_open(backend, left_ms, openings)
            elif b.state is not br.BreakerState.CLOSED:
                if b.open_until > mono:
                    self._dirty.add(backend)  # Redis lost it (flushed, restarted): write back
                else:
                    self._adopt_close(backend)
        for backend in range(len(self.backends)):
            if backend in self._drain_dirty:
                continue  # a local decision made while Redis was away: written next
            self._apply_drain(backend, self.backends[backend].url in drained)

    async def _listen_forever(self) -> None:
        while not self._closing:
            pubsub = self.client.pubsub()
            try:
                async with asyncio.timeout(self.timeout_s * 5):
                    await pubsub.subscribe(self.channel)
                while not self._closing:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_event(str(message["data"]))
            except (RedisError, OSError, TimeoutError) as exc:
                self._set_up(False, f"events: {exc or type(exc).__name__}")
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("store events failed")
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _on_event(self, data: str) -> None:
        parts = data.split()
        if len(parts) < 2:
            return
        kind = parts[0]
        if kind == "load":  # "load <process id> <rows>"
            if len(parts) == 3 and parts[1] != self.process_id:
                self.shared.update(parts[1], parts[2])
            return
        backend = self.index_of.get(parts[1])
        if backend is None:
            return  # another deployment's backend under the same prefix
        if kind == "open" and len(parts) == 4:
            self._adopt_open(backend, int(parts[2]), int(parts[3]))
        elif kind == "close":
            self._adopt_close(backend)
        elif kind in ("drain", "undrain") and backend not in self._drain_dirty:
            self._apply_drain(backend, kind == "drain")
