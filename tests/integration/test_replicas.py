"""Several router replicas sharing one real redis-server, in front of simulators: what
one replica learns about a backend, every replica obeys; and Redis going away is never a
client-visible error."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from ctxroute.backends.simulator import Simulator
from ctxroute.router.config import RouterConfig, parse_config

from tests.conftest import SimFactory
from tests.fixtures.router import RunningRouter
from tests.fixtures.servers import RedisServer, run_redis_server

RouterFactory = Callable[..., Awaitable[RunningRouter]]
COMPLETIONS = "/v1/completions"
_sessions = itertools.count()


def shared(sims: list[Simulator], redis_url: str, prefix: str, **breakers: Any) -> RouterConfig:
    return parse_config(
        {
            "pools": [
                {
                    "name": "only",
                    "model": "sim-model",
                    "max_context_tokens": 1024,
                    "default_max_tokens": 16,
                    "backends": [{"url": s.url, "max_in_flight": 64} for s in sims],
                }
            ],
            "timeouts": {"connect_s": 1.0, "ttfb_s": 5.0},
            "breakers": {"consecutive_failures": 3, "open_s": 0.5, "jitter": 0.0, **breakers},
            "store": {"redis_url": redis_url, "key_prefix": prefix, "timeout_ms": 100},
        },
        environ={},
    )


async def post(s: aiohttp.ClientSession, router: RunningRouter) -> int:
    headers = {"X-Session-ID": f"s{next(_sessions)}"}
    async with s.post(router.url + COMPLETIONS, json={"prompt": "hi", "max_tokens": 2},
                      headers=headers) as r:  # fmt: skip
        await r.read()
        return r.status


async def breaker_of(s: aiohttp.ClientSession, router: RunningRouter, sim: Simulator) -> str:
    async with s.get(router.url + "/status") as r:
        body = await r.json()
    backend = next(b for b in body["pools"][0]["backends"] if b["url"] == sim.url)
    return str(backend["breaker"]["error"])


async def started(make_router: RouterFactory, config: RouterConfig, n: int) -> list[RunningRouter]:
    routers = [await make_router(config) for _ in range(n)]
    for router in routers:
        store = router.ctx.ledger.store
        for _ in range(200):
            if store.up:
                break
            await asyncio.sleep(0.01)
        assert store.up
    return routers


async def test_a_backend_failing_on_one_replica_is_open_on_every_replica(
    make_sim: SimFactory, make_router: RouterFactory, redis_server: RedisServer
) -> None:
    bad = await make_sim(model="sim-model", max_model_len=1024)
    good = await make_sim(model="sim-model", max_model_len=1024, seed=1)
    # open long enough that no replica may probe it while the test looks (on a loaded
    # machine 20 requests can outlast a 0.5 s open period, and a probe then reaches it)
    config = shared([bad, good], redis_server.url, uuid.uuid4().hex[:8], open_s=10.0,
                    max_open_s=20.0)  # fmt: skip
    a, b, c = await started(make_router, config, 3)
    async with aiohttp.ClientSession() as s:
        async with s.post(bad.url + "/sim/faults", json={"burst_5xx": 1000}) as r:
            assert r.status == 200
        for _ in range(20):  # only replica a sees the failures
            assert await post(s, a) == 200
            if await breaker_of(s, a, bad) == "open":
                break
        assert await breaker_of(s, a, bad) == "open"
        opened = time.monotonic()
        while not (await breaker_of(s, b, bad) == "open" and await breaker_of(s, c, bad) == "open"):
            assert time.monotonic() - opened < 1.0
            await asyncio.sleep(0.005)
        received = bad.received
        for router in (b, c):  # they never tried it themselves
            assert [await post(s, router) for _ in range(10)] == [200] * 10
        assert bad.received == received


async def test_three_replicas_under_load_send_the_configured_probes_and_no_more(
    make_sim: SimFactory, make_router: RouterFactory, redis_server: RedisServer
) -> None:
    sim = await make_sim(model="sim-model", max_model_len=1024)
    spare = await make_sim(model="sim-model", max_model_len=1024, seed=1)
    config = shared([sim, spare], redis_server.url, uuid.uuid4().hex[:8], half_open_probes=2,
                    open_s=0.3)  # fmt: skip
    routers = await started(make_router, config, 3)
    async with aiohttp.ClientSession() as s:
        async with s.post(sim.url + "/sim/faults", json={"burst_5xx": 1000}) as r:
            assert r.status == 200
        while await breaker_of(s, routers[0], sim) != "open":
            await post(s, routers[0])
        # the backend recovers but answers slowly: its probes stay in flight a while
        async with s.post(sim.url + "/sim/faults",
                          json={"burst_5xx": 0, "hang_before_first_token": 1.5}) as r:  # fmt: skip
            assert r.status == 200
        received = sim.received
        stop = time.monotonic() + 1.2  # past the open time, within the probes' hang

        async def load(router: RunningRouter) -> list[int]:
            out = []
            while time.monotonic() < stop:
                out.append(await post(s, router))
            return out

        results = await asyncio.gather(*(load(r) for r in routers))
        assert sim.received - received == 2  # the fleet's two probes
        assert all(status == 200 for batch in results for status in batch)


async def test_redis_paused_then_killed_for_10s_each_under_load_is_no_client_error(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    sims = [await make_sim(model="sim-model", max_model_len=1024, seed=i) for i in range(2)]
    phases: dict[str, list[float]] = {"before": [], "paused": [], "killed": [], "after": []}
    phase = "before"
    statuses: list[int] = []
    stop = False
    session = aiohttp.ClientSession()

    async def load(router: RunningRouter) -> None:
        while not stop:
            start = time.monotonic()
            statuses.append(await post(session, router))
            phases[phase].append(time.monotonic() - start)

    try:
        with run_redis_server() as first:
            port = first.port
            routers = await started(make_router, shared(sims, first.url, "outage"), 2)
            tasks = [asyncio.create_task(load(r)) for r in routers for _ in range(4)]
            await asyncio.sleep(1.0)
            phase = "paused"
            os.kill(first.proc.pid, signal.SIGSTOP)
            await asyncio.sleep(10.0)
            async with session.get(routers[0].url + "/status") as r:
                assert (await r.json())["store"] == {"kind": "redis", "up": False}
            phase = "killed"
            os.kill(first.proc.pid, signal.SIGKILL)
            os.kill(first.proc.pid, signal.SIGCONT)
            await asyncio.sleep(10.0)
        assert not any(r.ctx.ledger.store.up for r in routers)
        with run_redis_server(port):  # back where it was, empty
            back = time.monotonic()
            while not all(r.ctx.ledger.store.up for r in routers):
                assert time.monotonic() - back < 1.0, "the replicas did not reconnect within 1 s"
                await asyncio.sleep(0.01)
            phase = "after"
            await asyncio.sleep(1.0)
            stop = True
            await asyncio.gather(*tasks)
    finally:
        stop = True
        await session.close()
    assert statuses and set(statuses) == {200}  # not one client-visible error
    p99 = {name: sorted(v)[int(0.99 * (len(v) - 1))] for name, v in phases.items() if v}
    shown = [f"{name} {len(phases[name])} / {ms * 1000:.1f} ms" for name, ms in p99.items()]
    print("\nrequests and p99 by phase: " + ", ".join(shown))
    # nothing on the request path waits on Redis: an outage adds less than its timeout
    assert p99["paused"] < p99["before"] + 0.1 + 0.2
    assert p99["killed"] < p99["before"] + 0.1 + 0.2
