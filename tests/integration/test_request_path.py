"""The request path end to end for the defects a new user hit: HTTP/1.0 clients stream,
nothing is sent to a backend twice, a context-length 400 moves to a larger window, and a
URL with a bad port is refused by check-config."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
from ctxroute.router.config import parse_config

from tests.conftest import SimFactory
from tests.fixtures.router import RunningRouter

RouterFactory = Callable[..., Awaitable[RunningRouter]]


def one_pool(url: str, window: int = 2048, **backend: object) -> dict[str, object]:
    return {"name": "p", "model": "sim-model", "max_context_tokens": window,
            "default_max_tokens": 16, "backends": [{"url": url, **backend}]}  # fmt: skip


async def test_an_http_1_0_client_receives_a_stream_as_it_is_produced(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    sim = await make_sim(model="sim-model")
    router = await make_router(parse_config({"pools": [one_pool(sim.url)]}))
    async with aiohttp.ClientSession() as s:
        await s.post(sim.url + "/sim/faults", json={"slow_token_ms": 40})
    body = orjson.dumps({"model": "sim-model", "prompt": "hi", "max_tokens": 20,
                         "stream": True, "ignore_eos": True})  # fmt: skip
    host, port = router.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 10):
        arrivals.append(loop.time())
        data += chunk
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()  # an HTTP/1.0 client gets the raw stream
    assert payload.count(b"data: ") == 21 and payload.endswith(b"data: [DONE]\n\n")
    # 20 tokens 40+ ms apart: the bytes came over about a second, not in one piece at the end
    assert len(arrivals) >= 10
    assert arrivals[-1] - arrivals[0] > 0.4


async def test_a_backend_that_closes_after_reading_gets_the_request_once(
    make_router: RouterFactory,
) -> None:
    # the request may have been processed: the router must not send it again, anywhere
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        router = await make_router(parse_config({"pools": [one_pool(f"http://127.0.0.1:{port}")]}))
        async with (
            aiohttp.ClientSession() as s,
            s.post(router.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}) as r,
        ):
            assert r.status == 503
            assert "closed the connection before answering" in (await r.json())["error"]["message"]
        await asyncio.sleep(0.1)
        assert len(received) == 1
    finally:
        server.close()


async def test_a_context_length_400_moves_the_request_to_a_larger_window(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    # the small pool says 4,096 but its engine holds 2,048 (as when the estimate of a prompt
    # is short of its true count): the engine's 400 sends the request to the larger window
    small = await make_sim(model="sim-model", max_model_len=2048)
    large = await make_sim(model="sim-model", max_model_len=8192, num_blocks=1024)
    config = parse_config({"pools": [one_pool(small.url, 4096),
                                     {**one_pool(large.url, 8192), "name": "big"}]})  # fmt: skip
    router = await make_router(config)
    prompt = "abcd" * 3000  # 3,000 tokens for the engines
    async with (
        aiohttp.ClientSession() as s,
        s.post(router.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 8}) as r,
    ):
        assert r.status == 200, await r.text()
        assert r.headers["x-ctxroute-pool"] == "big"
        assert r.headers["x-ctxroute-attempts"] == "2"


async def test_with_no_larger_window_the_backends_400_is_the_answer(
    make_sim: SimFactory, make_router: RouterFactory
) -> None:
    small = await make_sim(model="sim-model", max_model_len=2048)
    router = await make_router(parse_config({"pools": [one_pool(small.url, 4096)]}))
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            router.url + "/v1/completions", json={"prompt": "abcd" * 3000, "max_tokens": 8}
        ) as r,
    ):
        assert r.status == 400
        assert "maximum context length" in (await r.json())["error"]["message"]


def test_check_config_refuses_a_url_whose_port_is_not_a_number(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("pools:\n  - name: a\n    model: m\n    max_context_tokens: 1000\n"
                    "    backends: [{url: 'http://h:abc'}]\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "ctxroute.router", "check-config", str(path)],
                          capture_output=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "pools.0.backends.0.url" in err and "port" in err and "Traceback" not in err
