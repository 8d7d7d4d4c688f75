"""``ctxroute serve``: the router on uvloop, one process or N with ``reuse_port``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys

from aiohttp import web

from router.app import create_app, make_runner
from router.config import RouterConfig
from router.runtime import run_async


async def serve_until_stopped(config: RouterConfig, *, reuse_port: bool = False,
                              announce: bool = True) -> None:  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    runner = make_runner(create_app(config))
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.listen.host, config.listen.port,
                           reuse_port=reuse_port or None, backlog=1024)  # fmt: skip
        await site.start()
        if announce:
            host, port = runner.addresses[0][:2]
            print(f"ctxroute listening on http://{host}:{port} (pid {os.getpid()})", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def _worker(config: RouterConfig) -> None:
    run_async(serve_until_stopped(config, reuse_port=True))


def serve(config: RouterConfig, workers: int = 1) -> int:
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")  # fmt: skip
    if workers <= 1:
        run_async(serve_until_stopped(config))
        return 0
    if config.listen.port == 0:
        print("ctxroute serve: --workers needs a fixed listen port", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(config,), daemon=False) for _ in range(workers)]
    for proc in procs:
        proc.start()

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = []
    for proc in procs:
        proc.join()
        codes.append(proc.exitcode or 0)
    return max(codes)
