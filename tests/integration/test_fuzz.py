"""Hostile input, generated: malformed JSON bodies, wrong types in every field the router
reads, odd headers. The router answers each with a 4xx (or a 200 it routed), never a 5xx
of its own and never a crash, and keeps serving."""

from __future__ import annotations

import asyncio
import json
import resource

import aiohttp
from ctxroute.backends.simulator import PROFILES, SimConfig, Simulator
from ctxroute.router.config import parse_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.router import start_router

CHAT = "/v1/chat/completions"


def _dumps(value: object) -> bytes:
    # the standard library's: it writes integers of any size, and NaN (not JSON: hostile too)
    return json.dumps(value).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
fields = st.sampled_from(
    ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "stream", "user",
     "priority", "tools", "stream_options"]
)  # fmt: skip
bodies = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(fields, json_values, max_size=6).map(_dumps),
    st.builds(
        lambda extra: _dumps(
            {
                "model": "sim-model",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
                **extra,
            }
        ),
        st.dictionaries(fields, json_values, max_size=3),
    ),
)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300)
headers = st.dictionaries(
    st.sampled_from(
        [
            "X-Priority",
            "X-Request-Timeout",
            "X-Session-ID",
            "X-Request-ID",
            "Authorization",
            "Content-Type",
        ]
    ),
    header_values,
    max_size=4,
)


async def test_malformed_requests_never_get_a_5xx_from_the_router() -> None:
    sim = Simulator(SimConfig(model="sim-model", profile=PROFILES["tiny"]))
    await sim.start()
    config = parse_config(
        {
            "pools": [{"name": "only", "model": "sim-model", "max_context_tokens": 1024,
                       "default_max_tokens": 16, "backends": [{"url": sim.url}]}],
            "log_requests": False,
        },
        environ={},
    )  # fmt: skip
    router = await start_router(config)
    seen: dict[int, int] = {}
    try:
        async with aiohttp.ClientSession() as s:

            @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
            @given(body=bodies, extra=headers, path=st.sampled_from([CHAT, "/v1/completions"]))
            def one(body: bytes, extra: dict[str, str], path: str) -> None:
                future = asyncio.run_coroutine_threadsafe(send(s, router.url + path, body, extra),
                                                          loop)  # fmt: skip
                status = future.result(timeout=30)
                seen[status] = seen.get(status, 0) + 1
                assert status < 500, (status, body[:200], extra)

            loop = asyncio.get_running_loop()
            rss_before = _rss_kb()
            await asyncio.to_thread(one)  # hypothesis in a thread, requests on this loop
            rss_after = _rss_kb()
            hello = {"messages": [{"role": "user", "content": "hi"}]}
            async with s.post(router.url + CHAT, json=hello) as r:
                assert r.status == 200  # still serving
    finally:
        await router.stop()
        await sim.stop()
    assert seen.get(200, 0) > 0 and sum(v for k, v in seen.items() if 400 <= k < 500) > 100
    # (memory: the peak RSS of this process mixes hypothesis's own with the router's, and
    # rose 170 MB on a fresh machine: not a measure of the router; left to a benchmark)
    del rss_before, rss_after


async def send(s: aiohttp.ClientSession, url: str, body: bytes, extra: dict[str, str]) -> int:
    try:
        async with s.post(url, data=body, headers=extra) as r:
            await r.read()
            return r.status
    except (aiohttp.ClientError, ValueError):
        return 400  # the client library refused to send it (an invalid header): not ours


def _rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
