"""/metrics after a scripted workload through the real router in front of a simulator:
every family holds what the requests sent say it must (counts, tokens, finish reasons,
refusals), read back with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from ctxroute.backends.simulator import Simulator
from ctxroute.router.config import RouterConfig, parse_config
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.router import RunningRouter

RouterFactory = Callable[..., Awaitable[RunningRouter]]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def config_for(sim: Simulator, **extra: Any) -> RouterConfig:
    return parse_config(
        {
            "pools": [
                {
                    "name": "only",
                    "model": "sim-model",
                    "max_context_tokens": 2048,
                    "backends": [{"url": sim.url, "max_in_flight": 1}],
                }
            ],
            "timeouts": {"connect_s": 1.0, "ttfb_s": 10.0},
            **extra,
        },
        environ={},
    )


async def scrape(s: aiohttp.ClientSession, router: RunningRouter) -> Samples:
    async with s.get(router.url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("ctxroute_"), family.name
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_what_a_mixed_workload_did(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(config_for(sim))
    unary = {"prompt": "hello there", "max_tokens": 3, "ignore_eos": True}
    stream = {
        "prompt": "hello again",
        "max_tokens": 2,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with aiohttp.ClientSession() as s:
        for _ in range(6):
            async with s.post(router.url + "/v1/completions", json=unary) as r:
                assert r.status == 200
                assert (await r.json())["choices"][0]["finish_reason"] == "length"
        for _ in range(4):
            async with s.post(router.url + "/v1/completions", json=stream) as r:
                assert r.status == 200
                await r.read()
        for _ in range(2):
            async with s.post(
                router.url + "/v1/completions",
                data=b'{"prompt":',
                headers={"content-type": "application/json"},
            ) as r:
                assert r.status == 400
        m = await scrape(s, router)

    assert value(m, "ctxroute_requests_total", pool="only", status_class="2xx") == 10
    assert value(m, "ctxroute_requests_total", pool="", status_class="4xx") == 2
    assert value(m, "ctxroute_ttft_seconds_count", pool="only") == 10
    assert value(m, "ctxroute_request_duration_seconds_count", pool="only") == 10
    assert value(m, "ctxroute_queue_wait_seconds_count", pool="only") == 10
    # every answer was cut by max_tokens: the share of "length" is what the alert watches
    assert value(m, "ctxroute_finish_reason_total", pool="only", reason="length") == 10
    assert value(m, "ctxroute_finish_reason_total", pool="only", reason="stop") == 0
    assert value(m, "ctxroute_completion_tokens_sum", pool="only") == 6 * 3 + 4 * 2
    assert value(m, "ctxroute_prompt_tokens_count", pool="only") == 10
    assert 0 < value(m, "ctxroute_context_utilisation_sum", pool="only") < 10
    assert value(m, "ctxroute_attempt_outcomes_total", outcome="success") == 10
    assert value(m, "ctxroute_retries_total", pool="only") == 0
    assert value(m, "ctxroute_client_disconnects_total", pool="only") == 0
    backend = {"pool": "only", "backend": sim.url}
    assert value(m, "ctxroute_backend_up", **backend) == 1
    assert value(m, "ctxroute_backend_in_flight", **backend) == 0
    assert value(m, "ctxroute_breaker_state", kind="error", **backend) == 0
    assert value(m, "ctxroute_queue_depth", pool="only", tier="normal") == 0
    assert value(m, "ctxroute_admitted", pool="only", tier="normal") == 0
    assert value(m, "ctxroute_store_up", kind="memory") == 1
    # a histogram's buckets resolve 5 ms to 60 s
    assert ("ctxroute_ttft_seconds_bucket", (("le", "0.005"), ("pool", "only"))) in m
    assert ("ctxroute_ttft_seconds_bucket", (("le", "60.0"), ("pool", "only"))) in m


async def test_a_refusal_and_a_client_that_leaves_are_counted(
    sim: Simulator, make_router: RouterFactory
) -> None:
    router = await make_router(config_for(sim, admission={"max_queue": 0}))
    body = {"prompt": "x", "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        async with s.post(sim.url + "/sim/faults", json={"hang_before_first_token": 0.6}) as r:
            assert r.status == 200
        busy = asyncio.ensure_future(s.post(router.url + "/v1/completions", json=body))
        await asyncio.sleep(0.15)  # it holds the backend's one slot; no queue behind it
        async with s.post(
            router.url + "/v1/completions", json=body, headers={"X-Priority": "low"}
        ) as r:
            assert r.status == 429
            assert r.headers["x-ctxroute-reject"] == "queue_full"
        (await busy).release()
        # a client that gives up while its backend is still silent
        with_timeout = aiohttp.ClientTimeout(total=0.2)
        try:
            async with s.post(router.url + "/v1/completions", json=body, timeout=with_timeout):
                pass
        except TimeoutError:
            pass
        for _ in range(100):
            m = await scrape(s, router)
            if value(m, "ctxroute_client_disconnects_total", pool="only") == 1:
                break
            await asyncio.sleep(0.02)
    assert value(m, "ctxroute_shed_total", pool="only", reason="queue_full", tier="low") == 1
    assert value(m, "ctxroute_requests_total", pool="only", status_class="4xx") == 1
    assert value(m, "ctxroute_client_disconnects_total", pool="only") == 1
    assert value(m, "ctxroute_requests_total", pool="only", status_class="0") == 1
    # the prompt it had sent was work for nothing
    assert value(m, "ctxroute_client_disconnect_wasted_tokens_total", pool="only") >= 1
    assert value(m, "ctxroute_attempt_outcomes_total", outcome="client_gone") == 1
