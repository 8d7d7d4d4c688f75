"""``ctxroute status URL`` against a running router and simulator: a real process reading
a real /status, as an operator runs it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable

import aiohttp
from ctxroute.backends.simulator import Simulator
from ctxroute.router.config import parse_config

from tests.fixtures.router import ADMIN, RunningRouter
from tests.fixtures.servers import free_port

RouterFactory = Callable[..., Awaitable[RunningRouter]]
CLI = [sys.executable, "-m", "ctxroute.router"]


async def status_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*CLI, "status", *args], capture_output=True, text=True, timeout=30,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


async def test_status_shows_pools_backends_breakers_and_admission(
    sim: Simulator, make_router: RouterFactory
) -> None:
    config = parse_config(
        {
            "pools": [
                {
                    "name": "chat",
                    "model": "sim-model",
                    "max_context_tokens": 2048,
                    "backends": [{"url": sim.url}, {"url": "http://127.0.0.1:9"}],
                }
            ],
            "timeouts": {"connect_s": 0.5},
        },
        environ={},
    )
    router = await make_router(config)
    async with aiohttp.ClientSession() as s:
        async with s.post(
            router.url + "/admin/drain", json={"backend": sim.url}, headers=ADMIN
        ) as r:
            assert r.status == 200
    done = await status_cli(router.url)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "pool chat (sim-model, window 2,048)" in out
    # each backend by the part of its URL that tells it apart (both are on 127.0.0.1)
    port = sim.url.rpartition(":")[2]
    (drained,) = [line.split() for line in out.splitlines() if line.split()[:1] == [f":{port}"]]
    assert "drained" in drained[1]
    (other,) = [line.split() for line in out.splitlines() if line.split()[:1] == [":9"]]
    assert other[1] in ("ok", "down")  # the probe may not have run yet
    assert "admission" in out
    assert "store memory up" in out


async def test_status_of_nothing_listening_says_so_and_exits_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = await status_cli(url)
    assert done.returncode == 1
    assert f"cannot read {url}/status" in done.stderr


async def test_status_watch_rejects_a_non_positive_interval() -> None:
    done = await status_cli("http://127.0.0.1:1", "--watch", "0")
    assert done.returncode == 2
    assert "--watch must be above 0" in done.stderr
