"""The router over loopback in front of simulated vLLM pools."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import openai
import pytest
from ctxroute.backends.simulator import Simulator
from ctxroute.router.config import parse_config
from ctxroute.router.core.facts import hash_key

from tests.conftest import SimFactory
from tests.fixtures.metrics import metric
from tests.fixtures.router import RunningRouter, two_pool_config, two_pools
from tests.fixtures.sse import parse_stream

RouterFactory = Callable[..., Awaitable[RunningRouter]]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


async def requests_seen(sim: Simulator) -> int:
    """Requests that reached the engine (any outcome), from the simulator's own metrics."""
    async with aiohttp.ClientSession() as s:
        return int(await metric(s, sim.url, "vllm:request_success_total"))


@pytest.fixture
async def pools(make_sim: SimFactory) -> tuple[list[Simulator], list[Simulator]]:
    return await two_pools(make_sim)


@pytest.fixture
async def router(
    pools: tuple[list[Simulator], list[Simulator]], make_router: RouterFactory
) -> RunningRouter:
    return await make_router(two_pool_config(*pools))


async def test_short_prompts_go_to_low_latency_and_long_ones_to_high_memory(
    router: RunningRouter, pools: tuple[list[Simulator], list[Simulator]]
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(router.url + COMPLETIONS, json={"prompt": "hello", "max_tokens": 4}) as r:
            assert r.status == 200
            assert r.headers["x-ctxroute-pool"] == "low-latency"
            assert r.headers["x-ctxroute-backend"] in {sim.url for sim in pools[0]}
        # 6,000 bytes: 1,500 tokens for the simulator, up to 3,000 by the router's bound
        long_prompt = "abcd" * 1500
        async with s.post(
            router.url + COMPLETIONS, json={"prompt": long_prompt, "max_tokens": 4}
        ) as r:
            assert r.status == 200
            assert r.headers["x-ctxroute-pool"] == "high-memory"
            assert (await r.json())["usage"]["prompt_tokens"] == 1500


async def test_a_request_over_every_window_gets_vllms_400_and_no_backend_sees_it(
    router: RunningRouter, pools: tuple[list[Simulator], list[Simulator]]
) -> None:
    sims = pools[0] + pools[1]
    before = [await requests_seen(sim) for sim in sims]
    huge = "abcd" * 30_000  # 120 kB: at least 12,000 tokens, over the 8,192 window
    async with aiohttp.ClientSession() as s:
        async with s.post(
            router.url + CHAT, json={"messages": [{"role": "user", "content": huge}]}
        ) as r:
            assert r.status == 400
            err = (await r.json())["error"]
        async with s.post(router.url + COMPLETIONS, json={"prompt": "x", "max_tokens": 9000}) as r:
            assert r.status == 400
            err2 = (await r.json())["error"]
        async with s.post(router.url + COMPLETIONS, json={"prompt": "x", "max_tokens": 2}) as r:
            assert r.status == 200
    assert "maximum context length is 8192 tokens" in err["message"]
    assert (err["type"], err["param"], err["code"]) == ("BadRequestError", "input_tokens", 400)
    assert "you requested 9000 output tokens" in err2["message"]
    after = [await requests_seen(sim) for sim in sims]
    assert sum(after) - sum(before) == 1  # only the last, valid request


async def test_a_client_that_expects_100_continue_is_served(router: RunningRouter) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            router.url + COMPLETIONS, json={"prompt": "x" * 2000, "max_tokens": 2}, expect100=True
        ) as r:
            assert r.status == 200
            assert (await r.json())["usage"]["completion_tokens"] <= 2


async def test_the_same_session_lands_on_the_same_backend(router: RunningRouter) -> None:
    async with aiohttp.ClientSession() as s:
        for session in ("alice", "bob", "carol"):
            seen = set()
            for _ in range(5):
                async with s.post(
                    router.url + COMPLETIONS,
                    headers={"X-Session-ID": session},
                    json={"prompt": "hi", "max_tokens": 1},
                ) as r:
                    seen.add(r.headers["x-ctxroute-backend"])
            assert len(seen) == 1, session


