"""Requests the HTTP parser itself refuses (a header or request line over aiohttp's line
limit, bytes that are not HTTP), answered as every other error is: an OpenAI-style JSON
body, the connection closed, one log line without a traceback.

aiohttp answers these before any handler or middleware runs, in ``RequestHandler.
handle_error``: a plain-text body quoting the first 100 bytes of what the client sent, and
an ERROR log line with a traceback per request (a client sending garbage would fill the
log). aiohttp offers no hook for it, so ``answer_parse_errors`` gives the runner's server a
request handler class whose ``handle_error`` (public, meant to be overridden) answers
parse errors itself; everything else is aiohttp's.
tests/integration/test_edge.py checks the answer, so an aiohttp that changes this path
fails there rather than silently."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from ctxroute.router.api.answers import error_response
from ctxroute.router.errors import BadRequest, HeadersTooLarge, RouterError

log = logging.getLogger("ctxroute.handlers")


def parse_refusal(exc: BadHttpMessage, line_limit: int) -> RouterError:
    """What a client is told of a request the parser refused (nothing of its bytes)."""
    if isinstance(exc, LineTooLong):
        return HeadersTooLarge(f"a header line (or the request line) is over {line_limit} bytes")
    return BadRequest("malformed HTTP request")


class _EdgeRequestHandler(RequestHandler):
    __slots__ = ()

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:  # fmt: skip
        if not isinstance(exc, BadHttpMessage) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        log.info("request from %s refused by the HTTP parser: %s", request.remote,
                 type(exc).__name__)  # fmt: skip
        response = error_response(parse_refusal(exc, self.max_line_size))
        response.force_close()  # the rest of the stream cannot be framed
        return response


class _EdgeServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _EdgeRequestHandler(self, loop=self._loop, **self._kwargs)


def answer_parse_errors(runner: web.BaseRunner) -> None:
    """From now on, ``runner``'s server (after ``setup()``, before any site starts) hands
    its connections to ``_EdgeRequestHandler``. aiohttp makes the server inside
    ``setup()`` with no way to name the handler class, so the server object is given the
    subclass that does (``__class__``: the same object, its ``__call__`` ours)."""
    server = runner.server
    if server is None:
        raise RuntimeError("the runner is not set up")
    if type(server) is web.Server:
        server.__class__ = _EdgeServer
