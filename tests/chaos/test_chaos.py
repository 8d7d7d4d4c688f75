"""Chaos over loopback: real ``ctxroute serve`` processes (one or two replicas, ``--workers
2``), simulators with their fault modes, a real redis-server paused, flushed and
restarted, clients that leave, a replica stopped with SIGTERM under load. Every scenario
ends with the nothing-lost ledger (tests/chaos/ledger.py): each request ended exactly
once, no attempt beyond the rules, every stream complete or ended with an error event,
and nothing left in flight or waiting."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import yaml
from ctxroute.backends.simulator import Simulator

from tests.chaos.ledger import Ledger, read_log, send, settled
from tests.conftest import SimFactory
from tests.fixtures.servers import free_port, run_redis_server, wait_for_port
from tests.integration.test_breakers import faults

pytestmark = pytest.mark.timeout(120)
CLI = [sys.executable, "-m", "ctxroute.router"]
MAX_ATTEMPTS = 3


class RouterProcess:
    """``ctxroute serve`` in a process of its own, its stderr (the request log) in a file."""

    def __init__(self, tmp: Path, name: str, config: dict[str, Any], workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"{name}.log"
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**config, "listen": {"host": "127.0.0.1",
                                                             "port": self.port}}))  # fmt: skip
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([*CLI, "serve", "--config", str(path), "--workers",
                                      str(workers)], stdout=subprocess.DEVNULL,
                                     stderr=self._log)  # fmt: skip

    async def ready(self) -> None:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", self.port, 30.0, self.proc)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = await asyncio.to_thread(self.proc.wait, 60)
        self._log.close()
        return code


Routers = Callable[..., Awaitable[RouterProcess]]


@pytest.fixture
async def routers(tmp_path: Path) -> AsyncIterator[Routers]:
    started: list[RouterProcess] = []
    names = itertools.count()

    async def start(config: dict[str, Any], workers: int = 1) -> RouterProcess:
        router = RouterProcess(tmp_path, f"router-{next(names)}", config, workers)
        started.append(router)
        await router.ready()
        return router

    yield start
    for router in started:  # (after a failed test too: no process, no open file left)
        if router.proc.poll() is None:
            router.proc.kill()
            router.proc.wait()
        router._log.close()


def fleet(sims: list[Simulator], **extra: Any) -> dict[str, Any]:
    return {
        "pools": [{"name": "only", "model": "sim-model", "max_context_tokens": 2048,
                   "default_max_tokens": 16,
                   "backends": [{"url": s.url, "max_in_flight": 16} for s in sims]}],
        "timeouts": {"ttfb_s": 1.0, "connect_s": 0.5, "idle_read_s": 2.0},
        "breakers": {"consecutive_failures": 3, "open_s": 0.5, "jitter": 0.0},
        "probe": {"interval_s": 0.2, "timeout_s": 0.5},
        "routing": {"max_attempts": MAX_ATTEMPTS},
        **extra,
    }  # fmt: skip


async def load(s: aiohttp.ClientSession, urls: list[str], ledger: Ledger, tag: str, n: int,
               every_s: float = 0.02, **kw: Any) -> None:  # fmt: skip
    """``n`` requests, one every ``every_s``, half of them streams, over ``urls`` in turn."""
    tasks = []
    for i in range(n):
        url = urls[i % len(urls)]
        tasks.append(asyncio.create_task(
            send(s, url, ledger, f"{tag}-{i}", stream=i % 2 == 0, **kw)))  # fmt: skip
        await asyncio.sleep(every_s)
    await asyncio.gather(*tasks)


def received(sims: list[Simulator]) -> Counter[str]:
    total: Counter[str] = Counter()
    for sim in sims:
        total.update(sim.received_ids)
    return total


async def verdict(s: aiohttp.ClientSession, ledger: Ledger, routers: list[RouterProcess],
                  sims: list[Simulator], running: list[RouterProcess] | None = None,
                  unlogged: frozenset[str] = frozenset()) -> None:  # fmt: skip
    """The ledger's rules over every router's log, and the routers still running settled."""
    alive = routers if running is None else running
    left = await settled(s, [r.url for r in alive])
    for r in routers:
        await r.stop()
    lines = [line for r in routers for line in read_log(r.log_path)]
    violations = ledger.check(lines, received(sims), MAX_ATTEMPTS, unlogged) + left
    assert not violations, "\n".join(violations[:20])
    answered = Counter(str(x.status) for x in ledger.sent)
    assert ledger.sent and sum(answered.values()) == len(ledger.sent)


# ---- a backend misbehaving ------------------------------------------------------------------

BACKEND_FAULTS = {
    "refusing": {"refuse_for_s": 30.0},
    "hanging before headers": {"hang_before_first_token": 3.0},
    "dying mid-stream": {"cut_after_tokens": 2},
    "trickling": {"slow_token_ms": 60.0},
    "5xx bursts": {"burst_5xx": 12},
    "JSON to a stream": {"json_to_streams": True},
    "engine dead": {"engine_dead": True},
}


@pytest.mark.parametrize("fault", sorted(BACKEND_FAULTS))
async def test_a_misbehaving_backend_loses_nothing(
    make_sim: SimFactory, routers: Routers, fault: str
) -> None:
    sims = [await make_sim(model="sim-model", seed=i) for i in range(2)]
    router = await routers(fleet(sims))
    ledger = Ledger()
    async with aiohttp.ClientSession() as s:
        await faults(s, sims[0], **BACKEND_FAULTS[fault])
        await load(s, [router.url], ledger, fault.replace(" ", "_"), 40)
        await faults(s, sims[0], refuse_for_s=0.0)  # (reopens the socket when it was shut)
        await verdict(s, ledger, [router], sims)
    ok = sum(1 for x in ledger.sent if x.status == 200)
    assert ok >= 20, Counter(x.status for x in ledger.sent)  # the healthy one served on


async def test_workers_under_5xx_bursts_lose_nothing(
    make_sim: SimFactory, routers: Routers
) -> None:
    sims = [await make_sim(model="sim-model", seed=i) for i in range(2)]
    router = await routers(fleet(sims), workers=2)
    ledger = Ledger()
    async with aiohttp.ClientSession() as s:
        await faults(s, sims[0], burst_5xx=20)
        await load(s, [router.url], ledger, "workers", 40)
        await verdict(s, ledger, [router], sims)


# ---- clients that leave ---------------------------------------------------------------------


@pytest.mark.parametrize("where", ["queued", "in prefill", "mid-stream"])
async def test_clients_that_leave_are_never_sent_on(
    make_sim: SimFactory, routers: Routers, where: str
) -> None:
    sim = await make_sim(model="sim-model")
    patient = {"short": {"deadline_s": 30, "max_wait_s": 10, "codel_target_s": 5.0,
                         "codel_interval_s": 5.0}}  # fmt: skip
    config = fleet([sim], admission=patient, timeouts={"ttfb_s": 10.0, "idle_read_s": 10.0})
    if where == "queued":
        config["pools"][0]["backends"][0]["max_in_flight"] = 1
    router = await routers(config)
    ledger = Ledger()
    async with aiohttp.ClientSession() as s:
        if where == "mid-stream":
            await faults(s, sim, slow_token_ms=100.0)
        else:
            await faults(s, sim, hang_before_first_token=0.6)
        await load(s, [router.url], ledger, where.replace(" ", "_"), 12, every_s=0.01,
                   max_tokens=20, leave_after_s=0.3)  # fmt: skip
        await faults(s, sim, hang_before_first_token=0.0, slow_token_ms=0.0)
        await verdict(s, ledger, [router], [sim])
    assert sum(1 for x in ledger.sent if x.left) >= 6


# ---- the shared store -----------------------------------------------------------------------


@pytest.mark.parametrize("trouble", ["paused", "flushed", "restarted"])
async def test_two_replicas_ride_out_redis_trouble(
    make_sim: SimFactory, routers: Routers, trouble: str
) -> None:
    sims = [await make_sim(model="sim-model", seed=i) for i in range(2)]
    with run_redis_server() as server:
        config = fleet(sims, store={"redis_url": server.url, "timeout_ms": 200})
        replicas = [await routers(config), await routers(config)]
        urls = [r.url for r in replicas]
        ledger = Ledger()
        async with aiohttp.ClientSession() as s:
            first = asyncio.create_task(load(s, urls, ledger, f"redis_{trouble}", 60))
            await asyncio.sleep(0.3)
            if trouble == "paused":
                server.proc.send_signal(signal.SIGSTOP)
                await asyncio.sleep(1.0)
                server.proc.send_signal(signal.SIGCONT)
            elif trouble == "flushed":
                redis.Redis.from_url(server.url).flushall()
            else:
                server.proc.kill()
                server.proc.wait()
                await asyncio.sleep(0.5)
                with run_redis_server(server.port):
                    await first
                    await verdict(s, ledger, replicas, sims)
                return
            await first
            await verdict(s, ledger, replicas, sims)


# ---- a rolling restart ----------------------------------------------------------------------


async def test_a_replica_stopped_under_load_finishes_its_streams(
    make_sim: SimFactory, routers: Routers
) -> None:
    sims = [await make_sim(model="sim-model", seed=i) for i in range(2)]
    config = fleet(sims, shutdown={"grace_s": 20})
    leaving, staying = await routers(config), await routers(config)
    ledger = Ledger()
    async with aiohttp.ClientSession() as s:
        for sim in sims:
            await faults(s, sim, slow_token_ms=40.0)  # streams of ~1 s
        running = asyncio.create_task(
            load(s, [leaving.url, staying.url], ledger, "rolling", 30, max_tokens=24)
        )
        await asyncio.sleep(0.4)
        leaving.proc.send_signal(signal.SIGTERM)  # while streams run on it
        await running
        assert await leaving.stop() == 0
        await verdict(s, ledger, [leaving, staying], sims, running=[staying])
    # what the stopping replica did not take was refused with 503 shutting_down, or could
    # not connect: never cut, never lost
    statuses = Counter(x.status for x in ledger.sent)
    assert set(statuses) <= {200, 503, None}, statuses
    assert statuses[200] >= 15


async def test_a_replica_killed_while_it_holds_the_probe_lease(
    make_sim: SimFactory, routers: Routers
) -> None:
    # replica a takes the fleet's probe lease for a failed backend and dies (SIGKILL) with
    # its probe in flight; the lease does not outlive it for long (it expires, or the next
    # opening clears it) and replica b probes the backend and closes its breaker
    sims = [await make_sim(model="sim-model", seed=i) for i in range(2)]
    broken = sims[0]
    breakers = {"consecutive_failures": 3, "open_s": 0.5, "jitter": 0.0, "max_open_s": 1.0}
    with run_redis_server() as server:
        config = fleet(sims, store={"redis_url": server.url}, breakers=breakers)
        a, b = await routers(config), await routers(config)
        ledger = Ledger()
        async with aiohttp.ClientSession() as s:

            async def breaker_on(router: RouterProcess) -> str:
                async with s.get(router.url + "/status") as r:
                    pools = (await r.json())["pools"]
                backend = next(x for x in pools[0]["backends"] if x["url"] == broken.url)
                return str(backend["breaker"]["error"])

            await faults(s, broken, burst_5xx=1000)
            i = itertools.count()
            while await breaker_on(b) != "open":  # opened through a, shared with b
                await send(s, a.url, ledger, f"open-{next(i)}", stream=False,
                           headers={"X-Session-ID": f"s{next(i)}"})  # fmt: skip
            await faults(s, broken, burst_5xx=0, hang_before_first_token=30.0)
            await asyncio.sleep(0.6)  # past the open time: a takes the lease and probes
            probes = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20.0
            while not [k for k in broken.received_ids if k.startswith("probe-")]:
                # the first requests go elsewhere while a takes the lease (in the background)
                assert loop.time() < deadline, "no probe reached the broken backend"
                rid = f"probe-{len(probes)}"
                headers = {"X-Session-ID": rid}
                probes.append(asyncio.create_task(send(s, a.url, ledger, rid, stream=True,
                                                       headers=headers)))  # fmt: skip
                await asyncio.sleep(0.05)
            lease = redis.Redis.from_url(server.url).get(f"{{ctxroute}}:probe:{broken.url}:0")
            assert lease is not None, "nobody holds the probe lease"
            a.proc.kill()  # with the lease, and its probe hanging on the backend
            await asyncio.gather(*probes)
            await faults(s, broken, hang_before_first_token=0.0)
            deadline = loop.time() + 25.0  # at worst the lease's own expiry (10 s), a probe
            while await breaker_on(b) != "closed":
                assert loop.time() < deadline, "replica b never probed the backend"
                await send(s, b.url, ledger, f"after-{next(i)}", stream=False,
                           headers={"X-Session-ID": f"b{next(i)}"})  # fmt: skip
                await asyncio.sleep(0.1)
            killed = frozenset(x.request_id for x in ledger.sent if x.request_id.startswith(
                ("open-", "probe-")))  # fmt: skip
            await verdict(s, ledger, [a, b], sims, running=[b], unlogged=killed)
