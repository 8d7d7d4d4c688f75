"""One HTTP/1.1 connection to a backend, framed by httptools (llhttp), never by hand.

A connection is in exactly one state:

* ``IDLE``: in the pool, no request on it. Any byte or a close while idle (a 408 before a
  keep-alive close, a server restart) discards it: it is never handed out again.
* ``BUSY``: carrying one request; the response is parsed as it arrives.
* ``CLOSED``: gone for good.

The parser decodes the framing (Content-Length, chunked with extensions and trailers,
close-delimited, interim 1xx heads, 204/304 without a body, HEAD) and hands over the body's
payload only: the relay frames it again for its own client. A message is complete when
llhttp says so (after the chunked body's final CRLF and trailers), never earlier, so a
connection goes back to the pool only with nothing left of the previous answer on it.

Errors say what is known about the request (``UpstreamError.reached``): a request whose
connection was never made provably never reached the backend; any other failure may have.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import httptools

if TYPE_CHECKING:
    from ctxroute.router.upstream.pool import UpstreamPool

MAX_HEAD_BYTES: Final = 64 * 1024  # status line + headers (+ trailers), as nginx's large buffers
MAX_HEADERS: Final = 128


class UpstreamError(Exception):
    """The exchange with the backend failed.

    ``reached``: the request may have reached the backend (False only when it provably did
    not). ``response_started``: some byte of the response had arrived.
    """

    def __init__(self, message: str, *, reached: bool, response_started: bool) -> None:
        super().__init__(message)
        self.reached = reached
        self.response_started = response_started


class ConnectFailed(UpstreamError):
    """No connection could be made: the request never left the router."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reached=False, response_started=False)


class UpstreamTimeout(UpstreamError):
    """The backend did not answer within the attempt's deadline (``UpstreamResponse``'s
    ``deadline_s``): the connection is closed, which makes vLLM abort the request."""


class ConnState(enum.Enum):
    IDLE = "idle"
    BUSY = "busy"
    CLOSED = "closed"


# hot-path aliases, read per chunk (why: docs/architecture.md, "Performance budget")
IDLE: Final = ConnState.IDLE
BUSY: Final = ConnState.BUSY
CLOSED: Final = ConnState.CLOSED


BodySink = Callable[[bytes], None]
EndCallback = Callable[[UpstreamError | None], None]


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class _Refused(Exception):
    """Raised from a parser callback: a response the router will not relay."""


