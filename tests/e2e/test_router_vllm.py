"""The router in front of real vLLM: token bounds against usage.prompt_tokens, and the
proxy path (routing, 400 before the backend, streaming relay) on the real engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from ctxroute.backends.simulator import Simulator
from ctxroute.backends.vllm.launch import VllmServer
from ctxroute.router.config import TokenizerConfig, parse_config
from ctxroute.router.config.tokenizers import LoadedCounter, load_counter
from ctxroute.router.core.tokens import chat_bounds, completion_bounds

from tests.fixtures.router import RunningRouter, start_router
from tests.fixtures.sse import parse_stream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

# The tiny model's chat template: <|start|>{role}\n{content}<|end|>\n per message, and
# <|start|>assistant\n to open the reply (8 tokens with this tokenizer).
TINY_TEMPLATE = {"tokens_per_message": 4, "tokens_per_reply": 8}

PROSE = (
    "The router estimates every request's context budget before it picks a pool. Long "
    "documents go to the high-memory engines, short chats to the low-latency ones, and "
    "nothing is ever truncated on the way. "
)
CODE = (
    "def route(request):\n"
    "    budget = request.prompt_tokens + request.max_tokens\n"
    "    return pool_for(budget)\n"
)
NUMBERS = " ".join(str(i * 7919 % 100003) for i in range(120))
UNICODE = "Größe des Kontextfensters: 文脈の長さ — naïve café, ½ × π ≈ 1.57. " * 4  # noqa: RUF001

PROMPTS = {"prose": PROSE * 3, "code": CODE * 4, "numbers": NUMBERS, "unicode": UNICODE}
CONVERSATIONS = {
    "one turn": [{"role": "user", "content": PROSE}],
    "system + user": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": CODE},
    ],
    "three turns": [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": PROSE},
        {"role": "user", "content": NUMBERS},
    ],
}


@pytest.fixture(scope="module")
def tiny_counter(tiny_model_dir: Path) -> LoadedCounter:
    """The exact counter the router loads from the tiny model's tokenizer.json."""
    cfg = TokenizerConfig(path=str(tiny_model_dir / "tokenizer.json"), **TINY_TEMPLATE)
    return load_counter("tiny", cfg)


async def usage_of(url: str, path: str, body: dict[str, Any]) -> int:
    async with aiohttp.ClientSession() as s, s.post(url + path, json=body) as r:
        assert r.status == 200, await r.text()
        return int((await r.json())["usage"]["prompt_tokens"])


@pytest.mark.parametrize("name", list(PROMPTS))
async def test_completion_bounds_hold_against_vllm(
    vllm_server: VllmServer, tiny_counter: LoadedCounter, name: str
) -> None:
    prompt = PROMPTS[name]
    real = await usage_of(
        vllm_server.url, "/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": 1}
    )
    exact = completion_bounds(prompt, tiny_counter)
    heuristic = completion_bounds(prompt, None)
    print(
        f"\n{name}: vLLM {real} tokens, {len(prompt.encode())} bytes; exact {exact}; "
        f"heuristic {heuristic}"
    )
    assert exact.lower == exact.upper == real
    # the heuristic lower bound never rejects what fits, even on this small vocabulary
    assert heuristic.lower <= real


@pytest.mark.parametrize("name", list(CONVERSATIONS))
async def test_chat_bounds_hold_against_vllm(
    vllm_server: VllmServer, tiny_counter: LoadedCounter, name: str
) -> None:
    messages = CONVERSATIONS[name]
    real = await usage_of(
        vllm_server.url,
        "/v1/chat/completions",
        {"model": "tiny", "messages": messages, "max_tokens": 1},
    )
    exact = chat_bounds(messages, tiny_counter)
    heuristic = chat_bounds(messages, None)
    print(f"\n{name}: vLLM {real} tokens; exact-mode bounds {exact}; heuristic {heuristic}")
    assert exact.lower <= real <= exact.upper
    assert heuristic.lower <= real


