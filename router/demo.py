"""``ctxroute demo``: simulated vLLM pools on loopback, ready to be curled.

Two pools, as a real fleet would have them: a low-latency pool (small fast GPUs, short
window) and a high-memory pool (H100s, long window). The router joins them in front once
it exists (issue 3); until then the demo serves the pools directly and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass

from backends.simulator import PROFILES, SimConfig, Simulator


@dataclass(frozen=True, slots=True)
class DemoBackend:
    pool: str
    model: str
    profile: str
    port: int


DEMO_BACKENDS = (
    DemoBackend("low-latency", "demo-model", "l4-1b", 8101),
    DemoBackend("low-latency", "demo-model", "l4-1b", 8102),
    DemoBackend("high-memory", "demo-model", "h100-8b", 8201),
    DemoBackend("high-memory", "demo-model", "h100-8b", 8202),
)


async def run_demo(host: str = "127.0.0.1", base_port: int | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    sims: list[Simulator] = []
    try:
        for i, backend in enumerate(DEMO_BACKENDS):
            port = backend.port if base_port is None else (base_port + i if base_port else 0)
            config = SimConfig(
                model=backend.model, profile=PROFILES[backend.profile], host=host, port=port, seed=i
            )
            sims.append(await Simulator(config).start())
        print("ctxroute demo: simulated vLLM pools are up")
        for backend, sim in zip(DEMO_BACKENDS, sims, strict=True):
            print(
                f"  {backend.pool:12s} {backend.profile:8s} {sim.url}  "
                f"(max_model_len {sim.profile.max_model_len})"
            )
        first = sims[0].url
        print("\ntry:")
        print(
            f"  curl -s {first}/v1/chat/completions -H 'content-type: application/json' \\\n"
            f'    -d \'{{"model":"demo-model","messages":[{{"role":"user","content":'
            f'"hello"}}],"max_tokens":16}}\''
        )
        print(f"  curl -s {first}/metrics | grep '^vllm:'")
        print("\nCtrl-C stops everything.", flush=True)
        await stop.wait()
    finally:
        for sim in sims:
            await sim.stop()
        print("ctxroute demo: stopped", flush=True)
