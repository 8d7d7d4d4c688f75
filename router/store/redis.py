"""The store shared by every replica through Redis (redis.asyncio, hiredis).

What the request path reads is always the local state of ``MemoryStore``: this class
carries it to and from Redis in the background, so no request ever waits on Redis.

Keys (every one carries the hash tag ``{key_prefix}``, so a deployment's keys live in one
Redis Cluster slot and every script may touch several of them)::

    {p}:breaker:<url>     "open_until_ms openings", PX = open time left + probe grace:
                          present = open (half-open once open_until passed), absent = closed;
                          a writer that dies cannot leave a backend open for ever
    {p}:probe:<url>:<n>   the n-th half-open probe lease, SET NX PX: at most
                          breakers.half_open_probes probes across the whole fleet
    {p}:drained           set of drained backend URLs (an operator's decision: no TTL)
    {p}:load              hash: process id -> "expires_ms|in_flight,pending,long_pending,
                          budget,long_in_flight;..." (one row per backend, no spaces):
                          each process's own load, rewritten every load_publish_ms; fields
                          past their expiry are dropped by readers, so a dead process's
                          share vanishes by itself (a hash field has no TTL of its own
                          before Redis 7.4; the whole hash has one)
    {p}:events            pub/sub channel: "open <url> <ms left> <openings>", "close <url>",
                          "drain <url>", "undrain <url>", and "load <process> <rows>" when
                          a long request starts, produces its first token or ends
                          somewhere (announced at once)

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
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from router.config import StoreConfig
from router.core import breaker as br
from router.model import Backend, Load
from router.store.loadboard import LoadView
from router.store.memory import MemoryStore

log = logging.getLogger("ctxroute.store")

T = TypeVar("T")

_RETRY_S = 0.2  # while Redis is away, how often to try again

_OPEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local openings = tonumber(ARGV[2])
local current = redis.call('GET', KEYS[1])
if current then
  local cu, co = string.match(current, '(%d+) (%d+)')
  if tonumber(cu) > until_ms then until_ms = tonumber(cu) end
  if tonumber(co) > openings then openings = tonumber(co) end
end
local left = until_ms - now
redis.call('SET', KEYS[1], until_ms .. ' ' .. openings, 'PX', math.max(1, left) + tonumber(ARGV[3]))
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('PUBLISH', ARGV[4], 'open ' .. ARGV[5] .. ' ' .. left .. ' ' .. openings)
return {left, openings}
"""

_CLOSE = """
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('PUBLISH', ARGV[1], 'close ' .. ARGV[2])
return 1
"""