@pytest.fixture
async def router_on_vllm(
    vllm_server: VllmServer, tiny_model_dir: Path
) -> AsyncIterator[RunningRouter]:
    config = parse_config(
        {
            "pools": [
                {
                    "name": "only",
                    "model": "tiny",
                    "max_context_tokens": 2048,
                    "default_max_tokens": 64,
                    "backends": [{"url": vllm_server.url, "max_in_flight": 32}],
                }
            ],
            "tokenizers": {
                "tiny": {"path": str(tiny_model_dir / "tokenizer.json"), **TINY_TEMPLATE}
            },
            "timeouts": {"ttfb_s": 60},
        },
        environ={},
    )
    router = await start_router(config)
    yield router
    await router.stop()


async def test_router_relays_real_vllm_streams_and_answers(router_on_vllm: RunningRouter) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 5,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(router_on_vllm.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            assert r.headers["x-ctxroute-pool"] == "only"
            chunks = parse_stream(await r.read())
        async with s.post(
            router_on_vllm.url + "/v1/completions",
            json={"model": "tiny", "prompt": "hi", "max_tokens": 3},
        ) as r:
            assert r.status == 200
            unary = await r.json()
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    assert unary["usage"]["completion_tokens"] <= 3


async def test_over_the_window_the_router_answers_before_vllm_with_the_same_wording(
    router_on_vllm: RunningRouter, vllm_server: VllmServer
) -> None:
    prompt = " the" * 2100  # exactly 2,100 tokens with the tiny tokenizer
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 1}
    async with aiohttp.ClientSession() as s:
        async with s.post(router_on_vllm.url + "/v1/completions", json=body) as r:
            assert r.status == 400
            assert "x-ctxroute-backend" not in r.headers
            ours = orjson.loads(await r.read())["error"]
        async with s.post(vllm_server.url + "/v1/completions", json=body) as r:
            theirs = orjson.loads(await r.read())["error"]
    assert (ours["type"], ours["param"], ours["code"]) == (
        theirs["type"],
        theirs["param"],
        theirs["code"],
    )
    assert "maximum context length is 2048 tokens" in ours["message"]
    assert "maximum context length is 2048 tokens" in theirs["message"]
    # prompt + max_tokens over the window: vLLM would clamp silently; the router refuses
    async with aiohttp.ClientSession() as s:
        async with s.post(
            router_on_vllm.url + "/v1/completions",
            json={"model": "tiny", "prompt": " the" * 1000, "max_tokens": 1500},
        ) as r:
            assert r.status == 400
            assert "you requested 1500 output tokens" in (await r.json())["error"]["message"]


