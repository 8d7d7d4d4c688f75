"""Who may reach the operator surface: ``/status``, ``/dashboard`` and ``/metrics`` are
``public``, need the admin key (``key``), or exist on the admin address only (``admin``,
404 elsewhere); the admin routes always need the admin key, a JSON body, and, when
``admin.listen`` is set, the admin address."""

from __future__ import annotations

from aiohttp import web
from ctxroute.router.api.context import RouterContext
from ctxroute.router.errors import Forbidden, NotFound, UnsupportedMediaType

_LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def on_admin_address(request: web.Request) -> bool:
    ports = request.app[RouterContext.KEY].admin_ports
    if not ports or request.transport is None:
        return False
    sockname = request.transport.get_extra_info("sockname")
    return sockname is not None and sockname[1] in ports


def check_page(request: web.Request, page: str) -> None:
    """Raise unless the caller may read ``page`` ("status", "dashboard" or "metrics")."""
    ctx = request.app[RouterContext.KEY]
    access = ctx.config.admin.access(page)
    if access == "public":
        return
    if access == "admin":
        if not on_admin_address(request):
            raise NotFound(f"/{page} is served on the admin address only")
        return
    ctx.gatekeeper.admin(request.headers)


def check_admin(request: web.Request) -> None:
    """Raise unless this is an admin request the router may obey: from the admin address
    when there is one, from loopback unless ``allow_remote``, with the admin key, and with
    a JSON body (which a browser cannot send cross-site without a preflight)."""
    ctx = request.app[RouterContext.KEY]
    admin = ctx.config.admin
    if admin.listen is not None and not on_admin_address(request):
        raise NotFound("admin routes are served on the admin address only")
    if not admin.allow_remote and request.remote not in _LOOPBACK:
        raise Forbidden(
            "admin requests are answered from loopback only "
            "(set admin.allow_remote: true to allow other hosts)"
        )
    ctx.gatekeeper.admin(request.headers)
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            "admin requests carry a JSON body: Content-Type: application/json"
        )
