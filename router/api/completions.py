"""``POST /v1/chat/completions`` and ``/v1/completions``: read the request, hand it to the
dispatcher, and count what it did once it has ended (metrics, the request log)."""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import cast

from aiohttp import web
from ctxroute.router.api.answers import RouteHandler
from ctxroute.router.api.body import read_json
from ctxroute.router.api.context import RouterContext
from ctxroute.router.api.lifecycle import Phase
from ctxroute.router.dispatch.completion import Asked
from ctxroute.router.errors import RouterError, ShuttingDown
from ctxroute.router.observe.record import RequestRecord


def completion_handler(*, chat: bool, path: str) -> RouteHandler:
    """The handler of one completion endpoint (a closure rather than a shared coroutine
    called by two thin ones: one coroutine frame less per request)."""
    endpoint = "chat" if chat else "completions"

    async def complete(request: web.Request, request_id: str) -> web.StreamResponse:
        ctx = request.app[RouterContext.KEY]
        # what the request did, for its metrics (and its log line): read once at its end
        record = RequestRecord(monotonic(), request_id, endpoint)
        if ctx.tracing is not None:
            record.trace = ctx.tracing.begin(request.headers, request.method, path, request_id)
        life = ctx.lifecycle
        task = cast("asyncio.Task[object]", asyncio.current_task())  # (never None in a handler)
        try:
            if life.refusing:
                raise ShuttingDown("this router is shutting down: send it again (to another "
                                   "replica)", retry_after=1.0)  # fmt: skip
            life.handlers.add(task)
            opts = ctx.handler_settings
            headers = request.headers
            tenant = ctx.gatekeeper.client(headers) if ctx.gatekeeper.required else None
            if tenant is not None:
                record.tenant = tenant.name
            raw, body = await read_json(request, opts.max_body_bytes, opts.body_timeout_s)
            asked = Asked(
                chat,
                path,
                raw,
                body,
                headers.get(opts.session_header),
                headers.get(opts.priority_header),
                headers.get("X-Request-Timeout"),
                tenant,
            )
            return await ctx.dispatcher.complete(request, asked, request_id, record)
        except RouterError as exc:
            record.status = exc.status
            record.reject = exc.reject
            raise
        except asyncio.CancelledError:
            if life.phase is Phase.CUTTING:  # ended by the shutdown, not by its client
                record.status, record.reject = 503, ShuttingDown.reject
            else:
                record.client_gone = True
            raise
        finally:
            life.handlers.discard(task)
            now = monotonic()
            ctx.metrics.observe(record, now)
            if ctx.drift is not None:
                ctx.drift.observe(record, now)
            if ctx.request_log is not None:
                ctx.request_log.write(record, now)
            if record.trace is not None:
                record.trace.end(record)

    return complete


chat_completions = completion_handler(chat=True, path="/v1/chat/completions")
completions = completion_handler(chat=False, path="/v1/completions")
