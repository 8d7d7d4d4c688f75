"""The store: one contract suite for the in-process and the Redis implementation, then
what only the Redis store does (replicas agreeing, outages, a flushed Redis), all against
a real redis-server started by the fixtures."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from ctxroute.router.config import StoreConfig
from ctxroute.router.core import breaker as br
from ctxroute.router.model import Backend
from ctxroute.router.store import Store
from ctxroute.router.store.loadboard import LoadBoard
from ctxroute.router.store.memory import MemoryStore
from ctxroute.router.store.redis import RedisStore

from tests.fixtures.servers import RedisServer, run_redis_server

SETTINGS = br.BreakerSettings(consecutive_failures=3, open_s=0.3, jitter=0.0, max_open_s=2.0,
                              half_open_probes=1)  # fmt: skip


def fleet(n: int) -> list[Backend]:
    return [Backend(i, f"http://10.0.0.{i}:8000", "p", "m", f"10.0.0.{i}", 8000, 64)
            for i in range(n)]  # fmt: skip


StoreFactory = Callable[..., Awaitable[Store]]


async def until(check: Callable[[], bool], within: float = 3.0, step: float = 0.005) -> float:
    """Wait until ``check()``; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            raise AssertionError(f"not true after {within}s")
        await asyncio.sleep(step)
    return time.monotonic() - start


def open_it(store: Store, backend: int = 0) -> None:
    for _ in range(SETTINGS.consecutive_failures):
        allowed, probe = store.allow(backend, time.monotonic())
        assert allowed
        store.record(backend, True, probe, time.monotonic())


@pytest.fixture
async def make_redis_store(redis_server: RedisServer) -> AsyncIterator[StoreFactory]:
    started: list[RedisStore] = []

    async def factory(backends: int = 2, prefix: str | None = None, url: str | None = None,
                      settings: br.BreakerSettings = SETTINGS, **config: Any) -> Store:  # fmt: skip
        store = RedisStore(
            fleet(backends), settings, LoadBoard(backends),
            StoreConfig(redis_url=url or redis_server.url, key_prefix=prefix or "t",
                        **config),
        )  # fmt: skip
        await store.start()
        started.append(store)
        await until(lambda: store.up)
        return store

    yield factory
    for store in started:
        await store.close()


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest,
                     make_redis_store: StoreFactory) -> StoreFactory:  # fmt: skip
    if request.param == "memory":

        async def memory(backends: int = 2, **_: Any) -> Store:
            return MemoryStore(fleet(backends), SETTINGS, LoadBoard(backends))

        return memory
    prefix = uuid.uuid4().hex[:8]

    async def redis(backends: int = 2, **kw: Any) -> Store:
        return await make_redis_store(backends, prefix=prefix, **kw)

    return redis


async def take_probe(store: Store, backend: int = 0, within: float = 2.0) -> bool:
    """Ask until a probe is granted (the Redis store first takes a lease, in the background)."""
    result = False

    def granted() -> bool:
        nonlocal result
        allowed, probe = store.allow(backend, time.monotonic())
        result = probe
        return allowed

    await until(granted, within)
    return result


# ---- the contract: both stores --------------------------------------------------------------


async def test_failures_open_a_breaker_and_it_keeps_requests_away(make_store: StoreFactory) -> None:
    store = await make_store()
    assert store.usable(0, time.monotonic())
    open_it(store)
    now = time.monotonic()
    assert store.breaker(0).state is br.BreakerState.OPEN
    assert not store.usable(0, now) and store.allow(0, now) == (False, False)
    assert store.usable(1, now)  # the other backend is untouched
    wait = store.retry_after(fleet(2), now)
    assert wait is not None and 0.2 < wait <= 0.3