async def test_a_shared_system_prompt_lands_on_one_backend_and_hits_its_prefix_cache(
    router: RunningRouter, pools: tuple[list[Simulator], list[Simulator]]
) -> None:
    system = {"role": "system", "content": "You are the support assistant of ACME. " * 6}
    backends = set()
    async with aiohttp.ClientSession() as s:
        for question in ("where is my order", "how do I return it", "who are you"):
            body = {"messages": [system, {"role": "user", "content": question}], "max_tokens": 1}
            async with s.post(router.url + CHAT, json=body) as r:
                backends.add(r.headers["x-ctxroute-backend"])
    assert len(backends) == 1
    sim = next(sim for sim in pools[0] if sim.url in backends)
    assert sim.core.counters.prefix_cache_hits > 0


async def test_killing_one_backend_retries_before_the_first_byte_and_moves_only_its_keys(
    router: RunningRouter, pools: tuple[list[Simulator], list[Simulator]]
) -> None:
    sessions = [f"user-{i}" for i in range(40)]

    async def placement(s: aiohttp.ClientSession) -> dict[str, str]:
        out = {}
        for session in sessions:
            async with s.post(
                router.url + COMPLETIONS,
                headers={"X-Session-ID": session},
                json={"prompt": "hi", "max_tokens": 1},
            ) as r:
                assert r.status == 200, await r.text()
                out[session] = r.headers["x-ctxroute-backend"]
        return out

    async with aiohttp.ClientSession() as s:
        before = await placement(s)
        victim = pools[0][0]
        assert victim.url in before.values()
        await victim.stop()
        after = await placement(s)
    for session in sessions:
        if before[session] != victim.url:
            assert after[session] == before[session], session
        else:
            assert after[session] == pools[0][1].url


async def test_a_5xx_before_the_first_byte_is_retried_on_the_next_candidate(
    router: RunningRouter, pools: tuple[list[Simulator], list[Simulator]]
) -> None:
    body = {"prompt": "hi", "max_tokens": 2}
    headers = {"X-Session-ID": "retry-me"}
    async with aiohttp.ClientSession() as s:
        async with s.post(router.url + COMPLETIONS, json=body, headers=headers) as r:
            owner = r.headers["x-ctxroute-backend"]
        failing = next(sim for sim in pools[0] if sim.url == owner)
        await failing.set_faults(burst_5xx=1)
        async with s.post(router.url + COMPLETIONS, json=body, headers=headers) as r:
            assert r.status == 200
            assert r.headers["x-ctxroute-backend"] != owner
    assert failing.faults.burst_5xx == 0  # the owner was tried first and failed


async def test_streams_through_the_router_are_byte_identical_to_direct(
    router: RunningRouter, pools: tuple[list[Simulator], list[Simulator]]
) -> None:
    body = {
        "messages": [{"role": "user", "content": "tell me"}],
        "max_tokens": 20,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(router.url + CHAT, json=body, headers={"X-Request-ID": "same-1"}) as r:
            assert r.headers["X-Request-ID"] == "same-1"  # a safe id is kept
            backend = r.headers["x-ctxroute-backend"]
            via_router = await r.read()
        async with s.post(backend + CHAT, json=body, headers={"X-Request-ID": "same-1"}) as r:
            direct = await r.read()
    # "created" is the second each request was made (as vLLM does): the only difference
    same_second = re.compile(rb'"created":\d+')
    assert same_second.sub(b"", via_router) == same_second.sub(b"", direct)
    assert len(parse_stream(via_router)) == 22


async def test_the_openai_sdk_works_through_the_router(router: RunningRouter) -> None:
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    try:
        reply = await client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage is not None and reply.usage.completion_tokens <= 5
        stream = await client.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        finish = None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        assert text and finish in ("stop", "length")
        completion = await client.completions.create(model="sim-model", prompt="hi", max_tokens=3)
        assert completion.choices[0].text
        models = await client.models.list()
        assert [m.id for m in models.data] == ["sim-model"]
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            await client.completions.create(model="sim-model", prompt="x", max_tokens=100_000)
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="other", prompt="x", max_tokens=1)
    finally:
        await client.close()


async def _wait_abort(sim: Simulator, before: int) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < 2.0:
        if sim.metrics.success["abort"]._value.get() > before:
            return loop.time() - start
        await asyncio.sleep(0.002)
    raise AssertionError("the backend never saw the abort")


