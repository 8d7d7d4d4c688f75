"""HTTP handlers, thin: read the body once, facts, eligible pools, plan, forward.

Errors are answered in one place, ``answers_errors``, the error middleware every route is
wrapped in: a ``RouterError`` becomes its OpenAI-style body and status; anything else is a
bug on some input, logged with its trace and answered 500 in the same shape, and the
router keeps serving. It wraps each route's handler when the route is added rather than
sitting in ``app.middlewares``: aiohttp runs any middleware list through two more
coroutine frames and a context manager per request, about 5% of the proxy's CPU per
non-streaming request (bench/overhead), for the same behaviour.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from random import getrandbits
from time import monotonic
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router.api.context import RouterContext
from router.core.classify import Eligibility, eligible_pools
from router.core.facts import read_facts
from router.core.planner import PoolView, plan
from router.dispatch.proxy import forward
from router.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, RouterError
from router.model import RequestFacts, RoutePlan
from router.observe.record import RequestRecord

log = logging.getLogger("ctxroute.handlers")

_JSON = "application/json"
# a handler is given the request's id (the client's X-Request-ID, or a new one)
RouteHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def error_response(exc: RouterError, request_id: str | None = None) -> web.Response:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if exc.reject is not None:
        headers["x-ctxroute-reject"] = exc.reject
    if request_id:
        headers["X-Request-ID"] = request_id
    return web.Response(status=exc.status, body=exc.body(), content_type=_JSON, headers=headers)


def answers_errors(handler: RouteHandler) -> Handler:
    """The error middleware: ``handler`` with every error answered as described above."""

    async def handle(request: web.Request) -> web.StreamResponse:
        # unique, not secret: 96 random bits without a getrandom() system call per request
        request_id = request.headers.get("X-Request-ID") or f"{getrandbits(96):024x}"
        try:
            return await handler(request, request_id)
        except RouterError as exc:
            return error_response(exc, request_id)
        except web.HTTPException:
            raise  # aiohttp's own answers (404 for unknown paths, 405): already well formed
        except Exception:
            log.exception("request %s to %s failed", request_id, request.path)
            return error_response(
                RouterError(f"internal error while handling request {request_id}"), request_id
            )

    return handle


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"request body of {request.content_length} bytes is over the limit of {limit} bytes"
        )
    content = request.content
    if content.is_eof():
        # the whole body came with the head (the common case for a JSON body): taken in one
        # call, without read()'s coroutine, its loop and its copy into a bytearray
        body = content.read_nowait()
        if len(body) > limit:  # a chunked body has no Content-Length to check beforehand
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        return body
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body is over the limit of {limit} bytes") from None


async def _read_json(request: web.Request, limit: int) -> tuple[bytes, Any]:
    """The body, read once under ``limit``, and parsed once (400 when it is not JSON)."""
    raw = await _read_body(request, limit)
    try:
        return raw, orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None


def _completion_handler(*, chat: bool, path: str) -> RouteHandler:
    endpoint = "chat" if chat else "completions"

    """The handler of one completion endpoint (a closure rather than a shared coroutine
    called by two thin ones: one coroutine frame less per request)."""

    async def complete(request: web.Request, request_id: str) -> web.StreamResponse:
        ctx = request.app[RouterContext.KEY]
        # what the request did, for its metrics (and its log line): read once at its end
        record = RequestRecord(monotonic(), request_id, endpoint)
        try:
            opts = ctx.handler_settings
            raw, body = await _read_json(request, opts.max_body_bytes)
            fleet = ctx.fleet
            facts = read_facts(
                body,
                chat=chat,
                session=request.headers.get(opts.session_header),
                models=fleet.models,
                counters=ctx.counters,
                prefix_chars=opts.prefix_chars,
            )
            record.prompt_tokens = facts.prompt.estimate  # the backend's usage replaces it
            record.model = facts.model
            record.stream = facts.stream
            pools = fleet.by_model[facts.model]
            eligibility = eligible_pools(facts.prompt, facts.max_tokens, pools)
            view_of = ctx.ledger.view_of
            route = plan(facts, pools, eligibility, view_of, fleet.settings)
            record.pool = route.preferred
            record.plan = route
            extra: tuple[tuple[str, str], ...] = ()
            if not route.candidates and facts.model in opts.fallback:
                small = opts.fallback[facts.model]
                alternative = _fallback_route(ctx, facts, small)
                if alternative is not None:
                    # the small model's servers know only their own name: the body says it
                    big = facts.model
                    facts, pools, eligibility, route = alternative
                    body["model"] = small
                    raw = orjson.dumps(body)
                    extra = (("x-ctxroute-fallback", f"{big}->{small}"),)
                    log.info("request %s: every backend of %s is unusable, answered by %s",
                             request_id, big, small)  # fmt: skip
            gate = ctx.gate
            headers = request.headers
            priority = headers.get(opts.priority_header)
            field = body.get("priority")
            tier = gate.settings.default_tier if priority is None and field is None else \
                gate.settings.tier_of(_priority(priority, field))  # fmt: skip
            timeout = headers.get("X-Request-Timeout")
            timeout_s = None if timeout is None else _timeout(timeout)
            record.tier = gate.settings.tiers[tier].name
            long = facts.prompt.estimate >= fleet.settings.long_prefill_tokens
            ticket = gate.admit_now(tier, long, timeout_s, route)
            if ticket is None:
                settings = fleet.settings

                def replan() -> RoutePlan:
                    return plan(facts, pools, eligibility, view_of, settings)

                held = monotonic()
                try:
                    ticket, route = await gate.wait(tier, long, timeout_s, route, replan)
                finally:  # refused after waiting, too: the log says how long it waited
                    record.queued_s = monotonic() - held
                record.plan = route
            try:
                return await forward(request, ctx.upstream, ctx.ledger, fleet, path, raw, facts,
                                     route, request_id, ctx.forward_settings, record,
                                     extra)  # fmt: skip
            finally:
                ticket.release()
        except RouterError as exc:
            record.status = exc.status
            record.reject = exc.reject
            raise
        except asyncio.CancelledError:
            record.client_gone = True
            raise
        finally:
            now = monotonic()
            ctx.metrics.observe(record, now)
            if ctx.request_log is not None:
                ctx.request_log.write(record, now)

    return complete


def _priority(header: str | None, field: object) -> str | None:
    """The request's priority: the header, else the body's ``priority`` (vLLM's own field,
    an integer, passed on unchanged; a name is accepted too)."""
    if header is not None:
        return header
    if field is None:
        return None
    if isinstance(field, bool) or not isinstance(field, int | str):
        raise BadRequest("'priority' must be an integer or a tier name", "priority")
    return str(field)


def _timeout(header: str) -> float:
    """``X-Request-Timeout``: seconds the client will wait for the request to start."""
    try:
        value = float(header)
    except ValueError:
        value = float("nan")
    if not 0 < value < 86_400:
        raise BadRequest(f"X-Request-Timeout must be a number of seconds above 0 and below "
                         f"86400, got {header[:40]!r}")  # fmt: skip
    return value


def _fallback_route(
    ctx: RouterContext, facts: RequestFacts, small: str
) -> tuple[RequestFacts, tuple[PoolView, ...], Eligibility, RoutePlan] | None:
    """The request planned on the fallback model's pools, when one of them can take it
    now; None when none can (then the first model's 503 stands)."""
    fleet = ctx.fleet
    pools = fleet.by_model[small]
    facts = RequestFacts(small, facts.prompt, facts.max_tokens, facts.stream, facts.hash_key)
    try:
        eligibility = eligible_pools(facts.prompt, facts.max_tokens, pools)
    except RouterError:
        return None  # over the small model's window: no fallback for this request
    route = plan(facts, pools, eligibility, ctx.ledger.view_of, fleet.settings)
    return (facts, pools, eligibility, route) if route.candidates else None


chat_completions = _completion_handler(chat=True, path="/v1/chat/completions")
completions = _completion_handler(chat=False, path="/v1/completions")


async def models(request: web.Request, request_id: str) -> web.Response:
    ctx = request.app[RouterContext.KEY]
    data = []
    for model, pools in ctx.fleet.by_model.items():
        data.append({
            "id": model,
            "object": "model",
            "created": ctx.started,
            "owned_by": "ctxroute",
            "root": model,
            "parent": None,
            "max_model_len": max(p.max_context_tokens for p in pools),
            "permission": [],
        })  # fmt: skip
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)