_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
for i = 1, #KEYS - 1 do
  out[#out + 1] = redis.call('GET', KEYS[i]) or ''
end
out[#out + 1] = redis.call('SMEMBERS', KEYS[#KEYS])
return out
"""

_LOAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], (now + ttl) .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl * 4)
if ARGV[5] == '1' then
  redis.call('PUBLISH', ARGV[4], 'load ' .. ARGV[1] .. ' ' .. ARGV[2])
end
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local id, value = all[i], all[i + 1]
  local expires, rows = string.match(value, '^(%d+)|(.*)$')
  if not expires or tonumber(expires) < now then
    redis.call('HDEL', KEYS[1], id)
  elseif id ~= ARGV[1] then
    out[#out + 1] = id
    out[#out + 1] = rows
  end
end
return out
"""


def make_client(url: str, timeout_s: float) -> aioredis.Redis | RedisCluster:
    """A client for redis:// rediss:// unix:// URLs, redis+sentinel://h1:p1,h2:p2/service[/db]
    (the current master of that service) and redis+cluster://host:port (a Cluster)."""
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "decode_responses": True,
    }
    if url.startswith("redis+sentinel://"):
        parts = urlsplit(url)
        hosts = []
        for item in parts.netloc.split("@")[-1].split(","):
            host, _, port = item.rpartition(":")
            hosts.append((host or "localhost", int(port or 26379)))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a sentinel URL names its service: redis+sentinel://host:port/name")
        db = int(path[1]) if len(path) > 1 else 0
        password = unquote(parts.password) if parts.password else None
        sentinel = Sentinel(hosts, sentinel_kwargs={"socket_timeout": timeout_s}, **common)  # type: ignore[no-untyped-call]
        master: aioredis.Redis = sentinel.master_for(path[0], db=db, password=password)
        return master
    if url.startswith("redis+cluster://"):
        return RedisCluster.from_url("redis://" + url[len("redis+cluster://") :], **common)
    return aioredis.Redis.from_url(url, **common)


class SharedLoad:
    """The load view with other processes' published load added (``LoadView``).

    ``notify`` is called when a long prefill starts or ends here: the change that matters
    most to the other replicas' next decisions (a short request must not land behind it),
    so it is announced at once rather than at the next periodic publication."""

    def __init__(self, board: LoadView, backends: int,
                 notify: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.board = board
        self.notify = notify
        self.remote: list[Load] = [Load()] * backends
        self.others: dict[str, str] = {}  # process id -> its packed rows

    def add(self, backend: int, in_flight: int, pending: int, long: int, budget: int,
            long_flight: int = 0) -> None:  # fmt: skip
        self.board.add(backend, in_flight, pending, long, budget, long_flight)
        if (long or long_flight) and self.notify is not None:
            self.notify()

    def local(self, backend: int) -> Load:
        return self.board.local(backend)

    def fleet(self, backend: int) -> Load:
        mine = self.board.local(backend)
        other = self.remote[backend]
        if other.in_flight == 0 and other.budget_in_flight == 0 and other.pending_prefill == 0:
            return mine
        return Load(
            mine.in_flight + other.in_flight,
            mine.pending_prefill + other.pending_prefill,
            mine.long_pending + other.long_pending,
            mine.budget_in_flight + other.budget_in_flight,
            mine.long_in_flight + other.long_in_flight,
        )

    def packed(self) -> str:
        rows = (self.board.local(i) for i in range(len(self.remote)))
        return ";".join(
            f"{r.in_flight},{r.pending_prefill},{r.long_pending},{r.budget_in_flight},"
            f"{r.long_in_flight}"
            for r in rows
        )

    def merge(self, reply: Sequence[str]) -> None:
        """Every live process's rows, as Redis has them (``id, rows, id, rows, ...``)."""
        self.others = dict(zip(reply[0::2], reply[1::2], strict=True))
        self._sum()

    def update(self, process: str, packed: str) -> None:
        """One process announced its rows (pub/sub): until the next full read."""
        self.others[process] = packed
        self._sum()

    def _sum(self) -> None:
        total = [[0, 0, 0, 0, 0] for _ in self.remote]
        for packed in self.others.values():
            for i, row in enumerate(packed.split(";")[: len(total)]):
                cells = total[i]
                # a replica of the release before long_in_flight publishes four fields
                for j, value in enumerate(row.split(",")[:5]):
                    cells[j] += int(value)
        self.remote = [Load(*cells) for cells in total]

    def forget_others(self) -> None:
        self.others.clear()
        self.remote = [Load()] * len(self.remote)


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
        self.shared = SharedLoad(board, len(backends), self._announce_load)
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
        return taken >= self.leases[backend]

    def usable(self, backend: int, now: float) -> bool:
        if self._needs_lease(backend, now):
            self._ask_lease(backend)
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
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0 + 2 * self.timeout_s)
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
        script = self._script("load", _LOAD)
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
            script = self._script("open", _OPEN)
            left, openings = await self._call(
                lambda: script(
                    keys=keys, args=[left_ms, b.openings, self.probe_grace_ms, self.channel, url]
                )
            )
            self._adopt_open(backend, int(left), int(openings))
        elif b.state is br.BreakerState.CLOSED:
            script = self._script("close", _CLOSE)
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
        script = self._script("read", _READ)
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