async def test_a_client_leaving_mid_stream_aborts_upstream_at_once(
    router: RunningRouter, pools: tuple[list[Simulator], list[Simulator]]
) -> None:
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            router.url + COMPLETIONS,
            json={"prompt": "go", "max_tokens": 1000, "ignore_eos": True, "stream": True},
        )
        await r.content.readuntil(b"\n\n")
        sim = next(sim for sim in pools[0] if sim.url == r.headers["x-ctxroute-backend"])
        assert router.in_flight() == 1
        r.close()
        elapsed = await _wait_abort(sim, 0)
    assert elapsed < 0.1
    await asyncio.sleep(0.01)
    assert router.in_flight() == 0
    assert sim.core.kv_usage() == 0.0


async def test_a_client_leaving_during_prefill_aborts_upstream_at_once(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    quick = await make_sim(model="sim-model", max_model_len=1024)
    slow = await make_sim(
        model="sim-model", max_model_len=8192, num_blocks=1024, prefill_tokens_per_ms=5.0
    )
    router = await make_router(two_pool_config([quick], [slow]))
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(
            s.post(router.url + COMPLETIONS, json={"prompt": "abcd" * 1500, "max_tokens": 5})
        )
        await asyncio.sleep(0.1)  # 1,500 tokens at 5 per ms: 300 ms of prefill
        assert len(slow.core.running) == 1 and router.in_flight() == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        elapsed = await _wait_abort(slow, 0)
    assert elapsed < 0.1
    await asyncio.sleep(0.01)
    assert router.in_flight() == 0
    assert slow.core.counters.generation_tokens == 0


async def test_a_stream_cut_by_the_backend_ends_with_an_error_event_and_done(
    router: RunningRouter, pools: tuple[list[Simulator], list[Simulator]]
) -> None:
    for sim in pools[0]:
        await sim.set_faults(cut_after_tokens=3)
    async with aiohttp.ClientSession() as s:
        async with s.post(
            router.url + COMPLETIONS, json={"prompt": "x", "max_tokens": 50, "stream": True}
        ) as r:
            assert r.status == 200
            chunks = parse_stream(await r.read())
    assert len(chunks) == 4
    assert chunks[-1]["error"]["code"] == 502
    assert router.in_flight() == 0


async def test_a_backend_that_hangs_before_the_first_byte_is_skipped_after_ttfb(
    pools: tuple[list[Simulator], list[Simulator]], make_router: RouterFactory
) -> None:
    router = await make_router(two_pool_config(*pools, timeouts={"ttfb_s": 0.3}))
    async with aiohttp.ClientSession() as s:
        async with s.post(
            router.url + COMPLETIONS,
            headers={"X-Session-ID": "k"},
            json={"prompt": "x", "max_tokens": 2, "stream": True},
        ) as r:
            first = r.headers["x-ctxroute-backend"]
            await r.read()
        hung = next(sim for sim in pools[0] if sim.url == first)
        await hung.set_faults(hang_before_first_token=-1)
        async with s.post(
            router.url + COMPLETIONS,
            headers={"X-Session-ID": "k"},
            json={"prompt": "x", "max_tokens": 2, "stream": True},
        ) as r:
            assert r.status == 200
            assert r.headers["x-ctxroute-backend"] != first
            assert parse_stream(await r.read())


async def test_a_stream_that_goes_quiet_past_the_idle_timeout_ends_with_an_error_event(
    pools: tuple[list[Simulator], list[Simulator]], make_router: RouterFactory
) -> None:
    router = await make_router(two_pool_config(*pools, timeouts={"idle_read_s": 0.2}))
    for sim in pools[0]:
        await sim.set_faults(slow_token_ms=1000)  # a token a second
    body = {"prompt": "x", "max_tokens": 50, "ignore_eos": True, "stream": True}
    async with aiohttp.ClientSession() as s:
        async with s.post(router.url + COMPLETIONS, json=body) as r:
            chunks = parse_stream(await r.read())
    assert "the backend sent nothing for 0.2s" in chunks[-1]["error"]["message"]
    assert router.in_flight() == 0
    await asyncio.sleep(0.05)
    assert all(sim.core.kv_usage() == 0.0 for sim in pools[0])  # the backend aborted it


async def test_a_non_streaming_answer_cut_after_its_first_byte_is_a_502_not_a_retry(
    pools: tuple[list[Simulator], list[Simulator]], make_router: RouterFactory
) -> None:
    served = 0

    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        served += 1
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"id":')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(broken, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    config = two_pool_config(*pools)
    data = config.model_dump()
    data["pools"][0]["backends"] = [{"url": url}, *data["pools"][0]["backends"][1:]]
    router = await make_router(parse_config(data, environ={}))
    ring = router.ctx.fleet.pools[0].ring
    key = next(f"k{i}" for i in range(1000)
               if ring.owner(hash_key({}, "m", False, f"k{i}", 0)) == url)  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(
                router.url + COMPLETIONS,
                headers={"X-Session-ID": key},
                json={"prompt": "x", "max_tokens": 2},
            ) as r:
                status, err = r.status, await r.json()
    finally:
        server.close()
    assert status == 502
    assert (
        err["error"]["code"] == 502 and "broke while sending the answer" in err["error"]["message"]
    )
    assert served == 1  # not retried on the healthy backend


@pytest.mark.parametrize("admission", [True, False])
async def test_backends_at_max_in_flight_are_never_exceeded_and_the_excess_waits_or_gets_503(
    make_sim: SimFactory, make_router: RouterFactory, admission: bool
) -> None:
    """With admission the excess waits at the router until its deadline (429 deadline);
    without it, it gets 503 at once. Either way it never reaches a backend."""
    short = await make_sim(model="sim-model", max_model_len=1024)
    long = await make_sim(model="sim-model", max_model_len=8192, num_blocks=2048)
    config = two_pool_config([short], [long]).model_dump()
    for pool in config["pools"]:
        pool["backends"][0]["max_in_flight"] = 1
    config["admission"] = {"enabled": admission}
    router = await make_router(parse_config(config, environ={}))
    await short.set_faults(hang_before_first_token=-1)
    await long.set_faults(hang_before_first_token=-1)
    body = {"prompt": "x", "max_tokens": 2, "stream": True}
    async with aiohttp.ClientSession() as s:
        held = [asyncio.create_task(s.post(router.url + COMPLETIONS, json=body)) for _ in range(2)]
        for _ in range(200):
            if router.in_flight() == 2:
                break
            await asyncio.sleep(0.005)
        assert router.in_flight() == 2  # one on each backend (spill)
        received = short.received + long.received
        async with s.post(router.url + COMPLETIONS, json=body,
                          headers={"X-Request-Timeout": "0.3"}) as r:  # fmt: skip
            message = (await r.json())["error"]["message"]
            if admission:
                assert r.status == 429
                assert r.headers["x-ctxroute-reject"] == "deadline"
                assert "within its deadline" in message
            else:
                assert r.status == 503
                assert r.headers["Retry-After"] == "1"
                assert r.headers["x-ctxroute-reject"] == "no_backend"
                assert message.startswith("no backend can take this request now")
                assert message.count("at max_in_flight") == 2  # each backend, with its reason
            assert int(r.headers["Retry-After"]) >= 1
        assert short.received + long.received == received
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    await asyncio.sleep(0.05)
    assert router.in_flight() == 0
    assert len(short.core.running) + len(short.core.waiting) == 0


async def test_every_backend_failing_gives_503_with_retry_after(
    router: RunningRouter, pools: tuple[list[Simulator], list[Simulator]]
) -> None:
    for sim in pools[0] + pools[1]:
        await sim.set_faults(error_rate=1.0)
    async with aiohttp.ClientSession() as s:
        async with s.post(router.url + COMPLETIONS, json={"prompt": "x", "max_tokens": 2}) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "1"
            err = (await r.json())["error"]
    assert err["code"] == 503 and "answered" in err["message"]


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        (b'{"messages":', 400, "not valid JSON"),
        (b"[]", 400, "JSON object"),
        (b'{"model":"nope","messages":[{"role":"user","content":"x"}]}', 404, "does not exist"),
        (
            b'{"model":5,"messages":[{"role":"user","content":"x"}]}',
            400,
            "'model' must be a string",
        ),
        (b'{"model":"sim-model"}', 400, "'messages' is required"),
        (b'{"messages":"hi"}', 400, "non-empty list"),
        (
            b'{"messages":[{"role":"user","content":"x"}],"max_tokens":"9"}',
            400,
            "must be an integer",
        ),
        (b'{"messages":[{"role":"user","content":"x"}],"max_tokens":0}', 400, "at least 1"),
        (b'{"messages":[{"role":"user","content":"x"}],"stream":"yes"}', 400, "'stream'"),
        (b'{"messages":[{"role":"user","content":"x"}],"user":{"id":1}}', 400, "'user'"),
    ],
)
async def test_bad_input_gets_a_clear_error_and_the_router_keeps_serving(
    router: RunningRouter, raw: bytes, status: int, fragment: str
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            router.url + CHAT, data=raw, headers={"content-type": "application/json"}
        ) as r:
            assert r.status == status
            err = (await r.json())["error"]
        async with s.post(
            router.url + CHAT,
            json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
        ) as r:
            assert r.status == 200
    assert fragment in err["message"]
    assert err["code"] == status


