"""A lean HTTP/1.1 client for the upstream side of the proxy, on asyncio Protocols.

Why not aiohttp's client: on the token path it costs a coroutine wake-up, a parser pass
and a stream-reader copy per chunk, then aiohttp's server writer re-frames the chunk. Here
an upstream connection's ``data_received`` hands the raw bytes, chunked framing included,
straight to a sink (the client's transport): one read and one write per token, no copy,
no parse. Only the framing is tracked, to know where the body ends (Content-Length or the
terminating zero-size chunk) and to hold that terminator back so the server side can
close its own response normally.

Scope, on purpose: what vLLM's server (uvicorn/h11) sends. HTTP/1.1 responses with
Content-Length or chunked bodies, no trailers, no 1xx, no upgrades. Keep-alive
connections are pooled per origin; a pooled connection that turns out dead before any byte
of the response is replaced by a fresh one once (the server closed it while idle).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable
from typing import Final, cast

_HEAD_LIMIT: Final = 64 * 1024
_IDLE_PER_ORIGIN: Final = 256


class H1Error(Exception):
    """The upstream connection failed; ``before_response`` says no response byte came."""

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


class H1ConnectError(H1Error):
    def __init__(self, message: str) -> None:
        super().__init__(message, before_response=True)


Sink = Callable[[bytes], None]


class _Connection(asyncio.Protocol):
    """One upstream connection, carrying one request at a time."""

    def __init__(self, pool: H1Pool, origin: tuple[str, int]) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.chunked = False
        self.keep_alive = True
        self._head = b""
        self._in_head = True
        self._got_bytes = False
        self._remaining = -1  # content-length bytes left; -1: read to close
        # chunked framing: bytes left of the current chunk's data and CRLF (0: at a size line)
        self._chunk_left = 0
        self._held = b""
        self._done = False
        self._error: H1Error | None = None
        self._pending: list[bytes] = []
        self._sink: Sink | None = None
        self._on_end: Callable[[H1Error | None], None] | None = None
        self._head_waiter: asyncio.Future[None] | None = None
        self._data_waiter: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol ---------------------------------------------------------------

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
        self._got_bytes = True
        if self._in_head:
            head = self._head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                if len(head) > _HEAD_LIMIT:
                    self._fail(H1Error("response head too large", before_response=True))
                else:
                    self._head = head
                return
            if head.startswith(b"HTTP/1.1 1") and not head.startswith(b"HTTP/1.1 101"):
                # an interim 1xx response (100 Continue): skip it, the real head follows
                self._head = b""
                rest = head[end + 4 :]
                if rest:
                    self.data_received(rest)
                return
            try:
                self._parse_head(head[:end])
            except ValueError as exc:
                self._fail(H1Error(f"malformed response head: {exc}", before_response=True))
                return
            self._in_head = False
            self._head = b""
            _wake(self._head_waiter)
            data = head[end + 4 :]
            if self._remaining == 0:
                self._finish(b"")
                return
            if not data:
                return
        self._body(data)

    def eof_received(self) -> bool | None:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._done:
            self.pool._forget(self)
            return
        if not self._in_head and self._remaining == -1 and not self.chunked:
            self._finish(b"")  # a body delimited by the connection's close
            return
        self._fail(H1Error(
            "upstream closed the connection" + (f" ({exc})" if exc else ""),
            before_response=not self._got_bytes,
        ))  # fmt: skip

    # ---- framing ------------------------------------------------------------------------

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
        self.status = int(rest[:3])
        self.keep_alive = version == "HTTP/1.1"
        headers = self.headers
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"bad header line {line[:60]!r}")
            value = value.strip()
            headers.append((name, value))
            lower = name.lower()
            if lower == "content-length":
                self._remaining = int(value)
            elif lower == "transfer-encoding":
                self.chunked = "chunked" in value.lower()
            elif lower == "connection":
                token = value.lower()
                if "close" in token:
                    self.keep_alive = False
                elif "keep-alive" in token:
                    self.keep_alive = True
        if self.chunked:
            self._remaining = -1
        elif self._remaining == -1:
            self.keep_alive = False  # delimited by close
        if self.status in (204, 304) or 100 <= self.status < 200:
            self._remaining = 0

    def _body(self, data: bytes) -> None:
        if self.chunked:
            if self._chunk_left == 0 and not self._held:
                # the common case on the token path: exactly one whole chunk (vLLM writes
                # one SSE event per chunk)
                nl = data.find(b"\n")
                if nl > 0:
                    try:
                        size = int(data[:nl], 16)
                    except ValueError:
                        size = -1  # extensions or garbage: the general path decides
                    if size > 0 and nl + size + 3 == len(data):
                        self._deliver(data)
                        return
            if self._held:
                data = self._held + data
                self._held = b""
            try:
                end, keep = self._scan_chunks(data)
            except ValueError as exc:
                self._fail(H1Error(f"malformed chunked body: {exc}", before_response=False))
                return
            if end >= 0:
                self._finish(data[:end])
                return
            if keep < len(data):
                # an incomplete chunk-size line: hold it until it is whole, so that the
                # terminator is never half-relayed
                self._held = data[keep:]
                data = data[:keep]
        elif self._remaining >= 0:
            self._remaining -= len(data)
            if self._remaining <= 0:
                self._finish(data)
                return
        self._deliver(data)

    def _scan_chunks(self, data: bytes) -> tuple[int, int]:
        """Follow chunk framing over ``data``, which starts at a chunk boundary or inside
        chunk data. Returns (offset of the terminating chunk or -1, offset of an incomplete
        size line at the end, else len(data))."""
        pos = 0
        n = len(data)
        while pos < n:
            left = self._chunk_left
            if left > 0:
                step = min(left, n - pos)
                self._chunk_left = left - step
                pos += step
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                return -1, pos
            line = data[pos:nl].split(b";", 1)[0].strip()
            if not line:
                raise ValueError("empty chunk-size line")
            size = int(line, 16)
            if size == 0:
                return pos, n  # the terminator (no trailers from vLLM): held back
            self._chunk_left = size + 2  # the data and its CRLF
            pos = nl + 1
        return -1, n

    @property
    def mid_chunk(self) -> bool:
        """The body stopped inside a chunk: the relayed framing cannot be continued."""
        return self._chunk_left > 0 or bool(self._held)

    def _deliver(self, data: bytes) -> None:
        if not data:
            return
        sink = self._sink
        if sink is not None:
            sink(data)
        else:
            self._pending.append(data)
            _wake(self._data_waiter)

    def _finish(self, last: bytes) -> None:
        self._deliver(last)
        self._done = True
        _wake(self._head_waiter)
        _wake(self._data_waiter)
        on_end = self._on_end
        if on_end is not None:
            self._on_end = None
            on_end(None)

    def _fail(self, error: H1Error) -> None:
        if self._done:
            return
        self._error = error
        self._done = True
        for waiter in (self._head_waiter, self._data_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        on_end = self._on_end
        if on_end is not None:
            self._on_end = None
            on_end(error)
        if self.transport is not None:
            self.transport.abort()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class Response:
    """An upstream response whose head has arrived. Close or release it exactly once."""

    __slots__ = ("_conn", "_released")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._released = False

    @property
    def status(self) -> int:
        return self._conn.status

    @property
    def headers(self) -> list[tuple[str, str]]:
        return self._conn.headers

    @property
    def chunked(self) -> bool:
        return self._conn.chunked

    @property
    def complete(self) -> bool:
        return self._conn._done and self._conn._error is None

    @property
    def mid_chunk(self) -> bool:
        return self._conn.mid_chunk

    async def next_data(self) -> bytes:
        """The body bytes that arrived since the last call, waiting for some; b"" at the
        end of the body. Raises H1Error."""
        conn = self._conn
        while not conn._pending and not conn._done:
            conn._data_waiter = asyncio.get_running_loop().create_future()
            try:
                await conn._data_waiter
            finally:
                conn._data_waiter = None
        if conn._error is not None and not conn._pending:
            raise conn._error
        data = b"".join(conn._pending)
        conn._pending.clear()
        return data

    async def read(self) -> bytes:
        """The whole body, as sent (chunked framing included when chunked)."""
        parts: list[bytes] = []
        while data := await self.next_data():
            parts.append(data)
        return b"".join(parts)

    def relay(self, sink: Sink, on_end: Callable[[H1Error | None], None]) -> None:
        """Send every further body byte to ``sink`` as it arrives; ``on_end`` when done."""
        conn = self._conn
        if conn._pending:
            for data in conn._pending:
                sink(data)
            conn._pending.clear()
        if conn._done:
            on_end(conn._error)
            return
        conn._sink = sink
        conn._on_end = on_end

    def pause(self) -> None:
        if self._conn.transport is not None:
            self._conn.transport.pause_reading()

    def resume(self) -> None:
        if self._conn.transport is not None:
            self._conn.transport.resume_reading()

    def close(self) -> None:
        """Done with the response: back to the pool if it ended cleanly, else dropped."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        if conn._done and conn._error is None and conn.keep_alive and conn.transport is not None:
            conn.pool._give_back(conn)
        else:
            conn._done = True  # connection_lost must not report into a finished request
            conn._sink = None
            conn._on_end = None
            if conn.transport is not None:
                conn.transport.abort()
            conn.pool._forget(conn)


