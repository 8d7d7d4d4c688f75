"""Fault injection of the simulator, by the admin endpoint and in-process."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from ctxroute.backends.simulator import Simulator

from tests.conftest import SimFactory
from tests.fixtures.sse import parse_stream, split_events

BODY = {"prompt": "hello", "max_tokens": 5}


async def post_faults(s: aiohttp.ClientSession, sim: Simulator, **faults: object) -> int:
    async with s.post(sim.url + "/sim/faults", json=faults) as r:
        return r.status


async def test_error_rate_one_fails_every_request_with_a_500_body(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as s:
        assert await post_faults(s, sim, error_rate=1.0) == 200
        async with s.post(sim.url + "/v1/completions", json=BODY) as r:
            assert r.status == 500
            assert (await r.json())["error"]["type"] == "InternalServerError"
        async with s.delete(sim.url + "/sim/faults") as r:
            assert (await r.json())["error_rate"] == 0.0
        async with s.post(sim.url + "/v1/completions", json=BODY) as r:
            assert r.status == 200


async def test_a_5xx_burst_fails_exactly_n_requests(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as s:
        await post_faults(s, sim, burst_5xx=2, burst_status=503)
        statuses = []
        for _ in range(4):
            async with s.post(sim.url + "/v1/completions", json=BODY) as r:
                statuses.append(r.status)
    assert statuses == [503, 503, 200, 200]


async def test_bad_fault_settings_are_rejected_with_the_field_named(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as s:
        for bad, fragment in (
            ({"error_rate": 2}, "between 0 and 1"),
            ({"nope": 1}, "unknown fault 'nope'"),
            ({"engine_dead": "yes"}, "true or false"),
        ):
            async with s.post(sim.url + "/sim/faults", json=bad) as r:
                assert r.status == 400
                assert fragment in (await r.json())["error"]["message"]


async def test_hang_before_first_token_sends_headers_but_no_body(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as s:
        await post_faults(s, sim, hang_before_first_token=-1)
        async with s.post(sim.url + "/v1/completions", json={**BODY, "stream": True}) as r:
            assert r.status == 200
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(r.content.readany(), 0.2)
        assert await post_faults(s, sim, hang_before_first_token=0.0) == 200
        async with s.post(sim.url + "/v1/completions", json=BODY) as r:
            assert r.status == 200


async def test_cut_after_k_tokens_drops_the_stream_without_done(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as s:
        await post_faults(s, sim, cut_after_tokens=3)
        raw = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.post(
                sim.url + "/v1/completions", json={**BODY, "max_tokens": 50, "stream": True}
            ) as r:
                async for chunk in r.content.iter_any():
                    raw += chunk
    events = split_events(raw)
    assert len(events) == 3
    assert b"[DONE]" not in raw


async def test_slow_tokens_stretch_a_stream(make_sim: SimFactory) -> None:
    sim = await make_sim(model="sim-model")
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as s:
        start = loop.time()
        async with s.post(sim.url + "/v1/completions", json={**BODY, "max_tokens": 10}) as r:
            await r.read()
        fast = loop.time() - start
        await post_faults(s, sim, slow_token_ms=20)
        start = loop.time()
        async with s.post(sim.url + "/v1/completions", json={**BODY, "max_tokens": 10}) as r:
            await r.read()
        slow = loop.time() - start
    # 10 steps with 20 ms more each: at least 200 ms more; the ratio holds with wide margins
    assert slow > fast + 0.15


async def test_refused_connections_then_the_port_comes_back(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as s:
        await post_faults(s, sim, refuse_for_s=0.3)
        await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as fresh:
            with pytest.raises(aiohttp.ClientConnectorError):
                await fresh.get(sim.url + "/health")
    await asyncio.sleep(0.4)
    async with aiohttp.ClientSession() as s, s.get(sim.url + "/health") as r:
        assert r.status == 200


async def test_refuse_until_cleared_in_process(sim: Simulator) -> None:
    await sim.set_faults(refuse_for_s=-1)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectorError):
            await s.get(sim.url + "/health")
    await sim.clear_faults()
    async with aiohttp.ClientSession() as s, s.get(sim.url + "/health") as r:
        assert r.status == 200


async def test_dead_engine_fails_health_and_requests(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as s:
        await post_faults(s, sim, engine_dead=True)
        async with s.get(sim.url + "/health") as r:
            assert r.status == 503
        async with s.post(sim.url + "/v1/completions", json=BODY) as r:
            assert r.status == 500


async def _answers(s: aiohttp.ClientSession, sim: Simulator, n: int,
                   stream: bool) -> list[tuple[int, str, str]]:  # fmt: skip
    """(completion tokens, finish reason, text) of ``n`` chat answers."""
    out = []
    body = {"messages": [{"role": "user", "content": "tell me"}], "max_tokens": 120,
            "stream": stream, "stream_options": {"include_usage": True}}  # fmt: skip
    for _ in range(n):
        async with s.post(sim.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            raw = await r.read()
        if not stream:
            answer = orjson.loads(raw)
            choice = answer["choices"][0]
            out.append((answer["usage"]["completion_tokens"], choice["finish_reason"],
                        choice["message"]["content"]))  # fmt: skip
            continue
        chunks = parse_stream(raw)
        text = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in chunks if c["choices"])  # fmt: skip
        finish = next(c["choices"][0]["finish_reason"] for c in chunks
                      if c["choices"] and c["choices"][0]["finish_reason"])  # fmt: skip
        out.append((chunks[-1]["usage"]["completion_tokens"], finish, text))
    return out


@pytest.mark.parametrize("stream", [False, True])
async def test_drift_makes_answers_shorter_cut_and_in_other_words(
    make_sim: SimFactory, stream: bool
) -> None:
    healthy = await make_sim(model="sim-model", mean_output_tokens=40, seed=3, speed=50.0)
    drifting = await make_sim(model="sim-model", mean_output_tokens=40, seed=3, speed=50.0)
    async with aiohttp.ClientSession() as s:
        assert await post_faults(s, drifting, drift=True) == 200
        before = await _answers(s, healthy, 150, stream)
        after = await _answers(s, drifting, 150, stream)
    mean = [sum(n for n, _, _ in a) / len(a) for a in (before, after)]
    assert mean[1] < 0.6 * mean[0], mean
    cut = [sum(f == "length" for _, f, _ in a) / len(a) for a in (before, after)]
    assert cut[0] < 0.1 < 0.2 < cut[1], cut
    words = [{w for _, _, t in a for w in t.split()} for a in (before, after)]
    assert words[0] and words[1] and not words[0] & words[1]  # another vocabulary
