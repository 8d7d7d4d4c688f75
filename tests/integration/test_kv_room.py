"""KV room per request, end to end: a router in front of simulated engines with tiny KV
caches never sends more than their caches hold (router/core/kvroom.py), whatever the
burst; what does not fit waits at the router for room, and nothing is preempted."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from ctxroute.backends.simulator import Simulator

from tests.conftest import SimFactory
from tests.fixtures.router import RunningRouter
from tests.integration.test_breakers import one_pool, status_of

RouterFactory = Callable[..., Awaitable[RunningRouter]]


async def _sizes_known(s: aiohttp.ClientSession, router: RunningRouter,
                       sims: list[Simulator]) -> None:  # fmt: skip
    """Until the probe has read every engine's cache size off its /metrics."""
    for _ in range(200):
        states = [await status_of(s, router, sim) for sim in sims]
        if all(st["kv_capacity_tokens"] for st in states):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the probe never read the engines' KV cache sizes")


async def _post(s: aiohttp.ClientSession, router: RunningRouter, i: int) -> tuple[int, str]:
    # ~190 prompt tokens + 200 to decode (no early stop), no two sharing a prefix block
    body = {"prompt": f"{i:04d} " + "word " * 150, "max_tokens": 200, "ignore_eos": True,
            "stream": True}  # fmt: skip
    async with s.post(router.url + "/v1/completions", json=body,
                      headers={"X-Session-ID": f"kv-{i}"}) as r:  # fmt: skip
        await r.read()
        return r.status, r.headers.get("x-ctxroute-route", "")


async def test_a_burst_bigger_than_every_cache_waits_for_room_and_nothing_is_preempted(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    # two engines of 64 blocks of 16 (1,024 tokens each): two ~390-token budgets fit under
    # the short mark (97%), a third does not; 16 at once need three times the fleet's KV
    sims = [await make_sim(model="sim-model", max_model_len=1024, num_blocks=64, seed=i)
            for i in range(2)]  # fmt: skip
    # a standing queue of short requests is cut back to 25 ms by default (admitted means on
    # time); here the burst is allowed to wait, to see every request of it served
    patient = {"deadline_s": 30, "max_wait_s": 30, "codel_target_s": 30, "codel_interval_s": 30}
    config = one_pool(sims, probe={"interval_s": 0.05}, admission={"short": patient})
    router = await make_router(config, probes=True)
    async with aiohttp.ClientSession() as s:
        await _sizes_known(s, router, sims)
        peaks = [0.0, 0.0]
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                for i, sim in enumerate(sims):
                    peaks[i] = max(peaks[i], sim.core.kv_usage())
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        answers = await asyncio.gather(*(_post(s, router, i) for i in range(16)))
        done.set()
        await watcher
    assert [status for status, _ in answers] == [200] * 16
    assert [sim.core.counters.preemptions for sim in sims] == [0, 0]
    assert max(peaks) <= 0.97, peaks
    # they were held at the router, not queued in the engines
    held = [int(route.split("held=")[1].split("ms")[0]) for _, route in answers]
    assert sum(1 for h in held if h > 0) >= 8, held
    assert all(sim.core.pool.used == 0 for sim in sims)


async def test_long_work_stops_at_the_long_mark_and_short_work_still_gets_in(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    """One engine whose cache is 90% taken by work the router does not account for (the
    fault makes /metrics say so): long requests do not go there, short ones do."""
    sim = await make_sim(model="sim-model", max_model_len=1024, num_blocks=256)  # 4,096
    router = await make_router(one_pool([sim], probe={"interval_s": 0.05}), probes=True)
    async with aiohttp.ClientSession() as s:
        await _sizes_known(s, router, [sim])
        async with s.post(sim.url + "/sim/faults", json={"kv_usage_floor": 0.9}) as r:
            assert r.status == 200
        for _ in range(200):
            st: dict[str, Any] = await status_of(s, router, sim)
            if st["kv_unaccounted_tokens"] >= 3_600:
                break
            await asyncio.sleep(0.02)
        # short (6 + 8 tokens): room under 97%
        short = {"prompt": "hello there", "max_tokens": 8}
        async with s.post(router.url + "/v1/completions", json=short) as r:
            assert r.status == 200
        # long (~300 tokens, over 88%): waits for room, and is refused at its deadline
        long = {"prompt": "word " * 300, "max_tokens": 8}
        async with s.post(router.url + "/v1/completions", json=long,
                          headers={"X-Request-Timeout": "0.3"}) as r:  # fmt: skip
            body = await r.json()
            assert r.status == 429, body
            assert r.headers["x-ctxroute-reject"] == "deadline"
        async with s.post(sim.url + "/sim/faults", json={"kv_usage_floor": 0.0}) as r:
            assert r.status == 200
        for _ in range(200):
            if (await status_of(s, router, sim))["kv_unaccounted_tokens"] == 0:
                break
            await asyncio.sleep(0.02)
        async with s.post(router.url + "/v1/completions", json=long) as r:
            assert r.status == 200


async def test_without_admission_a_request_with_no_room_anywhere_is_answered_503_saying_why(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    sim = await make_sim(model="sim-model", max_model_len=1024, num_blocks=256)  # 4,096
    config = one_pool([sim], probe={"interval_s": 0.05}, admission={"enabled": False})
    router = await make_router(config, probes=True)
    async with aiohttp.ClientSession() as s:
        await _sizes_known(s, router, [sim])
        async with s.post(sim.url + "/sim/faults", json={"kv_usage_floor": 0.9}) as r:
            assert r.status == 200
        for _ in range(200):
            if (await status_of(s, router, sim))["kv_unaccounted_tokens"] >= 3_600:
                break
            await asyncio.sleep(0.02)
        received = sim.received
        long = {"prompt": "word " * 300, "max_tokens": 8}
        async with s.post(router.url + "/v1/completions", json=long) as r:
            body = await r.json()
            assert r.status == 503 and r.headers["x-ctxroute-reject"] == "no_backend"
        assert "no KV room for its budget" in body["error"]["message"], body
        assert sim.received == received  # never sent: the engine would have had to preempt
