"""Every route of the router, each wrapped in the error middleware."""

from __future__ import annotations

from aiohttp import web
from ctxroute.router.api import info
from ctxroute.router.api.admin import admin_drain
from ctxroute.router.api.answers import answers_errors
from ctxroute.router.api.completions import chat_completions, completions


def add_routes(app: web.Application) -> None:
    add = app.router
    add.add_post("/v1/chat/completions", answers_errors(chat_completions))
    add.add_post("/v1/completions", answers_errors(completions))
    add.add_get("/v1/models", answers_errors(info.models))
    add.add_get("/healthz", answers_errors(info.healthz))
    add.add_get("/readyz", answers_errors(info.readyz))
    add.add_get("/status", answers_errors(info.status))
    add.add_get("/metrics", answers_errors(info.metrics))
    add.add_get("/dashboard", answers_errors(info.dashboard))
    add.add_post("/admin/drain", answers_errors(admin_drain(True)))
    add.add_post("/admin/undrain", answers_errors(admin_drain(False)))