async def test_a_body_over_the_size_cap_is_refused_with_413(
    pools: tuple[list[Simulator], list[Simulator]], make_router: RouterFactory
) -> None:
    router = await make_router(two_pool_config(*pools, max_body_bytes=4096))
    async with aiohttp.ClientSession() as s:
        async with s.post(router.url + COMPLETIONS, json={"prompt": "x" * 10_000}) as r:
            assert r.status == 413
            assert "over the limit of 4096 bytes" in (await r.json())["error"]["message"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"max_tokens":1}', "'prompt' is required"),
        (b'{"prompt":"","max_tokens":1}', "must not be empty"),
        (b'{"prompt":[],"max_tokens":1}', "must not be empty"),
        (b'{"prompt":5,"max_tokens":1}', "a string, a list of strings, a list of token ids"),
        (b'{"prompt":[1,"a"],"max_tokens":1}', "a string, a list of strings, a list of token ids"),
    ],
)
async def test_a_missing_empty_or_malformed_prompt_is_a_400_naming_it(
    router: RunningRouter, raw: bytes, fragment: str
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            router.url + COMPLETIONS, data=raw, headers={"content-type": "application/json"}
        ) as r:
            assert r.status == 400
            err = (await r.json())["error"]
    assert fragment in err["message"]
    assert err["param"] == "prompt"


