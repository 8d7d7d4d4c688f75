"""``POST /admin/drain`` and ``/admin/undrain`` with ``{"backend": URL}``: a drained
backend finishes what it has in flight and gets no new request, on every replica sharing
the store (for a planned vLLM restart)."""

from __future__ import annotations

import time

import orjson
from aiohttp import web
from ctxroute.router.api.answers import JSON, RouteHandler
from ctxroute.router.api.body import read_json
from ctxroute.router.api.context import RouterContext
from ctxroute.router.errors import BadRequest, Forbidden, NotFound
from ctxroute.router.observe.status import backend_json

_LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def admin_drain(drained: bool) -> RouteHandler:
    async def handle(request: web.Request, request_id: str) -> web.StreamResponse:
        ctx = request.app[RouterContext.KEY]
        if not ctx.config.admin.allow_remote and request.remote not in _LOOPBACK:
            raise Forbidden(
                "admin requests are answered from loopback only "
                "(set admin.allow_remote: true to allow other hosts)"
            )
        _, body = await read_json(request, 64 * 1024)
        url = body.get("backend") if isinstance(body, dict) else None
        if not isinstance(url, str):
            raise BadRequest('expected {"backend": "http://host:port"}', "backend")
        backend = ctx.fleet.by_url.get(url.rstrip("/"))
        if backend is None:
            known = ", ".join(b.url for b in ctx.fleet.backends)
            raise NotFound(f"no configured backend is {url!r} (configured: {known})", "backend")
        await ctx.ledger.store.set_drained(backend.index, drained)
        state = ctx.backend_state(backend.index, time.monotonic())
        return web.Response(body=orjson.dumps(backend_json(state)), content_type=JSON)

    return handle
