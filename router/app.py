"""create_app(config): the aiohttp application, its client session and probe task."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from router.config import RouterConfig
from router.fleet import Fleet
from router.h1 import H1Pool
from router.handlers import add_routes
from router.probe import probe_forever
from router.proxy import ForwardSettings
from router.state import AppState
from router.tokenizers import load_counters
from router.tokens import TokenCounter
from router.upstream import make_session


def create_app(
    config: RouterConfig,
    *,
    fleet: Fleet | None = None,
    session: aiohttp.ClientSession | None = None,
    probes: bool = True,
) -> web.Application:
    """The router app. ``fleet``/``session`` may be given by tests or embedding code."""
    app = web.Application(client_max_size=config.max_body_bytes)
    counters: dict[str, TokenCounter] = dict(load_counters(config.tokenizers))
    the_fleet = fleet or Fleet.from_config(config)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        own_session = session is None
        client = session or make_session(config)
        upstream = H1Pool(config.timeouts.connect_s)
        app[AppState.KEY] = AppState(
            fleet=the_fleet,
            session=client,
            upstream=upstream,
            counters=counters,
            routing=config.routing,
            forward=ForwardSettings(config.routing.max_attempts, config.timeouts),
            max_body_bytes=config.max_body_bytes,
            started=int(time.time()),
        )
        probe_task = None
        if probes:
            probe_task = asyncio.get_running_loop().create_task(
                probe_forever(client, the_fleet, config.probe.interval_s, config.probe.timeout_s)
            )
        yield
        if probe_task is not None:
            probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe_task
        await upstream.close()
        if own_session:
            await client.close()

    app.cleanup_ctx.append(lifecycle)
    add_routes(app)
    return app


def make_runner(app: web.Application) -> web.AppRunner:
    # handler_cancellation: a client that leaves cancels its handler, which closes the
    # upstream response, which makes vLLM abort the request and free its KV cache
    return web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