async def test_a_chunked_body_over_the_size_cap_is_refused_with_413(
    pools: tuple[list[Simulator], list[Simulator]], make_router: RouterFactory
) -> None:
    # no Content-Length to check up front: the cap applies to what arrives
    router = await make_router(two_pool_config(*pools, max_body_bytes=4096))

    async def body() -> AsyncIterator[bytes]:
        yield b'{"prompt":"'
        yield b"x" * 10_000
        yield b'"}'

    async with aiohttp.ClientSession() as s:
        async with s.post(router.url + COMPLETIONS, data=body()) as r:
            assert r.status == 413
            assert "over the limit of 4096 bytes" in (await r.json())["error"]["message"]
        async with s.post(router.url + COMPLETIONS, json={"prompt": "x", "max_tokens": 1}) as r:
            assert r.status == 200


async def test_models_health_ready_and_status(
    router: RunningRouter, pools: tuple[list[Simulator], list[Simulator]]
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(router.url + "/v1/models") as r:
            models = await r.json()
        async with s.get(router.url + "/healthz") as r:
            assert r.status == 200
        async with s.get(router.url + "/readyz") as r:
            assert r.status == 200
        for sim in pools[0]:
            router.ctx.ledger.set_up(router.ctx.fleet.pools[0].by_url[sim.url], False)
        async with s.get(router.url + "/readyz") as r:
            assert r.status == 503
            assert "low-latency" in await r.text()
        async with s.get(router.url + "/status") as r:
            status = await r.json()
    assert models["data"][0]["id"] == "sim-model"
    assert models["data"][0]["max_model_len"] == 8192
    assert [p["name"] for p in status["pools"]] == ["low-latency", "high-memory"]


async def test_an_unsafe_request_id_is_replaced_never_echoed_or_sent_upstream(
    router: RunningRouter,
) -> None:
    hostile = "<script>alert(1)</script>" + "x" * 500
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        async with s.post(router.url + CHAT, json=body, headers={"X-Request-ID": hostile}) as r:
            assert r.status == 200
            given = r.headers["X-Request-ID"]
            answer = await r.json()
    assert re.fullmatch(r"[0-9a-f]{24}", given)  # a new one, made by the router
    assert "<script>" not in answer["id"] and given in answer["id"]  # vLLM's id is built on it
