"""The soak: minutes of open-loop load past capacity on two router replicas sharing a real
redis-server, four simulated engines, and random faults from the chaos suite's list
(a backend refusing, hanging, dying mid-stream, trickling, answering 5xx bursts or JSON
to streams, a dead engine; Redis paused), with some clients leaving. At the end, the
nothing-lost ledger over every request, and the routers' RSS at the start and the end.

    .venv/bin/python -m tests.chaos.soak                  # 10 minutes at 45 req/s
    .venv/bin/python -m tests.chaos.soak --minutes 1 --rate 30

Not in CI (it takes minutes); its figures are in the README. ``--rate``: the default is
1.5x this fleet's capacity (about 30 req/s: at 30 it refuses 5% of requests, during the
faults; at 45, 17%; measured with this script, 30 s each, 2026-12-02).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from ctxroute.backends.simulator import PROFILES, SimConfig, Simulator

from tests.chaos.ledger import Ledger, read_log, send, settled
from tests.chaos.test_chaos import (
    BACKEND_FAULTS,
    MAX_ATTEMPTS,
    RouterProcess,
    faults,
    fleet,
    received,
)
from tests.fixtures.servers import rss_mb, run_redis_server

# every engine's steps 20 ms slower than the tiny profile's: answers of 8-64 tokens take
# 0.2-1.3 s, so that four engines of 8 slots each are the limit, not this machine's CPU
BASE = {"slow_token_ms": 20.0}


async def _chaos(s: aiohttp.ClientSession, sims: list[Simulator],
                 redis_proc: subprocess.Popen[bytes],
                 until: float, rng: random.Random, said: Counter[str]) -> None:  # fmt: skip
    """Every ~15 s one fault on one engine for 5-10 s (or Redis paused for 1 s)."""
    loop = asyncio.get_running_loop()
    while loop.time() < until - 12:
        await asyncio.sleep(rng.uniform(5, 10))
        if rng.random() < 0.15:
            said["redis paused"] += 1
            redis_proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(1.0)
            redis_proc.send_signal(signal.SIGCONT)
            continue
        name = rng.choice(sorted(BACKEND_FAULTS))
        sim = rng.choice(sims)
        said[name] += 1
        await faults(s, sim, **BACKEND_FAULTS[name])
        await asyncio.sleep(rng.uniform(5, 10))
        await faults(s, sim, refuse_for_s=0.0)
        async with s.delete(sim.url + "/sim/faults") as r:
            await r.read()
        await faults(s, sim, **BASE)


async def soak(minutes: float, rate: float, seed: int) -> int:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="ctxroute-soak-"))
    sims = [Simulator(SimConfig(model="sim-model", profile=PROFILES["tiny"], seed=i))
            for i in range(4)]  # fmt: skip
    for sim in sims:
        await sim.start()
    ledger = Ledger()
    said: Counter[str] = Counter()
    with run_redis_server() as server:
        # (the request log at info level: the ledger reads it)
        config = fleet(sims, store={"redis_url": server.url, "timeout_ms": 200})
        for pool in config["pools"]:
            for backend in pool["backends"]:
                backend["max_in_flight"] = 8
        replicas = [RouterProcess(tmp, f"r{i}", config) for i in range(2)]
        for r in replicas:
            await r.ready()
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            for sim in sims:
                await faults(s, sim, **BASE)
            warm = [asyncio.create_task(send(s, replicas[i % 2].url, ledger, f"warm-{i}",
                                             stream=True)) for i in range(40)]  # fmt: skip
            await asyncio.gather(*warm)
            rss_start = [rss_mb(r.proc.pid) for r in replicas]
            until = loop.time() + minutes * 60
            chaos = asyncio.create_task(_chaos(s, sims, server.proc, until, rng, said))
            tasks = []
            i = 0
            started = time.monotonic()
            while loop.time() < until:
                await asyncio.sleep(rng.expovariate(rate))
                leave = rng.uniform(0.05, 1.0) if rng.random() < 0.05 else None
                tasks.append(asyncio.create_task(send(
                    s, replicas[i % 2].url, ledger, f"soak-{i}", stream=rng.random() < 0.7,
                    max_tokens=rng.randint(8, 64), leave_after_s=leave)))  # fmt: skip
                i += 1
            await asyncio.gather(*tasks)
            chaos.cancel()
            for sim in sims:
                async with s.delete(sim.url + "/sim/faults") as r:
                    await r.read()
            left = await settled(s, [r.url for r in replicas])
            rss_end = [rss_mb(r.proc.pid) for r in replicas]
        for r in replicas:
            await r.stop()
    for sim in sims:
        await sim.stop()
    lines = [line for r in replicas for line in read_log(r.log_path)]
    violations = ledger.check(lines, received(sims), MAX_ATTEMPTS) + left
    elapsed = time.monotonic() - started
    statuses = Counter("no answer" if x.status is None else str(x.status) for x in ledger.sent)
    outcomes = Counter(str(line["outcome"]) for line in lines)
    print(f"soak: {len(ledger.sent)} requests in {elapsed:.0f} s ({rate:g}/s offered), "
          f"2 replicas + redis, 4 engines, seed {seed}")  # fmt: skip
    print(f"  client statuses: {dict(sorted(statuses.items()))}")
    print(f"  router outcomes: {dict(outcomes.most_common())}")
    print(f"  clients that left on purpose: {sum(1 for x in ledger.sent if x.left)}")
    print(f"  faults injected: {dict(sorted(said.items()))}")
    print(f"  RSS MB (replica 1, replica 2): start {rss_start[0]:.0f}, {rss_start[1]:.0f}; "
          f"end {rss_end[0]:.0f}, {rss_end[1]:.0f}")  # fmt: skip
    lost = [x for x in ledger.sent if x.status is None and not x.left]
    for x in lost[:5]:
        print(f"  no answer: {x.request_id}: {x.error}")
    print(f"  ledger violations: {len(violations)}")
    for v in violations[:20]:
        print("   ", v)
    return 1 if violations else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=45.0, help="requests per second")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.exit(asyncio.run(soak(args.minutes, args.rate, args.seed)))


if __name__ == "__main__":
    main()
