"""The upstream transport (router/upstream) against scripted servers on loopback.

Each server counts the requests it receives, so "never sent twice" is checked, not
assumed. The defects a review reproduced in the hand-written client are tests here.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import pytest
import uvloop
from ctxroute.router.upstream.connection import ConnectFailed, UpstreamError, UpstreamTimeout
from ctxroute.router.upstream.pool import UpstreamPool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.servers import free_port

REQUEST = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
Piece = bytes | float  # bytes to write, or seconds to pause


@dataclass
class Scripted:
    """A server that answers the n-th request on each connection with ``answers[n]``
    (pieces written one by one, with pauses), then does what ``after`` says."""

    answers: Sequence[Sequence[Piece]]
    after: str = "keep"  # keep | close | reset
    received: list[bytes] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for pieces in self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.readexactly(2)
                self.received.append(head + body)
                for piece in pieces:
                    if isinstance(piece, float):
                        await asyncio.sleep(piece)
                    else:
                        writer.write(piece)
                        await writer.drain()
            if self.after == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if self.after == "keep":
                await reader.read()  # until the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def origin(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port


ServerFactory = Callable[..., Awaitable[Scripted]]


@pytest.fixture
async def scripted() -> AsyncIterator[ServerFactory]:
    servers: list[Scripted] = []

    async def start(*answers: Sequence[Piece], after: str = "keep") -> Scripted:
        s = Scripted(answers, after)
        s.server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool(1.0, keepalive_s=4.0)
    yield p
    await p.close()


async def fetch(pool: UpstreamPool, origin: tuple[str, int]) -> tuple[int, bytes]:
    resp = await pool.request(origin, REQUEST)
    try:
        return resp.status, await resp.read()
    finally:
        resp.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_a_chunked_non_streaming_answer_is_read_whole(scripted, pool) -> None:  # type: ignore[no-untyped-def]
    # was: dechunk() on a body without its last chunk -> a bare 500
    s = await scripted([CHUNKED + b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"])
    assert await fetch(pool, s.origin) == (200, b"hello world")
    assert pool.idle_count(s.origin) == 1  # complete: reusable


async def test_a_connection_is_reused_only_after_the_final_crlf_and_nothing_is_sent_twice(
    scripted,
    pool,  # type: ignore[no-untyped-def]
) -> None:
    # was: complete at the "0" line; the final CRLF arriving later poisoned the connection
    # and the next request was sent to the upstream twice
    answer = [CHUNKED + b"2\r\nhi\r\n0\r\n", 0.05, b"X-T: 1\r\n", 0.02, b"\r\n"]
    s = await scripted(answer, answer, answer)
    for _ in range(3):
        assert await fetch(pool, s.origin) == (200, b"hi")
    assert len(s.received) == 3 and s.connections == 1
    assert pool.connects == 1


async def test_an_idle_connection_that_gets_a_408_and_closes_is_never_used(scripted, pool) -> None:  # type: ignore[no-untyped-def]
    # was: the next request hung on that connection until its timeout
    s = await scripted([OK, 0.05, b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n"],
                       after="close")  # fmt: skip
    assert await fetch(pool, s.origin) == (200, b"ok")
    await asyncio.sleep(0.2)  # the 408 and the close arrive while the connection is idle
    assert pool.idle_count(s.origin) == 0
    async with asyncio.timeout(2):  # a guard, not a measurement: it used to hang
        assert await fetch(pool, s.origin) == (200, b"ok")
    assert s.connections == 2 and len(s.received) == 2


async def test_a_reset_during_a_close_delimited_body_is_an_error(scripted, pool) -> None:  # type: ignore[no-untyped-def]
    # was: counted as success
    s = await scripted([b"HTTP/1.1 200 OK\r\n\r\npart of it", 0.05], after="reset")
    resp = await pool.request(s.origin, REQUEST)
    with pytest.raises(UpstreamError) as info:
        await resp.read()
    resp.close()
    assert info.value.response_started


async def test_a_clean_close_ends_a_close_delimited_body(scripted, pool) -> None:  # type: ignore[no-untyped-def]
    s = await scripted([b"HTTP/1.1 200 OK\r\n\r\nuntil-", 0.02, b"close"], after="close")
    assert await fetch(pool, s.origin) == (200, b"until-close")
    assert pool.idle_count(s.origin) == 0


async def test_bytes_past_content_length_are_not_passed_on_and_the_connection_goes(
    scripted,
    pool,  # type: ignore[no-untyped-def]
) -> None:
    # was: a body longer than Content-Length passed whole
    s = await scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA-BYTES"])
    assert await fetch(pool, s.origin) == (200, b"ok")
    await asyncio.sleep(0.05)
    assert pool.idle_count(s.origin) == 0


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\nok",
        CHUNKED + b"0x10\r\n0123456789abcdef\r\n0\r\n\r\n",
        CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n",
        CHUNKED + b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ],
)
async def test_malformed_framing_is_an_error_never_a_body(scripted, pool, answer: bytes) -> None:  # type: ignore[no-untyped-def]
    # was: int() accepted 0x10, -5 and 1_0 as sizes
    s = await scripted([answer])
    with pytest.raises(UpstreamError):
        await fetch(pool, s.origin)
    assert pool.idle_count(s.origin) == 0


async def test_interim_1xx_heads_are_skipped(scripted, pool) -> None:  # type: ignore[no-untyped-def]
    s = await scripted([b"HTTP/1.1 100 Continue\r\n\r\n", 0.01,
                        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK])  # fmt: skip
    assert await fetch(pool, s.origin) == (200, b"ok")
    assert pool.idle_count(s.origin) == 1


async def test_a_101_switch_is_refused(scripted, pool) -> None:  # type: ignore[no-untyped-def]
    s = await scripted([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\nConnection: upgrade"
                        b"\r\n\r\nraw"])  # fmt: skip
    with pytest.raises(UpstreamError, match="101"):
        await fetch(pool, s.origin)


@pytest.mark.parametrize("status", [204, 304])
async def test_204_and_304_have_no_body_and_keep_the_connection(
    scripted, pool, status: int
) -> None:  # type: ignore[no-untyped-def]
    s = await scripted([f"HTTP/1.1 {status} X\r\nContent-Length: 5\r\n\r\n".encode()], [OK])
    assert await fetch(pool, s.origin) == (status, b"")
    assert await fetch(pool, s.origin) == (200, b"ok")
    assert s.connections == 1


async def test_a_head_answer_has_no_body(scripted, pool) -> None:  # type: ignore[no-untyped-def]
    s = await scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"])
    resp = await pool.request(s.origin, REQUEST.replace(b"POST", b"HEAD"), head_only=True)
    assert resp.status == 200 and await resp.read() == b""
    resp.close()


_MANY_BIG = b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 700) for i in range(100))  # 70 KB, 100 lines
_MANY_TINY = b"".join(b"X-%d: 1\r\n" % i for i in range(200))  # small, but 200 lines


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"X-Big: " + b"a" * 70_000 + b"\r\n", "head is over"),
        (_MANY_BIG, "head is over"),
        (_MANY_TINY, "header lines"),
    ],
    ids=["one-huge-line", "many-large-lines", "too-many-lines"],
)
async def test_an_oversized_response_head_is_refused(scripted, pool, head: bytes, why: str) -> None:  # type: ignore[no-untyped-def]
    s = await scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + head + b"\r\nok"])
    with pytest.raises(UpstreamError, match=why):
        await fetch(pool, s.origin)


async def test_endless_trailers_are_refused(scripted, pool) -> None:  # type: ignore[no-untyped-def]
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"t" * 1000) for i in range(80))
    s = await scripted([CHUNKED + b"2\r\nok\r\n0\r\n" + trailers + b"\r\n"])
    with pytest.raises(UpstreamError, match="trailers are over"):
        await fetch(pool, s.origin)


async def test_nothing_listening_is_a_connect_error_that_never_reached_the_backend(pool) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConnectFailed) as info:
        await pool.request(("127.0.0.1", free_port()), REQUEST)
    assert not info.value.reached


async def test_keep_alive_connections_are_reused_until_they_expire(scripted) -> None:  # type: ignore[no-untyped-def]
    s = await scripted([OK], [OK], [OK])
    pool = UpstreamPool(1.0, keepalive_s=0.1)
    try:
        assert await fetch(pool, s.origin) == (200, b"ok")
        assert await fetch(pool, s.origin) == (200, b"ok")
        assert pool.connects == 1
        await asyncio.sleep(0.15)  # past keepalive_s: not reused (the backend may close it)
        assert await fetch(pool, s.origin) == (200, b"ok")
        assert pool.connects == 2
    finally:
        await pool.close()


async def test_a_failure_on_a_reused_connection_is_not_resent(scripted, pool) -> None:  # type: ignore[no-untyped-def]
    # the second request reaches the server, which closes without answering: it may have
    # been processed, so the pool reports it and never sends it again
    s = await scripted([OK], [], after="close")
    assert await fetch(pool, s.origin) == (200, b"ok")
    with pytest.raises(UpstreamError) as info:
        await fetch(pool, s.origin)
    assert info.value.reached and not info.value.response_started
    await asyncio.sleep(0.05)
    assert len(s.received) == 2  # each request once


async def test_a_deadline_before_the_head_fails_the_exchange_and_closes_the_connection(
    scripted, pool
) -> None:  # type: ignore[no-untyped-def]
    s = await scripted([0.5, OK])
    with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.1s") as info:
        await pool.request(s.origin, REQUEST, deadline=(0.1, "answer"))
    assert info.value.reached and not info.value.response_started
    assert pool.idle_count(s.origin) == 0  # closed: the backend aborts the request


async def test_a_deadline_in_the_middle_of_a_body_fails_the_read(scripted, pool) -> None:  # type: ignore[no-untyped-def]
    s = await scripted([CHUNKED + b"2\r\nok\r\n", 0.5, b"0\r\n\r\n"])
    resp = await pool.request(s.origin, REQUEST, deadline=(0.1, "answer"))
    try:
        with pytest.raises(UpstreamTimeout) as info:
            await resp.read()
        assert info.value.response_started
    finally:
        resp.close()
    assert pool.idle_count(s.origin) == 0


async def test_a_disarmed_deadline_never_fires_and_the_connection_is_reused(scripted, pool) -> None:  # type: ignore[no-untyped-def]
    s = await scripted([CHUNKED + b"2\r\nok\r\n", 0.3, b"0\r\n\r\n"], [OK])
    resp = await pool.request(s.origin, REQUEST, deadline=(0.1, "first byte"))
    try:
        assert await resp.next_data() == b"ok"
        resp.disarm()  # the first byte came: the rest of the body has no deadline
        assert await resp.read() == b""
        assert resp.complete
    finally:
        resp.close()
    assert pool.idle_count(s.origin) == 1
    assert await fetch(pool, s.origin) == (200, b"ok")
    assert s.connections == 1 and len(s.received) == 2


# ---- the same bytes, split anywhere ----------------------------------------------------

_BODY = b'data: {"x":1}\n\n' * 3

FRAMINGS: dict[str, tuple[bytes, bool]] = {
    # name: (wire bytes of one response, reusable afterwards)
    "content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY, True),
    "chunked, extensions, trailers": (
        CHUNKED
        + b"%x;a=b\r\n%s\r\n%x\r\n%s\r\n0\r\nX-T: v\r\nX-U: w\r\n\r\n"
        % (10, _BODY[:10], len(_BODY) - 10, _BODY[10:]),
        True,
    ),
    "chunked, connection close": (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(_BODY), _BODY),
        False,
    ),
    "http/1.0 content-length": (
        b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY,
        False,
    ),
}


async def _split_scenario(
    wire: bytes, cuts: list[int], close_after: bool
) -> tuple[bytes, bytes, int]:
    pieces: list[Piece] = []
    last = 0
    for cut in sorted(set(cuts)):
        pieces += [wire[last:cut], 0.001]
        last = cut
    pieces.append(wire[last:])
    # a closing server answers once, then closes: a close-delimited body ends there
    s = Scripted(
        [pieces] if close_after else [pieces, pieces], after="close" if close_after else "keep"
    )
    s.server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
    pool = UpstreamPool(1.0)
    try:
        _, first = await fetch(pool, s.origin)
        reusable = pool.idle_count(s.origin)
        second = b""
        if reusable:
            _, second = await fetch(pool, s.origin)
        return first, second, reusable
    finally:
        await pool.close()
        s.server.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(FRAMINGS)), data=st.data())
def test_any_split_of_the_bytes_gives_the_same_body_and_reuse(
    name: str, data: st.DataObject
) -> None:
    wire, reusable = FRAMINGS[name]
    cuts = data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=8))
    first, second, idle = uvloop.run(_split_scenario(wire, cuts, close_after=not reusable))
    assert first == _BODY
    assert idle == (1 if reusable else 0)
    if reusable:
        assert second == _BODY  # the keep-alive sequence: the next answer is intact too


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_split_of_a_close_delimited_body_gives_the_whole_body(data: st.DataObject) -> None:
    wire = b"HTTP/1.1 200 OK\r\n\r\n" + _BODY
    cuts = data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=8))
    first, _, idle = uvloop.run(_split_scenario(wire, cuts, close_after=True))
    assert first == _BODY and idle == 0
