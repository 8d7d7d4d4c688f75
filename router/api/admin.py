"""``POST /admin/drain`` and ``/admin/undrain`` with ``{"backend": URL or name}``: a drained
backend finishes what it has in flight and gets no new request, on every replica sharing
the store (for a planned vLLM restart). Who may: ``router/api/access.py``."""

from __future__ import annotations

import time

import orjson
from aiohttp import web
from ctxroute.router.api.access import check_admin
from ctxroute.router.api.answers import JSON, RouteHandler
from ctxroute.router.api.body import read_json
from ctxroute.router.api.context import RouterContext
from ctxroute.router.errors import BadRequest, NotFound
from ctxroute.router.observe.status import backend_json


def admin_drain(drained: bool) -> RouteHandler:
    async def handle(request: web.Request, request_id: str) -> web.StreamResponse:
        ctx = request.app[RouterContext.KEY]
        check_admin(request)
        _, body = await read_json(request, 64 * 1024)
        url = body.get("backend") if isinstance(body, dict) else None
        if not isinstance(url, str):
            raise BadRequest('expected {"backend": "http://host:port" or a backend name}',
                             "backend")  # fmt: skip
        backend = ctx.fleet.by_url.get(url.rstrip("/")) or ctx.fleet.by_name.get(url)
        if backend is None:
            known = ", ".join(f"{b.name} ({b.url})" for b in ctx.fleet.backends)
            raise NotFound(f"no configured backend is {url[:200]!r} (configured: {known})",
                           "backend")  # fmt: skip
        await ctx.ledger.store.set_drained(backend.index, drained)
        state = ctx.backend_state(backend.index, time.monotonic())
        return web.Response(body=orjson.dumps(backend_json(state)), content_type=JSON)

    return handle