async def test_after_the_open_time_one_probe_goes_and_its_success_closes(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    open_it(store)
    await asyncio.sleep(0.35)
    assert await take_probe(store)
    assert store.allow(0, time.monotonic()) == (False, False)  # one probe only
    store.record(0, False, True, time.monotonic())
    assert store.breaker(0).state is br.BreakerState.CLOSED
    assert store.allow(0, time.monotonic()) == (True, False)


async def test_a_neutral_end_gives_the_probe_slot_back(make_store: StoreFactory) -> None:
    store = await make_store()
    open_it(store)
    await asyncio.sleep(0.35)
    assert await take_probe(store)
    store.record(0, None, True, time.monotonic())  # the client left: neither
    assert store.breaker(0).state is br.BreakerState.HALF_OPEN
    assert await take_probe(store)


async def test_backpressure_and_neutral_outcomes_never_open(make_store: StoreFactory) -> None:
    store = await make_store()
    for _ in range(50):
        _, probe = store.allow(0, time.monotonic())
        store.record(0, None, probe, time.monotonic())
    assert store.breaker(0).state is br.BreakerState.CLOSED


async def test_drain_and_memory_pressure_keep_new_requests_away(make_store: StoreFactory) -> None:
    store = await make_store()
    await store.set_drained(0, True)
    store.set_memory(1, True)
    now = time.monotonic()
    assert store.drained(0) and not store.usable(0, now) and store.allow(0, now)[0] is False
    assert store.memory_open(1) and not store.usable(1, now)
    assert store.breaker(0).state is br.BreakerState.CLOSED  # neither is a failure
    await store.set_drained(0, False)
    store.set_memory(1, False)
    assert store.usable(0, now) and store.usable(1, now)


async def test_the_load_view_counts_this_process(make_store: StoreFactory) -> None:
    store = await make_store()
    store.load.add(1, 2, 300, 1, 900)
    assert store.load.local(1).in_flight == 2
    assert store.load.fleet(1).budget_in_flight == 900
    store.load.add(1, -2, -300, -1, -900)
    assert store.load.fleet(1).in_flight == 0


# ---- replicas through Redis ---------------------------------------------------------------


async def test_an_opening_reaches_every_replica_at_once(make_redis_store: StoreFactory) -> None:
    prefix = uuid.uuid4().hex[:8]
    trials = 100
    a, b, c = [await make_redis_store(trials, prefix=prefix) for _ in range(3)]
    delays = []
    for i in range(trials):
        open_it(a, i)
        start = time.monotonic()
        await until(lambda i=i: b.breaker(i).state is br.BreakerState.OPEN
                    and c.breaker(i).state is br.BreakerState.OPEN, within=1.0,
                    step=0.0005)  # fmt: skip
        delays.append(time.monotonic() - start)
    delays.sort()
    p50, p99 = statistics.median(delays), delays[int(0.99 * (len(delays) - 1))]
    print(f"\nbreaker propagation over {trials} trials: p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms")  # fmt: skip
    assert delays[-1] < 1.0


async def test_half_open_admits_the_configured_probes_across_the_fleet(
    make_redis_store: StoreFactory,
) -> None:
    prefix = uuid.uuid4().hex[:8]
    two_probes = br.BreakerSettings(consecutive_failures=3, open_s=0.2, jitter=0.0,
                                    half_open_probes=2)  # fmt: skip
    stores = [await make_redis_store(1, prefix=prefix, settings=two_probes) for _ in range(3)]
    open_it(stores[0])
    await until(lambda: all(s.breaker(0).state is br.BreakerState.OPEN for s in stores))
    await asyncio.sleep(0.25)
    granted = 0
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # every replica asks, over and over, under load
        for s in stores:
            allowed, probe = s.allow(0, time.monotonic())
            if allowed:
                assert probe
                granted += 1
        await asyncio.sleep(0.002)
    assert granted == 2


async def test_replicas_see_each_others_load_and_a_dead_ones_share_vanishes(
    make_redis_store: StoreFactory,
) -> None:
    prefix = uuid.uuid4().hex[:8]
    a = await make_redis_store(2, prefix=prefix)
    b = await make_redis_store(2, prefix=prefix)
    a.load.add(1, 3, 4000, 1, 5000)
    await until(lambda: b.load.fleet(1).in_flight == 3, within=1.0)
    assert b.load.local(1).in_flight == 0 and b.load.fleet(1).pending_prefill == 4000
    for task in a._tasks:  # type: ignore[attr-defined]  # the process dies: no goodbye
        task.cancel()
    took = await until(lambda: b.load.fleet(1).in_flight == 0, within=3.0)
    assert took < 2.0


async def test_a_long_prefill_is_announced_at_once_not_at_the_next_publication(
    make_redis_store: StoreFactory,
) -> None:
    prefix = uuid.uuid4().hex[:8]
    a = await make_redis_store(2, prefix=prefix, load_publish_ms=2000.0)
    b = await make_redis_store(2, prefix=prefix, load_publish_ms=2000.0)
    await asyncio.sleep(0.1)
    a.load.add(0, 1, 9000, 1, 9500)  # a long request dispatched on replica a
    took = await until(lambda: b.load.fleet(0).long_pending == 1, within=1.0, step=0.001)
    print(f"\nlong prefill seen by the other replica after {took * 1000:.1f} ms")
    assert took < 0.5  # the periodic publication is 2 s away
    a.load.add(0, 0, -9000, -1, 0)  # its first token: no longer pending
    await until(lambda: b.load.fleet(0).long_pending == 0, within=0.5, step=0.001)


async def test_a_redis_outage_leaves_every_replica_serving_and_they_reagree_after(
    make_redis_store: StoreFactory,
) -> None:
    with run_redis_server() as own:
        a = await make_redis_store(2, url=own.url)
        b = await make_redis_store(2, url=own.url)
        os.kill(own.proc.pid, signal.SIGSTOP)  # paused: every call times out
        try:
            await until(lambda: not a.up and not b.up, within=2.0)
            start = time.monotonic()
            open_it(a)  # the request path goes on, on local state, without waiting
            assert time.monotonic() - start < 0.01
            assert a.breaker(0).state is br.BreakerState.OPEN
            assert b.breaker(0).state is br.BreakerState.CLOSED  # b cannot know yet
            assert b.allow(1, time.monotonic()) == (True, False)
        finally:
            os.kill(own.proc.pid, signal.SIGCONT)
        took = await until(lambda: a.up and b.up and b.breaker(0).state is br.BreakerState.OPEN,
                           within=3.0)  # fmt: skip
        print(f"\nre-agreed {took * 1000:.0f} ms after redis came back")
        assert took < 2.5


async def test_a_flushed_redis_is_rebuilt_from_what_the_replicas_know(
    make_redis_store: StoreFactory, redis_server: RedisServer
) -> None:
    prefix = uuid.uuid4().hex[:8]
    a = await make_redis_store(2, prefix=prefix, settings=br.BreakerSettings(
        consecutive_failures=3, open_s=5.0, jitter=0.0))  # fmt: skip
    open_it(a)
    await asyncio.sleep(0.1)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    late = await make_redis_store(2, prefix=prefix)  # knows only what Redis has
    await until(lambda: late.breaker(0).state is br.BreakerState.OPEN, within=3.0)
    assert a.up and late.up


async def test_replicas_with_different_backend_lists_add_load_to_the_right_backend(
    redis_server: RedisServer,
) -> None:
    # a rolling config change: replica b lists the same two backends the other way round
    # and a third one; load is matched by URL, never by position
    prefix = uuid.uuid4().hex[:8]
    config = StoreConfig(redis_url=redis_server.url, key_prefix=prefix)
    first, second = fleet(2)
    third = replace(first, index=2, url="http://127.0.0.1:9", host="127.0.0.1", port=9)
    reordered = [replace(second, index=0), replace(first, index=1), third]
    a = RedisStore(fleet(2), SETTINGS, LoadBoard(2), config)
    b = RedisStore(reordered, SETTINGS, LoadBoard(3), config)
    for s in (a, b):
        await s.start()
    try:
        await until(lambda: a.up and b.up)
        a.load.add(0, 2, 100, 0, 500)  # on `first`
        b.load.add(2, 7, 0, 0, 70)  # on a backend a does not have
        await until(lambda: b.load.fleet(1).in_flight == 2, within=2.0)
        assert b.load.fleet(0).in_flight == 0  # not on `second`, where position 0 points
        await until(lambda: a.load.fleet(0).in_flight == 2 and a._dirty == set(), within=2.0)  # type: ignore[attr-defined]
        assert a.load.fleet(1).in_flight == 0
    finally:
        for s in (a, b):
            await s.close()


async def test_reading_the_state_never_takes_a_probe_lease(make_redis_store: StoreFactory) -> None:
    # /status and /metrics read usable(): a replica only scraped must not hold the lease
    # the one with a request needs
    prefix = uuid.uuid4().hex[:8]
    scraped = await make_redis_store(1, prefix=prefix)
    serving = await make_redis_store(1, prefix=prefix)
    open_it(serving)
    await until(lambda: scraped.breaker(0).state is br.BreakerState.OPEN)
    await asyncio.sleep(SETTINGS.open_s + 0.05)
    for _ in range(50):
        assert not scraped.looks_usable(0, time.monotonic())
        await asyncio.sleep(0.005)
    assert await take_probe(serving)  # the lease was there to take


async def test_a_lease_this_process_never_used_expires_here_as_in_redis(
    make_redis_store: StoreFactory,
) -> None:
    store = await make_redis_store(1, prefix=uuid.uuid4().hex[:8])
    open_it(store)
    await asyncio.sleep(SETTINGS.open_s + 0.05)
    await store._take_lease(0)  # type: ignore[attr-defined]  # taken, never used
    assert store.leases[0] == 1  # type: ignore[attr-defined]
    # once it has expired in Redis (px) it is no longer this process's: a probe now would
    # go beside another replica's; it asks for a lease again instead
    store.lease_until[0] = time.monotonic() - 0.001  # type: ignore[attr-defined]
    assert store.allow(0, time.monotonic()) == (False, False)


def test_a_redis_cluster_url_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="Redis Cluster is not supported"):
        StoreConfig(redis_url="redis+cluster://node:6379")
