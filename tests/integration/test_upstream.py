"""The upstream HTTP/1.1 client against a scripted server on loopback: framing, pooling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from router.h1 import H1ConnectError, H1Error, H1Pool, dechunk
from tests.fixtures.servers import free_port

HEAD = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n"

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "asyncio.Future[None] | None"]


async def read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(2)


@pytest.fixture
async def server() -> AsyncIterator[Callable[..., asyncio.Future[tuple[str, int]]]]:
    servers: list[asyncio.Server] = []

    async def start(*pieces: bytes, keep_open: bool = True, delay: float = 0.0,
                    requests: int = 1) -> tuple[str, int]:  # fmt: skip
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                for _ in range(requests):
                    await read_request(reader)
                    for piece in pieces:
                        writer.write(piece)
                        await writer.drain()
                        if delay:
                            await asyncio.sleep(delay)
                if not keep_open:
                    writer.close()
                else:
                    await reader.read()  # until the client closes
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(srv)
        return srv.sockets[0].getsockname()[:2]

    yield start  # type: ignore[misc]
    for srv in servers:
        srv.close()


async def collect(pool: H1Pool, origin: tuple[str, int]) -> tuple[int, bytes, bool]:
    resp = await pool.request(origin, HEAD, b"{}")
    got: list[bytes] = []
    done: asyncio.Future[H1Error | None] = asyncio.get_running_loop().create_future()
    resp.relay(got.append, lambda e: done.set_result(e))
    error = await done
    assert error is None
    status, complete = resp.status, resp.complete
    resp.close()  # the connection goes back to the pool: read everything before
    return status, b"".join(got), complete


async def test_content_length_body(server) -> None:  # type: ignore[no-untyped-def]
    origin = await server(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", b"lo")
    pool = H1Pool(1.0)
    resp = await pool.request(origin, HEAD, b"{}")
    assert resp.status == 200
    assert await resp.read() == b"hello"
    resp.close()
    await pool.close()


async def test_chunked_body_is_relayed_raw_without_its_terminator(server) -> None:  # type: ignore[no-untyped-def]
    # size lines and the terminator split across writes, as a slow network would
    origin = await server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhel", b"lo\r\n", b"1", b"0\r\n0123456789abcdef\r\n", b"0", b"\r\n\r\n",
        delay=0.01,
    )  # fmt: skip
    pool = H1Pool(1.0)
    status, raw, complete = await collect(pool, origin)
    assert status == 200 and complete
    assert raw == b"5\r\nhello\r\n10\r\n0123456789abcdef\r\n"
    assert dechunk(raw + b"0\r\n\r\n") == b"hello0123456789abcdef"
    await pool.close()


async def test_keep_alive_connections_are_reused(server) -> None:  # type: ignore[no-untyped-def]
    origin = await server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", requests=3)
    pool = H1Pool(1.0)
    for _ in range(3):
        resp = await pool.request(origin, HEAD, b"{}")
        assert await resp.read() == b"ok"
        resp.close()
    assert len(pool._all) == 1
    await pool.close()


async def test_an_idle_connection_closed_by_the_server_is_replaced_transparently(server) -> None:  # type: ignore[no-untyped-def]
    origin = await server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", keep_open=False)
    pool = H1Pool(1.0)
    for _ in range(2):
        resp = await pool.request(origin, HEAD, b"{}")
        assert await resp.read() == b"ok"
        resp.close()
        await asyncio.sleep(0.05)  # the server closes the idle connection
    await pool.close()


async def test_a_body_delimited_by_close(server) -> None:  # type: ignore[no-untyped-def]
    origin = await server(b"HTTP/1.1 200 OK\r\n\r\nuntil-close", keep_open=False)
    pool = H1Pool(1.0)
    resp = await pool.request(origin, HEAD, b"{}")
    assert await resp.read() == b"until-close"
    resp.close()
    assert not pool._idle.get(origin)
    await pool.close()


async def test_a_cut_mid_chunk_is_reported_as_mid_chunk(server) -> None:  # type: ignore[no-untyped-def]
    origin = await server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n20\r\nonly-part",
                          keep_open=False)  # fmt: skip
    pool = H1Pool(1.0)
    resp = await pool.request(origin, HEAD, b"{}")
    done: asyncio.Future[H1Error | None] = asyncio.get_running_loop().create_future()
    resp.relay(lambda _d: None, lambda e: done.set_result(e))
    error = await done
    assert isinstance(error, H1Error) and not error.before_response
    assert resp.mid_chunk
    resp.close()
    await pool.close()


async def test_garbage_instead_of_a_status_line_is_an_error_before_the_response(server) -> None:  # type: ignore[no-untyped-def]
    origin = await server(b"SSH-2.0-OpenSSH\r\n\r\n")
    pool = H1Pool(1.0)
    with pytest.raises(H1Error) as info:
        await pool.request(origin, HEAD, b"{}")
    assert info.value.before_response
    await pool.close()


async def test_nothing_listening_is_a_connect_error() -> None:
    pool = H1Pool(1.0)
    with pytest.raises(H1ConnectError):
        await pool.request(("127.0.0.1", free_port()), HEAD, b"{}")
    await pool.close()


async def test_an_interim_100_continue_is_skipped(server) -> None:  # type: ignore[no-untyped-def]
    origin = await server(
        b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    pool = H1Pool(1.0)
    resp = await pool.request(origin, HEAD, b"{}")
    assert resp.status == 200
    assert await resp.read() == b"ok"
    resp.close()
    await pool.close()
