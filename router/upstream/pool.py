"""Keep-alive connections per backend, and the request call.

A request goes on an idle connection when there is a fresh one, else on a new one. It is
never sent a second time by this module: a failure on a reused connection is the caller's
failure of that attempt (``UpstreamError.reached`` is True, since the backend may have
read the request). The one race that would make such failures common, a backend closing
an idle connection just as a request is written on it, is avoided by not reusing a
connection idle for longer than ``keepalive_s`` (below uvicorn's 5 s keep-alive, which
vLLM's server uses), and by discarding a connection the moment it says anything or closes
while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Final

from ctxroute.router.upstream.connection import (
    IDLE,
    BodySink,
    ConnectFailed,
    EndCallback,
    UpstreamConnection,
    UpstreamError,
    UpstreamTimeout,
)

_IDLE_PER_ORIGIN: Final = 256


class UpstreamResponse:
    """A response whose head has arrived. ``close()`` it exactly once (in ``finally``)."""

    __slots__ = ("_conn", "_released")

    def __init__(self, conn: UpstreamConnection) -> None:
        self._conn = conn
        self._released = False

    @property
    def status(self) -> int:
        return self._conn.status

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The head's lines as they came (latin-1 bytes, names in the backend's case)."""
        return self._conn.headers

    @property
    def complete(self) -> bool:
        return self._conn.complete and self._conn.error is None

    async def next_data(self) -> bytes:
        """Body payload that arrived since the last call, waiting for some; b"" at the
        end of the body. Raises UpstreamError."""
        conn = self._conn
        pending = conn.pending  # the same list for the whole answer
        while not pending and not conn.complete and conn.error is None:
            waiter: asyncio.Future[None] = conn.loop.create_future()
            conn.data_waiter = waiter
            try:
                await waiter
            finally:
                conn.data_waiter = None
        if pending:
            return conn.take_pending()
        if conn.error is not None:
            raise conn.error
        return b""

    async def read(self) -> bytes:
        """The whole body payload (framing decoded). Raises UpstreamError."""
        conn = self._conn
        if conn.complete and conn.error is None:
            return conn.take_pending()  # the common case: the answer came whole
        parts: list[bytes] = []
        while data := await self.next_data():
            parts.append(data)
        return b"".join(parts)

    def relay(self, sink: BodySink, on_end: EndCallback) -> None:
        """Hand every further piece of body payload to ``sink`` as it arrives (inside the
        connection's ``data_received``: no task, no wake-up per chunk); ``on_end`` once."""
        self._conn.attach(sink, on_end)

    def disarm(self) -> None:
        """What the request's deadline waited for came: it no longer applies."""
        self._conn.disarm()

    def pause(self) -> None:
        transport = self._conn.transport
        if transport is not None:
            transport.pause_reading()

    def resume(self) -> None:
        transport = self._conn.transport
        if transport is not None:
            transport.resume_reading()

    def close(self) -> None:
        """Done with the response: its connection goes back to the pool when the answer
        ended cleanly and the backend keeps it alive; otherwise it is closed at once, which
        makes vLLM abort the request if it is still running."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        if conn.reusable:
            conn.pool._give_back(conn)
        else:
            conn.discard()


class UpstreamPool:
    """Connections to every backend, bounded in idle count per origin."""

    def __init__(self, connect_timeout: float, keepalive_s: float = 4.0) -> None:
        self.connect_timeout = connect_timeout
        self.keepalive_s = keepalive_s
        self._idle: dict[tuple[str, int], deque[UpstreamConnection]] = {}
        self._all: set[UpstreamConnection] = set()
        self.connects = 0  # connections opened (tests, benchmarks)

    async def _connect(self, origin: tuple[str, int]) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        host, port = origin
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self, origin), host, port
                )
        except TimeoutError:
            raise ConnectFailed(
                f"connect to {host}:{port} timed out after {self.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise ConnectFailed(f"connect to {host}:{port}: {exc.strerror or exc}") from None
        if conn.transport is None:
            conn.connection_made(transport)  # uvloop may return before calling it
        self.connects += 1
        self._all.add(conn)
        return conn

    def _take_idle(self, origin: tuple[str, int]) -> UpstreamConnection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be timed out
            transport = conn.transport
            if (
                conn.state is IDLE
                and transport is not None
                and not transport.is_closing()
                and conn.loop.time() - conn.idle_since < self.keepalive_s
            ):
                return conn
            conn.discard()
        return None

    def _give_back(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.origin, deque())
        if len(idle) >= _IDLE_PER_ORIGIN:
            conn.state = IDLE
            conn.discard()
            return
        conn.make_idle(conn.loop.time())
        idle.append(conn)

    def _forget(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle is not None:
            with contextlib.suppress(ValueError):  # not idle: busy or already taken
                idle.remove(conn)

    def idle_count(self, origin: tuple[str, int]) -> int:
        return len(self._idle.get(origin, ()))

    async def request(
        self,
        origin: tuple[str, int],
        data: bytes,
        *,
        head_only: bool = False,
        deadline: tuple[float, str] | None = None,
    ) -> UpstreamResponse:
        """Send ``data`` (request head and body) and return once the response head has
        arrived. Raises ConnectFailed (never sent) or UpstreamError (may have been).

        ``deadline`` (seconds, what is awaited): from the moment the request is sent (the
        connect has its own ``connect_timeout``), the exchange fails with
        ``UpstreamTimeout`` unless the response's ``disarm`` or ``close`` comes first."""
        conn = self._take_idle(origin)
        if conn is None:
            conn = await self._connect(origin)
        if deadline is not None:
            conn.arm(*deadline)
        waiter = conn.send(data, head_only=head_only)
        response = UpstreamResponse(conn)
        try:
            await waiter
        except BaseException:
            response.close()  # cancelled or failed: the connection goes, vLLM aborts
            raise
        finally:
            conn.head_waiter = None
        return response

    async def close(self) -> None:
        for conn in list(self._all):
            conn.discard()
        self._all.clear()
        self._idle.clear()


__all__ = ["ConnectFailed", "UpstreamError", "UpstreamPool", "UpstreamResponse", "UpstreamTimeout"]