async def healthz(request: web.Request, request_id: str) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request, request_id: str) -> web.Response:
    ctx = request.app[RouterContext.KEY]
    if ctx.ready():
        return web.Response(text="ready")
    up = ctx.ledger.up
    down = [p.name for p in ctx.fleet.pools if not any(up[b.index] for b in p.backends)]
    return web.Response(status=503, text="not ready: no backend up in pool " + ", ".join(down))


async def status(request: web.Request, request_id: str) -> web.Response:
    ctx = request.app[RouterContext.KEY]
    return web.Response(body=orjson.dumps(ctx.status()), content_type=_JSON)


_LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def _admin_drain(drained: bool) -> RouteHandler:
    """``POST /admin/drain`` and ``/admin/undrain`` with ``{"backend": URL}``: a drained
    backend finishes what it has in flight and gets no new request, on every replica
    sharing the store (for a planned vLLM restart)."""

    async def handle(request: web.Request, request_id: str) -> web.StreamResponse:
        ctx = request.app[RouterContext.KEY]
        if not ctx.config.admin.allow_remote and request.remote not in _LOOPBACK:
            raise Forbidden(
                "admin requests are answered from loopback only "
                "(set admin.allow_remote: true to allow other hosts)"
            )
        _, body = await _read_json(request, 64 * 1024)
        url = body.get("backend") if isinstance(body, dict) else None
        if not isinstance(url, str):
            raise BadRequest('expected {"backend": "http://host:port"}', "backend")
        backend = ctx.fleet.by_url.get(url.rstrip("/"))
        if backend is None:
            known = ", ".join(b.url for b in ctx.fleet.backends)
            raise NotFound(f"no configured backend is {url!r} (configured: {known})", "backend")
        await ctx.ledger.store.set_drained(backend.index, drained)
        status = ctx.status_of(backend.index)
        return web.Response(body=orjson.dumps(status), content_type=_JSON)

    return handle


