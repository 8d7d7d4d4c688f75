"""Drift seen by the router: one of four simulated backends switched to drift (shorter
answers, more cut by max_tokens, other words) scores 1 or more on its signals in /status
and /metrics; its three healthy twins stay under 1 on every signal."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.conftest import SimFactory
from tests.integration.test_breakers import RouterFactory, faults, one_pool, status_of

CHAT = "/v1/chat/completions"


async def test_the_drifting_backend_of_four_is_flagged_and_only_it(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    sims = [await make_sim(model="sim-model", mean_output_tokens=40, seed=i, speed=50.0)
            for i in range(4)]  # fmt: skip
    router = await make_router(one_pool(sims, window=2048))
    async with aiohttp.ClientSession() as s:
        await faults(s, sims[3], drift=True)

        async def one(i: int) -> None:
            body = {"messages": [{"role": "user", "content": f"question {i}"}],
                    "max_tokens": 120, "stream": i % 2 == 0,
                    "stream_options": {"include_usage": True}}  # fmt: skip
            # a session per request: the hash spreads them over the four backends
            async with s.post(router.url + CHAT, json=body,
                              headers={"x-session-id": f"user-{i}"}) as r:  # fmt: skip
                assert r.status == 200
                await r.read()

        for start in range(0, 480, 16):
            await asyncio.gather(*(one(i) for i in range(start, start + 16)))
        seen: list[Any] = [await status_of(s, router, sim) for sim in sims]
        async with s.get(router.url + "/metrics") as r:
            text = await r.text()
    assert all(b["drift"] for b in seen), [b["drift"] for b in seen]  # each had 30+ answers
    drifting = seen[3]["drift"]
    assert drifting["output_tokens"] >= 1.0 and drifting["length_stops"] >= 1.0, drifting
    for healthy in seen[:3]:
        assert max(healthy["drift"].values()) < 1.0, healthy["drift"]
    line = next(x for x in text.splitlines() if x.startswith("ctxroute_drift_score{")
                and sims[3].url in x and 'signal="output_tokens"' in x)  # fmt: skip
    assert float(line.rsplit(" ", 1)[1]) >= 1.0
    # about a third of its answers are cut by max_tokens (its twins: e^-3 of theirs, the
    # share of an exponential length with mean 40 over 120 tokens)
    assert drifting_share(text, sims[3].url) > 0.2 > drifting_share(text, sims[0].url)
    assert seen[3]["length_share"] > 0.05 and seen[3]["drift_baseline"] == {}  # no baseline yet


def drifting_share(metrics: str, url: str) -> float:
    line = next(x for x in metrics.splitlines()
                if x.startswith("ctxroute_backend_length_stop_share{") and url in x)  # fmt: skip
    return float(line.rsplit(" ", 1)[1])
