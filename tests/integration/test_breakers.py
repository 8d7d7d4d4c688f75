"""Breakers, memory pressure and drains in one router, over loopback, in front of
simulators with injected faults (the in-process store; the Redis store has its own file)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from ctxroute.backends.simulator import Simulator
from ctxroute.router.config import ConfigError, RouterConfig, parse_config
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SimFactory
from tests.fixtures.router import ADMIN, RunningRouter

RouterFactory = Callable[..., Awaitable[RunningRouter]]
COMPLETIONS = "/v1/completions"
BODY = {"prompt": "hello there", "max_tokens": 2}
_sessions = itertools.count()


def one_pool(sims: list[Simulator], window: int = 1024, max_in_flight: int = 64,
             **extra: Any) -> RouterConfig:  # fmt: skip
    breakers = {"consecutive_failures": 3, "open_s": 0.4, "jitter": 0.0, "max_open_s": 2.0}
    breakers.update(extra.pop("breakers", {}))
    return parse_config(
        {
            "pools": [
                {
                    "name": "only",
                    "model": "sim-model",
                    "max_context_tokens": window,
                    "default_max_tokens": 16,
                    "backends": [{"url": s.url, "max_in_flight": max_in_flight} for s in sims],
                }
            ],
            "timeouts": {"connect_s": 1.0, "ttfb_s": 5.0},
            "breakers": breakers,
            **extra,
        },
        environ={},
    )


async def faults(s: aiohttp.ClientSession, sim: Simulator, **values: object) -> None:
    async with s.post(sim.url + "/sim/faults", json=values) as r:
        assert r.status == 200, await r.text()


async def status_of(s: aiohttp.ClientSession, router: RunningRouter, sim: Simulator) -> Any:
    async with s.get(router.url + "/status") as r:
        body = await r.json()
    return next(b for p in body["pools"] for b in p["backends"] if b["url"] == sim.url)


async def owner_notes(s: aiohttp.ClientSession, router: RunningRouter, n: int,
                      body: dict[str, Any]) -> set[str]:  # fmt: skip
    """The ``owner=`` parts of the route headers of ``n`` requests with new sessions (the
    hash spreads them over the backends): "yes", or "no (the rule that kept it)"."""
    notes = set()
    for _ in range(n):
        session = {"X-Session-ID": f"s{next(_sessions)}"}
        async with s.post(router.url + COMPLETIONS, json=body, headers=session) as r:
            assert r.status == 200
            notes.add(r.headers["x-ctxroute-route"].split("owner=")[1].split(";")[0])
    return notes


async def send(s: aiohttp.ClientSession, router: RunningRouter, n: int = 1,
               body: dict[str, Any] | None = None) -> list[int]:  # fmt: skip
    statuses = []
    for _ in range(n):
        # a new session each time: the hash spreads them over the backends
        session = {"X-Session-ID": f"s{next(_sessions)}"}
        async with s.post(router.url + COMPLETIONS, json=body or BODY, headers=session) as r:
            await r.read()
            statuses.append(r.status)
    return statuses


@pytest.fixture
async def two(make_sim: SimFactory) -> list[Simulator]:
    return [await make_sim(model="sim-model", max_model_len=1024, seed=i) for i in range(2)]


async def test_a_failing_backend_is_opened_and_the_fleet_routes_around_it(
    two: list[Simulator], make_router: RouterFactory
) -> None:
    bad, good = two
    router = await make_router(one_pool(two))
    async with aiohttp.ClientSession() as s:
        await faults(s, bad, burst_5xx=1000)
        # every 5xx is retried on the other backend: the client sees no error
        assert set(await send(s, router, 20)) == {200}
        assert (await status_of(s, router, bad))["breaker"]["error"] == "open"
        received = bad.received
        assert set(await send(s, router, 20)) == {200}
        assert bad.received == received  # an open breaker takes nothing
        assert (await status_of(s, router, good))["breaker"]["error"] == "closed"


async def test_with_every_backend_open_the_answer_is_a_fast_503_naming_why(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(one_pool([sim], breakers={"open_s": 3.0}))
    async with aiohttp.ClientSession() as s:
        await faults(s, sim, burst_5xx=1000)
        await send(s, router, 3)
        received = sim.received
        async with s.post(router.url + COMPLETIONS, json=BODY) as r:
            assert r.status == 503
            assert r.headers["x-ctxroute-reject"] == "no_backend"
            assert 1 <= int(r.headers["Retry-After"]) <= 3  # until the probe may go
            message = (await r.json())["error"]["message"]
        assert "breaker open" in message and sim.url in message
        assert sim.received == received


async def test_half_open_lets_one_probe_through_then_closes_on_its_success(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(one_pool([sim]))
    async with aiohttp.ClientSession() as s:
        await faults(s, sim, burst_5xx=3)
        await send(s, router, 3)
        assert (await status_of(s, router, sim))["breaker"]["error"] == "open"
        await asyncio.sleep(0.5)  # past the open time
        await faults(s, sim, hang_before_first_token=0.5)  # the probe stays in flight a while
        received = sim.received
        probe = asyncio.ensure_future(send(s, router))
        await asyncio.sleep(0.1)
        others = await asyncio.gather(*(send(s, router) for _ in range(10)))
        assert [st for batch in others for st in batch] == [503] * 10
        assert sim.received == received + 1  # the probe, and nothing else
        assert await probe == [200]
        assert (await status_of(s, router, sim))["breaker"]["error"] == "closed"
        await faults(s, sim, hang_before_first_token=0.0)
        assert await send(s, router, 5) == [200] * 5
        # the breaker's own count went back to 0 on closing (its backoff's exponent); the
        # metric is a counter and does not
        assert (await status_of(s, router, sim))["breaker"]["openings"] == 0
        async with s.get(router.url + "/metrics") as r:
            text = await r.text()
        line = f'ctxroute_breaker_openings_total{{backend="{sim.url}",pool="only"}} 1.0'
        assert line in text, [t for t in text.splitlines() if "openings" in t]


async def test_a_failed_probe_reopens_it_for_longer(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(one_pool([sim]))
    async with aiohttp.ClientSession() as s:
        await faults(s, sim, burst_5xx=1000)
        await send(s, router, 3)
        first = (await status_of(s, router, sim))["breaker"]
        await asyncio.sleep(0.5)
        assert await send(s, router) == [503]  # the probe failed (5xx): open again
        again = (await status_of(s, router, sim))["breaker"]
        assert again["error"] == "open" and again["openings"] == first["openings"] + 1
        assert again["probe_in_s"] > 0.5  # 0.4 s x 2


async def test_backpressure_and_the_clients_own_faults_never_open_a_breaker(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    # the router thinks the window is 8192, the engine holds 1024: vLLM's context-length
    # 400s come back; and 429s (backpressure); and clients that leave mid-request
    sim = await make_sim(model="sim-model", max_model_len=1024)
    router = await make_router(one_pool([sim], window=8192))
    async with aiohttp.ClientSession() as s:
        too_long = {"prompt": "word " * 1500, "max_tokens": 8}
        assert set(await send(s, router, 8, too_long)) == {400}
        await faults(s, sim, burst_5xx=8, burst_status=503)
        assert set(await send(s, router, 8)) == {503}
        await faults(s, sim, hang_before_first_token=5.0)
        for _ in range(8):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await send(s, router)
        await faults(s, sim, hang_before_first_token=0.0)
        assert (await status_of(s, router, sim))["breaker"]["error"] == "closed"
        assert await send(s, router, 3) == [200] * 3


async def test_usage_vllm_runs_at_keeps_long_work_away_and_the_high_mark_opens_the_breaker(
    two: list[Simulator], make_router: RouterFactory
) -> None:
    full, other = two
    config = one_pool(two, probe={"interval_s": 0.05, "timeout_s": 1.0})
    router = await make_router(config, probes=True)
    async with aiohttp.ClientSession() as s:

        async def until(check: Any) -> dict[str, Any]:
            for _ in range(100):
                st = await status_of(s, router, full)
                if check(st):
                    return st  # type: ignore[no-any-return]
                await asyncio.sleep(0.02)
            raise AssertionError(f"never happened: {st}")

        # 90% full is how vLLM runs: no breaker; the engine has room for short work only
        await faults(s, full, kv_usage_floor=0.9)
        st = await until(lambda st: st["kv_unaccounted_tokens"] > 0)
        assert st["breaker"]["memory"] == "closed" and st["usable"]
        assert st["kept_from"] == ["no KV room for long work (under the long mark)"]
        assert st["kv_room_tokens"]["long"] <= 0 < st["kv_room_tokens"]["short"]
        before = full.received, other.received
        assert set(await send(s, router, 20)) == {200}  # short: both engines take them
        assert full.received > before[0] and other.received > before[1]
        # long work (a third of the 4,096-token cache) goes only where it fits
        long_body = {"prompt": "word " * 300, "max_tokens": 4}
        received = full.received
        assert await owner_notes(s, router, 12, long_body) == {"yes", "no (no KV room)"}
        assert full.received == received
        # at the high mark the breaker opens, and says why
        await faults(s, full, kv_usage_floor=0.97)
        st = await until(lambda st: st["breaker"]["memory"] == "open")
        assert st["breaker"]["memory_why"] == "KV cache usage at the high mark"
        assert st["kept_from"][0].startswith("memory breaker: KV cache usage at the high mark")
        received = full.received
        assert set(await send(s, router, 10)) == {200}
        assert full.received == received
        # the route header says which rule kept the hash owner from a request
        notes = await owner_notes(s, router, 20, BODY)
        assert notes == {"yes", "no (memory breaker open: KV cache usage at the high mark)"}
        # under the high mark, over close_below (0.9 x 0.97): recovering, still open
        await faults(s, full, kv_usage_floor=0.9)
        st = await until(lambda st: st["breaker"]["memory_why"] is not None
                         and st["breaker"]["memory_why"].startswith("recovering"))  # fmt: skip
        assert st["breaker"]["memory"] == "open"
        await faults(s, full, kv_usage_floor=0.0)
        await until(lambda st: st["breaker"]["memory"] == "closed" and not st["kept_from"])
        assert set(await send(s, router, 10)) == {200}
        assert full.received > received


async def test_an_engine_that_preempts_is_opened_for_distress(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    """A router told the cache is ten times its size overcommits it: the engine preempts,
    and the memory breaker opens on the preemptions (not on usage), then closes."""
    sim = await make_sim(model="sim-model", max_model_len=1024, num_blocks=64)  # 1,024 tokens
    config = one_pool([sim], probe={"interval_s": 0.05, "timeout_s": 1.0})
    data = config.model_dump(mode="json", exclude_none=True)
    data["pools"][0]["backends"][0]["kv_tokens"] = 10_240
    data["breakers"]["memory"] = {"open_at": 1.0, "queue_growth_at": None}
    router = await make_router(RouterConfig.model_validate(data), probes=True)
    async with aiohttp.ClientSession() as s:
        # ~350 tokens each at the end, no two sharing a prefix block: 8 need 2.7x the cache
        bodies = [{"prompt": f"{i:04d} " + "word " * 150, "max_tokens": 200, "ignore_eos": True}
                  for i in range(8)]  # fmt: skip
        statuses = await asyncio.gather(*(send(s, router, 1, body) for body in bodies))
        assert {x for st in statuses for x in st} == {200}
        assert sim.core.counters.preemptions > 0
        # the breaker opened on them (it may have closed again since: the burst is over)
        openings: dict[str, float] = {}
        for _ in range(100):
            async with s.get(router.url + "/metrics") as r:
                text = await r.text()
            openings = {
                sample.labels["reason"]: sample.value
                for family in text_string_to_metric_families(text)
                if family.name == "ctxroute_memory_breaker_openings"
                for sample in family.samples
            }
            if openings.get("preempting"):
                break
            await asyncio.sleep(0.02)
        assert openings["preempting"] >= 1, openings
        # the rules turned off here never fire ("full", at usage 1.0, may: a cache that
        # overcommitted can be read entirely taken)
        assert openings["queue_growing"] == openings["queue_over"] == 0, openings


async def test_a_drained_backend_finishes_its_requests_and_gets_no_new_ones(
    two: list[Simulator], make_router: RouterFactory
) -> None:
    drained = two[0]
    router = await make_router(one_pool(two))
    async with aiohttp.ClientSession() as s:
        await faults(s, drained, slow_token_ms=30)
        # a stream in flight on the backend about to be drained
        body = {"prompt": "hi", "max_tokens": 20, "stream": True}
        for i in range(40):  # find a session the hash puts on it
            session = {"X-Session-ID": f"drain-{i}"}
            stream = await s.post(router.url + COMPLETIONS, json=body, headers=session)
            if stream.headers["x-ctxroute-backend"] == drained.url:
                break
            await stream.read()
        else:
            pytest.fail("no request landed on the backend to drain")
        async with s.post(
            router.url + "/admin/drain", json={"backend": drained.url}, headers=ADMIN
        ) as r:
            assert r.status == 200
            assert (await r.json())["drained"] is True
        raw = await stream.read()
        assert raw.rstrip().endswith(b"data: [DONE]")  # it finished
        received = drained.received
        assert set(await send(s, router, 10)) == {200}
        assert drained.received == received
        async with s.post(
            router.url + "/admin/undrain", json={"backend": drained.url}, headers=ADMIN
        ) as r:
            assert r.status == 200 and (await r.json())["drained"] is False


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{", 400, "not valid JSON"),
        (b'{"backend": 7}', 400, "expected"),
        (b'{"backend": "http://10.9.9.9:1"}', 404, "no configured backend"),
    ],
)
async def test_admin_errors_are_clear(sim: Simulator, make_router: RouterFactory, body: bytes,
                                      status: int, words: str) -> None:  # fmt: skip
    router = await make_router(one_pool([sim]))
    async with aiohttp.ClientSession() as s:
        async with s.post(
            router.url + "/admin/drain",
            data=body,
            headers={**ADMIN, "Content-Type": "application/json"},
        ) as r:
            assert r.status == status
            assert words in (await r.json())["error"]["message"]
        assert await send(s, router) == [200]  # and it keeps serving


def fallback_config(big: Simulator, small: Simulator, fallback: bool = True) -> RouterConfig:
    pools = [
        {"name": name, "model": model, "max_context_tokens": 1024, "default_max_tokens": 16,
         "backends": [{"url": sim.url, "max_in_flight": 64}]}
        for name, model, sim in (("big", "big-model", big), ("small", "small-model", small))
    ]  # fmt: skip
    return parse_config(
        {
            "pools": pools,
            "breakers": {"consecutive_failures": 3, "open_s": 5.0, "jitter": 0.0},
            "fallback": {"big-model": "small-model"} if fallback else {},
        },
        environ={},
    )


@pytest.mark.parametrize("configured", [True, False])
async def test_the_fallback_model_answers_only_while_the_big_one_is_unusable(
    make_sim: SimFactory, make_router: RouterFactory, configured: bool
) -> None:
    big = await make_sim(model="big-model", max_model_len=1024)
    small = await make_sim(model="small-model", max_model_len=1024)
    router = await make_router(fallback_config(big, small, configured))
    body = {"model": "big-model", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2}  # fmt: skip
    async with aiohttp.ClientSession() as s:

        async def ask() -> aiohttp.ClientResponse:
            async with s.post(router.url + "/v1/chat/completions", json=body) as r:
                await r.read()
                return r

        healthy = await ask()
        assert healthy.status == 200 and "x-ctxroute-fallback" not in healthy.headers
        await faults(s, big, burst_5xx=1000)
        for _ in range(3):
            await ask()
        assert (await status_of(s, router, big))["breaker"]["error"] == "open"
        received = small.received
        async with s.post(router.url + "/v1/chat/completions", json=body) as r:
            answer = await r.json()
            if configured:
                assert r.status == 200
                assert r.headers["x-ctxroute-fallback"] == "big-model->small-model"
                assert r.headers["x-ctxroute-backend"] == small.url
                assert answer["model"] == "small-model"  # the body said so to the small one
                assert small.received == received + 1
            else:
                assert r.status == 503 and r.headers["x-ctxroute-reject"] == "no_backend"
                assert small.received == received


async def test_a_model_whose_backends_are_merely_full_waits_for_them_not_the_fallback(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    big = await make_sim(model="big-model", max_model_len=1024)
    small = await make_sim(model="small-model", max_model_len=1024)
    config = fallback_config(big, small)
    pools = [p.model_copy(update={"backends": tuple(b.model_copy(update={"max_in_flight": 1})
                                                    for b in p.backends)})
             for p in config.pools]  # fmt: skip
    router = await make_router(config.model_copy(update={"pools": tuple(pools)}))
    body = {"model": "big-model", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2}  # fmt: skip
    async with aiohttp.ClientSession() as s:
        # the one slot busy for 40 ms (a longer wait would be shed by the short class's
        # CoDel, which is a 429, not the fallback either)
        await faults(s, big, hang_before_first_token=0.04)

        async def ask() -> tuple[int, str]:
            async with s.post(router.url + "/v1/chat/completions", json=body) as r:
                await r.read()
                return r.status, r.headers.get("x-ctxroute-backend", "")

        answers = await asyncio.gather(ask(), ask())
    # the second waited for the big model's slot: full is not unusable
    assert answers == [(200, big.url)] * 2
    assert small.received == 0


def test_a_fallback_must_name_served_models() -> None:
    pool = {"name": "a", "model": "m", "max_context_tokens": 1000,
            "backends": [{"url": "http://x:1"}]}  # fmt: skip
    with pytest.raises(ConfigError, match="no pool serves tiny"):
        parse_config({"pools": [pool], "fallback": {"m": "tiny"}}, environ={})


async def test_a_refusal_speaks_only_of_the_backends_that_could_hold_the_request(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    short = await make_sim(model="sim-model", max_model_len=1024)
    long = await make_sim(model="sim-model", max_model_len=8192, num_blocks=2048)
    pools = [
        {"name": name, "model": "sim-model", "max_context_tokens": sim.profile.max_model_len,
         "default_max_tokens": 16, "backends": [{"url": sim.url, "max_in_flight": 64}]}
        for name, sim in (("short", short), ("long", long))
    ]  # fmt: skip
    config = parse_config(
        {"pools": pools, "breakers": {"consecutive_failures": 3, "open_s": 3.0, "jitter": 0.0}},
        environ={},
    )
    router = await make_router(config)
    document = {"prompt": "abcd" * 1500, "max_tokens": 4}  # only the long pool holds it
    async with aiohttp.ClientSession() as s:
        await faults(s, long, burst_5xx=1000)
        await send(s, router, 3, document)
        async with s.post(router.url + COMPLETIONS, json=document) as r:
            assert r.status == 503
            assert 1 <= int(r.headers["Retry-After"]) <= 3
            message = (await r.json())["error"]["message"]
        assert long.url in message and "breaker open" in message
        assert short.url not in message  # its window is too small: no reason to name it
        assert await send(s, router) == [200]  # short requests still go to the short pool


async def test_a_stream_answered_with_json_is_relayed_as_json_and_blames_no_one(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    # a backend (or a proxy before it) that does not stream answers a stream request with
    # one JSON body: the client gets that body as it is, not SSE around it, and the
    # backend's breaker counts a success (3 consecutive failures would open it here)
    sim = await make_sim(model="sim-model")
    router = await make_router(one_pool([sim]))
    body = {"prompt": "hello", "max_tokens": 4, "stream": True}
    async with aiohttp.ClientSession() as s:
        await faults(s, sim, json_to_streams=True)
        for _ in range(5):
            async with s.post(router.url + "/v1/completions", json=body) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("application/json")
                raw = await r.read()
            answer = orjson.loads(raw)  # the whole body is the backend's JSON, nothing added
            assert answer["object"] == "text_completion" and answer["usage"]["completion_tokens"]
        breaker = (await status_of(s, router, sim))["breaker"]
        assert breaker["error"] == "closed" and breaker["openings"] == 0
        await faults(s, sim, json_to_streams=False)
        async with s.post(router.url + "/v1/completions", json=body) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            assert (await r.read()).endswith(b"data: [DONE]\n\n")


async def test_retries_that_may_reprefill_are_bounded_by_the_budget_and_refusals_are_not(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    # three backends that take longer than ttfb_s: with no budget left, the request that
    # timed out on the first is not sent to the other two (each would prefill it again)
    sims = [await make_sim(model="sim-model", seed=i) for i in range(3)]
    no_budget = {"retry_budget": {"ratio": 0.0, "min_per_s": 0.0}}
    router = await make_router(
        one_pool(
            sims,
            routing=no_budget,
            timeouts={"ttfb_s": 0.3},
            breakers={"consecutive_failures": 100},
        )
    )
    body = {"prompt": "hello", "max_tokens": 4, "stream": True}
    async with aiohttp.ClientSession() as s:
        for sim in sims:
            await faults(s, sim, hang_before_first_token=2.0)
        async with s.post(router.url + "/v1/completions", json=body) as r:
            # every backend tried took it and none answered in time: a gateway timeout
            assert r.status == 504 and r.headers["x-ctxroute-reject"] == "upstream_timeout"
            assert "Retry-After" not in r.headers
            message = (await r.json())["error"]["message"]
        assert "retry budget is spent" in message
        assert sum(sim.received for sim in sims) == 1
        # a refused connection provably cost no engine work: tried elsewhere all the same
        for sim in sims:
            await faults(s, sim, hang_before_first_token=0.0)
        await faults(s, sims[0], refuse_for_s=30)
        await faults(s, sims[1], refuse_for_s=30)
        attempts = []
        for i in range(4):
            async with s.post(router.url + "/v1/completions", json=body,
                              headers={"X-Session-ID": f"s{i}"}) as r:  # fmt: skip
                assert r.status == 200, await r.text()
                assert r.headers["x-ctxroute-backend"] == sims[2].url
                attempts.append(int(r.headers["x-ctxroute-attempts"]))
                await r.read()
        assert max(attempts) >= 2  # a refused attempt first, then the next: no budget needed


async def test_with_budget_left_a_timeout_is_tried_on_the_next_backend(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    sims = [await make_sim(model="sim-model", seed=i) for i in range(3)]
    router = await make_router(one_pool(sims, timeouts={"ttfb_s": 0.3}))
    body = {"prompt": "hello", "max_tokens": 4, "stream": True}
    async with aiohttp.ClientSession() as s:
        for sim in sims:
            await faults(s, sim, hang_before_first_token=2.0)
        async with s.post(router.url + "/v1/completions", json=body) as r:
            assert r.status == 504
            assert "retry budget" not in (await r.json())["error"]["message"]
        assert sum(sim.received for sim in sims) == 3  # the default floor allows these


def test_a_breaker_window_smaller_than_min_calls_is_refused() -> None:
    # the failure-rate rule judges the window once it holds min_calls calls: a smaller
    # window would turn the rule off without a word
    pool = {"name": "a", "model": "m", "max_context_tokens": 1000,
            "backends": [{"url": "http://x:1"}]}  # fmt: skip
    with pytest.raises(ConfigError, match=r"window \(5\) must be at least min_calls \(10\)"):
        parse_config({"pools": [pool], "breakers": {"window": 5}}, environ={})
    parse_config({"pools": [pool], "breakers": {"window": 10}}, environ={})


async def test_a_backend_serving_the_model_under_its_own_name_gets_that_name(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    own = await make_sim(model="llama-8b-instruct-v2")  # what this vLLM was started with
    config = parse_config(
        {"pools": [{"name": "p", "model": "chat", "max_context_tokens": 1024,
                    "default_max_tokens": 8,
                    "backends": [{"url": own.url, "model": "llama-8b-instruct-v2"}]}]},
        environ={},
    )  # fmt: skip
    router = await make_router(config)
    async with aiohttp.ClientSession() as s:
        for stream in (False, True):
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 3, "stream": stream}  # fmt: skip
            async with s.post(router.url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200, await r.text()
                await r.read()
            assert own.last_body is not None and own.last_body["model"] == "llama-8b-instruct-v2"
            assert own.last_body["messages"] == body["messages"]
