"""``ctxroute demo``: simulated vLLM pools on loopback and the router in front of them.

Loads ``config/demo.yaml`` through router/config (the embedded default: in-process state,
no Redis), starts a simulator for every backend it lists (profile by pool:
``DEMO_PROFILES``), then the router. When one of the configured ports is taken (another
demo, another server), everything binds to free ports instead, and the banner says so;
``--free-ports`` asks for that from the start (tests, busy machines).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from ctxroute.backends.simulator import PROFILES, SimConfig, Simulator
from ctxroute.router.api.app import create_app, make_runner, start_sites
from ctxroute.router.config import ConfigError, RouterConfig, load_config, shipped
from ctxroute.router.observe.logs import setup_logging
from ctxroute.router.run.server import exposure_problem

DEMO_CONFIG = shipped("demo.yaml")
DEMO_PROFILES = {"low-latency": "l4-1b", "high-memory": "h100-8b"}


async def run_demo(*, free_ports: bool = False, config_path: Path | None = None) -> None:
    """``config_path``: the pools to simulate and the router's settings (default: the
    shipped ``demo.yaml``)."""
    # router/config is the one reader of configuration files
    config = load_config(config_path if config_path is not None else DEMO_CONFIG)
    problem = exposure_problem(config)
    if problem is not None:
        raise ConfigError(problem)
    setup_logging(config.log_level, config.log_format)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    taken = [] if free_ports else _taken_ports(config)
    if taken:
        print(f"ctxroute demo: port {', '.join(map(str, taken))} is in use: binding the router "
              "and the simulators to free ports instead (pass --free-ports to ask for this)",
              flush=True)  # fmt: skip
        free_ports = True
    sims: list[Simulator] = []
    runner: web.AppRunner | None = None
    try:
        config = await _start_simulators(config, free_ports, sims)
        runner = make_runner(create_app(config))
        await runner.setup()
        url, _ = await start_sites(runner, config)
        _banner(config, url)
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        for sim in sims:
            await sim.stop()
        print("ctxroute demo: stopped", flush=True)


async def _start_simulators(config: RouterConfig, free_ports: bool,
                            sims: list[Simulator]) -> RouterConfig:  # fmt: skip
    """A simulator for every backend of ``config`` (appended to ``sims`` as each starts),
    and the same validated config pointed at the simulators actually started."""
    pools = []
    seed = 0
    for pool in config.pools:
        backends = []
        for backend in pool.backends:
            url = urlsplit(backend.url)
            profile = PROFILES[DEMO_PROFILES.get(pool.name, "tiny")]
            sim = Simulator(
                SimConfig(
                    model=backend.model or pool.model,
                    profile=profile.replace(max_model_len=pool.max_context_tokens),
                    host=url.hostname or "127.0.0.1",
                    port=0 if free_ports else (url.port or 80),
                    seed=seed,
                )
            )
            seed += 1
            await sim.start()
            sims.append(sim)
            backends.append(backend.model_copy(update={"url": sim.url}))
        pools.append(pool.model_copy(update={"backends": tuple(backends)}))
    listen = config.listen.model_copy(update={"port": 0}) if free_ports else config.listen
    return config.model_copy(update={"pools": tuple(pools), "listen": listen})


def _banner(config: RouterConfig, router_url: str) -> None:
    print(f"ctxroute demo: router on {router_url}")
    for pool in config.pools_by_window():
        profile_name = DEMO_PROFILES.get(pool.name, "tiny")
        print(f"  pool {pool.name:12s} window {pool.max_context_tokens:>6} tokens, "
              f"{len(pool.backends)} simulated backends ({profile_name}): "
              + " ".join(b.url for b in pool.backends))  # fmt: skip
    model = config.pools[0].model
    print("\ntry:")
    print(f"  curl -s {router_url}/v1/chat/completions -H 'content-type: application/json' "
          f"-d '{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":"
          f"\"hello\"}}],\"max_tokens\":16}}' -i")  # fmt: skip
    print(f"  curl -s {router_url}/status")
    print(f"  {_command()} status {router_url}          # the same, as tables")
    print(f"  open {router_url}/dashboard          # live, in a browser")
    print(f"  curl -s {router_url}/metrics         # Prometheus")
    print(
        "  (the x-ctxroute-route header says where a request went and why; each request"
        " is logged below)"
    )
    if config.auth is None or config.auth.mode == "none":
        print(
            "\nAUTH IS OFF: any program on this machine may call this router (it listens on "
            "loopback only).\n  For API keys: `ctxroute keys new TENANT` and the README's "
            "'API keys' section."
        )
    print("\nCtrl-C stops everything.", flush=True)


def _command() -> str:
    """How this process was started, for commands the banner suggests (``.venv/bin/ctxroute``
    when that is what the user typed, not a bare name that is not on their PATH)."""
    argv0 = Path(sys.argv[0])
    return str(argv0) if argv0.name == "ctxroute" else "ctxroute"


def _taken_ports(config: RouterConfig) -> list[int]:
    """The configured ports (the router's and every simulator's) that cannot be bound now."""
    wanted = [(config.listen.host, config.listen.port)]
    for pool in config.pools:
        for backend in pool.backends:
            url = urlsplit(backend.url)
            wanted.append((url.hostname or "127.0.0.1", url.port or 80))
    taken = []
    for host, port in wanted:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                taken.append(port)
    return taken
