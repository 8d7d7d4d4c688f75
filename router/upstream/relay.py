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
from ctxroute.router.core.leakage import LeakGuard
from ctxroute.router.core.sse import StreamScanner, StreamSummary, error_event
from ctxroute.router.upstream.connection import UpstreamError
from ctxroute.router.upstream.pool import UpstreamResponse


@dataclass(frozen=True, slots=True)
class RelayResult:
    """How a relayed stream ended. ``upstream_error``: the backend broke, went silent
    or ended before ``[DONE]`` (the client got an SSE error event). ``client_gone``: the
    client stopped reading or left."""

    summary: StreamSummary
    upstream_error: str | None
    client_gone: bool
    stopped: bool = False  # cut by the router's own shutdown (an SSE error event said so)
    blocked: bool = False  # cut because it quoted its system message (an error event said so)


class Relays:
    """The streams being relayed, so that a shutdown whose grace has run out can end each
    with an SSE error event instead of cutting it mid-chunk."""

    __slots__ = ("live", "stopping")

    def __init__(self) -> None:
        self.live: set[_Relay] = set()
        self.stopping: str | None = None  # the reason every stream is being ended

    def stop_all(self, reason: str) -> int:
        """End every stream with ``reason`` (each writes its error event and returns);
        how many there were."""
        self.stopping = reason
        for relay in self.live:
            relay.on_end(None, stopped=True)
        return len(self.live)


class _Relay:
    """One stream's relay: ``sink`` writes each piece of the backend's body to the client's
    transport as it comes (inside the upstream connection's ``data_received``), pausing
    the backend when the client falls behind; ``on_end`` hears the upstream end."""

    __slots__ = ("blocked", "chunked", "ended", "flag_due", "guard", "high_water", "paused",
                 "scanner", "stopped", "transport", "upstream", "wake")  # fmt: skip

    def __init__(self, transport: asyncio.Transport, upstream: UpstreamResponse,
                 chunked: bool, guard: LeakGuard | None = None) -> None:  # fmt: skip
        self.transport = transport
        self.guard = guard  # watches the answer for quotes of its system message
        self.blocked = False
        self.flag_due = False  # a flag comment to write at the next event boundary
        self.upstream = upstream
        self.chunked = chunked
        self.scanner = StreamScanner()
        self.high_water = transport.get_write_buffer_limits()[1]
        self.ended: list[UpstreamError | None] = []
        self.paused = False
        self.stopped = False
        self.wake: asyncio.Future[None] | None = None

    def sink(self, data: bytes) -> None:
        if self.blocked:
            return  # nothing of the answer after the quote: its stream ends with an error
        guard = self.guard
        if guard is not None and not guard.leaked and guard.feed(data):
            if guard.block:
                self.blocked = True
                self.on_end(None)
                return
            self.flag_due = guard.flag
        self.scanner.feed(data)
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
        if self.flag_due and data.endswith(b"\n\n"):
            self.flag_due = False
            comment = _FLAG_COMMENT
            transport.write(b"%x\r\n%b\r\n" % (len(comment), comment) if self.chunked else comment)
        if not self.paused and transport.get_write_buffer_size() > self.high_water:
            self.paused = True
            self.upstream.pause()
            self._wake()

    def on_end(self, error: UpstreamError | None, stopped: bool = False) -> None:
        self.ended.append(error)
        self.stopped = self.stopped or stopped
        self._wake()

    def _wake(self) -> None:
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def pump(self, request: web.Request, idle_s: float) -> tuple[str | None, bool]:
        """Until the upstream ends: resume the backend once the client has drained, and
        watch for a backend gone silent. Returns (the problem, if any; the client left)."""
        loop = asyncio.get_running_loop()
        seen = -1
        while not self.ended:
            if self.paused:
                try:
                    async with asyncio.timeout(idle_s):
                        await request.writer.drain()
                except (TimeoutError, ConnectionError):
                    self.transport.abort()  # a client that reads nothing for idle_s is gone
                    return None, True
                self.paused = False
                self.upstream.resume()
                continue
            if self.scanner.bytes_seen == seen:
                # a whole idle_s window with no byte (a gap is caught between idle_s and
                # twice that, so the per-chunk path reads no clock)
                return f"the backend sent nothing for {idle_s:g}s", False
            seen = self.scanner.bytes_seen
            self.wake = loop.create_future()
            try:
                async with asyncio.timeout(idle_s):
                    await self.wake
            except TimeoutError:
                pass
            finally:
                self.wake = None
        error = self.ended[0]
        return (None if error is None else f"upstream stream broken: {error}"), False


async def relay_stream(
    request: web.Request,
    upstream: UpstreamResponse,
    first: bytes,
    headers: list[tuple[str, str]],
    idle_s: float,
    relays: Relays | None = None,
    guard: LeakGuard | None = None,
) -> tuple[web.StreamResponse, RelayResult]:
    out = web.StreamResponse(status=upstream.status, headers=headers)
    chunked = request.version >= HttpVersion11
    if chunked:
        out.enable_chunked_encoding()
    await out.prepare(request)
    transport = request.transport
    if transport is None or transport.is_closing():
        scanner = StreamScanner()
        scanner.feed(first)
        return out, RelayResult(scanner.summary(), None, client_gone=True)
    relay = _Relay(transport, upstream, chunked, guard)
    relay.sink(first)
    upstream.relay(relay.sink, relay.on_end)
    if relays is not None:
        relays.live.add(relay)
    try:
        problem, gone = await relay.pump(request, idle_s)
    finally:
        if relays is not None:
            relays.live.discard(relay)
    summary = relay.scanner.summary()
    if gone or transport.is_closing():
        return out, RelayResult(summary, problem, client_gone=True)
    blocked = relay.blocked and guard is not None
    stopped = relay.stopped and not summary.done and not blocked
    kind: tuple[str, int] | tuple[()] = ()  # the error event's type and code: a 502's
    if blocked:  # the chunk that completed a quote of the system message was not sent
        assert guard is not None
        problem, kind = guard.message(), _BLOCKED
    elif stopped:
        problem = relays.stopping if relays is not None and relays.stopping else "stopped"
        kind = _UNAVAILABLE
    elif problem is None and not summary.done:
        problem = "the backend ended the stream before the answer finished"
    if problem is not None:
        upstream.close()  # detach: nothing of the backend's may follow our closing event
        # close an event the backend left half-written, then say what happened
        prefix = b"" if relay.scanner.ends_event() else b"\n\n"
        await out.write(prefix + error_event(problem, *kind))
    await out.write_eof()
    return out, RelayResult(summary, None if stopped or blocked else problem,
                            client_gone=False, stopped=stopped, blocked=blocked)  # fmt: skip


_UNAVAILABLE = ("ServiceUnavailableError", 503)
_BLOCKED = ("BadRequestError", 400)
# a flagged leak, told in the stream once its headers have left: an SSE comment, which
# clients' SSE readers skip (the request log and the metrics have it too)
_FLAG_COMMENT = b": x-ctxroute-indicators: system_prompt_leak\n\n"


__all__ = ["RelayResult", "Relays", "relay_stream"]
