"""Admission through the real router in front of simulators: bounded queues, priorities,
deadlines, clients that leave, holding long work, the overload guard, honest refusals."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from ctxroute.backends.simulator import Simulator
from ctxroute.router.config import RouterConfig, parse_config

from tests.conftest import SimFactory
from tests.fixtures.router import RunningRouter

RouterFactory = Callable[..., Awaitable[RunningRouter]]
COMPLETIONS = "/v1/completions"


def config_for(sims: list[Simulator], max_in_flight: int = 4, **extra: Any) -> RouterConfig:
    return parse_config(
        {
            "pools": [
                {
                    "name": "only",
                    "model": "sim-model",
                    "max_context_tokens": 2048,
                    "default_max_tokens": 16,
                    "backends": [{"url": s.url, "max_in_flight": max_in_flight} for s in sims],
                }
            ],
            "timeouts": {"connect_s": 1.0, "ttfb_s": 10.0},
            **extra,
        },
        environ={},
    )


async def admission_status(s: aiohttp.ClientSession, router: RunningRouter) -> Any:
    async with s.get(router.url + "/status") as r:
        return (await r.json())["admission"]


async def long_in_flight(s: aiohttp.ClientSession, router: RunningRouter) -> int:
    """Long requests in flight over every backend, as /status counts them."""
    async with s.get(router.url + "/status") as r:
        pools = (await r.json())["pools"]
    return sum(b["long_in_flight"] for p in pools for b in p["backends"])


# A queue that nothing leaves for longer than the default CoDel target and interval (25 +
# 50 ms) is a standing one, and its waiters are cut back: tests of something else that
# hold a backend's only slot for a second set these, so that the cut does not interfere
PATIENT = {"short": {"deadline_s": 30, "max_wait_s": 10, "codel_target_s": 2.0,
                     "codel_interval_s": 2.0}}  # fmt: skip


def idle(status: Any) -> bool:
    return all(
        not any(p["waiting"].values()) and not any(p["admitted_in_flight"].values())
        for p in status["pools"].values()
    )


class Outcome:
    __slots__ = ("headers_s", "message", "reject", "retry_after", "status", "tier")

    def __init__(self, tier: str) -> None:
        self.tier = tier
        self.status: int | str = "cancelled"
        self.reject: str | None = None
        self.retry_after: str | None = None
        self.headers_s = 0.0
        self.message = b""


async def test_at_twice_capacity_every_request_ends_once_and_the_high_tier_is_never_shed(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    """30 s of Poisson arrivals at about twice what one backend with max_in_flight 4 can
    serve; a fifth of them high priority, the rest low, 1 in 20 clients leaving early."""
    sim = await make_sim(model="sim-model")
    router = await make_router(config_for([sim], admission={
        "max_queue": 16,
        "short": {"deadline_s": 2.0, "max_wait_s": 2.0, "codel_target_s": 0.25,
                  "codel_interval_s": 1.0},
    }))  # fmt: skip
    async with aiohttp.ClientSession() as s:
        async with s.post(sim.url + "/sim/faults", json={"slow_token_ms": 8}) as r:
            assert r.status == 200
        # measure what it serves at the cap, closed loop, to offer twice that
        body = {"prompt": "hello there", "max_tokens": 20, "ignore_eos": True, "stream": True}
        t0 = time.monotonic()

        async def closed(n: int) -> None:
            for _ in range(n):
                async with s.post(router.url + COMPLETIONS, json=body) as r:
                    assert r.status == 200
                    await r.read()

        await asyncio.gather(*(closed(5) for _ in range(4)))
        capacity = 20 / (time.monotonic() - t0)
        rate = 2 * capacity
        rng = random.Random(7)
        outcomes: list[Outcome] = []

        async def one(at: float, tier: str, leave: bool) -> None:
            out = Outcome(tier)
            outcomes.append(out)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            start = time.monotonic()
            try:
                async with asyncio.timeout(0.05 + rng.random() * 0.5 if leave else None):
                    async with s.post(router.url + COMPLETIONS, json=body,
                                      headers={"X-Priority": tier}) as r:  # fmt: skip
                        out.headers_s = time.monotonic() - start
                        text = await r.read()
                        out.status = r.status
                        out.reject = r.headers.get("x-ctxroute-reject")
                        out.retry_after = r.headers.get("Retry-After")
                        if r.status == 200:
                            assert text.endswith(b"data: [DONE]\n\n")
                        else:
                            assert b'"error"' in text
                            out.message = text
            except TimeoutError:
                out.status = "cancelled"

        tasks = []
        at = time.monotonic()
        end = at + 30.0
        while True:
            at += rng.expovariate(rate)
            if at >= end:
                break
            tier = "high" if rng.random() < 0.2 else "low"
            tasks.append(asyncio.ensure_future(one(at, tier, rng.random() < 0.05)))
        await asyncio.gather(*tasks)
        await asyncio.sleep(0.3)
        status = await admission_status(s, router)

    by = Counter((o.tier, o.status, o.reject) for o in outcomes)
    # exactly one ending each, from the allowed set
    assert all(o.status in (200, 429, 503, "cancelled") for o in outcomes), by
    for o in outcomes:
        if o.status in (429, 503):
            assert o.reject in ("queue_full", "deadline", "overload"), by
            assert o.retry_after is not None and int(o.retry_after) >= 1
        if o.status != "cancelled":
            # nobody waits past its 2 s deadline (plus a first token, 20 steps of ~10 ms)
            assert o.headers_s < 2.0 + 1.0, (o.tier, o.status, o.headers_s)
    high = [o for o in outcomes if o.tier == "high" and o.status != "cancelled"]
    low = [o for o in outcomes if o.tier == "low" and o.status != "cancelled"]
    assert high and all(o.status == 200 for o in high), [o.message for o in high if o.message]
    assert any(o.status == 429 for o in low), by  # the low tier is what is shed
    assert sum(o.status == 200 for o in low) > 0.2 * len(low), by  # and still served
    assert router.in_flight() == 0
    assert idle(status), status
    assert len(sim.core.running) + len(sim.core.waiting) == 0


async def test_a_higher_tier_takes_the_place_of_the_lowest_when_the_queue_is_full(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(config_for([sim], max_in_flight=1,
                                          admission={"max_queue": 2, **PATIENT}))  # fmt: skip
    body = {"prompt": "x", "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        async with s.post(sim.url + "/sim/faults", json={"hang_before_first_token": 1.0}) as r:
            assert r.status == 200

        async def send(tier: str) -> tuple[int, str | None, str]:
            async with s.post(router.url + COMPLETIONS, json=body,
                              headers={"X-Priority": tier}) as r:  # fmt: skip
                return r.status, r.headers.get("x-ctxroute-reject"), await r.text()

        async def until_waiting(low: int) -> None:
            for _ in range(200):
                waiting = (await admission_status(s, router))["pools"]["only"]["waiting"]
                if waiting["low"] == low:
                    break
                await asyncio.sleep(0.01)
            assert waiting == {"high": 0, "normal": 0, "low": low}

        busy = asyncio.ensure_future(send("normal"))  # takes the one slot
        await asyncio.sleep(0.1)
        lows = []
        for n in (1, 2):  # one after the other: the second is the newest
            lows.append(asyncio.ensure_future(send("low")))
            await until_waiting(n)
        high = asyncio.ensure_future(send("high"))
        evicted = await asyncio.wait_for(lows[1], 1.0)  # the newest low one
        assert evicted[:2] == (429, "queue_full")
        assert "higher priority" in evicted[2]
        # a low newcomer finds the queue full of its own tier and higher: refused itself
        assert (await send("low"))[:2] == (429, "queue_full")
        assert (await high)[0] == 200
        assert (await busy)[0] == 200
        assert (await lows[0])[0] == 200
        assert idle(await admission_status(s, router))


async def test_a_client_that_leaves_the_queue_never_reaches_a_backend(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(config_for([sim], max_in_flight=1, admission=PATIENT))
    async with aiohttp.ClientSession() as s:
        async with s.post(sim.url + "/sim/faults", json={"hang_before_first_token": 0.8}) as r:
            assert r.status == 200
        body = {"prompt": "x", "max_tokens": 2}
        busy = asyncio.ensure_future(s.post(router.url + COMPLETIONS, json=body))
        await asyncio.sleep(0.1)
        received = sim.received
        leaving = asyncio.ensure_future(s.post(router.url + COMPLETIONS, json=body))
        for _ in range(200):
            if (await admission_status(s, router))["pools"]["only"]["waiting"]["normal"] == 1:
                break
            await asyncio.sleep(0.01)
        assert (await admission_status(s, router))["pools"]["only"]["waiting"]["normal"] == 1
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
        await asyncio.sleep(0.1)
        assert idle(await admission_status(s, router)) is False  # busy is still admitted
        (await busy).release()
        await asyncio.sleep(0.2)
        assert sim.received == received  # the one that left was never sent
        assert idle(await admission_status(s, router))
        assert router.in_flight() == 0


async def test_a_queue_that_nothing_leaves_is_cut_back_before_the_slot_frees(
    sim: Simulator, make_router: RouterFactory
) -> None:
    """The default CoDel settings: the only slot is held for 1.5 s, and short requests that
    queue behind it are refused with a 429 and Retry-After as soon as the queue stands (its
    head waited past target + interval), long before the slot frees; once it is free and
    the queue is gone, a request goes through again."""
    router = await make_router(config_for([sim], max_in_flight=1))
    body = {"prompt": "x", "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        async with s.post(sim.url + "/sim/faults", json={"hang_before_first_token": 1.5}) as r:
            assert r.status == 200
        busy_done: list[float] = []

        async def busy() -> int:
            async with s.post(router.url + COMPLETIONS, json=body) as r:
                await r.read()
                busy_done.append(time.monotonic())
                return r.status

        async def queued() -> tuple[int, str | None, str | None, float]:
            async with s.post(router.url + COMPLETIONS, json=body) as r:
                await r.read()
                return (r.status, r.headers.get("x-ctxroute-reject"),
                        r.headers.get("Retry-After"), time.monotonic())  # fmt: skip

        first = asyncio.ensure_future(busy())
        await asyncio.sleep(0.1)
        waiters = []
        for _ in range(3):
            waiters.append(asyncio.ensure_future(queued()))
            await asyncio.sleep(0.01)
        answers = await asyncio.gather(*waiters)
        assert await first == 200
        for status, reject, retry_after, at in answers:
            assert (status, reject) == (429, "deadline")
            assert retry_after is not None and int(retry_after) >= 1
            assert at < busy_done[0]  # refused while the slot was still taken
        async with s.post(router.url + COMPLETIONS, json=body) as r:
            assert r.status == 200
        assert idle(await admission_status(s, router))


@pytest.mark.parametrize("hold", [True, False])
async def test_a_long_request_waits_while_it_would_leave_no_backend_clean(
    make_sim: SimFactory, make_router: RouterFactory, hold: bool
) -> None:
    """Two backends; a long prompt's prefill takes ~2 s. Two more long ones are held at
    the router (dispatching one would leave no backend free of a long prefill) while a
    short one goes straight past them; the second is dispatched once the first produced
    its first token."""
    slow = {"prefill_tokens_per_ms": 0.5, "max_num_batched_tokens": 2048, "model": "sim-model"}
    sims = [await make_sim(**slow), await make_sim(**slow)]
    config = config_for(sims, max_in_flight=8, routing={"long_prefill_tokens": 256},
                        admission={"hold_long": hold})  # fmt: skip
    router = await make_router(config)
    long_bodies = [{"prompt": f"{name} " + "word " * 1000, "max_tokens": 2, "stream": True}
                   for name in ("first", "second", "third")]  # fmt: skip
    async with aiohttp.ClientSession() as s:

        async def send(body: dict[str, Any], session: str) -> tuple[int, float]:
            """(status, when its first token came, since the start of the test)"""
            async with s.post(router.url + COMPLETIONS, json=body,
                              headers={"X-Session-ID": session}) as r:  # fmt: skip
                await r.content.readany()
                first = time.monotonic() - t0
                await r.read()
                return r.status, first

        t0 = time.monotonic()
        first = asyncio.ensure_future(send(long_bodies[0], "a"))
        await asyncio.sleep(0.2)
        second = asyncio.ensure_future(send(long_bodies[1], "b"))
        await asyncio.sleep(0.1)
        third = asyncio.ensure_future(send(long_bodies[2], "d"))
        for _ in range(100):
            await asyncio.sleep(0.02)
            pool = (await admission_status(s, router))["pools"]["only"]
            if pool["held_long"] == (2 if hold else 0) and sum(sim.received for sim in sims) == (
                1 if hold else 3
            ):
                break
        assert pool["held_long"] == (2 if hold else 0)
        assert sum(sim.received for sim in sims) == (1 if hold else 3)
        assert await long_in_flight(s, router) == (1 if hold else 3)  # the held are not
        sent = time.monotonic() - t0
        status, short_first = await send({"prompt": "hi", "max_tokens": 2, "stream": True}, "c")
        assert status == 200 and short_first - sent < 1.0  # the clean backend took it at once
        (s1, first1), (s2, first2), (s3, _) = await first, await second, await third
        assert s1 == s2 == s3 == 200
        if hold:
            # it started only after the first one's prefill, and took a whole one itself
            assert first2 > first1 + 1.5
        assert idle(await admission_status(s, router))
        assert await long_in_flight(s, router) == 0  # counted out when each one ended


async def test_the_overload_guard_sheds_the_lowest_tiers_and_keeps_the_highest(
    sim: Simulator, make_router: RouterFactory
) -> None:
    # 1 MiB of RSS: always over, so the guard climbs to shedding every tier but the highest
    overload = {"max_rss_mb": 1, "max_loop_lag_ms": None, "check_interval_s": 0.02}
    router = await make_router(config_for([sim], admission={"overload": overload}))
    body = {"prompt": "x", "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        for _ in range(100):
            if len((await admission_status(s, router))["overload"]["shed_tiers"]) == 2:
                break
            await asyncio.sleep(0.02)
        shed = (await admission_status(s, router))["overload"]["shed_tiers"]
        assert shed == ["normal", "low"]
        for tier in ("low", "normal"):
            async with s.post(router.url + COMPLETIONS, json=body,
                              headers={"X-Priority": tier}) as r:  # fmt: skip
                assert r.status == 503
                assert r.headers["x-ctxroute-reject"] == "overload"
                assert "overloaded" in (await r.json())["error"]["message"]
        async with s.post(router.url + COMPLETIONS, json=body,
                          headers={"X-Priority": "high"}) as r:  # fmt: skip
            assert r.status == 200


async def test_priority_and_timeout_inputs_are_checked(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(config_for([sim], admission={"aliases": {"0": "high"}}))
    body = {"prompt": "x", "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        for headers in ({"X-Request-Timeout": "soon"}, {"X-Request-Timeout": "-1"},
                        {"X-Request-Timeout": "nan"}):  # fmt: skip
            async with s.post(router.url + COMPLETIONS, json=body, headers=headers) as r:
                assert r.status == 400
                assert "X-Request-Timeout" in (await r.json())["error"]["message"]
        async with s.post(router.url + COMPLETIONS, json={**body, "priority": [1]}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["param"] == "priority"
        # an unknown tier is the default tier, not an error; vLLM's integer priority maps
        for extra, headers in (({}, {"X-Priority": "urgent"}), ({"priority": 0}, {})):
            async with s.post(router.url + COMPLETIONS, json={**body, **extra},
                              headers=headers) as r:  # fmt: skip
                assert r.status == 200


async def test_the_kv_capacity_is_read_from_vllms_cache_config_info(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(config_for([sim]), probes=True)
    async with aiohttp.ClientSession() as s:
        for _ in range(100):
            async with s.get(router.url + "/status") as r:
                backend = (await r.json())["pools"][0]["backends"][0]
            if backend["kv_capacity_tokens"] is not None:
                break
            await asyncio.sleep(0.05)
    assert backend["kv_capacity_tokens"] == sim.profile.num_blocks * sim.profile.block_size


async def test_a_waiter_refused_between_its_wake_up_and_its_turn_is_not_left_waiting(
    sim: Simulator, make_router: RouterFactory
) -> None:
    """Issue 21's first defect: the gate wakes a waiter (its future is set), and before
    it runs it is taken out of its queue (evicted, expired or shed). It used to find no
    room, wait again on a new future in no queue, and hang until its client left."""
    router = await make_router(config_for([sim], max_in_flight=1,
                                          admission={"max_queue": 2, **PATIENT}))  # fmt: skip
    gate = router.ctx.gate
    body = {"prompt": "x", "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        async with s.post(sim.url + "/sim/faults", json={"hang_before_first_token": 1.5}) as r:
            assert r.status == 200

        async def send(tier: str) -> tuple[int, str | None]:
            async with s.post(router.url + COMPLETIONS, json=body,
                              headers={"X-Priority": tier}) as r:  # fmt: skip
                await r.read()
                return r.status, r.headers.get("x-ctxroute-reject")

        busy = asyncio.ensure_future(send("normal"))  # takes the one slot
        await asyncio.sleep(0.1)
        low = asyncio.ensure_future(send("low"))
        for _ in range(200):
            if gate.waiting == 1:
                break
            await asyncio.sleep(0.01)
        waiter = gate.queues["only"].waiters[0]
        # in one step, as the race has it: woken to go, then shed before it runs
        waiter.handle.set_result(None)
        gate.waking["only"] = waiter
        gate.guard.level = 1  # the overload guard sheds the lowest tier
        gate.shed_queued(time.monotonic())
        gate.guard.level = 0
        status, reject = await asyncio.wait_for(low, 5.0)  # before the fix: hung until then
        assert (status, reject) == (503, "overload")
        assert gate.waiting == 0
        assert (await busy)[0] == 200
        assert idle(await admission_status(s, router))


async def test_a_tier_reserve_never_leaves_a_one_slot_pool_to_the_highest_tier_alone(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    # the shipped tiers reserve 10% for high: of one slot that is no slot at all, so normal
    # and low requests to an idle backend are served (they were refused 429 'deadline'
    # within 0.1 s, since in_flight + 1 > 0.9 x 1 always held)
    sim = await make_sim(model="sim-model")
    tiers = [{"name": "high", "reserve": 0.1}, {"name": "normal"}, {"name": "low"}]
    config = config_for([sim], max_in_flight=1,
                        admission={"tiers": tiers, "default_tier": "normal"})  # fmt: skip
    router = await make_router(config)
    body = {"prompt": "hi", "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        for tier in ("normal", "low", None, "high"):
            headers = {"X-Priority": tier} if tier else {}
            async with s.post(router.url + "/v1/completions", json=body, headers=headers) as r:
                assert r.status == 200, (tier, await r.text())
