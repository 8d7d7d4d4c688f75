"""Version skew read from the backends themselves (/v1/models, /version, the cache labels
of /metrics): the backend that differs from its pool is flagged in /status, /metrics and
the log; its twins are not."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from ctxroute.backends.simulator import Simulator

from tests.conftest import SimFactory
from tests.integration.test_breakers import RouterFactory, one_pool, status_of


async def test_the_backend_that_differs_from_its_pool_is_flagged(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    twins = [await make_sim(model="sim-model", max_model_len=2048, seed=i) for i in range(2)]
    # an older vLLM, with another block size and a smaller window than the pool says
    odd = await make_sim(model="sim-model", max_model_len=1024, block_size=32, version="0.31.1")
    sims: list[Simulator] = [*twins, odd]
    config = one_pool(sims, window=2048, probe={"interval_s": 0.05, "timeout_s": 1.0})
    router = await make_router(config, probes=True)
    async with aiohttp.ClientSession() as s:
        for _ in range(100):
            seen: Any = await status_of(s, router, odd)
            if seen["skew"]:
                break
            await asyncio.sleep(0.05)
        assert seen["skew"] == [
            "max_model_len 1024 under the pool's max_context_tokens 2048",
            "version 0.31.1 where the pool's others have 0.32.0",
            "max_model_len 1024 where the pool's others have 2048",
            "block_size 32 where the pool's others have 16",
        ]
        for twin in twins:
            assert (await status_of(s, router, twin))["skew"] == []
        async with s.get(router.url + "/metrics") as r:
            text = await r.text()
    lines = [line for line in text.splitlines() if line.startswith("ctxroute_backend_skew{")]
    flagged = {line.split('backend="')[1].split('"')[0]: line.rsplit(" ", 1)[1] for line in lines}
    assert flagged == {odd.url: "1.0", twins[0].url: "0.0", twins[1].url: "0.0"}
