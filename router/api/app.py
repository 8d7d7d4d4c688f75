"""create_app(config): the aiohttp application, its upstream pool, ledger and probes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, BinaryIO, cast

from aiohttp import web
from ctxroute.router.aio.tasks import stop_tasks
from ctxroute.router.api.auth import Gatekeeper, with_tenants
from ctxroute.router.api.context import HandlerSettings, RouterContext
from ctxroute.router.api.framing import answer_parse_errors
from ctxroute.router.api.routes import add_routes
from ctxroute.router.config import RouterConfig
from ctxroute.router.config.tokenizers import load_counters
from ctxroute.router.core.admission.fairshare import VirtualCounters
from ctxroute.router.core.tokens import TokenCounter
from ctxroute.router.dispatch.completion import Dispatcher
from ctxroute.router.dispatch.gate import Gate
from ctxroute.router.dispatch.indicators import Indicators
from ctxroute.router.dispatch.overload import watch_overload
from ctxroute.router.dispatch.proxy import ForwardSettings, Proxy
from ctxroute.router.fleet.ledger import Ledger
from ctxroute.router.fleet.probe import make_probe_session, probe_forever
from ctxroute.router.fleet.topology import Fleet
from ctxroute.router.model import Backend
from ctxroute.router.observe.drift import DriftWatch
from ctxroute.router.observe.logs import RequestLog
from ctxroute.router.observe.metrics import Metrics, MetricsShare
from ctxroute.router.store import Store
from ctxroute.router.store.fairshare import SharedCounters
from ctxroute.router.store.limits import Limiter
from ctxroute.router.store.loadboard import LoadBoard, LoadView
from ctxroute.router.store.memory import MemoryStore, breaker_settings
from ctxroute.router.upstream.pool import UpstreamPool

if TYPE_CHECKING:
    from ctxroute.router.observe.tracing import Tracing
    from opentelemetry.sdk.trace.export import SpanExporter


def make_store(config: RouterConfig, backends: Sequence[Backend], board: LoadView) -> Store:
    """In-process state, or state shared through Redis when ``store.redis_url`` is set."""
    settings = breaker_settings(config.breakers)
    if config.store.redis_url is None:
        return MemoryStore(backends, settings, board)
    from ctxroute.router.store.redis import RedisStore  # only deployments that share state need it

    return RedisStore(backends, settings, board, config.store)


def create_app(
    config: RouterConfig,
    *,
    board: LoadView | None = None,
    probes: bool = True,
    metrics_share: MetricsShare | None = None,
    log_stream: BinaryIO | None = None,
    span_exporter: object | None = None,
) -> web.Application:
    """The router app. ``board``: the load view shared with other processes (``serve
    --workers``); by default this process's own. ``metrics_share``: where this process
    writes its metrics so that any worker's /metrics answers for all of them.
    ``log_stream``: where request lines go (default: stderr). ``span_exporter``: an
    OpenTelemetry ``SpanExporter`` that gets every span (tracing on, whatever the config
    says of an endpoint; the tests' in-memory one)."""
    app = web.Application(client_max_size=config.max_body_bytes)
    counters: dict[str, TokenCounter] = dict(load_counters(config.tokenizers))
    gatekeeper = Gatekeeper(config)  # a bad keys file stops the start, as a bad config does
    if metrics_share is None:  # (with a share, the server named the tenants before forking)
        config = with_tenants(config, gatekeeper)
    fleet = Fleet.from_config(config)
    store = make_store(
        config, fleet.backends, board if board is not None else LoadBoard(len(fleet.backends))
    )
    ledger = Ledger(
        fleet.backends,
        store,
        work=fleet.work,
        default_prefill_rate=config.routing.default_prefill_tokens_per_s,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        ctx = _context(config, fleet, ledger, counters, log_stream, gatekeeper)
        if metrics_share is not None:
            ctx.metrics.attach(metrics_share)
        app[RouterContext.KEY] = ctx
        ctx.tracing = _tracing(config, span_exporter)
        ctx.drift = DriftWatch(fleet)
        await store.start()
        shared = _share_tenants(config, ctx)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(watch_overload(ctx.gate, ctx.gate.check_interval_s))]
        if gatekeeper.file is not None:
            tasks.append(loop.create_task(gatekeeper.watch_forever()))
        if metrics_share is not None:
            tasks.append(loop.create_task(_flush_metrics_forever(ctx.metrics)))
        if probes:
            tasks.append(
                loop.create_task(
                    probe_forever(ctx.probe_session, fleet, ledger, ctx.readings, config)
                )
            )
        yield
        await _close(ctx, tasks, shared)

    app.cleanup_ctx.append(lifecycle)
    add_routes(app, config.limits.max_header_bytes)
    return app


async def _close(ctx: RouterContext, tasks: list[asyncio.Task[None]],
                 shared: SharedCounters | None) -> None:  # fmt: skip
    await stop_tasks(tasks)
    if ctx.request_log is not None:
        ctx.request_log.flush()
    if shared is not None:
        await shared.close()
    limiter = ctx.dispatcher.limiter
    if limiter is not None:
        await limiter.close()
        if limiter.client is not None:  # the edge's Redis client, shared with the counters
            with contextlib.suppress(Exception):
                await limiter.client.aclose()
    await ctx.ledger.store.close()
    await ctx.upstream.close()
    await ctx.probe_session.close()
    if ctx.tracing is not None:
        await ctx.tracing.close()


def _tracing(config: RouterConfig, exporter: object | None) -> Tracing | None:
    if exporter is None and not config.tracing.enabled:
        return None
    from ctxroute.router.observe.tracing import Tracing  # the SDK only when tracing is on

    return Tracing(config.tracing, cast("SpanExporter | None", exporter))


def _redis(config: RouterConfig) -> object | None:
    if config.store.redis_url is None:
        return None
    from ctxroute.router.store.redis_client import make_client

    return make_client(config.store.redis_url, config.store.timeout_ms / 1000.0)


def _share_tenants(config: RouterConfig, ctx: RouterContext) -> SharedCounters | None:
    """With Redis, the tenants' counters are shared by every replica (through the Redis
    client the rate limits use)."""
    tenants = ctx.dispatcher.tenants
    limiter = ctx.dispatcher.limiter
    if tenants is None or limiter is None or limiter.client is None:
        return None
    shared = SharedCounters(tenants, limiter.client, config.store.key_prefix,
                            timeout_s=config.store.timeout_ms / 1000.0)  # fmt: skip
    shared.start()
    return shared


def _context(
    config: RouterConfig,
    fleet: Fleet,
    ledger: Ledger,
    counters: dict[str, TokenCounter],
    log_stream: BinaryIO | None,
    gatekeeper: Gatekeeper,
) -> RouterContext:
    """Everything the handlers share, made inside the running loop."""
    upstream = UpstreamPool(config.timeouts.connect_s, config.timeouts.keepalive_s)
    auth = config.auth if gatekeeper.required else None  # tenants exist only with keys
    tenants = VirtualCounters() if auth is not None and auth.fair_share else None
    limiter = None
    if auth is not None:
        limiter = Limiter(_redis(config), config.store.key_prefix, config.store.timeout_ms / 1000.0)
    gate = Gate(fleet, ledger, config.admission, tenants)
    indicators = Indicators(config.indicators) if config.indicators.enabled else None
    proxy = Proxy(upstream, ledger, fleet, ForwardSettings.of(config.routing, config.timeouts),
                  indicators)  # fmt: skip
    dispatcher = Dispatcher(
        fleet,
        ledger,
        gate,
        proxy,
        counters,
        config.routing.prefix_chars,
        dict(config.fallback),
        limiter,
        tenants,
        config.limits.exact_count_inline_bytes,
        auth is not None and auth.limit_headers == "always",
        indicators,
    )
    request_log = None
    stream = log_stream or getattr(sys.stderr, "buffer", None)
    if config.log_requests and stream is not None:
        request_log = RequestLog(
            stream, level=logging.getLevelName(config.log_level.upper()), form=config.log_format
        )
    ctx = RouterContext(
        config,
        fleet,
        ledger,
        upstream,
        make_probe_session(config),
        int(time.time()),
        gate,
        dispatcher,
        HandlerSettings.of(config),
        Metrics.for_config(config),
        request_log,
        gatekeeper,
    )
    ctx.metrics.watch(ctx.snapshot)
    ctx.metrics.follow(ledger.outcomes, ledger.store.openings, gate.admitted)
    return ctx


async def _flush_metrics_forever(metrics: Metrics, every_s: float = 1.0) -> None:
    """Other workers' scrapes read this worker's row: keep it at most ``every_s`` old."""
    while True:
        await asyncio.sleep(every_s)
        metrics.flush()


def make_runner(app: web.Application) -> web.AppRunner:
    # handler_cancellation: a client that leaves cancels its handler, which closes the
    # upstream response, which makes vLLM abort the request and free its KV cache.
    # aiohttp's own header limits sit above limits.max_header_bytes (at its highest), so
    # that the router's check answers first, with a 431 in OpenAI's shape
    return web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=5.0,
        max_line_size=_HEADER_CEILING,
        max_field_size=_HEADER_CEILING,
        # after an answer given before the whole body came (401, 408, 413), the rest of
        # the body is read and dropped for at most this long, then the connection closes
        # (aiohttp's 10 s would let a slow client hold it past body_timeout_s)
        lingering_time=1.0,
    )


_HEADER_CEILING = 64 * 1024 + 1024


async def start_sites(runner: web.AppRunner, config: RouterConfig, *, host: str | None = None,
                      port: int | None = None, reuse_port: bool = False,
                      ) -> tuple[str, str | None]:  # fmt: skip
    """Bind the router's address and, with ``admin.listen``, the admin address (after
    ``runner.setup()``); their URLs."""
    answer_parse_errors(runner)  # what the HTTP parser refuses gets OpenAI's shape too
    site = web.TCPSite(
        runner,
        config.listen.host if host is None else host,
        config.listen.port if port is None else port,
        reuse_port=reuse_port or None,
        backlog=1024,
    )
    await site.start()
    main = runner.addresses[0]
    admin_url = None
    listen = config.admin.listen
    if listen is not None:
        before = set(runner.addresses)
        await web.TCPSite(runner, listen.host, listen.port, reuse_port=reuse_port or None).start()
        added = [a for a in runner.addresses if a not in before]
        runner.app[RouterContext.KEY].admin_ports = frozenset(a[1] for a in added)
        admin_url = f"http://{_host(added[0][0])}:{added[0][1]}"
    return f"http://{_host(main[0])}:{main[1]}", admin_url


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
