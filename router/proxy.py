"""forward(): try the plan's candidates, retry only before the first byte, relay the answer.

Before the first byte reaches the client, a connect error, a 5xx or a time-to-first-byte
timeout moves on to the next candidate (at most ``max_attempts`` tries). After it, never:
a stream gets an SSE error event and ``data: [DONE]``; a non-streaming answer cannot
break after its first byte because it is read whole before it is sent.

Streamed chunks are written as received: no parsing, no re-serialisation; a byte scanner
notes finish_reason and usage on the way. If the client leaves, aiohttp cancels the
handler (``handler_cancellation=True``) and the upstream response is closed at once, so
vLLM aborts the request and frees its KV cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from router.config import TimeoutsConfig
from router.errors import NoBackend, UpstreamFailed
from router.model import BackendState, RequestFacts, RoutePlan
from router.sse import StreamScanner, error_event
from router.upstream import UpstreamError

# RFC 9110 hop-by-hop headers, plus the ones the relay recomputes
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)  # fmt: skip
_RESPONSE_DROP = _HOP_BY_HOP | {"date", "server"}


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    max_attempts: int
    timeouts: TimeoutsConfig


def upstream_headers(incoming: CIMultiDictProxy[str], request_id: str) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if name.lower() not in _HOP_BY_HOP:
            out.add(name, value)
    out["X-Request-ID"] = request_id
    return out


def _response_headers(upstream: Mapping[str, str], plan: RoutePlan, backend: BackendState,
                      request_id: str) -> CIMultiDict[str]:  # fmt: skip
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in _RESPONSE_DROP:
            out.add(name, value)
    out["x-ctxroute-pool"] = backend.pool
    out["x-ctxroute-backend"] = backend.url
    out["X-Request-ID"] = request_id
    return out


class _Attempt:
    """Accounting of one try on one backend; ``close()`` runs exactly once, in finally."""

    __slots__ = ("backend", "prefill", "prefill_pending", "work")

    def __init__(self, backend: BackendState, prefill: int, work: int) -> None:
        self.backend = backend
        self.prefill = prefill
        self.work = work
        self.prefill_pending = True
        backend.in_flight += 1
        backend.pending_prefill += prefill
        backend.budget_in_flight += work

    def first_byte(self) -> None:
        if self.prefill_pending:
            self.prefill_pending = False
            self.backend.pending_prefill -= self.prefill

    def close(self) -> None:
        self.first_byte()
        self.backend.in_flight -= 1
        self.backend.budget_in_flight -= self.work


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    path: str,
    raw_body: bytes,
    facts: RequestFacts,
    plan: RoutePlan,
    request_id: str,
    settings: ForwardSettings,
) -> web.StreamResponse:
    headers = upstream_headers(request.headers, request_id)
    timeouts = settings.timeouts
    unary_timeout = aiohttp.ClientTimeout(
        total=None, connect=timeouts.connect_s, sock_connect=timeouts.connect_s,
        sock_read=timeouts.ttfb_s,
    )  # fmt: skip
    failures: list[str] = []
    for backend in plan.candidates[: settings.max_attempts]:
        attempt = _Attempt(backend, facts.prompt.upper, plan.budget)
        resp: aiohttp.ClientResponse | None = None
        try:
            try:
                resp = await _open(session, backend.url + path, raw_body, headers, facts.stream,
                                   timeouts, unary_timeout)  # fmt: skip
                if resp.status >= 500:
                    detail = (await resp.content.read(512)).decode(errors="replace")
                    raise UpstreamError("status", f"{resp.status} {detail[:200]}")
                if facts.stream and resp.status == 200:
                    first = await _first_chunk(resp, timeouts.ttfb_s)
                else:
                    first = await resp.read()
            except UpstreamError as exc:
                failures.append(f"{backend.url}: {exc}")
                if exc.kind == "connect":
                    backend.up = False
                continue
            backend.up = True
            attempt.first_byte()
            out_headers = _response_headers(resp.headers, plan, backend, request_id)
            if not (facts.stream and resp.status == 200):
                return web.Response(status=resp.status, body=first, headers=out_headers)
            return await _relay_stream(request, resp, first, out_headers)
        finally:
            if resp is not None:
                resp.close()
            attempt.close()
    if failures:
        raise NoBackend(
            f"no backend of pool '{plan.pool}' answered ({len(failures)} tried): "
            + "; ".join(failures),
            retry_after=1.0,
        )
    raise NoBackend(f"pool '{plan.pool}' has no backend to try", retry_after=1.0)


async def _open(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: CIMultiDict[str],
    stream: bool, timeouts: TimeoutsConfig, unary_timeout: aiohttp.ClientTimeout,
) -> aiohttp.ClientResponse:  # fmt: skip
    try:
        if stream:
            async with asyncio.timeout(timeouts.ttfb_s):
                return await session.post(url, data=body, headers=headers)
        # a non-streaming answer arrives whole when generation ends: no first-byte clock
        return await session.post(url, data=body, headers=headers, timeout=unary_timeout)
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamError("connect", str(exc.os_error or exc)) from None
    except TimeoutError:
        raise UpstreamError("timeout", "no response headers in time") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError("broken", repr(exc)) from None


async def _first_chunk(resp: aiohttp.ClientResponse, ttfb_s: float) -> bytes:
    try:
        async with asyncio.timeout(ttfb_s):
            first = await resp.content.readany()
    except TimeoutError:
        raise UpstreamError("timeout", f"no first byte within {ttfb_s}s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError("broken", repr(exc)) from None
    if not first:
        raise UpstreamError("broken", "stream ended before its first byte")
    return first


async def _relay_stream(
    request: web.Request, resp: aiohttp.ClientResponse, first: bytes,
    headers: CIMultiDict[str],
) -> web.StreamResponse:  # fmt: skip
    out = web.StreamResponse(status=200, headers=headers)
    await out.prepare(request)
    scanner = StreamScanner()
    scanner.feed(first)
    await out.write(first)
    read = resp.content.readany
    write = out.write
    try:
        while True:
            chunk = await read()
            if not chunk:
                break
            scanner.feed(chunk)
            await write(chunk)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        # the backend broke after the first byte: never retry, tell the client in-stream
        await write(error_event(f"upstream stream broken: {exc!r}"))
        await out.write_eof()
        return out
    if not scanner.done:
        # the backend closed cleanly but without finishing the answer (no [DONE])
        await write(error_event("upstream closed the stream before the answer finished"))
    await out.write_eof()
    return out


__all__ = ["ForwardSettings", "UpstreamFailed", "forward", "upstream_headers"]
