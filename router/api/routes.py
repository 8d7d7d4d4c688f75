"""Every route of the router, each wrapped in the error middleware."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler
from ctxroute.router.api import info
from ctxroute.router.api.admin import admin_drain
from ctxroute.router.api.answers import RouteHandler, answers_errors
from ctxroute.router.api.completions import chat_completions, completions
from ctxroute.router.api.openapi import openapi
from ctxroute.router.errors import MethodNotAllowed, NotFound

# path -> its methods: what the catch-all route says of a path that is not one of them
ROUTES: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("POST",),
    "/v1/completions": ("POST",),
    "/v1/models": ("GET",),
    "/healthz": ("GET",),
    "/readyz": ("GET",),
    "/status": ("GET",),
    "/metrics": ("GET",),
    "/dashboard": ("GET",),
    "/openapi.json": ("GET",),
    "/admin/drain": ("POST",),
    "/admin/undrain": ("POST",),
}


async def not_routed(request: web.Request, request_id: str) -> web.StreamResponse:
    """Any other path or method: 404 or 405 in OpenAI's error shape (aiohttp's own are
    plain text)."""
    methods = ROUTES.get(request.path)
    if methods is None:
        raise NotFound("no such route: see /openapi.json for the router's routes")
    allowed = ", ".join(sorted({*methods, "HEAD"} if "GET" in methods else set(methods)))
    raise MethodNotAllowed(f"this route takes {allowed}", headers=(("Allow", allowed),))


def add_routes(app: web.Application, max_header_bytes: int) -> None:
    add = app.router

    def wrap(handler: RouteHandler) -> Handler:
        return answers_errors(handler, max_header_bytes)

    add.add_post("/v1/chat/completions", wrap(chat_completions))
    add.add_post("/v1/completions", wrap(completions))
    add.add_get("/v1/models", wrap(info.models))
    add.add_get("/healthz", wrap(info.healthz))
    add.add_get("/readyz", wrap(info.readyz))
    add.add_get("/status", wrap(info.status))
    add.add_get("/metrics", wrap(info.metrics))
    add.add_get("/dashboard", wrap(info.dashboard))
    add.add_post("/admin/drain", wrap(admin_drain(True)))
    add.add_post("/admin/undrain", wrap(admin_drain(False)))
    add.add_get("/openapi.json", wrap(openapi))
    add.add_route("*", "/{tail:.*}", wrap(not_routed))  # last: everything else