def dechunk(body: bytes) -> bytes:
    """Decode a complete chunked body (the rare non-streaming answer sent chunked)."""
    out: list[bytes] = []
    pos = 0
    while True:
        nl = body.index(b"\n", pos)
        size = int(body[pos:nl].split(b";", 1)[0].strip(), 16)
        if size == 0:
            return b"".join(out)
        out.append(body[nl + 1 : nl + 1 + size])
        pos = nl + 1 + size + 2


class H1Pool:
    """Keep-alive connections per origin, and the request call."""

    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._all: set[_Connection] = set()

    async def _connect(self, origin: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, conn = await loop.create_connection(
                    lambda: _Connection(self, origin), origin[0], origin[1]
                )
        except TimeoutError:
            raise H1ConnectError(f"connect to {origin[0]}:{origin[1]} timed out") from None
        except OSError as exc:
            raise H1ConnectError(
                f"connect to {origin[0]}:{origin[1]}: {exc.strerror or exc}"
            ) from None
        if conn.transport is None:
            # uvloop may return before it has called connection_made
            conn.connection_made(transport)
        self._all.add(conn)
        return conn

    def _take_idle(self, origin: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
            self._all.discard(conn)
        return None

    def _give_back(self, conn: _Connection) -> None:
        conn._reset()
        idle = self._idle.setdefault(conn.origin, deque())
        if len(idle) >= _IDLE_PER_ORIGIN:
            if conn.transport is not None:
                conn.transport.close()
            self._all.discard(conn)
            return
        idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle is not None and conn in idle:
            idle.remove(conn)

    async def request(self, origin: tuple[str, int], head: bytes, body: bytes) -> Response:
        """Send ``head`` (request line + headers, ending with a blank line) and ``body``;
        return once the response head has arrived. Raises H1Error."""
        conn = self._take_idle(origin)
        if conn is not None:
            try:
                return await self._exchange(conn, head, body)
            except H1Error as exc:
                if not exc.before_response:
                    raise
                # an idle connection the server had closed: one fresh try
        return await self._exchange(await self._connect(origin), head, body)

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes) -> Response:
        transport = conn.transport
        if transport is None:
            raise H1Error("connection closed", before_response=True)
        waiter = asyncio.get_running_loop().create_future()
        conn._head_waiter = waiter
        transport.write(head + body)
        try:
            await waiter
        except BaseException:
            Response(conn).close()
            raise
        finally:
            conn._head_waiter = None
        return Response(conn)

    async def close(self) -> None:
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()
        self._all.clear()
        self._idle.clear()