class UpstreamConnection(asyncio.Protocol):
    """The protocol of one upstream connection; used through ``UpstreamPool`` only."""

    def __init__(self, pool: UpstreamPool, origin: tuple[str, int]) -> None:
        self.pool = pool
        self.origin = origin
        # made inside loop.create_connection: asking once saves a getpid() per call later
        self.loop = asyncio.get_running_loop()
        self.state = BUSY  # a new connection is made for a request
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.uses = 0
        self._timer: asyncio.TimerHandle | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._begin_exchange(head_only=False)

    def _begin_exchange(self, *, head_only: bool) -> None:
        self.head_only = head_only
        self.status = 0
        # raw header lines: decoded (and filtered) by whoever uses them, not per line here
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.head_done = False
        self.complete = False
        self.error: UpstreamError | None = None
        self._head_bytes = 0  # bytes received while the head is incomplete
        self._trailer_bytes = 0
        self._interim = False
        self._got_bytes = False
        self._reusable = True
        self.pending: list[bytes] = []  # body pieces nobody has taken yet
        self._batch: list[bytes] = []  # body pieces of one packet, for the sink
        self._sink: BodySink | None = None
        self._on_end: EndCallback | None = None
        self.head_waiter: asyncio.Future[None] | None = None
        self.data_waiter: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is transport:
            return
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not a TCP socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.state is not BUSY or self.complete:
            # bytes nobody asked for (a 408 on an idle connection, more after a complete
            # answer): the connection's framing can no longer be trusted
            self._reusable = False
            self.discard()
            return
        self._got_bytes = True
        if not self.head_done:
            # a head that never ends (one endless line) is refused once this many bytes
            # came without completing it; on_header bounds the headers themselves
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
            if self._batch:
                self._flush()
        except httptools.HttpParserUpgrade:
            self._fail("the backend switched protocols (101): refused, never requested")
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._fail(str(cause))
            else:  # pragma: no cover - our callbacks raise nothing else
                self._fail(f"response handling failed: {cause or exc}")
        except httptools.HttpParserError as exc:
            if self.complete:
                # garbage after a complete answer: that answer stands, the connection goes
                self._reusable = False
                self.discard()
            else:
                self._fail(f"malformed response from the backend: {exc}")
            return
        if not self.head_done and self._head_bytes > MAX_HEAD_BYTES:
            self._fail(f"the backend's response head is over {MAX_HEAD_BYTES} bytes")

    def eof_received(self) -> bool | None:
        return False  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = CLOSED
        self.transport = None
        self.pool._forget(self)
        if was is not BUSY or self.complete or self.error is not None:
            return
        if self.head_done and not self._framed() and exc is None:
            # a close-delimited body ends with a clean close (FIN), never with a reset
            self._message_done()
            return
        reason = f" ({exc})" if exc else ""
        if not self._got_bytes:
            self._fail(f"the backend closed the connection before answering{reason}")
        else:
            self._fail(f"the backend closed the connection in the middle of the answer{reason}")

    # ---- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # kept to the minimum (it runs for every header line of every answer): the head's
        # size is bounded in data_received, the line count once the head is complete
        if self.head_done:
            self._trailer(name, value)
        else:
            self.headers.append((name, value))

    def _trailer(self, name: bytes, value: bytes) -> None:
        # nothing a relay forwards, but bounded like a head: a backend cannot stream
        # trailers forever
        self._trailer_bytes += len(name) + len(value)
        if self._trailer_bytes > MAX_HEAD_BYTES:
            raise _Refused(f"the backend's trailers are over {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        headers = self.headers
        if len(headers) > MAX_HEADERS:
            raise _Refused(f"the backend sent more than {MAX_HEADERS} header lines")
        # a head that ended inside one large packet: data_received could not tell yet
        if self._head_bytes > MAX_HEAD_BYTES and (
            sum(len(n) + len(v) for n, v in headers) > MAX_HEAD_BYTES
        ):
            raise _Refused(f"the backend's response head is over {MAX_HEAD_BYTES} bytes")
        status = self._parser.get_status_code()
        if status == 101:
            # checked before the head counts as received: a switched connection is no
            # HTTP answer, and we never ask for an upgrade
            raise _Refused("the backend switched protocols (101): refused, never requested")
        if 100 <= status < 200:
            self._interim = True  # 100 Continue, 103 Early Hints: the real head follows
            return
        self.status = status
        self.keep_alive = bool(self._parser.should_keep_alive())
        self.head_done = True
        _wake(self.head_waiter)
        if self.head_only:
            # no body follows a HEAD answer, whatever Content-Length says; llhttp would wait
            # for one, so this connection is not reused
            self._reusable = False
            self._message_done()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        if self._sink is not None:
            # one packet may carry many chunks: the sink gets them as one piece, so the
            # relay makes one write (one syscall) per packet, not one per chunk
            self._batch.append(body)
        else:
            self.pending.append(body)
            _wake(self.data_waiter)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.complete:
            return
        self.keep_alive = self.keep_alive and bool(self._parser.should_keep_alive())
        self._message_done()

    # ---- internals ------------------------------------------------------------------------

    def _flush(self) -> None:
        batch = self._batch
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        sink = self._sink
        if sink is not None:
            sink(data)

    def _message_done(self) -> None:
        if self._batch:
            self._flush()  # the body's last bytes reach the sink before its end
        self.complete = True
        # the wake-ups inline (this runs once per answer): usually the head's waiter is
        # already done and nobody waits for data
        waiter = self.head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        waiter = self.data_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        on_end = self._on_end
        if on_end is not None:
            self._on_end = None
            on_end(None)

    def _framed(self) -> bool:
        """Whether the answer's end is known without a close (Content-Length, chunked, or
        no body at all). Asked only when the connection closes: never per header."""
        if self.head_only or self.status in (204, 304):
            return True
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"content-length" or (
                lower == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                return True
        return False

    def _fail(self, message: str, kind: type[UpstreamError] = UpstreamError) -> None:
        if self.complete or self.error is not None:
            return
        if self._batch:
            self._flush()  # what was sound before the failure is delivered, then the failure
        error = kind(message, reached=True, response_started=self._got_bytes)
        self.error = error
        for waiter in (self.head_waiter, self.data_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # retrieved here: an abandoned waiter must not warn
        on_end = self._on_end
        if on_end is not None:
            self._on_end = None
            on_end(error)
        self.discard()

    # ---- used by the pool and the response ------------------------------------------------

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and self.error is None
            and self.keep_alive
            and self._reusable
            and self.state is BUSY
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def send(self, data: bytes, *, head_only: bool) -> asyncio.Future[None]:
        """Write a request; the future resolves when the response head has arrived."""
        self._begin_exchange(head_only=head_only)
        self.state = BUSY
        self.uses += 1
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.head_waiter = waiter
        transport = self.transport
        if transport is None or transport.is_closing():
            self._fail("the connection closed before the request was sent")
            return waiter
        transport.write(data)
        return waiter

    def arm(self, seconds: float, what: str) -> None:
        """Fail the exchange with ``UpstreamTimeout`` unless ``disarm`` comes within
        ``seconds``: one timer handle, no task or context manager per request."""
        self._timer = self.loop.call_later(seconds, self._expire, seconds, what)

    def disarm(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()

    def _expire(self, seconds: float, what: str) -> None:
        self._timer = None
        if self.state is BUSY:
            self._fail(f"no {what} within {seconds:g}s", UpstreamTimeout)

    def attach(self, sink: BodySink, on_end: EndCallback) -> None:
        for data in self.pending:
            sink(data)
        self.pending.clear()
        if self.complete or self.error is not None:
            on_end(self.error)
            return
        self._sink = sink
        self._on_end = on_end

    def take_pending(self) -> bytes:
        pending = self.pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        return data

    def detach(self) -> None:
        self._batch.clear()
        self._sink = None
        self._on_end = None

    def discard(self) -> None:
        """Close at once (RST): for a connection in an unknown state, or a request to abort
        (vLLM aborts a request whose connection goes and frees its KV cache)."""
        self.detach()
        self.disarm()
        transport = self.transport
        if self.state is IDLE:
            self.state = CLOSED
            self.pool._forget(self)
        if transport is not None:
            transport.abort()

    def make_idle(self, now: float) -> None:
        self.state = IDLE
        self.idle_since = now
        self.detach()
        self.disarm()
        self.head_waiter = None
        self.data_waiter = None
