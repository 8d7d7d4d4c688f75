"""The read-only routes: ``/v1/models``, health and readiness, ``/status``, ``/metrics``
and the ``/dashboard`` page."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from aiohttp import web
from ctxroute.router.api.access import check_page
from ctxroute.router.api.answers import JSON
from ctxroute.router.api.context import RouterContext
from ctxroute.router.api.lifecycle import Phase
from ctxroute.router.observe.status import status_json
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


async def models(request: web.Request, request_id: str) -> web.Response:
    ctx = request.app[RouterContext.KEY]
    data = []
    for model, pools in ctx.fleet.by_model.items():
        data.append(
            {
                "id": model,
                "object": "model",
                "created": ctx.started,
                "owned_by": "ctxroute",
                "root": model,
                "parent": None,
                "max_model_len": max(p.max_context_tokens for p in pools),
                "permission": [],
            }
        )
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=JSON)


async def healthz(request: web.Request, request_id: str) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request, request_id: str) -> web.Response:
    ctx = request.app[RouterContext.KEY]
    if ctx.lifecycle.phase is not Phase.SERVING:
        return web.Response(status=503, text="not ready: shutting down")
    if ctx.ready():
        return web.Response(text="ready")
    up = ctx.ledger.up
    down = [p.name for p in ctx.fleet.pools if not any(up[b.index] for b in p.backends)]
    return web.Response(status=503, text="not ready: no backend up in pool " + ", ".join(down))


async def status(request: web.Request, request_id: str) -> web.Response:
    check_page(request, "status")
    ctx = request.app[RouterContext.KEY]
    now = time.monotonic()
    body = status_json(ctx.snapshot(), lambda pool: ctx.metrics.recent_ttft(pool, now))
    return web.Response(body=orjson.dumps(body), content_type=JSON)


async def metrics(request: web.Request, request_id: str) -> web.Response:
    check_page(request, "metrics")
    ctx = request.app[RouterContext.KEY]
    return web.Response(
        body=generate_latest(ctx.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


_DASHBOARD = (Path(__file__).resolve().parent / "static" / "dashboard.html").read_bytes()
# the page loads nothing from elsewhere, and this says so to the browser
_DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'",
    "Cache-Control": "no-cache",
}


async def dashboard(request: web.Request, request_id: str) -> web.Response:
    """``/dashboard``: the live status page (plain HTML and JS polling ``/status``)."""
    check_page(request, "dashboard")
    return web.Response(
        body=_DASHBOARD, content_type="text/html", charset="utf-8", headers=_DASHBOARD_HEADERS
    )
