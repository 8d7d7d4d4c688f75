"""How many streamed token events per second one simulator process delivers on one core.

The simulator runs as its own process pinned to one core (``taskset``), the load generator
on the other. N concurrent streams, each token ``--step-ms`` apart (the engine's step time),
``--tokens`` tokens per stream. Printed: events/s received by the clients, the simulator's
step lag (from /sim/stats) and its CPU time per event (from /proc).

    python -m ctxroute.bench.sim_throughput --streams 200 --step-ms 20 --tokens 300
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time

import aiohttp
from ctxroute.router.run.runtime import run_async

from tests.fixtures.servers import free_port, wait_for_port


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


async def load(url: str, streams: int, tokens: int) -> tuple[int, float]:
    body = {"prompt": "abcd" * 32, "max_tokens": tokens, "ignore_eos": True, "stream": True}
    received = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal received
        async with session.post(url + "/v1/completions", json=body) as r:
            assert r.status == 200, r.status
            async for chunk in r.content.iter_any():
                received += chunk.count(b"data: ")

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(one(session) for _ in range(streams)))
        elapsed = time.perf_counter() - start
    return received, elapsed


async def stats(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(url + "/sim/stats") as r:
        return dict(await r.json())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--step-ms", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--sim-core", default="0")
    parser.add_argument("--load-core", default="1")
    args = parser.parse_args()

    port = free_port()
    pin = ["taskset", "-c", args.sim_core] if shutil.which("taskset") else []
    cmd = [*pin, sys.executable, "-m", "ctxroute.router", "sim", "--profile", "tiny",
           "--port", str(port),
           "--set", f"weights_floor_ms={args.step_ms - 0.5}", "--set", "step_overhead_ms=0.5",
           "--max-num-seqs", str(max(256, args.streams)), "--num-blocks", "65536",
           "--max-num-batched-tokens", "65536"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    if shutil.which("taskset"):
        os.sched_setaffinity(0, {int(args.load_core)})
    try:
        wait_for_port("127.0.0.1", port, 20.0, proc)
        url = f"http://127.0.0.1:{port}"
        result: dict[str, float] = {}

        async def run() -> None:
            await load(url, 8, 5)  # warm-up
            async with aiohttp.ClientSession() as s:
                await s.post(url + "/sim/stats/reset")
            cpu0 = cpu_seconds(proc.pid)
            received, elapsed = await load(url, args.streams, args.tokens)
            cpu1 = cpu_seconds(proc.pid)
            st = await stats(url)
            result.update(received=received, elapsed=elapsed, cpu=cpu1 - cpu0, **st)

        run_async(run())
    finally:
        proc.terminate()
        proc.wait(10)
    events = result["received"]
    print(
        f"streams={args.streams} step={args.step_ms}ms tokens/stream={args.tokens} "
        f"(simulator on core {args.sim_core}, load on core {args.load_core})"
    )
    print(
        f"  events received      {events:.0f} in {result['elapsed']:.2f}s "
        f"= {events / result['elapsed']:.0f} events/s"
    )
    ideal = args.streams * 1000.0 / args.step_ms
    print(
        f"  ideal at this pacing {ideal:.0f} events/s "
        f"(achieved {100 * events / result['elapsed'] / ideal:.0f}%)"
    )
    cpu = result["cpu"]
    print(
        f"  simulator CPU        {cpu:.2f}s = {1e6 * cpu / events:.1f} us/event, "
        f"{100 * cpu / result['elapsed']:.0f}% of its core"
    )
    print(
        f"  step lag             p50 {result['step_lag_p50_ms']:.2f} ms, "
        f"p99 {result['step_lag_p99_ms']:.2f} ms, max {result['step_lag_max_ms']:.2f} ms"
    )


if __name__ == "__main__":
    main()
