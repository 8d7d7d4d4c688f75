"""``ctxroute serve``: the router on uvloop, one process or N with ``reuse_port``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import mmap
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import sys
import time
from typing import cast

from ctxroute.router.api.app import create_app, make_runner, start_sites
from ctxroute.router.api.auth import Gatekeeper, with_tenants
from ctxroute.router.api.context import RouterContext
from ctxroute.router.config import RouterConfig
from ctxroute.router.fleet.topology import Fleet
from ctxroute.router.observe.logs import setup_logging
from ctxroute.router.observe.metrics import Metrics, MetricsShare
from ctxroute.router.run.runtime import run_async
from ctxroute.router.run.shutdown import stop_gracefully
from ctxroute.router.store.loadboard import LoadBoard, LoadView

log = logging.getLogger("ctxroute.serve")

# a worker that dies this soon after its start is failing to start (a port taken, a bad
# tokenizer path): restarting it would only loop
_MIN_UPTIME_S = 5.0


async def serve_until_stopped(
    config: RouterConfig,
    *,
    reuse_port: bool = False,
    announce: bool = True,
    board: LoadView | None = None,
    metrics_share: MetricsShare | None = None,
) -> None:
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:  # the first stops in order (shutdown.py), a second hurries it
        (hurry if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    runner = make_runner(create_app(config, board=board, metrics_share=metrics_share))
    await runner.setup()
    try:
        url, admin_url = await start_sites(runner, config, reuse_port=reuse_port)
        # everything made so far (modules, config, the app) lives as long as the process:
        # moved out of the collector's reach, it is never traversed again by the full
        # collections that per-request garbage triggers
        gc.collect()
        gc.freeze()
        if announce:
            print(f"ctxroute listening on {url} (pid {os.getpid()})", flush=True)
            if admin_url is not None:
                print(f"ctxroute admin address: {admin_url}", flush=True)
        await stop.wait()
        await stop_gracefully(runner.app[RouterContext.KEY], config.shutdown, hurry)
    finally:
        await runner.cleanup()


def _worker(config: RouterConfig, shared: mmap.mmap, metrics: mmap.mmap, backends: int,
            rows: int, row: int) -> None:  # fmt: skip
    # default signal handling in the child: the parent forwards SIGINT/SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    board = LoadBoard(backends, rows=rows, row=row, shared=shared)
    share = MetricsShare(metrics, rows, row, len(Metrics.for_config(config).vector()))
    run_async(serve_until_stopped(config, reuse_port=True, board=board, metrics_share=share))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def exposure_problem(config: RouterConfig) -> str | None:
    """Why ``serve`` must not start: keys off (no ``auth``) on an address other hosts
    reach, unless the configuration says ``auth: {mode: none}`` in so many words."""
    if config.auth is not None or is_loopback(config.listen.host):
        return None
    return (
        f"listen.host {config.listen.host} is reachable from other hosts and the "
        "configuration has no 'auth': add API keys (ctxroute keys new TENANT), or say "
        "'auth: {mode: none}' to run open on purpose"
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(config: RouterConfig, workers: int = 1) -> int:
    problem = exposure_problem(config)
    if problem is not None:
        print(f"ctxroute serve: {problem}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    if config.auth is not None and config.auth.mode == "none":
        log.warning("auth is off (auth: {mode: none}): anyone who reaches %s:%d may call it",
                    config.listen.host, config.listen.port)  # fmt: skip
    if workers <= 1:
        run_async(serve_until_stopped(config))
        return 0
    if config.listen.port == 0:
        print("ctxroute serve: --workers needs a fixed listen port", file=sys.stderr)
        return 2
    return _supervise(config, workers)


def _supervise(config: RouterConfig, workers: int) -> int:
    """Fork ``workers`` processes that share one load board (each writes its own row) and
    one listening port (SO_REUSEPORT). A worker that dies is replaced, after its row of
    the board is cleared (its requests died with it); one that dies right after starting
    stops the whole server. The exit status is non-zero when any worker ended badly."""
    supervisor = _Supervisor(config, workers)
    signal.signal(signal.SIGINT, supervisor.forward)
    signal.signal(signal.SIGTERM, supervisor.forward)
    for row in range(workers):
        supervisor.start(row)
    while supervisor.procs:
        procs = supervisor.procs
        sentinels = {proc.sentinel: row for row, proc in procs.items()}
        for sentinel in multiprocessing.connection.wait(list(sentinels)):
            supervisor.ended(sentinels[cast(int, sentinel)])
    return 1 if supervisor.failed else 0


class _Supervisor:
    """The workers of ``serve --workers N`` and what happened to them."""

    def __init__(self, config: RouterConfig, workers: int) -> None:
        # the tenants the metrics name, from the keys as read now: every worker's the same
        self.config = config = with_tenants(config, Gatekeeper(config))
        self.workers = workers
        self.backends = len(Fleet.from_config(config).backends)
        self.shared = LoadBoard.shared_memory(self.backends, workers)
        self.board = LoadBoard(self.backends, rows=workers, row=0, shared=self.shared)
        # each worker's metrics in its own row: a replaced worker carries its totals on
        self.metrics = MetricsShare.shared_memory(workers, len(Metrics.for_config(config).vector()))
        self.mp = multiprocessing.get_context("fork")
        self.procs: dict[int, multiprocessing.process.BaseProcess] = {}
        self.started: dict[int, float] = {}
        self.stopping = False
        self.failed = False
        self.forwarded: set[int] = set()  # signals sent to the workers to stop them

    def start(self, row: int) -> None:
        args = (self.config, self.shared, self.metrics, self.backends, self.workers, row)
        proc = self.mp.Process(target=_worker, args=args, daemon=False)
        proc.start()
        self.procs[row] = proc
        self.started[row] = time.monotonic()

    def forward(self, signum: int, _frame: object) -> None:
        """Pass a stop signal on to every worker still running."""
        self.stopping = True
        self.forwarded.add(signum)
        for proc in self.procs.values():
            if proc.pid is not None and proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    def ended(self, row: int) -> None:
        """The worker of ``row`` exited: clear its load; restart it, or stop everything."""
        proc = self.procs.pop(row)
        proc.join()
        code = proc.exitcode
        self.board.clear_row(row)
        # a worker still starting when the stop came dies of the signal it was sent
        # (its handlers are not installed yet): that is a clean stop too
        if self.stopping and (code == 0 or (code is not None and -code in self.forwarded)):
            return
        self.failed = True
        uptime = time.monotonic() - self.started[row]
        if self.stopping:
            log.error("worker %d (pid %s) ended badly: %s", row, proc.pid, describe_exit(code))
        elif uptime < _MIN_UPTIME_S:
            log.error("worker %d (pid %s) died %.1fs after starting (%s): stopping",
                      row, proc.pid, uptime, describe_exit(code))  # fmt: skip
            self.forward(signal.SIGTERM, None)
        else:
            log.error("worker %d (pid %s) died (%s): its load is cleared, restarting it",
                      row, proc.pid, describe_exit(code))  # fmt: skip
            self.start(row)
