"""Errors answered in one place: ``answers_errors``, the error middleware every route is
wrapped in. A ``RouterError`` becomes its OpenAI-style body and status; anything else is a
bug on some input, logged with its trace and answered 500 in the same shape, and the
router keeps serving.

It wraps each route's handler when the route is added rather than sitting in
``app.middlewares`` (why: docs/architecture.md, "Performance budget").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from random import getrandbits

from aiohttp import web
from aiohttp.typedefs import Handler
from ctxroute.router.errors import HeadersTooLarge, RouterError

log = logging.getLogger("ctxroute.handlers")

JSON = "application/json"
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}", re.ASCII)
# a handler is given the request's id (the client's X-Request-ID, or a new one)
RouteHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def error_response(exc: RouterError, request_id: str | None = None) -> web.Response:
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if exc.reject is not None:
        headers["x-ctxroute-reject"] = exc.reject
    if request_id:
        headers["X-Request-ID"] = request_id
    response = web.Response(status=exc.status, body=exc.body(), content_type=JSON, headers=headers)
    if exc.close:
        response.force_close()
    return response


def answers_errors(handler: RouteHandler, max_header_bytes: int = 16 * 1024) -> Handler:
    """The error middleware: ``handler`` with every error answered as described above, and
    requests whose headers together exceed ``max_header_bytes`` answered 431 before it."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if sum(len(k) + len(v) for k, v in request.raw_headers) > max_header_bytes:
            return error_response(
                HeadersTooLarge(f"the request's headers are over {max_header_bytes} bytes")
            )
        # the client's X-Request-ID only when it is a short token of safe characters (it is
        # echoed, logged and sent upstream, where vLLM makes it the answer's id); else a new
        # one: unique, not secret, 96 random bits without a getrandom() system call
        given = request.headers.get("X-Request-ID")
        request_id = given if given and _SAFE_ID.fullmatch(given) else f"{getrandbits(96):024x}"
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