_DASHBOARD = (Path(__file__).resolve().parent / "static" / "dashboard.html").read_bytes()
# the page loads nothing from elsewhere, and this says so to the browser
_DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'",
    "Cache-Control": "no-cache",
}


async def dashboard(request: web.Request, request_id: str) -> web.Response:
    """``/dashboard``: the live status page (plain HTML and JS polling ``/status``)."""
    return web.Response(body=_DASHBOARD, content_type="text/html", charset="utf-8",
                        headers=_DASHBOARD_HEADERS)  # fmt: skip


async def metrics(request: web.Request, request_id: str) -> web.Response:
    ctx = request.app[RouterContext.KEY]
    return web.Response(body=generate_latest(ctx.metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})  # fmt: skip


def add_routes(app: web.Application) -> None:
    add = app.router
    add.add_post("/v1/chat/completions", answers_errors(chat_completions))
    add.add_post("/v1/completions", answers_errors(completions))
    add.add_get("/v1/models", answers_errors(models))
    add.add_get("/healthz", answers_errors(healthz))
    add.add_get("/readyz", answers_errors(readyz))
    add.add_get("/status", answers_errors(status))
    add.add_get("/metrics", answers_errors(metrics))
    add.add_get("/dashboard", answers_errors(dashboard))
    add.add_post("/admin/drain", answers_errors(_admin_drain(True)))
    add.add_post("/admin/undrain", answers_errors(_admin_drain(False)))
