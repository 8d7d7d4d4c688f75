"""A request's body, read once under a size cap and parsed once."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from ctxroute.router.errors import BadRequest, PayloadTooLarge, RequestTimeout


async def read_body(request: web.Request, limit: int, timeout_s: float | None = None) -> bytes:
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
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body is over the limit of {limit} bytes") from None
    except TimeoutError:
        # (the error answer closes the connection: the rest of a half-sent body would be
        # read as the next request)
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None


async def read_json(
    request: web.Request, limit: int, timeout_s: float | None = None
) -> tuple[bytes, Any]:
    """The body, read once under ``limit`` within ``timeout_s``, and parsed once (400 when
    it is not JSON)."""
    raw = await read_body(request, limit, timeout_s)
    try:
        return raw, orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
