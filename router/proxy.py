"""forward(): try the plan's candidates, retry only before the first byte, relay the answer.

Before the first byte, a connect error, a 5xx or a timeout (first body byte of a stream
within ``ttfb_s``, a whole non-streaming answer within ``unary_s``) moves on to the next
candidate, at most ``max_attempts`` tries. After it, never: a stream gets an SSE error event
and ``data: [DONE]``; a non-streaming answer that breaks after its first byte is a 502.

Streams are spliced: the upstream connection's bytes, chunked framing included, are written
to the client's transport as they arrive (router/h1.py), with no parse, no copy and no
re-serialisation; a scanner keeps the last chunks, to read finish_reason and usage from at
the end. If the client leaves, aiohttp cancels the handler (``handler_cancellation=True``)
and the upstream connection is aborted at once, so vLLM aborts the request and frees its
KV cache.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict, CIMultiDictProxy

from router.config import TimeoutsConfig
from router.errors import NoBackend, UpstreamFailed
from router.h1 import H1ConnectError, H1Error, H1Pool, Response, dechunk
from router.model import BackendState, RequestFacts, RoutePlan
from router.sse import StreamScanner, error_event

# RFC 9110 hop-by-hop headers, plus the ones the relay recomputes
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "X-Request-ID",
        "Expect",  # the router has the whole body already: no 100-continue upstream
    )
)  # fmt: skip
_RESPONSE_DROP = _HOP_BY_HOP | {"date", "server"}
# past this much unsent data to a slow client, stop reading from the backend
_HIGH_WATER = 1 << 20


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    max_attempts: int
    timeouts: TimeoutsConfig


def request_head_tail(incoming: CIMultiDictProxy[str], request_id: str, body_length: int) -> bytes:
    """The end-to-end headers sent upstream (the backend-specific lines are added per try)."""
    lines = [f"Content-Length: {body_length}\r\nX-Request-ID: {request_id}\r\n"]
    for name, value in incoming.items():
        if name.lower() not in _HOP_BY_HOP:
            lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1", "replace")


def _response_headers(upstream: list[tuple[str, str]], backend: BackendState,
                      request_id: str) -> CIMultiDict[str]:  # fmt: skip
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream:
        if name.lower() not in _RESPONSE_DROP:
            out.add(name, value)
    out["x-ctxroute-pool"] = backend.pool
    out["x-ctxroute-backend"] = backend.url
    out["X-Request-ID"] = request_id
    return out


class _HeldHeadersResponse(web.StreamResponse):
    """A stream response whose head waits for the first body write (one syscall, not two)."""

    _send_headers_immediately = False


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
    pool: H1Pool,
    path: str,
    raw_body: bytes,
    facts: RequestFacts,
    plan: RoutePlan,
    request_id: str,
    settings: ForwardSettings,
) -> web.StreamResponse:
    tail = request_head_tail(request.headers, request_id, len(raw_body))
    timeouts = settings.timeouts
    wait_s = timeouts.ttfb_s if facts.stream else timeouts.unary_s
    failures: list[str] = []
    tried = 0
    for backend in plan.candidates:
        if tried >= settings.max_attempts:
            break
        if backend.in_flight >= backend.max_in_flight:
            # a hard cap per backend (its connection budget): skip, never queue behind it
            failures.append(f"{backend.url}: at max_in_flight ({backend.max_in_flight})")
            continue
        tried += 1
        head = f"POST {path} HTTP/1.1\r\nHost: {backend.host}:{backend.port}\r\n".encode() + tail
        attempt = _Attempt(backend, facts.prompt.estimate, plan.budget)
        resp: Response | None = None
        try:
            try:
                async with asyncio.timeout(wait_s):
                    resp = await pool.request((backend.host, backend.port), head, raw_body)
                    if resp.status >= 500:
                        detail = (await resp.read())[:200].decode(errors="replace")
                        failures.append(f"{backend.url}: status {resp.status} {detail}")
                        continue
                    spliced = facts.stream and resp.status == 200
                    first = await (resp.next_data() if spliced else resp.read())
                    if spliced and not first and resp.complete:
                        failures.append(f"{backend.url}: stream ended before its first byte")
                        continue
            except H1ConnectError as exc:
                failures.append(f"{backend.url}: {exc}")
                backend.up = False
                continue
            except H1Error as exc:
                if not facts.stream and not exc.before_response:
                    # the answer had begun (a non-streaming answer is sent when it is
                    # complete): retrying would generate it again, so it is lost, not retried
                    raise UpstreamFailed(
                        f"backend {backend.url} broke while sending the answer: {exc}"
                    ) from None
                failures.append(f"{backend.url}: {exc}")
                continue
            except TimeoutError:
                failures.append(f"{backend.url}: no {'first byte' if facts.stream else 'answer'} "
                                f"within {wait_s:g}s")  # fmt: skip
                continue
            backend.up = True
            attempt.first_byte()
            headers = _response_headers(resp.headers, backend, request_id)
            if not spliced:
                body = dechunk(first) if resp.chunked else first
                return web.Response(status=resp.status, body=body, headers=headers)
            return await _splice(request, resp, first, headers, timeouts.idle_read_s)
        finally:
            if resp is not None:
                resp.close()
            attempt.close()
    raise NoBackend(
        f"no backend of pool '{plan.pool}' answered ({tried} tried): " + "; ".join(failures)
        if failures
        else f"pool '{plan.pool}' has no backend to try",
        retry_after=1.0,
    )


async def _splice(
    request: web.Request, resp: Response, first: bytes, headers: CIMultiDict[str], idle_s: float
) -> web.StreamResponse:
    if not (resp.chunked and request.version == HttpVersion11):
        out = web.StreamResponse(status=200, headers=headers)
        return await _relay_reframed(request, out, resp, first, idle_s)
    out = _HeldHeadersResponse(status=200, headers=headers)
    await out.prepare(request)
    transport = request.transport
    if transport is None:
        return out  # the client is gone already
    # one write for the response head and the first chunk (already framed by the backend):
    # the writer frames nothing while it sends them, then frames the terminator at the end
    writer = request.writer
    if isinstance(writer, StreamWriter) and writer.chunked:
        writer.chunked = False
        await out.write(first)
        writer.chunked = True
    else:  # pragma: no cover - aiohttp's own writer is always a chunked StreamWriter here
        writer.send_headers()
        transport.write(first)
    scanner = StreamScanner()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[H1Error | None] = loop.create_future()

    # the upstream's chunked framing goes to the client as is; aiohttp writes the
    # terminator in write_eof()
    def sink(data: bytes) -> None:
        scanner.feed(data)
        if transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > _HIGH_WATER:
            resp.pause()
            loop.call_later(0.01, _resume_when_drained, transport, resp, loop)

    def on_end(error: H1Error | None) -> None:
        if not done.done():
            done.set_result(error)

    scanner.feed(first)
    resp.relay(sink, on_end)
    error = await _wait_idle(done, scanner, idle_s)
    if error is not None and resp.mid_chunk:
        # cut inside a chunk: the client's framing cannot be continued, so cut it too
        transport.abort()
        return out
    await _finish_stream(out, scanner, error)
    return out


async def _relay_reframed(request: web.Request, out: web.StreamResponse, resp: Response,
                          first: bytes, idle_s: float) -> web.StreamResponse:  # fmt: skip
    """The uncommon path: an HTTP/1.0 client or an upstream body that is not chunked.
    aiohttp frames what is written; a chunked upstream body is decoded whole first."""
    scanner = StreamScanner()
    error: H1Error | None = None
    if resp.chunked:  # an HTTP/1.0 client: no chunked framing on its side
        try:
            async with asyncio.timeout(idle_s):
                rest = await resp.read()
            first = dechunk(first + rest + b"0\r\n\r\n")
        except (H1Error, TimeoutError) as exc:
            error = (exc if isinstance(exc, H1Error)
                     else H1Error(f"no data for {idle_s:g}s", before_response=False))  # fmt: skip
            first = b""
    await out.prepare(request)
    data = first
    while data and error is None:
        scanner.feed(data)
        await out.write(data)
        try:
            async with asyncio.timeout(idle_s):
                data = await resp.next_data()
        except H1Error as exc:
            error = exc
        except TimeoutError:
            error = H1Error(f"no data for {idle_s:g}s", before_response=False)
    await _finish_stream(out, scanner, error)
    return out


async def _finish_stream(out: web.StreamResponse, scanner: StreamScanner,
                         error: H1Error | None) -> None:  # fmt: skip
    if error is not None:
        await out.write(error_event(f"upstream stream broken: {error}"))
    elif not scanner.summary().done:
        await out.write(error_event("upstream ended the stream before the answer finished"))
    await out.write_eof()


def _resume_when_drained(transport: asyncio.Transport, resp: Response,
                         loop: asyncio.AbstractEventLoop) -> None:  # fmt: skip
    if transport.is_closing() or transport.get_write_buffer_size() <= _HIGH_WATER // 2:
        resp.resume()
    else:
        loop.call_later(0.01, _resume_when_drained, transport, resp, loop)


async def _wait_idle(
    done: asyncio.Future[H1Error | None], scanner: StreamScanner, idle_s: float
) -> H1Error | None:
    """Wait for the end of the body; an error once a whole ``idle_s`` window passed with no
    byte (so a gap is caught between ``idle_s`` and twice that). Progress is read from the
    scanner's byte count, so the per-chunk path reads no clock."""
    seen = -1
    while scanner.bytes_seen != seen:
        seen = scanner.bytes_seen
        try:
            return await asyncio.wait_for(asyncio.shield(done), idle_s)
        except TimeoutError:
            continue
    return H1Error(f"no data for {idle_s:g}s", before_response=False)


__all__ = ["ForwardSettings", "forward", "request_head_tail"]
