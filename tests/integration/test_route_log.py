"""Why each request went where it went: the ``x-ctxroute-route`` header and the request's
log line, from a real router in front of simulators."""

from __future__ import annotations

import io
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from ctxroute.backends.simulator import Simulator

from tests.conftest import SimFactory
from tests.fixtures.router import ADMIN, RunningRouter, two_pool_config, two_pools

RouterFactory = Callable[..., Awaitable[RunningRouter]]
COMPLETIONS = "/v1/completions"
SECRET = "sk-do-not-log-me"
PROMPT_MARK = "zebra-umbrella-prompt-text"


@pytest.fixture
async def pools(make_sim: SimFactory) -> tuple[list[Simulator], list[Simulator]]:
    return await two_pools(make_sim)


def route_fields(header: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in header.split("; "))


def log_lines(router: RunningRouter, stream: io.BytesIO) -> list[dict[str, Any]]:
    log = router.ctx.request_log
    assert log is not None
    log.flush()
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


async def test_each_answer_and_its_log_line_say_where_it_went_and_why(
    pools: tuple[list[Simulator], list[Simulator]], make_router: RouterFactory
) -> None:
    stream = io.BytesIO()
    router = await make_router(two_pool_config(*pools), log_stream=stream)
    headers = {"Authorization": f"Bearer {SECRET}", "X-Session-ID": "s1"}
    answers = []
    async with aiohttp.ClientSession() as s:
        for prompt, stream_it in ((PROMPT_MARK, False), ("abcd" * 1500, True)):
            body: dict[str, Any] = {"model": "sim-model", "prompt": prompt, "max_tokens": 4,
                                    "stream": stream_it}  # fmt: skip
            if stream_it:  # a stream's token counts come with its last chunk when asked
                body["stream_options"] = {"include_usage": True}
            async with s.post(router.url + COMPLETIONS, json=body, headers=headers) as r:
                assert r.status == 200
                await r.read()
                answers.append(r.headers.copy())
    short, long = (route_fields(a["x-ctxroute-route"]) for a in answers)
    assert short["preferred"] == "low-latency (fits)"
    assert long["preferred"] == "high-memory (fits)"
    for fields in (short, long):
        assert fields["owner"] == "yes"  # an idle pool: the hash owner takes it
        assert fields["attempts"] == "1"
        assert fields["held"] == "0ms"
        assert re.fullmatch(r"\d+ estimated, window \d+", fields["budget"])
        assert re.fullmatch(r"\d+ms", fields["wait"])
    assert short["budget"].endswith("window 1024") and long["budget"].endswith("window 8192")

    lines = log_lines(router, stream)
    assert len(lines) == 2
    for line, answer in zip(lines, answers, strict=True):
        assert line["request_id"] == answer["X-Request-ID"]
        assert line["route"] == answer["x-ctxroute-route"]
        assert line["pool"] == answer["x-ctxroute-pool"]
        assert line["backend"] == answer["x-ctxroute-backend"]
        assert (line["status"], line["outcome"], line["level"]) == (200, "success", "info")
        assert line["completion_tokens"] == 4 and line["finish_reason"] == "length"
        assert 0 < line["ttft_ms"] <= line["latency_ms"]
        assert "hash owner" in line["why"]
    assert [line["stream"] for line in lines] == [False, True]
    assert lines[1]["prompt_tokens"] == 1500  # the backend's usage, not the router's guess
    # nothing sensitive: neither the prompt nor the client's key
    assert PROMPT_MARK.encode() not in stream.getvalue()
    assert SECRET.encode() not in stream.getvalue()


async def test_a_drained_hash_owner_is_named_as_the_reason_it_was_passed_over(
    pools: tuple[list[Simulator], list[Simulator]], make_router: RouterFactory
) -> None:
    router = await make_router(two_pool_config(*pools), log_stream=io.BytesIO())
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 2}
    headers = {"X-Session-ID": "sticky"}
    async with aiohttp.ClientSession() as s:
        async with s.post(router.url + COMPLETIONS, json=body, headers=headers) as r:
            owner = r.headers["x-ctxroute-backend"]
            assert route_fields(r.headers["x-ctxroute-route"])["owner"] == "yes"
        async with s.post(router.url + "/admin/drain", json={"backend": owner}, headers=ADMIN) as r:
            assert r.status == 200
        async with s.post(router.url + COMPLETIONS, json=body, headers=headers) as r:
            assert r.status == 200
            assert r.headers["x-ctxroute-backend"] != owner
            assert route_fields(r.headers["x-ctxroute-route"])["owner"] == "no (drained)"


async def test_refusals_carry_their_reason_and_only_failures_pass_a_warning_level(
    pools: tuple[list[Simulator], list[Simulator]], make_router: RouterFactory
) -> None:
    stream = io.BytesIO()
    config = two_pool_config(*pools, log_level="warning")
    router = await make_router(config, log_stream=stream)
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        async with s.post(router.url + COMPLETIONS, json=body) as r:
            assert r.status == 200  # info: not written at warning
        async with s.post(router.url + COMPLETIONS, json={**body, "max_tokens": 10**6}) as r:
            assert r.status == 400  # the client's fault: info, not written either
        for sim in pools[0] + pools[1]:
            async with s.post(
                router.url + "/admin/drain", json={"backend": sim.url}, headers=ADMIN
            ) as r:
                assert r.status == 200
        async with s.post(router.url + COMPLETIONS, json=body) as r:
            assert r.status == 503
            request_id = r.headers["X-Request-ID"]
    (line,) = log_lines(router, stream)
    assert line["request_id"] == request_id
    assert (line["level"], line["status"]) == ("warning", 503)
    assert (line["outcome"], line["reject"]) == ("rejected:no_backend", "no_backend")
    assert line["route"] is None  # no backend answered
    assert "no backend is usable" in line["why"]


async def test_the_text_form_is_one_readable_line_per_request(
    pools: tuple[list[Simulator], list[Simulator]], make_router: RouterFactory
) -> None:
    stream = io.BytesIO()
    router = await make_router(two_pool_config(*pools, log_format="text"), log_stream=stream)
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 3}
    async with aiohttp.ClientSession() as s:
        async with s.post(router.url + COMPLETIONS, json=body) as r:
            assert r.status == 200
            route = r.headers["x-ctxroute-route"]
            backend = r.headers["x-ctxroute-backend"]
    log = router.ctx.request_log
    assert log is not None
    log.flush()
    (line,) = stream.getvalue().decode().splitlines()
    assert f" info 200 completions sim-model -> low-latency {backend} " in line
    assert "tokens 1+3 (length)" in line
    assert line.endswith(f"[{route}]")
