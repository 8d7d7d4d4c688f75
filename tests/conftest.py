from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, BinaryIO

import pytest
import uvloop
from ctxroute.backends.simulator import PROFILES, SimConfig, Simulator
from ctxroute.router.config import RouterConfig

from tests.fixtures.router import RunningRouter, start_router
from tests.fixtures.servers import RedisServer, run_redis_server


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on uvloop, as `ctxroute serve` does (its transports differ from asyncio's)."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, for the whole session."""
    with run_redis_server() as server:
        yield server


SimFactory = Callable[..., Awaitable[Simulator]]
# a stop that takes longer has hung: fail the test, with the tasks still running. (Not left
# to pytest-timeout: its SIGALRM can land inside a library that turns the exception into
# an error it survives, and then nothing ends the wait.)
STOP_TIMEOUT_S = 60.0


async def _bounded(stopping: Awaitable[None], what: str) -> None:
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await stopping
    except TimeoutError:
        running = "\n".join(repr(task) for task in asyncio.all_tasks())
        pytest.fail(f"{what} did not stop within {STOP_TIMEOUT_S:g}s; tasks:\n{running}")


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    """Start in-process simulators bound to free ports; all are stopped after the test.

    ``await make_sim(profile="tiny", num_blocks=64, model="m", speed=1.0, ...)``: keyword
    arguments that name Profile fields override the profile, the rest go to SimConfig.
    """
    started: list[Simulator] = []

    async def factory(profile: str = "tiny", **kwargs: Any) -> Simulator:
        base = PROFILES[profile]
        fields = set(base.__dataclass_fields__)
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        sim = Simulator(SimConfig(profile=base.replace(**overrides), **kwargs))
        await sim.start()
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        await _bounded(sim.stop(), f"simulator {sim.url}")


@pytest.fixture
async def sim(make_sim: SimFactory) -> Simulator:
    return await make_sim(model="sim-model")


@pytest.fixture
async def make_router() -> AsyncIterator[Callable[..., Awaitable[RunningRouter]]]:
    """Start routers in-process on free ports; all are stopped after the test."""
    started: list[RunningRouter] = []

    async def factory(config: RouterConfig, *, probes: bool = False,
                      log_stream: BinaryIO | None = None,
                      span_exporter: object | None = None) -> RunningRouter:  # fmt: skip
        router = await start_router(config, probes=probes, log_stream=log_stream,
                                    span_exporter=span_exporter)  # fmt: skip
        started.append(router)
        return router

    yield factory
    for router in started:
        await _bounded(router.stop(), f"router {router.url}")