async def test_real_vllm_under_kv_pressure_gets_no_new_requests_until_it_recovers(
    vllm_server: VllmServer, twin_sim: Simulator
) -> None:
    """Prompts of 1,400 + 600 tokens, six at a time, on vLLM's 47 usable blocks of 128: four
    prompts alone take about 44 blocks once prefilled, decoding grows past the rest and the
    others wait for room, so vLLM's own KV cache usage stays far above 0.5 while they run.
    The router, reading /metrics every 50 ms, stops sending it new requests once usage
    reaches 0.5 (they go to the simulator beside it) and sends them again once usage falls
    under 0.3.

    vLLM's CPU server answers /metrics only every 0.5-3 s while it works that hard, and on a
    fast machine six prompts can finish between two answers (a CI run saw only 0.36): so the
    test keeps six in flight, a new one for each that ends, until the router has seen the
    pressure (90 s at most), and keeps them going while it checks where new requests go."""
    config = parse_config(
        {
            "pools": [
                {
                    "name": "only",
                    "model": "tiny",
                    "max_context_tokens": 2048,
                    "default_max_tokens": 16,
                    "backends": [
                        {"url": vllm_server.url, "max_in_flight": 32},
                        {"url": twin_sim.url, "max_in_flight": 32},
                    ],
                }
            ],
            "probe": {"interval_s": 0.05, "timeout_s": 5.0},
            "timeouts": {"ttfb_s": 120},
            "breakers": {"memory": {"open_at": 0.5, "close_below": 0.3}},
            # vLLM's engine starves this process for whole seconds: its event-loop lag is
            # not the router's overload here
            "admission": {"overload": {"max_loop_lag_ms": None}},
        },
        environ={},
    )
    router = await start_router(config, probes=True)
    in_flight = 6
    small = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
    statuses: list[int] = []
    fillers: list[asyncio.Task[None]] = []
    try:
        async with aiohttp.ClientSession() as s:

            async def vllm_status() -> dict[str, Any]:
                async with s.get(router.url + "/status") as r:
                    body = await r.json()
                backends = body["pools"][0]["backends"]
                return next(b for b in backends if b["url"] == vllm_server.url)

            filling = asyncio.Event()

            async def keep_filling(lane: int) -> None:
                # each prompt starts differently: identical prompts would share their blocks
                # through vLLM's prefix cache and take a fraction of the memory
                n = 0
                while filling.is_set():
                    body = {
                        "model": "tiny",
                        "prompt": f"fill {lane}.{n}:" + " the" * 1400,
                        "max_tokens": 600,
                        "ignore_eos": True,
                    }
                    n += 1
                    # a connection of its own: never one vLLM closed while it sat idle
                    async with (
                        aiohttp.ClientSession(
                            connector=aiohttp.TCPConnector(force_close=True)
                        ) as own,
                        own.post(vllm_server.url + "/v1/completions", json=body) as r,
                    ):
                        await r.read()
                        statuses.append(r.status)

            filling.set()
            fillers += [asyncio.create_task(keep_filling(lane)) for lane in range(in_flight)]
            seen_open = None
            seen: list[object] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 90
            while loop.time() < deadline and not any(t.done() for t in fillers):
                st = await vllm_status()
                seen.append(st["kv_cache_usage"])
                if st["breaker"]["memory"] == "open":
                    seen_open = st
                    break
                await asyncio.sleep(0.02)
            for t in fillers:  # a filler that failed says why
                if t.done():
                    t.result()
            assert seen_open is not None, f"the router never saw it open; usage seen: {seen}"
            assert seen_open["breaker"]["error"] == "closed"  # pressure is not a failure
            # new requests while it is open go to the simulator; the breaker may close
            # between a status read and the request (usage dips as a wave of fills ends),
            # so a request that reached vLLM is checked against the state just after it
            to_sim = 0
            for i in range(20):
                if (await vllm_status())["breaker"]["memory"] != "open":
                    await asyncio.sleep(0.05)
                    continue
                async with s.post(router.url + "/v1/completions", json=small,
                                  headers={"X-Session-ID": f"s{i}"}) as r:  # fmt: skip
                    assert r.status == 200
                    backend = r.headers["x-ctxroute-backend"]
                if backend == vllm_server.url:
                    assert (await vllm_status())["breaker"]["memory"] == "closed"
                    continue
                assert backend == twin_sim.url
                to_sim += 1
                if to_sim == 3:
                    break
            assert to_sim >= 1
            filling.clear()  # each lane finishes the prompt it has in flight
            await asyncio.gather(*fillers)
            assert statuses and set(statuses) == {200}
            for _ in range(200):
                st = await vllm_status()
                if st["breaker"]["memory"] == "closed":
                    break
                await asyncio.sleep(0.05)
            assert st["breaker"]["memory"] == "closed" and st["kv_cache_usage"] < 0.3
    finally:
        for t in fillers:  # a failed assertion leaves none running into the next test
            t.cancel()
        await asyncio.gather(*fillers, return_exceptions=True)
        await router.stop()
