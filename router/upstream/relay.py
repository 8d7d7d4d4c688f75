"""Relay a streamed answer from a backend to the router's client, chunk by chunk.

The backend's body payload (decoded from its framing by llhttp) is written to the
client's transport inside the upstream connection's ``data_received``: no task, no parse
of the SSE payload, no re-serialisation. Each piece gets its own chunk-size line for an
HTTP/1.1 client; an HTTP/1.0 client gets the bytes as they are and the end of the answer
is the close of its connection. So a stream is a stream for both, and whatever the
backend's framing was (chunk extensions, trailers, Content-Length, close-delimited), the
client's framing is always ours and always well formed, even when the backend breaks off.

Backpressure: when the client's transport holds more than its high-water mark, reading
from the backend pauses (``pause_reading``) until aiohttp's writer has drained
(``request.writer.drain()``, which waits for the transport's ``resume_writing``); no timer.

Only public aiohttp API is used: ``StreamResponse.prepare/write/write_eof``,
``request.transport`` and ``request.writer``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http import HttpVersion11

from router.core.sse import StreamScanner, StreamSummary, error_event
from router.upstream.connection import UpstreamError
from router.upstream.pool import UpstreamResponse


@dataclass(frozen=True, slots=True)
class RelayResult:
    """How a relayed stream ended. ``upstream_error``: the backend broke, went silent
    or ended before ``[DONE]`` (the client got an SSE error event). ``client_gone``: the
    client stopped reading or left."""

    summary: StreamSummary
    upstream_error: str | None
    client_gone: bool


async def relay_stream(
    request: web.Request,
    upstream: UpstreamResponse,
    first: bytes,
    headers: list[tuple[str, str]],
    idle_s: float,
) -> tuple[web.StreamResponse, RelayResult]:
    out = web.StreamResponse(status=upstream.status, headers=headers)
    chunked = request.version >= HttpVersion11
    if chunked:
        out.enable_chunked_encoding()
    await out.prepare(request)
    scanner = StreamScanner()
    transport = request.transport
    if transport is None or transport.is_closing():
        scanner.feed(first)
        return out, RelayResult(scanner.summary(), None, client_gone=True)

    loop = asyncio.get_running_loop()
    high_water = transport.get_write_buffer_limits()[1]
    ended: list[UpstreamError | None] = []
    paused = False
    wake: asyncio.Future[None] | None = None

    def sink(data: bytes) -> None:
        nonlocal paused
        scanner.feed(data)
        if transport.is_closing():
            return
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        if not paused and transport.get_write_buffer_size() > high_water:
            paused = True
            upstream.pause()
            if wake is not None and not wake.done():
                wake.set_result(None)

    def on_end(error: UpstreamError | None) -> None:
        ended.append(error)
        if wake is not None and not wake.done():
            wake.set_result(None)

    sink(first)
    upstream.relay(sink, on_end)
    problem: str | None = None
    seen = -1
    while not ended:
        if paused:
            try:
                async with asyncio.timeout(idle_s):
                    await request.writer.drain()
            except (TimeoutError, ConnectionError):
                transport.abort()  # a client that reads nothing for idle_s is gone
                return out, RelayResult(scanner.summary(), None, client_gone=True)
            paused = False
            upstream.resume()
            continue
        if scanner.bytes_seen == seen:
            # a whole idle_s window with no byte (a gap is caught between idle_s and twice
            # that, so the per-chunk path reads no clock)
            problem = f"the backend sent nothing for {idle_s:g}s"
            break
        seen = scanner.bytes_seen
        wake = loop.create_future()
        try:
            async with asyncio.timeout(idle_s):
                await wake
        except TimeoutError:
            pass
        finally:
            wake = None
    if ended and ended[0] is not None:
        problem = f"upstream stream broken: {ended[0]}"
    summary = scanner.summary()
    if transport.is_closing():
        return out, RelayResult(summary, problem, client_gone=True)
    if problem is None and not summary.done:
        problem = "the backend ended the stream before the answer finished"
    if problem is not None:
        upstream.close()  # detach: nothing of the backend's may follow our closing event
        # close an event the backend left half-written, then say what happened
        prefix = b"" if scanner.ends_event() else b"\n\n"
        await out.write(prefix + error_event(problem))
    await out.write_eof()
    return out, RelayResult(summary, problem, client_gone=False)


__all__ = ["RelayResult", "relay_stream"]
